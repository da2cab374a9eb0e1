"""One fundus photograph and everything known about it, before any processing."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fundusgen.vocab import (MASK_KINDS, CataractSeverity, DRGrade, DRStage, Eye,
                             VocabularyError, stage_of_grade)


@dataclass
class FundusRecord:
    """A fundus photograph as a dataset describes it.

    Labels are optional and never guessed: ``None`` means the source does not say. The raw
    labels of the source are kept verbatim in ``source_labels`` so nothing is lost in mapping.
    """
    dataset: str
    id: str                       # unique within the dataset
    image: str                    # absolute path of the photograph
    patient: str | None = None    # splits are made by patient; None -> the image is its own patient
    eye: Eye | None = None
    dr: bool | None = None        # any diabetic retinopathy (some sources say no more than this)
    dr_grade: DRGrade | None = None
    dr_stage: DRStage | None = None
    dme: bool | None = None
    glaucoma: bool | None = None
    cataract: bool | None = None
    cataract_severity: CataractSeverity | None = None
    amd: bool | None = None
    hypertension: bool | None = None
    myopia: bool | None = None
    other: bool | None = None
    cdr: float | None = None      # vertical cup-to-disc ratio from experts
    description: str | None = None  # expert free text (a real caption)
    masks: dict[str, str] = field(default_factory=dict)  # kind -> absolute path
    source_labels: dict[str, Any] = field(default_factory=dict)
    corrections: dict[str, dict] = field(default_factory=dict)  # field -> what the source said (sources.errata)

    def __post_init__(self):
        if self.eye is not None and not isinstance(self.eye, Eye):
            self.eye = Eye(self.eye)
        if self.dr_grade is not None and not isinstance(self.dr_grade, DRGrade):
            self.dr_grade = DRGrade(int(self.dr_grade))
        if self.dr_stage is not None and not isinstance(self.dr_stage, DRStage):
            self.dr_stage = DRStage(self.dr_stage)
        if self.dr_grade is not None:
            implied = stage_of_grade(self.dr_grade)
            if self.dr_stage is None:
                self.dr_stage = implied
            elif self.dr_stage != implied:
                raise VocabularyError(f"{self.key}: DR grade {int(self.dr_grade)} contradicts stage "
                                      f"{self.dr_stage.value}")
        if self.dr_stage is not None:
            present = self.dr_stage != DRStage.NONE
            if self.dr is not None and self.dr != present:
                raise VocabularyError(f"{self.key}: DR present={self.dr} contradicts stage {self.dr_stage.value}")
            self.dr = present
        if self.cataract_severity is not None and not isinstance(self.cataract_severity, CataractSeverity):
            self.cataract_severity = CataractSeverity(self.cataract_severity)
        if self.cataract_severity is not None and self.cataract is None:
            self.cataract = self.cataract_severity != CataractSeverity.NONE
        if self.cdr is not None and not 0.0 <= float(self.cdr) <= 1.0:
            raise VocabularyError(f"{self.key}: cup-to-disc ratio {self.cdr} is outside 0-1")
        unknown = set(self.masks) - set(MASK_KINDS)
        if unknown:
            raise VocabularyError(f"{self.key}: unknown mask kinds {sorted(unknown)}")

    @property
    def key(self) -> str:
        """Globally unique name: dataset/id."""
        return f"{self.dataset}/{self.id}"

    @property
    def patient_key(self) -> str:
        return f"{self.dataset}/{self.patient if self.patient is not None else self.id}"

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "value"):
                v = v.value
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FundusRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
