"""WebDataset shards: atomic writing and reading back of preprocessed fundus samples.

A sample is ``<key>.jpg|png`` (the square image), ``<key>.fov.png`` and any other masks
(``vessels``, ``disc``, ``cup``) as PNG, and ``<key>.json`` (record, crop, quality, split).
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from PIL import Image


def sample_key(dataset: str, record_id: str) -> str:
    """A tar-safe key: webdataset splits names at the first dot, so dots and slashes go."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", f"{dataset}__{record_id.replace('/', '__')}")


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_image(rgb: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    if fmt == "png":
        return encode_png(rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_file(path: Path, write) -> None:
    """``write(temporary_path)`` writes the file a library saves by name (safetensors, torch.save)
    beside ``path``; it is then renamed onto it: a killed writer never leaves a file that looks whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_shard(path: Path, samples: list[dict]) -> None:
    """Write samples (dicts with __key__ and byte/str/dict payloads) to a tar, atomically.

    mtime is fixed so the same samples always give the same bytes (resumed runs are identical).
    """
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0, user="fundusgen", group="fundusgen") as sink:
        for s in samples:
            sink.write(s)
    atomic_write_bytes(path, buf.getvalue())


def _decode(sample: dict) -> dict:
    out = {"key": sample["__key__"], "meta": json.loads(sample["json"])}
    for name, data in sample.items():
        if name in ("jpg", "png"):
            out["image"] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        elif name.endswith(".png"):
            out[name[:-4]] = np.asarray(Image.open(io.BytesIO(data))) > 0
    return out


def iter_samples(folder: str | Path, split: str | None = None, keep=None) -> Iterator[dict]:
    """Decoded samples (image uint8 RGB, masks bool, meta dict) from a prepared folder, in order;
    ``keep(meta) -> bool``, when given, skips the others before their images are decoded. Every
    process of a distributed run reads every shard (no node splitter): each takes what it needs."""
    tars = sorted(str(p) for p in (Path(folder) / "shards").glob("*.tar"))
    for tar in tars:
        for sample in wds.WebDataset(tar, shardshuffle=False, empty_check=False, nodesplitter=None):
            if split is not None or keep is not None:
                meta = json.loads(sample["json"])
                if (split is not None and meta["split"] != split) or (keep is not None and not keep(meta)):
                    continue
            yield _decode(sample)
