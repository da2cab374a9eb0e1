"""``fundusgen measure DIR``: measurements for every sample of a prepared folder, shard by shard.

Each input shard ``shards/fundus-NNNNNN.tar`` gives ``measure/fundus-NNNNNN.jsonl`` (one line
``{"key", "measurements"}`` per sample) and a summary ``measure/fundus-NNNNNN.json`` holding a
fingerprint of the input shard and the measurement version. Both are written atomically, the
summary last: a shard is done when its summary matches, so a killed run redoes only the shard it
was in, and ``--shard i/N`` lets N machines split the shards (shard k goes to k mod N).
"""
from __future__ import annotations

import functools
import io
import json
import multiprocessing as mp
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from fundusgen.data.shards import atomic_write_text
from fundusgen.errors import FundusgenError
from fundusgen.measure.attributes import VERSION, measure, weights_id


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise FundusgenError(f"--shard {text!r}: expected i/N, for example 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise FundusgenError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def input_shards(folder: Path, shard: tuple[int, int] = (0, 1)) -> list[Path]:
    tars = sorted((folder / "shards").glob("fundus-*.tar"))
    if not tars:
        raise FundusgenError(f"{folder}: no shards; run `fundusgen prepare` first")
    i, n = shard
    return [t for k, t in enumerate(tars) if k % n == i]


def read_tar(path: Path) -> Iterator[dict[str, bytes]]:
    """Raw samples of a shard: {'__key__', 'jpg'|'png', 'fov.png', 'json', ...} as bytes, in order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = Path(member.name).name.partition(".")
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    yield from samples.values()


def fingerprint(tar: Path, version: int | str) -> str:
    st = tar.stat()
    return f"{version}:{st.st_size}:{st.st_mtime_ns}"


def _one_thread() -> None:
    """Worker initialiser: the workers already fill the cores, so torch's and OpenCV's own threads
    would only contend."""
    import cv2
    import torch
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _measure_sample(sample: dict[str, bytes], vessel_method: str = "auto") -> dict:
    """Runs in a worker: decode one raw sample and measure it."""
    image = np.asarray(Image.open(io.BytesIO(sample.get("jpg") or sample["png"])).convert("RGB"))
    fov = np.asarray(Image.open(io.BytesIO(sample["fov.png"]))) > 0
    return {"key": sample["__key__"], "measurements": measure(image, fov, vessel_method=vessel_method)}


@dataclass
class StepResult:
    done: int
    skipped: int
    items: int
    out: Path


def shard_done(summary: Path, fp: str) -> bool:
    try:
        return json.loads(summary.read_text())["fingerprint"] == fp
    except (OSError, ValueError, KeyError):
        return False


def measure_folder(folder: str | Path, shard: tuple[int, int] = (0, 1), workers: int = 1,
                   progress: bool = True, vessel_method: str = "auto") -> StepResult:
    folder = Path(folder)
    out = folder / "measure"
    out.mkdir(exist_ok=True)
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    version = f"{VERSION}-{vessel_method}-{weights_id()}"  # measurements made another way, or by other weights, are redone
    todo = [t for t in input_shards(folder, shard)
            if not shard_done(out / f"{t.stem}.json", fingerprint(t, version))]
    skipped = len(input_shards(folder, shard)) - len(todo)
    bar = tqdm(desc="measure", unit="img", disable=not progress)
    items = 0
    pool = mp.get_context("spawn").Pool(workers, initializer=_one_thread) if workers > 1 and todo else None
    try:
        for tar in todo:
            samples = list(read_tar(tar))
            bar.total = (bar.total or 0) + len(samples)
            bar.refresh()
            work = functools.partial(_measure_sample, vessel_method=vessel_method)
            results = pool.imap(work, samples, chunksize=4) if pool else map(work, samples)
            lines = []
            for res in results:
                lines.append(json.dumps(res, sort_keys=True))
                bar.update(1)
            atomic_write_text(out / f"{tar.stem}.jsonl", "".join(line + "\n" for line in lines))
            atomic_write_text(out / f"{tar.stem}.json", json.dumps(
                {"fingerprint": fingerprint(tar, version), "count": len(lines)}))
            items += len(lines)
    finally:
        if pool:
            pool.terminate()
        bar.close()
    return StepResult(len(todo), skipped, items, out)


def read_measurements(folder: str | Path, shard_stem: str) -> dict[str, dict]:
    """key -> measurements of one shard ({} when it is not measured yet)."""
    path = Path(folder) / "measure" / f"{shard_stem}.jsonl"
    if not path.is_file():
        return {}
    return {row["key"]: row["measurements"] for row in map(json.loads, path.read_text().splitlines()) if row}
