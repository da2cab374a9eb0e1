"""Copies of one photograph across records share a split (fundusgen.data.copies, prepare)."""
import json

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from fundusgen.cli import main
from fundusgen.data.copies import COPY_CORRELATION, copy_groups, copy_pairs, signature
from fundusgen.data.splits import merge_copies


def drawn_fundus(seed: int, side: int = 400) -> np.ndarray:
    """A round reddish field of view with a random tree of dark lines: another photograph per seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((side, side, 3), np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 2 - 8, (190, 90, 40), -1)
    for _ in range(40):
        p = rng.integers(60, side - 60, 2)
        q = np.clip(p + rng.integers(-120, 120, 2), 40, side - 40)
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), (120, 40, 20), int(rng.integers(1, 4)))
    return img


def recode(rgb: np.ndarray, quality: int = 70) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def test_a_flipped_turned_recoloured_smaller_copy_matches_and_another_photograph_does_not(retina_rgb):
    photo = cv2.resize(retina_rgb, (512, 512), interpolation=cv2.INTER_AREA)
    copies = [recode(photo), photo[:, ::-1], np.rot90(photo), cv2.resize(photo, (300, 300)),
              np.clip(photo * np.array([1.15, 0.9, 0.8]), 0, 255).astype(np.uint8),
              np.pad(photo, ((40, 40), (90, 90), (0, 0)))]  # a wider black frame
    others = [drawn_fundus(0), drawn_fundus(1)]
    sigs = np.stack([signature(np.ascontiguousarray(x)) for x in [photo, *copies, *others]])
    pairs = {(i, j): c for i, j, c in copy_pairs(sigs)}
    assert all((0, k) in pairs for k in range(1, 7)), pairs
    assert not any(i >= 7 or j >= 7 for i, j in pairs)  # the drawn photographs match nothing, not each other
    assert max(float(sigs[7].ravel() @ sigs[8].ravel()), float(sigs[0].ravel() @ sigs[7].ravel())) < COPY_CORRELATION
    assert not signature(np.zeros((64, 64, 3), np.uint8)).any()  # a black image matches nothing


def test_copies_take_the_first_split_any_of_them_gets_and_official_splits_stay():
    splits = ["test", "train", "val", "test", "val", "test"]
    groups = copy_groups(6, [(0, 1), (2, 3), (4, 5)])
    assert merge_copies(splits, groups, [False] * 6) == ["train", "train", "val", "val", "val", "val"]
    assert merge_copies(splits, groups, [True] + [False] * 5)[:2] == ["test", "train"]  # e.g. DRIVE's test folder


def test_prepare_keeps_copies_across_patients_in_one_split_and_lists_them(tmp_path, retina_rgb):
    """Ten patients, each a photograph of its own, and patient 9's photograph filed again under patient
    10 as a flipped copy: the copy lands in its original's split, whatever its own patient drew."""
    folder = tmp_path / "raw" / "EYE FUNDUS" / "EYE FUNDUS1"
    folder.mkdir(parents=True)
    rows = ["Name,DME,DR"]
    photos = {f"{i:04d}_OD_f_1": drawn_fundus(i) for i in range(1, 10)}
    photos["0010_OD_f_1"] = photos["0009_OD_f_1"][:, ::-1]
    for name, rgb in photos.items():
        Image.fromarray(np.ascontiguousarray(rgb)).save(folder / f"{name}.jpg", quality=92)
        rows.append(f"{name},0,0")
    (tmp_path / "raw" / "EYE FUNDUS.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "prepared"

    def run(*extra):
        assert main(["prepare", "--source", f"mex_dme_dr={tmp_path / 'raw'}", "--out", str(out), "--size", "64",
                     "--workers", "1", "--quiet", *extra]) == 0
        return pd.read_parquet(out / "index.parquet").set_index("id")["split"]

    apart = run("--copy-correlation", "2")
    together = run()
    copies = pd.read_csv(out / "copies.csv")
    assert list(zip(copies["a"], copies["b"])) == [("mex_dme_dr/0009_OD_f_1", "mex_dme_dr/0010_OD_f_1")]
    assert copies["correlation"][0] >= COPY_CORRELATION
    first = min(apart["0009_OD_f_1"], apart["0010_OD_f_1"], key=["train", "val", "test"].index)
    assert together["0009_OD_f_1"] == together["0010_OD_f_1"] == first
    assert (together.drop(["0009_OD_f_1", "0010_OD_f_1"]) == apart.drop(["0009_OD_f_1", "0010_OD_f_1"])).all()
    summary = json.loads((out / "prepare.json").read_text())["copies"]
    assert summary["pairs"] == 1 and summary["records_moved_to_an_earlier_split"] == int(apart["0009_OD_f_1"] != apart["0010_OD_f_1"])
    assert (out / "signatures.npz").is_file()


def test_the_4class_sets_augmented_families_are_named_copies(tmp_path):
    from fundusgen.data.sources import read_source
    for cls, stem in (("cataract", "_12_345"), ("cataract", "_12_678"), ("cataract", "_13_1"), ("glaucoma", "_12_9"),
                      ("cataract", "2101_left")):
        (tmp_path / "dataset" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawn_fundus(0, 200)).save(tmp_path / "dataset" / cls / f"{stem}.jpg")
    groups = {r.id: r.source_labels.get("copy_group") for r in read_source("eye_diseases_4class", tmp_path)}
    assert groups == {"cataract/_12_345": "cataract/12", "cataract/_12_678": "cataract/12",
                      "cataract/_13_1": "cataract/13", "glaucoma/_12_9": "glaucoma/12", "cataract/2101_left": None}


def test_copies_in_the_shared_data_are_found_and_distinct_photographs_are_not(shared_data):
    """Pairs of ../shared/data that are one photograph: the same file in two datasets, one picture
    under two patient ids, a mirrored augmentation; and distinct photographs of one camera."""
    from fundusgen.data.fundus import load_rgb
    fundus_4class = shared_data / "eye_diseases_4class" / "dataset"
    mex = next((shared_data / "mex_dme_dr" / "EYE FUNDUS").glob("*/0066_OD_f_1.jpg")).parent
    drive = shared_data / "drive" / "DRIVE" / "training" / "images"
    files = [shared_data / "csdi_cataract" / "original_images" / "LXW1.jpg",
             shared_data / "csdi_cataract" / "original_images" / "LSQ1.jpg",
             shared_data / "csdi_cataract" / "original_images" / "cataract_011.png",
             fundus_4class / "cataract" / "cataract_011.png",
             mex / "0066_OD_f_1.jpg", next((shared_data / "mex_dme_dr" / "EYE FUNDUS").glob("*/0485_OD_f_1.jpg")),
             next(fundus_4class.glob("*/1211_right.jpg")), next(fundus_4class.glob("*/_5_5487582.jpg")),
             drive / "21_training.tif", drive / "22_training.tif", drive / "23_training.tif"]
    sigs = np.stack([signature(load_rgb(f)) for f in files])
    assert {(i, j) for i, j, _ in copy_pairs(sigs)} == {(0, 1), (2, 3), (4, 5), (6, 7)}
