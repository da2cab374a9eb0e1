"""Kaggle "eye diseases classification": ImageFolder with cataract / diabetic_retinopathy /
glaucoma / normal. Assembled from IDRiD, ODIR, HRF and others, so no patient ids; the eye is
read from ODIR-style names (``1288_left.jpg``) where present. ``diabetic_retinopathy`` gives
no grade, so it is recorded as ``dr=True`` with grade and stage unknown. Names ``_N_<digits>``
are augmented copies (flipped, turned, re-coloured) of one photograph N of their class folder:
they share ``source_labels["copy_group"]``, which keeps them in one split.
"""
from __future__ import annotations

import re
from pathlib import Path

from fundusgen.data.record import FundusRecord
from fundusgen.data.sources._common import Problem, Report, dedupe, eye_token, images_in, require_dir
from fundusgen.vocab import DRGrade, parse_eye

NAME = "eye_diseases_4class"
_LABELS = {
    "cataract": dict(cataract=True),
    "diabetic_retinopathy": dict(dr=True),
    "glaucoma": dict(glaucoma=True),
    "normal": dict(dr_grade=DRGrade.NONE, glaucoma=False, cataract=False, dme=False),
}
_ODIR = re.compile(r"^(\d+)_(left|right)$")
_AUGMENTED = re.compile(r"^_(\d+)_\d+$")


def read(root: Path, report: Report) -> list[FundusRecord]:
    base = require_dir(root / "dataset", "class folders")
    records = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if folder.name not in _LABELS:
            report(Problem(str(folder), f"class folder {folder.name!r} is not one of {sorted(_LABELS)}; skipped"))
            continue
        labels = _LABELS[folder.name]
        for path in images_in(folder):
            m = _ODIR.match(path.stem)
            family = _AUGMENTED.match(path.stem)
            token = eye_token(path.name)
            records.append(FundusRecord(
                dataset=NAME, id=f"{folder.name}/{path.stem}", image=str(path),
                patient=f"odir{m.group(1)}" if m else None,
                eye=parse_eye(token) if token and token.lower() in ("left", "right") else None,
                source_labels={"class": folder.name,
                               **({"copy_group": f"{folder.name}/{family.group(1)}"} if family else {})},
                **labels))
    return list(dedupe(records, report))
