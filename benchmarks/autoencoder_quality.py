"""Autoencoder reconstruction quality on held-out real images: PSNR, SSIM, vessel fidelity.

    python benchmarks/autoencoder_quality.py [--model fundusgen/models/default] [--data data/prepared256]
                                             [--split test] [--n 100]
"""
import argparse
import itertools
import json
import os
import platform
import sys

import torch

from fundusgen.data.shards import iter_samples
from fundusgen.eval.reconstruction import evaluate_autoencoder
from fundusgen.model.autoencoder import FundusAutoencoder
from fundusgen.model.pipeline import DEFAULT_MODEL


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder holding autoencoder/")
    ap.add_argument("--data", default=os.environ.get("FUNDUSGEN_PREPARED", "data/prepared256"),
                    help="a prepared folder (fundusgen prepare) at the model's resolution")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=100, help="first n images of the split")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"{args.data}: no prepared folder (run `fundusgen prepare ... --size 256 --out {args.data}`)", file=sys.stderr)
        return 2
    ae = FundusAutoencoder.from_pretrained(os.path.join(args.model, "autoencoder")).float().eval()
    samples = ((s["image"], s["fov"]) for s in itertools.islice(iter_samples(args.data, args.split), args.n))
    report = evaluate_autoencoder(ae, samples, total=args.n)
    print(json.dumps({"model": args.model, "split": args.split, **report,
                      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
