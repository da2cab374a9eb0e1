"""``fundusgen prepare``: native datasets -> square FOV-cropped shards, an index, splits, rejects.

Work is cut into shards of a fixed number of records in a fixed order. A shard is finished
when its summary file (``shards/<name>.json``) exists; both the tar and the summary are written
atomically, so after a kill a restart redoes only unfinished shards, and the final index and
rejects are rebuilt from the summaries: a resumed run ends byte-identical to an uninterrupted one.

Before any shard, copies of one photograph across records are found (``fundusgen.data.copies``:
their signatures are cached in ``signatures.npz``, keyed by file, size and time) and given one
split (``fundusgen.data.splits``); ``copies.csv`` lists every pair found and where it landed.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from fundusgen.data import copies, fundus, quality, shards
from fundusgen.data.record import FundusRecord
from fundusgen.data.sources import Problem, SourceError, read_source
from fundusgen.data.splits import assign_split, merge_copies, official_split

VERSION = 1  # bump when preprocessing changes, so old shards are redone


@dataclass
class PrepareConfig:
    sources: list[tuple[str, str, dict]]          # (adapter name, root folder, adapter options)
    out: Path
    size: int = 512
    shard_size: int = 1000
    workers: int = 2
    image_format: str = "jpg"
    jpeg_quality: int = 95
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    copy_correlation: float = copies.COPY_CORRELATION  # above 1: only adapters' copy groups join records
    errata: list[str] | None = None  # label errata files; None: the shipped ones (sources/errata.csv)


@dataclass
class PrepareResult:
    kept: int
    rejected: int
    shards_written: int
    shards_skipped: int
    failed_sources: list[str] = field(default_factory=list)
    copy_pairs: int = 0          # pairs of records found to be copies of one photograph
    moved_by_copies: int = 0     # records whose split their copies changed


def _process(args) -> dict:
    """One record -> {'sample', 'row'} or {'reject'}. Runs in a worker process."""
    record_json, split, size, fmt, jpeg_quality = args
    record = FundusRecord.from_json(record_json)
    try:
        rgb = fundus.load_rgb(record.image)
        image, fov, crop = fundus.preprocess(rgb, size)
    except fundus.ImageError as e:
        return {"reject": {"path": record.image, "dataset": record.dataset, "id": record.id, "reason": str(e)}}
    q = quality.assess(image, fov)
    if q.reason:
        return {"reject": {"path": record.image, "dataset": record.dataset, "id": record.id, "reason": q.reason}}
    key = shards.sample_key(record.dataset, record.id)
    meta = {"key": key, "split": split, "size": size, "record": record.to_json(), "crop": crop.to_json(),
            "quality": q.to_json()}
    sample = {"__key__": key, fmt: shards.encode_image(image, fmt, jpeg_quality),
              "fov.png": shards.encode_png(fov.astype("uint8") * 255)}
    for kind, path in record.masks.items():
        if kind == "fov":
            continue
        try:
            mask = fundus.load_mask(path)
        except (OSError, ValueError) as e:
            meta.setdefault("mask_problems", {})[kind] = f"{path}: {e}"
            continue
        if mask.shape != rgb.shape[:2]:
            meta.setdefault("mask_problems", {})[kind] = f"{path}: size {mask.shape} differs from image {rgb.shape[:2]}"
            continue
        sample[f"{kind}.png"] = shards.encode_png(fundus.apply_crop(mask, crop, size).astype("uint8") * 255)
    sample["json"] = json.dumps(meta, sort_keys=True)
    rec = record.to_json()
    row = {"key": key, "dataset": record.dataset, "id": record.id, "patient": record.patient_key, "split": split,
           **{k: rec[k] for k in ("eye", "dr", "dr_grade", "dr_stage", "dme", "glaucoma", "cataract",
                                  "cataract_severity", "amd", "hypertension", "myopia", "other", "cdr")},
           "has_description": record.description is not None,
           "corrected": ",".join(sorted(record.corrections)),  # labels the errata changed (sources.errata)
           "masks": ",".join(sorted(k for k in record.masks if f"{k}.png" in sample or k == "fov")),
           "quality": q.score, "quality_grade": q.grade.value, "source_path": record.image}
    return {"sample": sample, "row": row}


def _fingerprint(cfg: PrepareConfig, chunk: list[dict]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([VERSION, cfg.size, cfg.image_format, cfg.jpeg_quality], sort_keys=True).encode())
    for item in chunk:
        p = Path(item["record"]["image"])
        stat = p.stat() if p.exists() else None
        h.update(json.dumps([item, stat.st_size if stat else None, stat.st_mtime_ns if stat else None],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()


def collect_records(cfg: PrepareConfig, problems: list[dict], failed: list[str]) -> list[dict]:
    """All records of all sources, with their split, in a stable order."""
    from fundusgen.data.sources.errata import SHIPPED, load_errata
    load_errata([SHIPPED] if cfg.errata is None else cfg.errata)  # a malformed errata file stops here, naming its row
    items = []
    for name, root, options in cfg.sources:
        found: list[Problem] = []
        try:
            records = read_source(name, root, found.append, errata=cfg.errata, **options)
        except (SourceError, OSError) as e:
            # an unreadable folder or label file surfaces as OSError from deep in an adapter
            line = str(e) if isinstance(e, SourceError) else f"{e.filename or root}: cannot read ({e.strerror})"
            failed.append(line)
            problems.append({"path": str(root), "dataset": name, "id": "", "reason": line})
            continue
        problems += [{"path": p.path, "dataset": name, "id": "", "reason": p.reason} for p in found]
        for r in records:
            items.append({"record": r.to_json(), "split": assign_split(r, cfg.split_fractions, cfg.seed)})
    items.sort(key=lambda it: (it["record"]["dataset"], it["record"]["id"]))
    return items


def _signatures(items: list[dict], out: Path, workers: int, progress: bool) -> np.ndarray:
    """Each record's copy signature, from ``out/signatures.npz`` where its file is unchanged.
    An unreadable image gets a zero signature (it matches nothing; its shard rejects it)."""
    paths = [it["record"]["image"] for it in items]
    keys = []
    for p in paths:
        try:
            st = Path(p).stat()
            keys.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            keys.append(f"{p}|missing")
    cache_path = out / "signatures.npz"
    cached: dict = {}
    try:
        with np.load(cache_path) as z:
            cached = dict(zip(z["keys"].tolist(), z["signatures"].astype(np.float32)))
    except (OSError, ValueError, KeyError):
        pass
    todo = [i for i, k in enumerate(keys) if k not in cached]
    bar = tqdm(total=len(todo), unit="img", desc="copy signatures", disable=not progress or not todo)
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, workers)) if workers > 1 and len(todo) > 64 else _Serial() as pool:
        for i, sig in zip(todo, pool.imap(_signature_of, [paths[i] for i in todo], chunksize=16)):
            cached[keys[i]] = sig.astype(np.float16).astype(np.float32)  # as the cache stores it: a re-run decides alike
            bar.update(1)
    bar.close()
    signatures = np.stack([cached[k] for k in keys]) if keys else np.zeros((0, copies.SIDE, copies.SIDE), np.float32)
    if todo:
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), signatures=signatures.astype(np.float16))  # 2 KB a record
        shards.atomic_write_bytes(cache_path, buf.getvalue())
    return signatures


def _signature_of(path: str) -> np.ndarray:
    try:
        return copies.signature(fundus.load_rgb(path))
    except (fundus.ImageError, OSError, ValueError):
        return np.zeros((copies.SIDE, copies.SIDE), np.float32)


def join_copies(items: list[dict], signatures, threshold: float) -> tuple[list[dict], int]:
    """Give the copies among ``items`` one split (in place); return the pairs found, for copies.csv,
    and how many records changed split. Copies are signature pairs at or above ``threshold`` and
    records of one dataset that share an adapter's ``source_labels["copy_group"]``."""
    found = {(i, j): round(c, 4) for i, j, c in copies.copy_pairs(signatures, threshold)}
    by_group: dict = {}
    for i, it in enumerate(items):
        group = it["record"].get("source_labels", {}).get("copy_group")
        if group is not None:
            by_group.setdefault((it["record"]["dataset"], group), []).append(i)
    for members in by_group.values():
        for j in members[1:]:
            found.setdefault((members[0], j), "copy_group")
    groups = copies.copy_groups(len(items), list(found))
    before = [it["split"] for it in items]
    official = [official_split(it["record"].get("source_labels", {})) is not None for it in items]
    for it, split in zip(items, merge_copies(before, groups, official)):
        it["split"] = split
    name = lambda i: f"{items[i]['record']['dataset']}/{items[i]['record']['id']}"  # noqa: E731
    pairs = [{"a": name(i), "b": name(j), "correlation": c, "split_a": items[i]["split"], "split_b": items[j]["split"],
              "moved": before[i] != items[i]["split"] or before[j] != items[j]["split"]}
             for (i, j), c in sorted(found.items())]
    return pairs, sum(b != it["split"] for b, it in zip(before, items))


