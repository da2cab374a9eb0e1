"""Held-out flow loss: the training objective on photographs the model never saw.

For ``n`` seeded records of a prepared folder's held-out split, each image is encoded by the model's
own autoencoder at the resolution asked for (posterior mean, normalised, as the training cache does)
and captioned as training captions it (``fundusgen.train.cache.captions_for``, first variant, with the
image's measurements when the folder was measured). At each time t of a fixed grid it is noised with
noise seeded by the record's key and t, x_t = (1 - t) x_0 + t eps, and the unweighted flow loss

    L(t) = || v_theta(x_t, t, c) - (eps - x_0) ||^2 / (C h w)

is averaged over the records. Same records, noise and times for every model, so two models (or one
model at two resolutions) are compared without the sampling noise of a generated set: a
minutes-long check beside the protocol's hour. Low t is detail, high t is layout; a loss at 512 px is
not comparable to one at 256 px in absolute terms (more, smaller cells of the same image), only to
another model's at 512 px.

    python -m fundusgen.eval.flow_loss --prepared data/prepared512 --model fundusgen/models/default \\
        --model runs/cpu512/model -n 200
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from fundusgen.errors import FundusgenError

TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _noise(key: str, t: float, shape, seed: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{key}:{t:g}".encode()).digest()[:8]
    return torch.randn(shape, generator=torch.Generator().manual_seed(int.from_bytes(digest, "big") >> 1))


def held_out_records(prepared: Path, n: int, split: str = "test", seed: int = 0) -> list[str]:
    """The keys of ``n`` seeded random records of ``split`` (all of them when it holds fewer)."""
    from fundusgen.data.prepare import read_index
    try:
        index = read_index(prepared)
    except FileNotFoundError as e:
        raise FundusgenError(str(e)) from None
    held = index[index["split"] == split]
    if held.empty:
        raise FundusgenError(f"{prepared}: no records in split {split!r}")
    return sorted(held.sample(n=min(n, len(held)), random_state=seed)["key"])


@torch.no_grad()
def held_out_loss(pipe, prepared: str | Path, n: int = 200, split: str = "test", resolution: int | None = None,
                  times: tuple[float, ...] = TIMES, seed: int = 0, batch: int = 8, progress: bool = True) -> dict:
    """The flow loss of ``pipe`` (a :class:`fundusgen.model.pipeline.FundusGen`) on held-out records:
    ``{"loss", "loss_by_time", "times", "n", "resolution", ...}`` (see the module's docstring)."""
    from fundusgen.data.shards import iter_samples
    from fundusgen.train.cache import caption_sources, captions_for
    from fundusgen.train.data import resize, to_model_range
    prepared = Path(prepared)
    if n < 1:
        raise FundusgenError(f"-n {n}: expected at least 1 record")
    if not times or any(not 0.0 < t < 1.0 for t in times):
        raise FundusgenError(f"times must lie strictly between 0 and 1 (got {list(times)})")
    resolution = resolution or pipe.config.get("resolution", 256)
    f = pipe.autoencoder.downsampling_factor * pipe.denoiser.config.patch_size
    if resolution % f or not f <= resolution <= 2048:
        raise FundusgenError(f"resolution must be a multiple of {f} up to 2048 (got {resolution})")
    keys = set(held_out_records(prepared, n, split, seed))
    measured, _ = caption_sources(prepared)
    ae, dit = pipe.autoencoder, pipe.denoiser
    dev, dtype = pipe.device, next(dit.parameters()).dtype
    sums = torch.zeros(len(times), dtype=torch.float64)
    seen = 0

    def flush(images, metas):
        x = resize(to_model_range(torch.stack(images)), resolution).to(dev, dtype)
        x0 = ae.normalise(ae.encode(x).mean)
        states, mask = pipe.text_encoder.encode([captions_for(m, 1, measured.get(m["key"]))[0][0] for m in metas])
        states, mask = states.to(dev, dtype), mask.to(dev)
        for j, t in enumerate(times):
            eps = torch.stack([_noise(m["key"], t, x0.shape[1:], seed) for m in metas]).to(dev, dtype)
            tt = torch.full((len(metas),), t, device=dev, dtype=dtype)
            v = dit((1 - t) * x0 + t * eps, tt, states, mask)
            sums[j] += ((v.float() - (eps - x0).float()) ** 2).mean(dim=(1, 2, 3)).sum().item()

    images, metas = [], []
    for sample in tqdm(iter_samples(prepared, split, keep=lambda m: m["key"] in keys), total=len(keys),
                       desc=f"flow loss {resolution}px", unit="img", disable=not progress):
        images.append(torch.from_numpy(sample["image"].copy()).permute(2, 0, 1))
        metas.append(sample["meta"])
        if len(images) == batch:
            flush(images, metas)
            seen += len(images)
            images, metas = [], []
    if images:
        flush(images, metas)
        seen += len(images)
    if seen == 0:
        raise FundusgenError(f"{prepared}: none of the chosen {split} records could be read from its shards")
    by_time = (sums / seen).tolist()
    return {"model": pipe.name, "resolution": resolution, "split": split, "n": seen, "seed": seed,
            "times": list(times), "loss_by_time": by_time, "loss": sum(by_time) / len(by_time)}


def markdown_table(rows: list[dict]) -> str:
    times = rows[0]["times"]
    head = "| model | resolution | records | mean | " + " | ".join(f"t = {t:g}" for t in times) + " |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(times)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['resolution']} | {r['n']} | {r['loss']:.4f} | "
                     + " | ".join(f"{v:.4f}" for v in r["loss_by_time"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fundusgen.model.pipeline import FundusGen
    p = argparse.ArgumentParser(prog="python -m fundusgen.eval.flow_loss", description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", required=True, help="a prepared folder with a held-out split")
    p.add_argument("--model", action="append", help="a model folder (repeat to compare; default: the shipped one)")
    p.add_argument("-n", type=int, default=200, help="held-out records (default 200)")
    p.add_argument("--split", default="test", help="the split to score (default test)")
    p.add_argument("--resolution", type=int, help="score every model at this side (default: each model's own)")
    p.add_argument("--seed", type=int, default=0, help="which records, and their noise (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        rows = []
        for model in args.model or [None]:
            pipe = FundusGen.from_pretrained(model)
            rows.append(held_out_loss(pipe, Path(args.prepared), n=args.n, split=args.split,
                                      resolution=args.resolution, seed=args.seed, progress=not args.quiet))
            rows[-1]["path"] = str(model) if model else "shipped default"
        if args.json:
            from fundusgen.data.shards import atomic_write_text
            atomic_write_text(Path(args.json), json.dumps(rows, indent=2))
    except FundusgenError as e:
        print(f"flow_loss: error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
