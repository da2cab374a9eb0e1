"""Training data read from a prepared folder: decoded once into memory as uint8 tensors."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fundusgen.data import sources
from fundusgen.data.prepare import read_index
from fundusgen.data.shards import iter_samples
from fundusgen.errors import FundusgenError


def load_images(folder: str | Path, split: str = "train", progress: bool = True,
                exclude_datasets: list[str] | tuple[str, ...] = ()) -> tuple[torch.Tensor, list[dict]]:
    """All images of a split as uint8 (N, 3, S, S) plus their metadata, in index order, without
    the images of ``exclude_datasets`` (held out of training whole, as an external test set)."""
    folder = Path(folder)
    try:
        index = read_index(folder)
    except FileNotFoundError as e:
        raise FundusgenError(str(e)) from None
    # a known adapter's dataset may be absent (a copy packed without it); any other name is a typo
    unknown = sorted(set(exclude_datasets) - set(index["dataset"]) - set(sources.available()))
    if unknown:
        raise FundusgenError(f"{folder}: exclude_datasets names datasets it does not hold: {', '.join(unknown)} "
                             f"(it holds {', '.join(sorted(set(index['dataset'])))})")
    chosen = (index["split"] == split) & ~index["dataset"].isin(list(exclude_datasets))
    total = int(chosen.sum())
    if total == 0:
        raise FundusgenError(f"{folder}: no images in split {split!r}" + (" once exclude_datasets are left out" if exclude_datasets else ""))
    keys = set(index.loc[chosen, "key"])
    images, metas = [], []
    for s in tqdm(iter_samples(folder, split, keep=lambda m: m["key"] in keys), total=total,
                  desc=f"loading {split}", unit="img", disable=not progress):
        images.append(torch.from_numpy(s["image"].copy()).permute(2, 0, 1))
        metas.append(s["meta"])
    return torch.stack(images), metas


def to_model_range(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float() / 127.5 - 1.0


def resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Float images -> side ``size`` (area downsampling keeps thin vessels' average colour)."""
    if batch.shape[-1] == size:
        return batch
    mode = "area" if batch.shape[-1] > size else "bicubic"
    return F.interpolate(batch, size=(size, size), mode=mode)
