"""The adapters of the real datasets in ../shared/data: counts, and labels checked against the files."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import pytest

from fundusgen.data.sources import read_source
from fundusgen.vocab import CataractSeverity, DRGrade, DRStage, Eye, cataract_severity_from_score

COUNTS = {"mex_dme_dr": 1548, "srahim_dr": 600, "eye_diseases_4class": 4217, "csdi_cataract": 187,
          "drive": 40, "chase_db1": 28, "stare": 20, "drishti_gs1": 101}


@lru_cache(maxsize=None)
def _read(root: Path, name: str):
    problems = []
    records = read_source(name, root / name, problems.append)
    return {r.id: r for r in records}, problems


@pytest.fixture
def read(shared_data):
    return lambda name: _read(shared_data, name)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", COUNTS)
def test_every_image_is_read_without_problems(read, name):
    records, problems = read(name)
    assert len(records) == COUNTS[name] and not problems
    assert all(Path(r.image).is_file() and r.dataset == name for r in records.values())
    assert all(Path(m).is_file() for r in records.values() for m in r.masks.values())


def test_mex_dme_dr_labels_match_the_csv(read, shared_data):
    records, _ = read("mex_dme_dr")
    for row in rows(shared_data / "mex_dme_dr" / "EYE FUNDUS.csv"):
        r = records[row["Name"]]
        assert r.dme == (row["DME"] == "1")
        assert r.dr_stage == (None if row["DR"] in ("", "-") else {"0": DRStage.NONE, "NPDR": DRStage.NPDR,
                                                              "PDR": DRStage.PDR}[row["DR"]])
    lower_case = records["0146_od_f_1"]   # the eye written in lower case
    assert (lower_case.patient, lower_case.eye) == ("0146", Eye.RIGHT)
    named = {k: Eye.RIGHT if "_od_" in k.lower() else Eye.LEFT for k in records}
    corrected = {k for k, r in records.items() if r.corrections}
    assert all(r.eye == named[k] for k, r in records.items() if k not in corrected)
    # the shipped errata: five eyes the photographs contradict, each keeping the file name's eye
    assert corrected == {"1077_OI_f_1", "0592_OI_f_1", "0734_OI_f_1", "0744_OI_f_1", "0619_OD_f_1"}
    for k in corrected:
        r = records[k]
        assert r.eye != named[k] and r.corrections["eye"]["label"] == named[k].value and r.corrections["eye"]["reason"]


def test_srahim_dr_class_folders_give_grade_and_maculopathy(read, shared_data):
    records, _ = read("srahim_dr")
    base = shared_data / "srahim_dr" / "DR and maculopathy 10 classes"
    for folder in base.iterdir():
        ids = [p.stem for p in folder.iterdir()]
        assert all(records[i].source_labels["class"] == folder.name for i in ids)
    assert records["Patient254-R"].eye == Eye.RIGHT and records["Patient254-R"].patient == "254"
    by_class = {}
    for r in records.values():
        by_class.setdefault(r.source_labels["class"], set()).add((r.dr_grade, r.dme, r.other))
    assert by_class["1 - No DR"] == {(DRGrade.NONE, False, None)}
    assert by_class["5 - Moderate DR with maculopathy"] == {(DRGrade.MODERATE_NPDR, True, None)}
    assert by_class["8 - PDR without maculopathy"] == {(DRGrade.PDR, False, None)}
    assert by_class["10 - ADED"] == {(None, None, True)}


def test_eye_diseases_4class_counts_per_class(read):
    records, _ = read("eye_diseases_4class")
    counts = {}
    for r in records.values():
        counts[r.source_labels["class"]] = counts.get(r.source_labels["class"], 0) + 1
    assert counts == {"cataract": 1038, "diabetic_retinopathy": 1098, "glaucoma": 1007, "normal": 1074}
    assert all(r.dr is True and r.dr_grade is None for r in records.values()
               if r.source_labels["class"] == "diabetic_retinopathy")


def test_csdi_severity_follows_the_score_and_keeps_the_description(read, shared_data):
    records, _ = read("csdi_cataract")
    for row in rows(shared_data / "csdi_cataract" / "CSDI_annotations.csv"):
        r = records[Path(row["id"]).stem]
        assert r.cataract_severity == cataract_severity_from_score(float(row["score"]))
        assert r.cataract == (r.cataract_severity != CataractSeverity.NONE)
        assert r.description == row["English_diagnosis"]


@pytest.mark.parametrize("name, second_observer", [("drive", 20), ("chase_db1", 28), ("stare", 20)])
def test_vessel_sets_have_vessel_and_fov_masks(read, name, second_observer):
    records, _ = read(name)
    assert all(set(r.masks) == {"vessels", "fov"} for r in records.values())
    assert sum("vessels_2nd" in r.source_labels for r in records.values()) == second_observer


def test_chase_db1_names_give_child_and_eye(read):
    records, _ = read("chase_db1")
    assert (records["Image_01L"].patient, records["Image_01L"].eye) == ("01", Eye.LEFT)
    assert records["Image_01R"].patient_key == records["Image_01L"].patient_key
    assert len({r.patient for r in records.values()}) == 14


def test_drishti_cdr_is_the_mean_of_the_experts(read, shared_data):
    records, _ = read("drishti_gs1")
    for r in records.values():
        values = [float(v) for v in next(shared_data.glob(f"drishti_gs1/data/*/GT/{r.id}/{r.id}_cdrValues.txt"))
                  .read_text().split()]
        assert r.cdr == pytest.approx(sum(values) / len(values), abs=1e-4)
        assert set(r.masks) == {"disc", "cup"}
