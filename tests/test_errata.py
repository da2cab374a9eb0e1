"""Label errata (``fundusgen.data.sources.errata``): corrections checked by eye, applied to records
with what the source said kept, and refused when they no longer match the source."""
from __future__ import annotations

from pathlib import Path

import pytest

from fundusgen.data.record import FundusRecord
from fundusgen.data.sources import SourceError
from fundusgen.data.sources.errata import SHIPPED, apply_errata, load_errata, read_errata
from fundusgen.vocab import DRGrade, DRStage, Eye

HEADER = "dataset,id,field,label,corrected,reason\n"


def write(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "errata.csv"
    path.write_text(HEADER + rows)
    return path


def records() -> list[FundusRecord]:
    return [FundusRecord("demo", "a", "/a.jpg", eye="left", dr_grade=2),
            FundusRecord("demo", "b", "/b.jpg", eye="right", glaucoma=False)]


def test_an_erratum_corrects_the_field_and_keeps_what_the_source_said(tmp_path):
    path = write(tmp_path, 'demo,a,eye,left,right,"disc on the right, macula to its left"\n'
                           "demo,b,glaucoma,false,true,cupped disc\n"
                           "other,a,eye,right,left,another dataset's record\n")
    problems = []
    a, b = apply_errata(records(), read_errata(path), problems.append)
    assert not problems
    assert a.eye == Eye.RIGHT and a.corrections == {
        "eye": {"label": "left", "reason": "disc on the right, macula to its left", "errata": "errata.csv"}}
    assert b.glaucoma is True and b.corrections["glaucoma"]["label"] is False
    assert a.to_json()["corrections"]["eye"]["label"] == "left"        # travels into prepared records
    assert FundusRecord.from_json(a.to_json()) == a
    assert records()[0].eye == Eye.LEFT                                 # the inputs are not changed


def test_a_corrected_dr_grade_derives_stage_and_presence_again(tmp_path):
    path = write(tmp_path, "demo,a,dr_grade,2,0,no lesion visible\n")
    a, _ = apply_errata(records(), read_errata(path), [].append)
    assert (a.dr_grade, a.dr_stage, a.dr) == (DRGrade.NONE, DRStage.NONE, False)


def test_an_erratum_that_no_longer_matches_the_source_is_reported_not_applied(tmp_path):
    path = write(tmp_path, "demo,a,eye,right,left,expects the source to say right\n"
                           "demo,zz,eye,left,right,no such record\n")
    problems = []
    a, b = apply_errata(records(), read_errata(path), problems.append)
    assert a.eye == Eye.LEFT and not a.corrections
    reasons = sorted(p.reason for p in problems)
    assert len(reasons) == 2 and all(p.path == str(path) for p in problems)
    assert "demo/a: expects eye 'right' but the source says 'left'; not applied" in reasons[0]
    assert "demo/zz: the source has no such record" in reasons[1]


@pytest.mark.parametrize("rows, says", [
    ("demo,a,colour,red,blue,no such field\n", "row 2: field 'colour' cannot be corrected"),
    ("demo,a,glaucoma,maybe,true,not a boolean\n", "row 2: glaucoma takes true or false"),
    (",a,eye,left,right,no dataset\n", "row 2: dataset and id are required"),
])
def test_a_malformed_errata_file_names_the_file_and_the_row(tmp_path, rows, says):
    path = write(tmp_path, rows)
    with pytest.raises(SourceError) as err:
        read_errata(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_an_errata_file_without_the_columns_is_one_clear_error(tmp_path):
    path = tmp_path / "errata.csv"
    path.write_text("dataset,id,eye\ndemo,a,right\n")
    with pytest.raises(SourceError, match="missing column"):
        read_errata(path)


def test_the_shipped_errata_are_well_formed_and_say_why():
    errata = load_errata([SHIPPED])
    assert errata and all(e.reason and e.label != e.corrected for e in errata)
    assert len({(e.dataset, e.id, e.field) for e in errata}) == len(errata)


def test_shipped_errata_for_photographs_a_partial_copy_lacks_are_silent():
    shipped = [e for e in load_errata([SHIPPED]) if e.dataset == "mex_dme_dr"]
    problems = []
    out = apply_errata([FundusRecord("mex_dme_dr", "0001_OD_f_1", "/x.jpg", eye="right")], shipped, problems.append)
    assert not problems and not out[0].corrections