def prepare(cfg: PrepareConfig, progress: bool = True) -> PrepareResult:
    out = Path(cfg.out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".*.tmp"), *(out / "shards").glob(".*.tmp")]:
        stale.unlink()  # left by a killed run; never visible as an output
    problems: list[dict] = []
    failed: list[str] = []
    items = collect_records(cfg, problems, failed)
    signatures = (_signatures(items, out, cfg.workers, progress) if cfg.copy_correlation <= 1  # else: not needed
                  else np.zeros((len(items), copies.SIDE, copies.SIDE), np.float32))
    pairs, moved = join_copies(items, signatures, cfg.copy_correlation)
    shards.atomic_write_text(out / "copies.csv", pd.DataFrame(
        pairs, columns=["a", "b", "correlation", "split_a", "split_b", "moved"]).to_csv(index=False))
    chunks = [items[i:i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    todo = []
    for i, chunk in enumerate(chunks):
        summary = out / "shards" / f"fundus-{i:06d}.json"
        fp = _fingerprint(cfg, chunk)
        if summary.exists() and (out / "shards" / f"fundus-{i:06d}.tar").exists():
            try:
                if json.loads(summary.read_text())["fingerprint"] == fp:
                    continue
            except (ValueError, KeyError):
                pass
        todo.append((i, chunk, fp))
    for stale in sorted((out / "shards").glob("fundus-*.tar")):
        if int(stale.stem.split("-")[1]) >= len(chunks):
            stale.unlink()
            stale.with_suffix(".json").unlink(missing_ok=True)
    total = sum(len(c) for _, c, _ in todo)
    bar = tqdm(total=total, unit="img", desc="prepare", disable=not progress or total == 0)
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, cfg.workers)) if cfg.workers > 1 and total else _Serial() as pool:
        for i, chunk, fp in todo:
            args = [(it["record"], it["split"], cfg.size, cfg.image_format, cfg.jpeg_quality) for it in chunk]
            samples, rows, rejects = [], [], []
            for res in pool.imap(_process, args, chunksize=8):
                if "reject" in res:
                    rejects.append(res["reject"])
                else:
                    samples.append(res["sample"])
                    rows.append(res["row"])
                bar.update(1)
            name = f"fundus-{i:06d}"
            for row in rows:
                row["shard"] = f"{name}.tar"
            shards.write_shard(out / "shards" / f"{name}.tar", samples)
            shards.atomic_write_text(out / "shards" / f"{name}.json",
                                     json.dumps({"fingerprint": fp, "rows": rows, "rejects": rejects}, sort_keys=True))
    bar.close()
    rows, rejects = [], list(problems)
    for i in range(len(chunks)):
        summary = json.loads((out / "shards" / f"fundus-{i:06d}.json").read_text())
        rows += summary["rows"]
        rejects += summary["rejects"]
    _write_table(out / "index.parquet", pd.DataFrame(rows, columns=_INDEX_COLUMNS if not rows else None))
    shards.atomic_write_text(out / "rejects.csv",
                             pd.DataFrame(rejects, columns=["path", "dataset", "id", "reason"]).to_csv(index=False))
    result = PrepareResult(len(rows), len(rejects), len(todo), len(chunks) - len(todo), failed, len(pairs), moved)
    summary = {"config": {**asdict(cfg), "out": str(cfg.out)}, "version": VERSION, **asdict(result),
               "per_dataset": pd.DataFrame(rows).groupby("dataset").size().to_dict() if rows else {},
               "per_split": pd.DataFrame(rows).groupby("split").size().to_dict() if rows else {},
               "copies": {"pairs": len(pairs), "pairs_across_splits": sum(p["split_a"] != p["split_b"] for p in pairs),
                          "records_moved_to_an_earlier_split": moved}}
    shards.atomic_write_text(out / "prepare.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
    return result


_INDEX_COLUMNS = ["key", "dataset", "id", "patient", "split", "shard"]


def _write_table(path: Path, df: pd.DataFrame) -> None:
    import io
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    shards.atomic_write_bytes(path, buf.getvalue())


def read_index(folder: str | Path) -> pd.DataFrame:
    path = Path(folder) / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index; run `fundusgen prepare` first")
    return pd.read_parquet(path)


class _Serial:
    """The Pool interface, in-process (one worker, or nothing to do)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, args, chunksize=1):
        return map(fn, args)
