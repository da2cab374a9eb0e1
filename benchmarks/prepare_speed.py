"""Throughput and peak memory of ``fundusgen prepare`` on the Mexican DME/DR set.

    python benchmarks/prepare_speed.py [--data ../shared/data] [--size 512] [--workers N]

Runs the real command line in a fresh output folder and prints images per second (all
records, from start to exit, worker start-up included) and the peak resident memory of the
whole process tree (the command and its workers, summed; polled from /proc). Target: at
least 30 images/s at 512 px on a 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from machine import cpu_name


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, now."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        parent[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(frontier)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def main() -> int:
    default = os.environ.get("FUNDUSGEN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(default), help="folder holding mex_dme_dr/")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    source = args.data / "mex_dme_dr"
    if not source.is_dir():
        print(f"prepare_speed: error: {source}: Mexican set not found (set FUNDUSGEN_DATA or --data)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="fundusgen-bench-") as out:
        cmd = [sys.executable, "-m", "fundusgen.cli", "prepare", "--source", f"mex_dme_dr={source}", "--out", out,
               "--size", str(args.size), "--workers", str(args.workers)]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"prepare_speed: error: fundusgen prepare exited with {proc.returncode}", file=sys.stderr)
            return 1
        kept = len(pd.read_parquet(Path(out) / "index.parquet"))
        rejected = len(pd.read_csv(Path(out) / "rejects.csv"))
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux

    images = kept + rejected
    print(f"machine: {os.cpu_count()} CPU cores ({cpu_name()}), 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; {args.workers} workers, {args.size} px")
    print(f"images: {images} ({kept} kept, {rejected} rejected) in {seconds:.1f} s")
    print(f"throughput: {images / seconds:.1f} images/s")
    print(f"peak memory: {peak / 2**20:.0f} MiB RSS for the process tree "
          f"(largest single process {largest / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
