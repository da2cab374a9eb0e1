"""Lesion-cue thresholds: fitted as a false-alarm rate on no-DR photographs, checked on unseen ones."""
import json

import pandas as pd
import pytest

from fundusgen.caption.lesions import LESION_MIN_SPOTS, calibrate, main, spots_off_disc
from fundusgen.caption.template import describe


def _measured_folder(root, n=40):
    """n no-DR photographs with 0..n-1 dark spots off the disc (and 50 beside it, which must not
    count), n DR photographs with 10..n+9; bright spots equal for both."""
    rows, lines = [], []
    for i in range(2 * n):
        dr = i >= n
        key = f"x__{i}"
        dark = (i - n + 10) if dr else i
        rows.append({"key": key, "dataset": "x", "split": "train" if i % 4 else "test", "patient": f"p{i}",
                     "dr_grade": 2.0 if dr else 0.0, "dr": None, "shard": "fundus-000000.tar"})
        lesions = {"dark": {"count": dark + 50, "regions": {"peripapillary": 50, "macula": dark}},
                   "bright": {"count": 5, "regions": {"periphery": 5}}}
        lines.append(json.dumps({"key": key, "measurements": {"quality": {"grade": "good"}, "lesions": lesions}}))
    lines.append(json.dumps({"key": "x__rejected", "measurements": {"quality": {"grade": "reject"}, "lesions": {}}}))
    (root / "measure").mkdir(parents=True)
    (root / "measure" / "fundus-000000.jsonl").write_text("\n".join(lines) + "\n")
    pd.DataFrame(rows).to_parquet(root / "index.parquet")
    return root


def test_spots_beside_the_disc_do_not_count():
    assert spots_off_disc({"count": 14, "regions": {"peripapillary": 10, "macula": 4}}) == 4
    assert spots_off_disc(None) == 0 and spots_off_disc({"count": 3}) == 3


def test_thresholds_are_fitted_as_a_false_alarm_rate_and_checked_on_held_out_photographs(tmp_path):
    report = calibrate(_measured_folder(tmp_path), false_alarms=0.10)
    train_normal = [i for i in range(40) if i % 4]  # the no-DR training photographs' dark counts
    t = report["fitted_on_train"]["dark"]
    assert sum(c >= t for c in train_normal) / len(train_normal) <= 0.10 < sum(c >= t - 1 for c in train_normal) / len(train_normal)
    held = report["held_out_test"]
    assert held["photographs"] == 20 and held["dark"]["threshold"] == t
    assert held["dark"]["auc"] > 0.6 and 0 < held["dark"]["hits"] <= 1
    assert held["bright"]["auc"] == pytest.approx(0.5)  # equal counts rank nothing
    assert len(report["two_fold"]) == 2 and report["shipped"]["dark"]["threshold"] == LESION_MIN_SPOTS["dark"]


def test_an_unmeasured_folder_is_one_error_line(tmp_path, capsys):
    pd.DataFrame([{"key": "k", "dataset": "x", "split": "train", "patient": "p", "dr_grade": 0.0, "dr": None,
                   "shard": "fundus-000000.tar"}]).to_parquet(tmp_path / "index.parquet")
    assert main([str(tmp_path)]) == 2
    assert "nothing measured" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2


def test_captions_name_lesions_only_at_the_calibrated_counts():
    def caption(dark):
        m = {"quality": {"grade": "good"}, "lesions": {"dark": {"count": dark, "regions": {"macula": dark}}}}
        return describe({"dr_grade": 2, "measurements": m}, 0).lower()
    below, at = caption(LESION_MIN_SPOTS["dark"] - 1), caption(LESION_MIN_SPOTS["dark"])
    assert "at the macula" not in below and "at the macula" in at
    assert "numerous" in caption(2 * LESION_MIN_SPOTS["dark"]) or "many" in caption(2 * LESION_MIN_SPOTS["dark"])


def test_photographs_labelled_by_dr_stage_alone_count_as_labelled(tmp_path):
    from fundusgen.caption.lesions import lesion_table
    root = _measured_folder(tmp_path, n=4)
    index = pd.read_parquet(root / "index.parquet")
    index["dr_stage"] = [None] * len(index)
    index.loc[0, ["dr_grade", "dr_stage"]] = [float("nan"), "npdr"]  # Mexican-style: a stage, no grade
    index.loc[1, ["dr_grade", "dr_stage"]] = [float("nan"), "none"]
    index.loc[2, ["dr_grade", "dr"]] = [float("nan"), None]  # nothing known: left out
    index.to_parquet(root / "index.parquet")
    table = lesion_table(root).set_index("key")["dr"]
    assert bool(table["x__0"]) is True
    assert not table["x__1"] and "x__2" not in table.index and len(table) == 7


def test_has_dr_reads_grade_then_stage_then_flag():
    from fundusgen.vocab import DRStage, has_dr
    assert has_dr({"dr_grade": 0, "dr": True}) is False and has_dr({"dr_grade": 3.0}) is True
    assert has_dr({"dr_grade": float("nan"), "dr_stage": "PDR"}) is True
    assert has_dr({"dr_stage": DRStage.NONE, "dr": True}) is False
    assert has_dr({"dr": True}) is True and has_dr({"dr": float("nan")}) is None and has_dr({}) is None
