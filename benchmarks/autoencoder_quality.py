"""Autoencoder reconstruction quality on held-out real images: PSNR, SSIM, vessel fidelity.

    python benchmarks/autoencoder_quality.py [--model fundusgen/models/default] [--data data/prepared512]
                                             [--split test] [--n 100] [--resolution 256]
                                             [--realism 300 --realism-split val]

The photographs are resized (area, as the trainer does) to the side the model draws, its
model_index.json ``resolution``, unless ``--resolution`` says otherwise (0: as prepared).
``--realism N`` adds the realism floor the autoencoder sets: N photographs of ``--realism-split`` and
their reconstructions, FID / KID / precision / recall against ``--split`` (its Inception features
cached as ``fundusgen evaluate`` caches them, and the N photographs' too, so the next decoder scored on
them runs only its reconstructions): a model drawing through this decoder scores no better.
"""
import argparse
import itertools
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fundusgen.data.shards import iter_samples
from fundusgen.eval.features import default_cache_dir, folder_features
from fundusgen.eval.reconstruction import evaluate_autoencoder, reconstruction_realism
from fundusgen.model.autoencoder import FundusAutoencoder
from fundusgen.model.pipeline import DEFAULT_MODEL, MODEL_INDEX
from fundusgen.train.autoencoder import resize_uint8


def at_side(rgb: np.ndarray, fov: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A prepared photograph and its field-of-view mask at ``side`` px (area for the image, nearest for the mask)."""
    if not side or rgb.shape[0] == side:
        return rgb, fov
    small = resize_uint8(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None], side)[0].permute(1, 2, 0).numpy()
    return small, np.asarray(Image.fromarray(fov.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)) > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder holding autoencoder/")
    ap.add_argument("--autoencoder", default=None,
                    help="an autoencoder folder to score instead of the model's (a training run's final/ or step_N/)")
    ap.add_argument("--data", default=os.environ.get("FUNDUSGEN_PREPARED", "data/prepared512"),
                    help="a prepared folder (fundusgen prepare)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=100, help="first n images of the split")
    ap.add_argument("--resolution", type=int, default=None,
                    help="resize the photographs to this side first (default: the model's resolution; 0: as prepared)")
    ap.add_argument("--realism", type=int, default=0, metavar="N",
                    help="also score N photographs of --realism-split and their reconstructions against --split")
    ap.add_argument("--realism-split", default="val")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"{args.data}: no prepared folder (run `fundusgen prepare ... --size 256 --out {args.data}`)", file=sys.stderr)
        return 2
    folder = args.autoencoder or os.path.join(args.model, "autoencoder")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        print(f"{folder}: not an autoencoder folder (no config.json)", file=sys.stderr)
        return 2
    try:
        ae = FundusAutoencoder.from_pretrained(folder).float().eval()
    except (OSError, ValueError) as e:
        print(f"{folder}: not an autoencoder folder ({str(e).splitlines()[0][:160]})", file=sys.stderr)
        return 2
    side = args.resolution
    if side is None:
        index = os.path.join(args.model, MODEL_INDEX)
        side = json.loads(Path(index).read_text()).get("resolution", 0) if os.path.isfile(index) else 0
    samples = (at_side(s["image"], s["fov"], side)
               for s in itertools.islice(iter_samples(args.data, args.split), args.n))
    report = evaluate_autoencoder(ae, samples, total=args.n) if args.n else {}
    if args.realism:
        photographs = [at_side(s["image"], s["fov"], side)[0]
                       for s in itertools.islice(iter_samples(args.data, args.realism_split), args.realism)]
        real = folder_features(args.data, split=args.split).features
        report["realism"] = {"against": f"{args.split} ({len(real)} photographs, as prepared)",
                             **reconstruction_realism(ae, photographs, real, cache_dir=default_cache_dir())}
    print(json.dumps({"model": args.model, "autoencoder": args.autoencoder or "the model's", "split": args.split,
                      "resolution": side or "as prepared", **report,
                      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
