"""``measure(image, fov) -> dict``: every measured attribute of one preprocessed fundus image."""
from __future__ import annotations

import numpy as np

from fundusgen.data.quality import assess
from fundusgen.measure.disc import anatomy, regions
from fundusgen.measure.lesions import haze, lesion_cues
from fundusgen.measure.vessels import classical_vessels, regional_morphology

VERSION = 2  # bump when a measurement changes, so stored measurements are redone


def measure(image: np.ndarray, fov: np.ndarray, vessels: np.ndarray | None = None) -> dict:
    """Attributes of a square RGB fundus image (uint8) with its FOV mask (bool).

    ``vessels`` may be given (a manual or learned mask) for the vessel and lesion measurements;
    otherwise the classical one is used. Disc, fovea and eye use their own working-size vessel map.
    Positions are fractions of the image side, so they do not depend on the resolution.
    """
    fov = fov.astype(bool)
    if vessels is None:
        _, vessels = classical_vessels(image, fov)
    a = anatomy(image, fov)
    side = float(image.shape[1])
    q = assess(image, fov)
    return {
        "version": VERSION,
        "quality": q.to_json(),
        "haze": haze(image, fov),
        "disc": {"x": round(a.disc_x / side, 4), "y": round(a.disc_y / side, 4),
                 "diameter": round(a.disc_diameter / side, 4), "ratio": round(a.disc_ratio, 4)},
        "fovea": None if a.fovea_x is None else {"x": round(a.fovea_x / side, 4), "y": round(a.fovea_y / side, 4)},
        "eye": a.eye, "eye_confidence": round(a.eye_confidence, 4),
        "vessels": regional_morphology(vessels, fov, regions(fov.shape, fov, a)),
        "lesions": lesion_cues(image, fov, vessels, a),
    }
