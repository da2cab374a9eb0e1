import json

import pandas as pd

from fundusgen.caption.purify import claims, contradictions, expert_severity, judge
from fundusgen.caption.template import describe
from fundusgen.cli import main
from tests.measure_fixtures import write_prepared


def test_claims_are_read_back_from_template_captions():
    c = claims(describe({"eye": "right", "dr_grade": 2, "dme": True}, 0))
    assert c["eye"] == "right" and c["dr"] is True and c["dme"] is True
    assert claims("No diabetic retinopathy, no microaneurysms or haemorrhages.") == {"dr": False}
    assert claims("Proliferative diabetic retinopathy with neovascularisation.")["dr_stage"] == "pdr"
    assert claims("Mild non-proliferative diabetic retinopathy")["dr_grade"] == 1
    assert claims("Dense cataract: the fundus is very hazy")["cataract_severity"] == "severe"


def test_template_captions_never_contradict_their_labels():
    cases = [{"eye": "left", "dr_grade": g, "dme": g > 1, "glaucoma": False} for g in range(5)]
    cases += [{"cataract_severity": s, "cataract": s != "none"} for s in ("none", "mild", "moderate", "severe")]
    cases += [{"dr_stage": "npdr", "dr": True, "dme": False}, {"glaucoma": True, "cdr": 0.8}]
    for labels in cases:
        for seed in range(8):
            assert contradictions(claims(describe(labels, seed)), labels) == [], (labels, seed)


def test_contradictions_and_low_quality_are_dropped_disagreements_flagged():
    labels = {"eye": "left", "dr": False, "dr_grade": 0}
    drop, _ = judge(labels, None, "Right eye fundus photograph. Numerous hard exudates at the macula.", "good")
    assert drop == ["caption contradicts label: eye", "caption contradicts label: dr_lesions"]
    drop, flags = judge(labels, {"eye": "right", "eye_confidence": 0.97, "quality": {"grade": "reject"}},
                        describe(labels, 0), "good", second="Fundus of the right eye.")
    assert drop == ["rejected image quality"]
    assert "measured eye disagrees with label" in flags and "writers disagree: eye" in flags


def test_expert_descriptions_are_read_for_cataract_severity():
    assert expert_severity("suggests a mild cataract with slight haze") == "mild"
    assert expert_severity("a dense cataract obscures the fundus") == "severe"
    assert expert_severity("the media look clear, no obvious cataract") == "none"


def test_purify_command_writes_the_kept_list_and_a_report(tmp_path, capsys):
    prepared = write_prepared(tmp_path / "prep", size=128)
    assert main(["caption", str(prepared), "--quiet", "--no-token-check"]) == 0
    path = prepared / "captions" / "template" / "fundus-000000.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["caption"] = "Fundus image, left eye (OS). No diabetic retinopathy."  # labels: right eye, grade 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["purify", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert "kept 4 of 5" in out
    kept = pd.read_parquet(prepared / "purified.parquet")
    assert list(kept.columns) == ["key", "dataset", "split", "shard", "writer", "caption", "flags"]
    assert "fixture__b" not in set(kept.key)
    report = json.loads((prepared / "purify" / "report.json").read_text())
    assert report["drop_reasons"] == {"caption contradicts label: eye": 1, "caption contradicts label: dr": 1}


def test_strict_purify_drops_flagged_images_too(tmp_path, capsys):
    prepared = write_prepared(tmp_path / "prep", size=128)
    assert main(["caption", str(prepared), "--quiet", "--no-token-check"]) == 0
    measured = prepared / "measure"
    measured.mkdir()
    path = prepared / "captions" / "template" / "fundus-000000.jsonl"
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    # the first image's eye is measured, surely, as the other eye than its label says
    from fundusgen.measure.run import read_tar
    record = json.loads(next(read_tar(prepared / "shards" / "fundus-000000.tar"))["json"])["record"]
    other = "left" if record["eye"] == "right" else "right"
    (measured / "fundus-000000.jsonl").write_text(json.dumps({"key": keys[0], "measurements": {
        "eye": other, "eye_confidence": 0.99, "haze": {"haze": 0.1}}}) + "\n")
    assert main(["purify", str(prepared)]) == 0
    assert "kept 5 of 5" in capsys.readouterr().out
    assert main(["purify", str(prepared), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "kept 4 of 5" in out and "dropped 1: strict: measured eye disagrees with label" in out
    assert keys[0] not in set(pd.read_parquet(prepared / "purified.parquet").key)


def test_purify_of_an_uncaptioned_folder_says_to_caption_it_first(tmp_path, capsys):
    prepared = write_prepared(tmp_path / "prep", size=128)
    assert main(["purify", str(prepared)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fundusgen purify: error: {prepared}: no template captions to check "
                   f"(run `fundusgen caption {prepared} --writer template` first)"]
    assert not (prepared / "purified.parquet").exists()  # nothing written that would train on nothing
