"""Throughput of measurement + template captioning at 512 px.

    python benchmarks/measure_speed.py [--data ../shared/data] [-n 60] [--workers 2]

Preprocesses ``n`` photographs of the 10-class DR set to 512 px squares (not timed), then times
``measure`` followed by ``describe`` over them with ``workers`` processes (one thread each) and
prints images per second. Target: at least 5 images/s on a 2-core machine.

Each worker also counts the CPU time it spent, so the output says whether other work shared the
cores during the run (the workers then got less than their cores' time) and what the CPU-bound
rate, ``workers`` over CPU seconds per image, would be on cores of their own.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one(args):
    import torch
    torch.set_num_threads(1)
    from fundusgen.caption.template import describe
    from fundusgen.measure.attributes import measure
    image, fov, labels, vessels = args
    t = time.process_time()
    caption = describe({**labels, "measurements": measure(image, fov, vessel_method=vessels)}, seed=0)
    return caption, time.process_time() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("FUNDUSGEN_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("-n", type=int, default=60)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vessels", choices=("auto", "network", "classical"), default="auto",
                   help="vessel segmentation (default auto: the shipped net, as `fundusgen measure` does; "
                        "classical is the fast path)")
    args = p.parse_args()
    if not (args.data / "srahim_dr").is_dir():
        print(f"measure_speed: error: {args.data}/srahim_dr not found (give --data)", file=sys.stderr)
        return 2
    import cv2
    cv2.setNumThreads(1)  # before OpenCV starts its thread pool: forked workers inherit one thread each
    from fundusgen.data.fundus import load_rgb, preprocess
    from fundusgen.data.sources import read_source
    records = read_source("srahim_dr", args.data / "srahim_dr")[::7][:args.n]
    jobs = []
    for r in records:
        image, fov, _ = preprocess(load_rgb(r.image), args.size)
        jobs.append((image, fov, {"eye": r.eye.value if r.eye else None, "dr_grade": r.dr_grade}, args.vessels))
    with mp.get_context("fork").Pool(args.workers) as pool:
        pool.map(_one, jobs[:args.workers])  # warm-up: imports in each worker
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = pool.map(_one, jobs, chunksize=1)
        dt = time.perf_counter() - t0
    cpu = sum(c for _, c in results) / len(results)
    share = cpu * len(results) / (dt * args.workers)  # of the workers' cores' time, what they got
    print(f"{len(results)} images at {args.size} px, {args.workers} workers: {len(results) / dt:.2f} images/s "
          f"({dt / len(results) * 1000:.0f} ms/image wall) on {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"CPU time {cpu * 1000:.0f} ms/image: {args.workers / cpu:.2f} images/s on {args.workers} cores of their own")
    if share < 0.9:
        print(f"the CPU was shared: the workers got {share:.0%} of {args.workers} cores "
              f"(1-minute load average {load:.1f} when the timing started)")
    print(f"example caption: {results[0][0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
