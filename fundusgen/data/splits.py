"""Patient-level, deterministic train/val/test splits.

A patient's split is a pure function of (patient key, seed): hashing instead of shuffling
keeps every patient's split stable when images or whole datasets are added later, and puts
all photographs of one patient on one side. Official test sets (DRIVE, CHASE_DB1, STARE,
Drishti-GS1 'test') stay test sets so published benchmarks remain comparable.

Copies of one photograph (``fundusgen.data.copies``) take one split: the first that any of them
gets on its own, in the order train, val, test. So finding copies only ever moves a photograph
into the training split, never out of it, and a model trained on an earlier preparation has still
never seen the held-out splits of a later one.
"""
from __future__ import annotations

import hashlib

from fundusgen.data.record import FundusRecord

SPLITS = ("train", "val", "test")
_OFFICIAL = {"training": "train", "train": "train", "test": "test"}


def _unit(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def official_split(source_labels: dict) -> str | None:
    """The split a dataset's publishers fixed (DRIVE's 'test' folder ...), or None."""
    return _OFFICIAL.get(str(source_labels.get("split", "")).lower())


def assign_split(record: FundusRecord, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> str:
    official = official_split(record.source_labels)
    if official:
        return official
    u = _unit(f"{seed}:{record.patient_key}")
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def merge_copies(splits: list[str], groups, official: list[bool]) -> list[str]:
    """Each record's split once copies share one (module docstring): ``groups`` labels the copies of
    one photograph alike; a record whose split its publishers fixed (``official``) keeps it."""
    first: dict = {}
    for split, group in zip(splits, groups):
        first[group] = min(first.get(group, split), split, key=SPLITS.index)
    return [split if fixed else first[group] for split, group, fixed in zip(splits, groups, official)]
