"""Validation of the classical measurements on the shared datasets, as one report.

- vessels: F1 (Dice) and AUC against the first observer, DRIVE and CHASE_DB1 test images;
- optic disc: Drishti-GS1 (all 101 images): measured centre inside the experts' disc (> 127 of
  255 agreement), relative error of the diameter against the disc's equivalent diameter; CSDI
  (cataract photos whose disc the experts marked visible): centre inside the experts' disc box;
- laterality: every image of the Mexican set (eye in the file name) and the 10-class set (_L/_R)
  (``--per-set N`` for a seeded sample), for the shipped network and the classical cues: accuracy
  on the held-out test and val splits, the train split and all images and, at confidence levels,
  the share of images answered that confidently (coverage) and their accuracy;
- haze: Spearman rank correlation with CSDI's expert cataract severity score (0-10).

Run: ``python -m fundusgen.measure.validate DATA_ROOT [--only laterality] [--out report.json]``.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fundusgen.data.fundus import ImageError, apply_crop, load_mask, load_rgb, preprocess
from fundusgen.data.sources import read_source
from fundusgen.data.sources.errata import source_label
from fundusgen.measure.attributes import measure
from fundusgen.measure.disc import anatomy
from fundusgen.measure.vessels import classical_vessels, evaluate_on_records

SIZE = 512


def _prepared(record):
    rgb = load_rgb(record.image)
    image, fov, crop = preprocess(rgb, SIZE)
    return rgb, image, fov, crop


def validate_disc(root: Path) -> dict:
    rows = []
    for r in tqdm(read_source("drishti_gs1", root / "drishti_gs1"), desc="disc (Drishti-GS1)"):
        if "disc" not in r.masks:
            continue
        _, image, fov, crop = _prepared(r)
        truth = apply_crop(load_mask(r.masks["disc"]), crop, SIZE)
        m = measure(image, fov)
        x, y = int(m["disc"]["x"] * SIZE), int(m["disc"]["y"] * SIZE)
        d_true = 2 * np.sqrt(truth.sum() / np.pi)
        rows.append({"inside": bool(truth[min(y, SIZE - 1), min(x, SIZE - 1)]),
                     "diameter_error": abs(m["disc"]["diameter"] * SIZE - d_true) / max(d_true, 1.0)})
    return {"images": len(rows), "centre_inside_disc": round(float(np.mean([r["inside"] for r in rows])), 4),
            "diameter_relative_error_median": round(float(np.median([r["diameter_error"] for r in rows])), 4)}


def validate_disc_boxes(root: Path) -> dict:
    """CSDI: is the measured disc centre inside the experts' optic-disc box (original pixels)?"""
    hits = []
    records = [r for r in read_source("csdi_cataract", root / "csdi_cataract")
               if r.source_labels.get("optic_disc_clear") == "visible" and r.source_labels.get("optic_disc_x1")]
    for r in tqdm(records, desc="disc (CSDI boxes)"):
        try:
            rgb, image, fov, crop = _prepared(r)
        except ImageError:
            continue
        labels = r.source_labels
        to_stored = rgb.shape[1] / float(labels["original_image_width"])  # the stored photo may be downscaled
        x1, y1, x2, y2 = (float(labels[f"optic_disc_{k}"]) * to_stored for k in ("x1", "y1", "x2", "y2"))
        a = anatomy(image, fov)
        x = a.disc_x * crop.side / SIZE - crop.pad_x + crop.x0  # back to the stored photo's pixels
        y = a.disc_y * crop.side / SIZE - crop.pad_y + crop.y0
        hits.append(x1 <= x <= x2 and y1 <= y <= y2)
    return {"images": len(hits), "centre_inside_box": round(float(np.mean(hits)), 4)}


def validate_laterality(root: Path, per_set: int | None = None, seed: int = 0) -> dict:
    """Per set: the shipped laterality network (when its weights are present) and the classical
    cues, each by split (test and val are held out from the network's training; the splits are
    the patient-level ones `fundusgen prepare` assigns) and over all photos."""
    from fundusgen.data.splits import assign_split
    from fundusgen.measure.laterality import by_split, shipped_laterality_net
    methods = ("network", "classical") if shipped_laterality_net() is not None else ("classical",)
    out = {}
    for name in ("mex_dme_dr", "srahim_dr"):
        records = [r for r in read_source(name, root / name) if r.eye is not None]
        if per_set:
            records = random.Random(seed).sample(records, min(per_set, len(records)))
        rows = {m: [] for m in methods}
        for r in tqdm(records, desc=f"laterality ({name})"):
            try:
                _, image, fov, _ = _prepared(r)
            except ImageError:
                continue
            said = source_label(r.to_json(), "eye")  # before label errata
            for m in methods:
                a = anatomy(image, fov, laterality_method=m)
                rows[m].append((r.id, a.eye == r.eye.value, a.eye_confidence, assign_split(r), a.eye == said))
        out[name] = {}
        for m, got in rows.items():
            report = by_split([t[1] for t in got], [t[2] for t in got], [t[3] for t in got])
            if any(r.corrections.get("eye") for r in records):  # the same against the dataset's own labels
                report["source_labels"] = by_split([t[4] for t in got], [t[2] for t in got], [t[3] for t in got])
            # the surest disagreements are where to look for labels that are wrong
            report["surest_errors"] = [t[0] for t in sorted(got, key=lambda t: -t[2]) if not t[1]][:20]
            out[name][m] = report
    return out


def validate_haze(root: Path) -> dict:
    from scipy.stats import spearmanr
    scores, hazes = [], []
    for r in tqdm(read_source("csdi_cataract", root / "csdi_cataract"), desc="haze (CSDI)"):
        score = r.source_labels.get("score")
        if score in (None, ""):
            continue
        try:
            _, image, fov, _ = _prepared(r)
        except ImageError:
            continue
        scores.append(float(score))
        hazes.append(measure(image, fov)["haze"]["haze"])
    rho, p = spearmanr(scores, hazes)
    return {"images": len(scores), "spearman_rho": round(float(rho), 4), "p_value": float(p)}


def validate_vessels(root: Path) -> dict:
    return {name: evaluate_on_records([r for r in read_source(name, root / name)
                                       if r.source_labels.get("split") == "test"], classical_vessels)
            for name in ("drive", "chase_db1")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fundusgen.measure.validate", description=__doc__.split("\n")[0])
    p.add_argument("data_root", type=Path)
    p.add_argument("--per-set", type=int, help="images per laterality set (a seeded sample; default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("vessels", "disc", "laterality", "haze"), action="append")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    steps = {"vessels": lambda: validate_vessels(args.data_root),
             "disc": lambda: {"drishti_gs1": validate_disc(args.data_root), "csdi": validate_disc_boxes(args.data_root)},
             "laterality": lambda: validate_laterality(args.data_root, args.per_set, args.seed),
             "haze": lambda: validate_haze(args.data_root)}
    report = {k: fn() for k, fn in steps.items() if not args.only or k in args.only}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
