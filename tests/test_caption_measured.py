import json

from fundusgen.caption.purify import claims
from fundusgen.caption.template import describe
from fundusgen.cli import main
from tests.measure_fixtures import retina_square, write_prepared

MEASURED = {
    "quality": {"grade": "good"}, "haze": {"haze": 0.8}, "eye": "right", "eye_confidence": 0.93,
    "disc": {"x": 0.8, "y": 0.5, "diameter": 0.15, "ratio": 0.15}, "fovea": {"x": 0.5, "y": 0.5},
    "vessels": {"all": {"density": 0.1, "calibre": 3.0, "tortuosity": 1.2, "fractal_dimension": 1.5}},
    "lesions": {"bright": {"count": 12, "regions": {"macula": 8, "superior_arcade": 4}},
                "dark": {"count": 16, "regions": {"inferior_arcade": 12, "peripapillary": 4}}},
}


def test_label_only_captions_are_unchanged():
    for attrs in ({"eye": "left", "dr_grade": 2, "dme": True}, {"cataract_severity": "mild"}, {}):
        assert describe(dict(attrs), 3) == describe({**attrs, "measurements": None}, 3)


def test_measurements_add_disc_vessel_lesion_and_media_sentences():
    text = describe({"dr_grade": 2, "measurements": MEASURED}, 0).lower()
    assert "optic disc" in text and "tortuous" in text
    assert "hard exudates at the macula" in text
    assert "microaneurysms" in text or "haemorrhages" in text
    assert "hazy" in text


def test_labels_win_over_measurements():
    healthy = describe({"eye": "left", "dr_grade": 0, "glaucoma": False, "measurements": MEASURED}, 0).lower()
    assert claims(healthy)["eye"] == "left"  # the labelled eye, not the measured one
    assert not claims(healthy).get("dr_lesions")
    assert not any(w in healthy for w in ("exudate", "spots", "deposits", "dots"))
    cataract = describe({"cataract_severity": "mild", "measurements": MEASURED}, 0).lower()
    assert "hazy media" not in cataract and "low in contrast" not in cataract


def test_unknown_labels_stay_unsaid_and_the_confident_measured_eye_is_used():
    text = describe({"measurements": MEASURED}, 1).lower()
    assert claims(text)["eye"] == "right"
    for word in ("diabetic", "glaucoma", "cataract", "exudates", "cup-to-disc"):
        assert word not in text
    unsure = describe({"measurements": {**MEASURED, "eye_confidence": 0.8}}, 1).lower()
    assert "eye" not in claims(unsure)


def test_phrasings_of_measured_attributes_vary_with_the_seed():
    assert len({describe({"dr": True, "measurements": MEASURED}, s) for s in range(10)}) > 3


def test_caption_command_writes_captions_per_shard_and_reports_token_lengths(tmp_path, capsys):
    prepared = write_prepared(tmp_path / "prep", size=128)
    assert main(["measure", str(prepared), "--workers", "1", "--quiet"]) == 0
    assert main(["caption", str(prepared), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "exceed the" in out and "wrote" in out
    rows = [json.loads(line) for line in (prepared / "captions" / "template" / "fundus-000000.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["fixture__a", "fixture__b", "fixture__c"]
    assert "left" in rows[0]["caption"].lower() and "moderate" in rows[1]["caption"].lower()
    assert main(["caption", str(prepared), "--quiet", "--no-token-check"]) == 0
    assert "0 shards written, 2 already done" in capsys.readouterr().out


def test_the_measured_cup_to_disc_ratio_is_said_unless_a_label_argues():
    def caption(measured, method="network", **labels):
        m = dict(MEASURED, disc=dict(MEASURED["disc"], cdr=measured, method=method))
        return describe({**labels, "measurements": m}, 0).lower()
    assert "cup-to-disc ratio about 0.4" in caption(0.43)
    assert "cup-to-disc ratio about 0.7" in caption(0.72, glaucoma=True)
    assert "cup-to-disc ratio" not in caption(0.72, method="classical")  # only the validated network's
    assert "ratio about 0.3" not in caption(0.3, glaucoma=True)           # a small cup beside a glaucoma label
    assert "ratio about 0.8" not in caption(0.8, glaucoma=False)
    assert "cup-to-disc ratio about 0.5" in caption(0.3, cdr=0.5)         # the experts' label wins
