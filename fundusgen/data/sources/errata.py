"""Label errata: corrections of a dataset's labels that were checked by looking at the photograph.

Public fundus sets carry a few wrong labels (a left eye named ``_OD``, a pair whose eyes are
swapped). An errata file is a CSV with the columns ``dataset, id, field, label, corrected,
reason``: the record ``dataset/id`` whose ``field`` the source gives as ``label`` is given
``corrected`` instead, and ``reason`` says what the photograph shows. ``read_source`` applies the
shipped errata (``errata.csv`` beside this module, each entry checked by eye on the 512 px
photograph) and any files the user names; the record keeps what the source said in
``corrections`` (field -> {label, reason, errata}), so nothing is lost and every evaluation can
also be run against the source's own labels. An erratum whose ``label`` is not what the source
says is not applied (the source changed, or the erratum is wrong) and is reported, as is one of the
user's that names a record the source does not have (the shipped ones may name photographs that a
partial copy of a dataset lacks).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from fundusgen.data.record import FundusRecord
from fundusgen.data.sources._common import Problem, Report, SourceError, read_csv
from fundusgen.vocab import VocabularyError

SHIPPED = Path(__file__).with_name("errata.csv")
COLUMNS = ("dataset", "id", "field", "label", "corrected", "reason")
BOOLEAN_FIELDS = ("dr", "dme", "glaucoma", "cataract", "amd", "hypertension", "myopia", "other")
FIELDS = ("eye", "dr_grade", "dr_stage", "cataract_severity", "cdr") + BOOLEAN_FIELDS
# what a corrected field decides: cleared before the correction so that the record derives it again
DERIVED = {"dr_grade": ("dr_stage", "dr"), "dr_stage": ("dr",), "cataract_severity": ("cataract",)}


@dataclass(frozen=True)
class Erratum:
    dataset: str
    id: str
    field: str
    label: object       # the value the source gives, as a record holds it (None: unknown)
    corrected: object
    reason: str
    source: str         # the errata file


def parse_value(field: str, text: str):
    """An errata cell as a record's JSON value: '' -> None, booleans, integers, floats, or text."""
    text = text.strip()
    if text == "":
        return None
    if field in BOOLEAN_FIELDS:
        low = text.lower()
        if low not in ("true", "false", "1", "0"):
            raise ValueError(f"{field} takes true or false, not {text!r}")
        return low in ("true", "1")
    if field == "dr_grade":
        return int(text)
    if field == "cdr":
        return float(text)
    return text


def source_label(record: dict, field: str):
    """What the dataset itself gave for ``field`` of a record (its JSON), before any erratum."""
    return record.get("corrections", {}).get(field, {}).get("label", record.get(field))


def read_errata(path: str | Path) -> list[Erratum]:
    """The errata of one CSV file; a malformed row is an error naming the file and the row."""
    path = Path(path)
    out = []
    for n, row in enumerate(read_csv(path, COLUMNS), start=2):
        where = f"{path}: row {n}"
        if row["field"] not in FIELDS:
            raise SourceError(f"{where}: field {row['field']!r} cannot be corrected (one of: {', '.join(FIELDS)})")
        if not row["dataset"] or not row["id"]:
            raise SourceError(f"{where}: dataset and id are required")
        try:
            label, corrected = parse_value(row["field"], row["label"]), parse_value(row["field"], row["corrected"])
        except ValueError as e:
            raise SourceError(f"{where}: {e}") from None
        out.append(Erratum(row["dataset"], row["id"], row["field"], label, corrected, row["reason"], str(path)))
    return out


def load_errata(paths: Iterable[str | Path]) -> list[Erratum]:
    return [e for p in paths for e in read_errata(p)]


def apply_errata(records: Sequence[FundusRecord], errata: Sequence[Erratum], report: Report) -> list[FundusRecord]:
    """``records`` with the errata of their datasets applied (new records; the inputs are unchanged)."""
    datasets = {r.dataset for r in records}
    todo: dict[tuple[str, str], list[Erratum]] = defaultdict(list)
    for e in errata:
        if e.dataset in datasets:
            todo[e.dataset, e.id].append(e)
    out = []
    for r in records:
        for e in todo.pop((r.dataset, r.id), []):
            r = _apply(r, e, report)
        out.append(r)
    for (dataset, rid), left in todo.items():
        if left[0].source != str(SHIPPED):  # a copy of a public set may hold only some of its photographs
            report(Problem(left[0].source, f"erratum for {dataset}/{rid}: the source has no such record; not applied"))
    return out


def _apply(r: FundusRecord, e: Erratum, report: Report) -> FundusRecord:
    said = r.to_json()[e.field]
    if said != e.label:
        report(Problem(e.source, f"erratum for {r.key}: expects {e.field} {e.label!r} but the source says "
                                 f"{said!r}; not applied"))
        return r
    changes = {name: None for name in DERIVED.get(e.field, ())}
    changes[e.field] = e.corrected
    corrections = {**r.corrections, e.field: {"label": said, "reason": e.reason, "errata": Path(e.source).name}}
    try:
        return dataclasses.replace(r, **changes, corrections=corrections)
    except (VocabularyError, ValueError) as err:
        report(Problem(e.source, f"erratum for {r.key}: {err}; not applied"))
        return r
