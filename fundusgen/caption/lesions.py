"""When a caption may name the lesion cues `fundusgen measure` finds, and how well that works.

The cues (``fundusgen.measure.lesions``) are spot counts, not a lesion segmentation, and the
shared data has no lesion masks to check them against. What it has is diabetic-retinopathy
labels, so a count threshold is fitted as a specificity: the count that about one labelled
no-DR photograph in ten reaches (``FALSE_ALARMS``) on the training split, counting only spots
outside the peripapillary ring, where vessel fragments beside the disc pass for dark spots.
Then the same thresholds are checked on photographs the fit did not see.

Fitted and checked with ``python -m fundusgen.caption.lesions MEASURED_DIR`` on the training
split prepared at 256 px and measured (measurement version 5; the Mexican set held out), 2,187
photographs with a DR label: dark >= 11 on 9% of no-DR and 46% of DR photographs (AUC 0.78),
bright >= 11 on 8% and 23% (AUC 0.64). The counts depend on the resolution measured: refit for
another one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FALSE_ALARMS = 0.10
# spots outside the peripapillary ring a caption needs before it names a lesion; twice as many
# make them "numerous"
LESION_MIN_SPOTS = {"dark": 11, "bright": 11}


def spots_off_disc(cue: dict | None) -> int:
    """The spot count of one measured cue ({'count', 'regions'}) outside the peripapillary ring."""
    cue = cue or {}
    return int(cue.get("count", 0)) - int((cue.get("regions") or {}).get("peripapillary", 0))


def lesion_table(measured: str | Path):
    """One row per measured, usable photograph with a DR label: key, dataset, split, patient,
    dr (bool), dark and bright (spots off the disc)."""
    import pandas as pd
    from fundusgen.data.prepare import read_index
    from fundusgen.measure.run import read_measurements
    from fundusgen.vocab import has_dr
    measured = Path(measured)
    index = read_index(measured)
    rows = []
    for shard in sorted(index["shard"].unique()):
        for key, m in read_measurements(measured, Path(shard).stem).items():
            if (m.get("quality") or {}).get("grade") == "reject":
                continue
            lesions = m.get("lesions") or {}
            rows.append({"key": key, "dark": spots_off_disc(lesions.get("dark")),
                         "bright": spots_off_disc(lesions.get("bright"))})
    if not rows:
        raise ValueError(f"{measured}: nothing measured (run `fundusgen measure {measured}` first)")
    table = pd.DataFrame(rows).merge(index, on="key")
    labels = table.reindex(columns=["dr_grade", "dr_stage", "dr"]).to_dict("records")  # only what has_dr reads
    dr = pd.Series([has_dr(r) for r in labels], index=table.index, dtype=object)
    table = table.assign(dr=dr)[dr.notna()]
    return table.assign(dr=table["dr"].astype(bool))[["key", "dataset", "split", "patient", "dr", "dark", "bright"]]


def fit_thresholds(table, false_alarms: float = FALSE_ALARMS) -> dict[str, int]:
    """Per cue, the smallest count that at most ``false_alarms`` of the no-DR photographs reach."""
    import numpy as np
    normal = table[~table["dr"]]
    return {cue: int(np.floor(np.quantile(normal[cue], 1.0 - false_alarms))) + 1 for cue in ("dark", "bright")}


def check_thresholds(table, thresholds: dict[str, int]) -> dict:
    """AUC of each count for DR vs no DR, and at the thresholds the share of no-DR photographs
    (false alarms) and DR photographs (hits) a caption would name the lesion for."""
    from sklearn.metrics import roc_auc_score
    out = {"photographs": int(len(table)), "with_dr": int(table["dr"].sum())}
    both = table["dr"].nunique() == 2
    for cue, t in thresholds.items():
        said = table[cue] >= t
        out[cue] = {"threshold": t, "auc": round(float(roc_auc_score(table["dr"], table[cue])), 3) if both else None,
                    "false_alarms": round(float(said[~table["dr"]].mean()), 3) if (~table["dr"]).any() else None,
                    "hits": round(float(said[table["dr"]].mean()), 3) if table["dr"].any() else None}
    return out


def calibrate(measured: str | Path, false_alarms: float = FALSE_ALARMS) -> dict:
    """Fit on the training split; check on the held-out splits measured in the same folder, and,
    since a training-only folder has none, by a patient-level two-fold check (fit on one half of
    the patients, check on the other) beside the shipped thresholds on everything."""
    import zlib
    table = lesion_table(measured)
    train = table[table["split"] == "train"]
    report = {"measured": str(measured), "false_alarms_target": false_alarms,
              "fitted_on_train": fit_thresholds(train, false_alarms),
              "shipped": check_thresholds(table, LESION_MIN_SPOTS)}
    for split in sorted(set(table["split"]) - {"train"}):
        report[f"held_out_{split}"] = check_thresholds(table[table["split"] == split], report["fitted_on_train"])
    half = train["patient"].map(lambda p: zlib.crc32(str(p).encode()) % 2)
    report["two_fold"] = [check_thresholds(train[half != k], fit_thresholds(train[half == k], false_alarms))
                          for k in (0, 1)]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fundusgen.caption.lesions", description=__doc__.split("\n")[0])
    p.add_argument("measured", type=Path, help="a prepared folder measured by `fundusgen measure`")
    p.add_argument("--false-alarms", type=float, default=FALSE_ALARMS)
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    try:
        report = calibrate(args.measured, args.false_alarms)
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
