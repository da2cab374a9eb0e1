"""Vessel geometry of real and synthetic images: density, calibre, tortuosity and fractal
dimension over the field of view, from the project's vessel network (the measurement step's
``vessel_mask``), and how far apart the two distributions are.

Distances: the 1-Wasserstein distance (in the metric's own unit, so it reads as "how far the
synthetic values sit from the real ones on average") and the two-sample Kolmogorov-Smirnov
statistic with its p-value (scipy), per metric and per real set.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import ks_2samp, wasserstein_distance
from tqdm import tqdm

METRICS = ("density", "calibre", "tortuosity", "fractal_dimension")
UNITS = {"density": "share of the FOV", "calibre": "px at a 512 px FOV", "tortuosity": "arc / chord",
         "fractal_dimension": "box-counting"}


def vessel_geometry(rgb: np.ndarray) -> dict:
    """The four metrics over the whole FOV of one image (None where a metric is undefined)."""
    from fundusgen.data.fundus import detect_fov
    from fundusgen.measure.attributes import vessel_mask
    from fundusgen.measure.vessels import regional_morphology
    fov = detect_fov(rgb)
    if fov.sum() < 100:
        return {k: None for k in METRICS} | {"method": None}
    mask, method = vessel_mask(rgb, fov)
    whole = regional_morphology(mask, fov, {}).get("all", {})
    return {k: whole.get(k) for k in METRICS} | {"method": method}


def version() -> str:
    """Part of the cache key of vessel geometry: the code that measures it, the vessel network's
    weights, and whether it runs in bf16 here."""
    from fundusgen.measure import attributes, vessels
    return attributes.digest([vessels.__file__, attributes.__file__, __file__], attributes.weights_id(),
                             attributes.precision_id())


def geometry_of(ids: list[str], load: Callable[[str], np.ndarray], *, desc: str, progress: bool = True) -> list[dict]:
    return [vessel_geometry(load(i)) for i in tqdm(ids, desc=desc, unit="img", disable=not progress)]


def _values(rows: list[dict], metric: str) -> np.ndarray:
    return np.array([r[metric] for r in rows if r.get(metric) is not None], dtype=float)


def summary(values: np.ndarray) -> dict:
    if not len(values):
        return {"n": 0}
    return {"n": int(len(values)), "mean": round(float(values.mean()), 4), "sd": round(float(values.std()), 4),
            "median": round(float(np.median(values)), 4)}


def compare_geometry(real: dict[str, list[dict]], synth: list[dict]) -> dict:
    """Per metric: the synthetic summary, and per real set its summary and distances to synthetic."""
    out = {}
    for metric in METRICS:
        s = _values(synth, metric)
        entry = {"unit": UNITS[metric], "synthetic": summary(s), "real": {}}
        for name, rows in real.items():
            r = _values(rows, metric)
            d = {"summary": summary(r)}
            if len(r) >= 2 and len(s) >= 2:
                ks = ks_2samp(r, s)
                d |= {"wasserstein": round(float(wasserstein_distance(r, s)), 4),
                      "ks": round(float(ks.statistic), 4), "ks_p": float(ks.pvalue)}
            entry["real"][name] = d
        out[metric] = entry
    return out


def series(real: dict[str, list[dict]], synth: list[dict], metric: str) -> dict[str, np.ndarray]:
    return {"synthetic": _values(synth, metric), **{name: _values(rows, metric) for name, rows in real.items()}}
