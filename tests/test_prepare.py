"""``fundusgen prepare`` end to end through the command line, on a tiny dataset in the Mexican
set's layout (``EYE FUNDUS.csv`` + ``EYE FUNDUS/EYE FUNDUSk/*.jpg``) with good and bad files."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from fundusgen.cli import main
from fundusgen.data import prepare as prepare_module
from fundusgen.data import shards
from fundusgen.data.splits import SPLITS

REPO = Path(__file__).resolve().parents[1]
PATIENTS = 16
SHARD_SIZE = 4
# file stem -> (bytes or image maker, CSV labels, the reason the rejects file must give)
BAD = {
    "0900_OD_f_1.jpg": ("empty", "0,-", "empty file"),
    "0901_OD_f_1.jpg": ("truncated", "0,-", "truncated"),
    "0902_OD_f_1.jpg": ("notes", "0,-", "not an image"),
    "0903_OD_f_1.png": ("corrupt", "0,-", "corrupt"),
    "0904_OD_f_1.jpg": ("black", "0,-", "no field of view"),
    "0905_OD_f_1.jpg": ("text", "0,-", "not a fundus photograph"),
    "0906_OD_f_1.jpg": (None, "0,-", "listed but missing"),
    "0907_OD_f_1.jpg": ("good", "1,severe", "label outside the vocabulary"),
}


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def good_names() -> list[str]:
    """Two eyes per patient, a second photo of each eye for odd patients: 48 photographs."""
    return [f"{p:04d}_{eye}_f_{k}" for p in range(1, PATIENTS + 1) for eye in ("OD", "OI")
            for k in ((1, 2) if p % 2 else (1,))]


def build_dataset(root: Path, retina: np.ndarray) -> Path:
    folder = root / "EYE FUNDUS" / "EYE FUNDUS1"
    folder.mkdir(parents=True)
    rows = ["Name,DME,DR"]
    for i, name in enumerate(good_names()):
        rgb = retina[:, ::-1] if "_OI_" in name else retina
        (folder / f"{name}.jpg").write_bytes(jpeg(np.ascontiguousarray((rgb * (0.8 + 0.01 * i)).astype(np.uint8))))
        rows.append(f"{name},{i % 2},{['-', '0', 'NPDR', 'PDR'][i % 4]}")
    text = np.stack([cv2.resize(data.text(), (600, 230))] * 3, -1)
    make = {"empty": b"", "truncated": jpeg(retina)[:4000], "notes": b"clinic notes, not a photograph\n",
            "corrupt": bytes(b ^ 0xFF if 200 < i < 4000 and i % 50 == 0 else b
                             for i, b in enumerate(png(retina[::2, ::2]))),
            "black": jpeg(np.zeros_like(retina)), "text": jpeg(text), "good": jpeg(retina)}
    for file, (kind, labels, _) in BAD.items():
        if kind is not None:
            (folder / file).write_bytes(make[kind])
        rows.append(f"{Path(file).stem},{labels}")
    (root / "EYE FUNDUS.csv").write_text("\n".join(rows) + "\n")
    return root


def prepare_args(root: Path, out: Path, *extra: str) -> list[str]:
    """Every photograph of the fixture is one retina (mirrored, brightened): copies, which would all
    share one split, so the split tests turn the signature test off (test_copies.py tests it)."""
    return ["prepare", "--source", f"mex_dme_dr={root}", "--out", str(out), "--size", "64",
            "--shard-size", str(SHARD_SIZE), "--copy-correlation", "2", "--quiet", *extra]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, except the run's own report (it names the folder and counts)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "prepare.json"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, retina_rgb) -> Path:
    retina = cv2.resize(retina_rgb, (600, 600), interpolation=cv2.INTER_AREA)
    return build_dataset(tmp_path_factory.mktemp("mex"), retina)


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory) -> Path:
    """One uninterrupted run, the reference the other runs are compared with."""
    out = tmp_path_factory.mktemp("prepared")
    assert main(prepare_args(dataset, out, "--workers", "1")) == 0
    return out


def test_prepare_writes_shards_index_and_rejects(prepared):
    index = pd.read_parquet(prepared / "index.parquet")
    assert sorted(index["id"]) == sorted(good_names())
    tars = sorted((prepared / "shards").glob("*.tar"))
    n_records = len(good_names()) + len(BAD) - 2  # the missing file and the bad label give no record
    assert len(tars) == -(-n_records // SHARD_SIZE)
    samples = list(shards.iter_samples(prepared))
    assert [s["key"] for s in samples] == list(index["key"])
    for s in samples:
        assert s["image"].shape == (64, 64, 3) and s["fov"].shape == (64, 64) and s["fov"].mean() > 0.6
        assert s["meta"]["split"] == index.set_index("key").loc[s["key"], "split"]
    report = json.loads((prepared / "prepare.json").read_text())
    assert report["kept"] == len(good_names()) and report["rejected"] == len(BAD)


def test_rejects_list_each_bad_file_with_its_reason(prepared, dataset):
    rejects = pd.read_csv(prepared / "rejects.csv")
    assert len(rejects) == len(BAD)
    for file, (kind, _, reason) in BAD.items():
        stem = Path(file).stem
        hits = rejects[rejects["path"].str.endswith(file) | rejects["reason"].str.contains(stem)]
        assert len(hits) == 1, f"{file}: {len(hits)} rejects rows"
        assert reason in hits["reason"].iloc[0], f"{file}: {hits['reason'].iloc[0]!r}"


def test_splits_are_patient_level_and_deterministic(prepared, dataset, tmp_path):
    index = pd.read_parquet(prepared / "index.parquet")
    assert set(index["split"]) <= set(SPLITS)
    assert (index.groupby("patient")["split"].nunique() == 1).all(), "a patient is in two splits"
    assert index["patient"].nunique() == PATIENTS
    assert main(prepare_args(dataset, tmp_path / "again", "--workers", "1")) == 0
    again = pd.read_parquet(tmp_path / "again" / "index.parquet")
    pd.testing.assert_series_equal(index.set_index("key")["split"], again.set_index("key")["split"])
    assert main(prepare_args(dataset, tmp_path / "seed1", "--workers", "1", "--seed", "1")) == 0
    other = pd.read_parquet(tmp_path / "seed1" / "index.parquet")
    assert (other.groupby("patient")["split"].nunique() == 1).all()
    assert not other.set_index("key")["split"].equals(index.set_index("key")["split"]), "the seed changes nothing"


def test_second_run_does_no_work(prepared, dataset, monkeypatch, capsys):
    before = snapshot(prepared)

    def must_not_run(args):
        raise AssertionError("a finished shard was processed again")

    monkeypatch.setattr(prepare_module, "_process", must_not_run)
    capsys.readouterr()
    assert main(prepare_args(dataset, prepared, "--workers", "1")) == 0
    n_shards = len(list((prepared / "shards").glob("*.tar")))
    assert f"(0 shards written, {n_shards} already done)" in capsys.readouterr().out
    assert snapshot(prepared) == before


def test_killed_run_resumes_to_identical_output(prepared, dataset, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "fundusgen.cli", *prepare_args(dataset, out, "--workers", "2")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    first = out / "shards" / "fundus-000000.json"
    deadline = time.monotonic() + 600  # generous: on a loaded machine the first shard can take minutes
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pool workers the killed run left behind
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    reference = snapshot(prepared)
    done = list((out / "shards").glob("fundus-*.json"))
    assert 1 <= len(done) < len(list((prepared / "shards").glob("*.json"))), "the run was not killed midway"
    for tar in (out / "shards").glob("*.tar"):
        assert tar.read_bytes() == reference[f"shards/{tar.name}"], f"partial shard visible: {tar.name}"
        with tarfile.open(tar) as t:
            assert t.getmembers()

    assert main(prepare_args(dataset, out, "--workers", "1")) == 0
    assert snapshot(out) == reference
    assert not list(out.rglob("*.tmp"))


def test_temporary_files_of_a_killed_run_are_removed(prepared, dataset, tmp_path):
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    left = [out / ".index.parquet.x1y2.tmp", out / "shards" / ".fundus-000001.tar.x1y2.tmp"]
    for path in left:
        path.write_bytes(b"partial")
    assert main(prepare_args(dataset, out, "--workers", "1")) == 0
    assert not any(path.exists() for path in left)
    assert snapshot(out) == snapshot(prepared)


def error_lines(capsys) -> list[str]:
    lines = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    return lines


def test_csv_with_missing_column_is_one_clear_error(dataset, tmp_path, capsys):
    root = tmp_path / "mex"
    root.mkdir()
    (root / "EYE FUNDUS").symlink_to(dataset / "EYE FUNDUS")
    rows = (dataset / "EYE FUNDUS.csv").read_text().splitlines()
    (root / "EYE FUNDUS.csv").write_text("\n".join(",".join(r.split(",")[::2]) for r in rows) + "\n")  # Name, DR
    assert main(prepare_args(root, tmp_path / "out")) != 0
    [line] = error_lines(capsys)
    assert "EYE FUNDUS.csv" in line and "DME" in line and "missing column" in line


def test_wrong_path_is_one_clear_error(tmp_path, capsys):
    assert main(prepare_args(tmp_path / "no-such-folder", tmp_path / "out")) != 0
    [line] = error_lines(capsys)
    assert str(tmp_path / "no-such-folder") in line and "not found" in line


def test_unreadable_folder_is_one_clear_error(dataset, tmp_path, capsys):
    root = tmp_path / "mex"
    root.mkdir()
    (root / "EYE FUNDUS.csv").write_bytes((dataset / "EYE FUNDUS.csv").read_bytes())
    root.chmod(0)
    try:
        if os.access(root, os.R_OK):
            pytest.skip("running as root: chmod 000 leaves the folder readable")
        assert main(prepare_args(root, tmp_path / "out")) != 0
        [line] = error_lines(capsys)
        assert str(root) in line and "ermission denied" in line
    finally:
        root.chmod(0o755)


def test_os_error_inside_an_adapter_is_one_clear_error(dataset, tmp_path, capsys, monkeypatch):
    def unreadable(name, root, report, **options):
        raise PermissionError(13, "Permission denied", str(Path(root) / "EYE FUNDUS.csv"))

    monkeypatch.setattr(prepare_module, "read_source", unreadable)
    assert main(prepare_args(dataset, tmp_path / "out")) != 0
    [line] = error_lines(capsys)
    assert "EYE FUNDUS.csv" in line and "Permission denied" in line


def test_output_folder_that_cannot_be_made_is_one_clear_error(dataset, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(prepare_args(dataset, blocker / "out")) != 0
    [line] = error_lines(capsys)
    assert str(blocker) in line


def test_label_errata_correct_the_index_and_the_records(dataset, tmp_path):
    """A user's errata file corrects an eye (kept in the record with the reason); one whose label
    no longer matches the source is listed in the rejects file and changes nothing."""
    errata = tmp_path / "errata.csv"
    errata.write_text("dataset,id,field,label,corrected,reason\n"
                      "mex_dme_dr,0001_OD_f_1,eye,right,left,the disc is on the left\n"
                      "mex_dme_dr,0002_OD_f_1,eye,left,right,stale: the source says right\n")
    out = tmp_path / "out"
    assert main(prepare_args(dataset, out, "--workers", "1", "--errata", str(errata))) == 0
    index = pd.read_parquet(out / "index.parquet").set_index("id")
    assert index.loc["0001_OD_f_1", "eye"] == "left" and index.loc["0001_OD_f_1", "corrected"] == "eye"
    assert index.loc["0002_OD_f_1", "eye"] == "right" and index.loc["0002_OD_f_1", "corrected"] == ""
    record = next(s for s in shards.iter_samples(out) if s["key"].endswith("0001_OD_f_1"))["meta"]["record"]
    assert record["corrections"]["eye"] == {"label": "right", "reason": "the disc is on the left", "errata": "errata.csv"}
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects.reason.str.contains("0002_OD_f_1: expects eye 'left' but the source says 'right'").any()
    # --no-errata --errata: only the user's file; --no-errata alone: the labels as the source gives them
    plain = tmp_path / "plain"
    assert main(prepare_args(dataset, plain, "--workers", "1", "--no-errata")) == 0
    assert pd.read_parquet(plain / "index.parquet").set_index("id").loc["0001_OD_f_1", "eye"] == "right"


def test_a_malformed_or_missing_errata_file_is_one_clear_error(dataset, tmp_path, capsys):
    assert main(prepare_args(dataset, tmp_path / "out", "--errata", str(tmp_path / "nope.csv"))) != 0
    [line] = error_lines(capsys)
    assert "nope.csv" in line and "not found" in line
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,id,field,label,corrected,reason\nmex_dme_dr,0001_OD_f_1,colour,red,blue,x\n")
    assert main(prepare_args(dataset, tmp_path / "out", "--errata", str(bad))) != 0
    [line] = error_lines(capsys)
    assert str(bad) in line and "row 2" in line and "cannot be corrected" in line
    assert not (tmp_path / "out" / "index.parquet").exists()
