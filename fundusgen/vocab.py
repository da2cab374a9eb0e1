"""The clinical vocabulary: the one place where eye, disease, stage and lesion names live.

Every later step (adapters, captions, purification, prompts, evaluation) speaks these names,
so a label read from any dataset means the same thing everywhere.
"""
from __future__ import annotations

from fundusgen.errors import FundusgenError

from enum import Enum


class VocabularyError(FundusgenError, ValueError):
    """A label that is not part of the clinical vocabulary."""


class Eye(str, Enum):
    LEFT = "left"
    RIGHT = "right"


_EYE_ALIASES = {
    "left": Eye.LEFT, "l": Eye.LEFT, "os": Eye.LEFT, "oi": Eye.LEFT, "oculus sinister": Eye.LEFT,
    "right": Eye.RIGHT, "r": Eye.RIGHT, "od": Eye.RIGHT, "oculus dexter": Eye.RIGHT,
}


def parse_eye(value: str) -> Eye:
    """'L', 'OS', 'OI' (Spanish *ojo izquierdo*), 'left' ... -> Eye."""
    key = str(value).strip().lower()
    if key not in _EYE_ALIASES:
        raise VocabularyError(f"unknown eye {value!r} (expected left/right, L/R, OD/OS/OI)")
    return _EYE_ALIASES[key]


class DRGrade(int, Enum):
    """International Clinical Diabetic Retinopathy (ICDR) severity scale."""
    NONE = 0
    MILD_NPDR = 1
    MODERATE_NPDR = 2
    SEVERE_NPDR = 3
    PDR = 4

    @property
    def phrase(self) -> str:
        return DR_GRADE_PHRASES[self]


DR_GRADE_PHRASES = {
    DRGrade.NONE: "no diabetic retinopathy",
    DRGrade.MILD_NPDR: "mild non-proliferative diabetic retinopathy",
    DRGrade.MODERATE_NPDR: "moderate non-proliferative diabetic retinopathy",
    DRGrade.SEVERE_NPDR: "severe non-proliferative diabetic retinopathy",
    DRGrade.PDR: "proliferative diabetic retinopathy",
}


class DRStage(str, Enum):
    """Coarse 3-level DR labelling (no DR / NPDR / PDR) used by some datasets.

    It maps onto ICDR as a set of grades: NPDR is any of grades 1-3, so a record labelled
    NPDR keeps ``dr_grade`` unknown and ``dr_stage`` = NPDR rather than guessing a grade.
    """
    NONE = "none"
    NPDR = "npdr"
    PDR = "pdr"

    @property
    def grades(self) -> tuple[DRGrade, ...]:
        return {DRStage.NONE: (DRGrade.NONE,),
                DRStage.NPDR: (DRGrade.MILD_NPDR, DRGrade.MODERATE_NPDR, DRGrade.SEVERE_NPDR),
                DRStage.PDR: (DRGrade.PDR,)}[self]


def stage_of_grade(grade: DRGrade) -> DRStage:
    return next(s for s in DRStage if grade in s.grades)


def parse_dr_grade(value) -> DRGrade:
    try:
        g = int(float(str(value).strip()))
    except ValueError:
        raise VocabularyError(f"DR grade {value!r} is not a number 0-4") from None
    if g not in range(5) or float(str(value).strip()) != g:
        raise VocabularyError(f"DR grade {value!r} is outside the ICDR scale 0-4")
    return DRGrade(g)


def has_dr(labels) -> bool | None:
    """Whether a record's labels say there is diabetic retinopathy: from ``dr_grade``, else
    ``dr_stage``, else the yes/no ``dr`` flag; None where none is known (missing or NaN)."""
    def known(key):
        v = labels.get(key)
        return None if v is None or (isinstance(v, float) and v != v) else v
    grade, stage, flag = known("dr_grade"), known("dr_stage"), known("dr")
    if grade is not None:
        return int(grade) > 0
    if stage is not None:
        return (stage if isinstance(stage, DRStage) else parse_dr_stage(stage)) is not DRStage.NONE
    return None if flag is None else bool(flag)


def parse_dr_stage(value: str) -> DRStage:
    key = str(value).strip().lower()
    aliases = {"0": DRStage.NONE, "none": DRStage.NONE, "no dr": DRStage.NONE, "normal": DRStage.NONE,
               "npdr": DRStage.NPDR, "pdr": DRStage.PDR}
    if key not in aliases:
        raise VocabularyError(f"unknown DR stage {value!r} (expected 0/none, NPDR or PDR)")
    return aliases[key]


class CataractSeverity(str, Enum):
    """Cataract severity from fundus haze; CSDI's 0-10 expert score maps onto it."""
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


def cataract_severity_from_score(score: float) -> CataractSeverity:
    """CSDI score 0-10 (0 clear media, 10 no fundus detail) -> severity band.

    Bands follow CSDI's description language: <1 clear, <4 mild, <7 moderate, else severe.
    """
    if not 0 <= score <= 10:
        raise VocabularyError(f"cataract score {score!r} is outside 0-10")
    if score < 1:
        return CataractSeverity.NONE
    if score < 4:
        return CataractSeverity.MILD
    if score < 7:
        return CataractSeverity.MODERATE
    return CataractSeverity.SEVERE


class Lesion(str, Enum):
    MICROANEURYSMS = "microaneurysms"
    HAEMORRHAGES = "haemorrhages"
    HARD_EXUDATES = "hard exudates"
    COTTON_WOOL_SPOTS = "cotton-wool spots"
    DRUSEN = "drusen"
    NEOVASCULARISATION = "neovascularisation"
    LASER_SCARS = "laser scars"


BRIGHT_LESIONS = (Lesion.HARD_EXUDATES, Lesion.COTTON_WOOL_SPOTS, Lesion.DRUSEN)
DARK_LESIONS = (Lesion.MICROANEURYSMS, Lesion.HAEMORRHAGES)


class Structure(str, Enum):
    OPTIC_DISC = "optic disc"
    OPTIC_CUP = "optic cup"
    VESSELS = "vessels"
    MACULA = "macula"
    FOVEA = "fovea"
    NERVE_FIBRE_LAYER = "nerve fibre layer"


class Region(str, Enum):
    """Where a finding sits, relative to the anatomy rather than to the image."""
    PERIPAPILLARY = "around the optic disc"
    MACULA = "at the macula"
    TEMPORAL_TO_FOVEA = "temporal to the fovea"
    NASAL = "nasal"
    SUPERIOR_ARCADE = "along the superior arcade"
    INFERIOR_ARCADE = "along the inferior arcade"
    PERIPHERY = "in the periphery"


class Quality(str, Enum):
    GOOD = "good"
    USABLE = "usable"
    REJECT = "reject"


MASK_KINDS = ("vessels", "fov", "disc", "cup")

# Conditions a record can be labelled with (boolean, optional). Names are the record's field names.
CONDITIONS = ("dme", "glaucoma", "cataract", "amd", "hypertension", "myopia", "other")
