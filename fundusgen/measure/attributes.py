"""``measure(image, fov) -> dict``: every measured attribute of one preprocessed fundus image."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from fundusgen.data.quality import assess
from fundusgen.measure.disc import anatomy, disc_start, fov_geometry, regions
from fundusgen.measure.disccup import SHIPPED as DISC_CUP_SHIPPED, segment_disc_cup, shipped_net
from fundusgen.measure.laterality import SHIPPED as LATERALITY_SHIPPED
from fundusgen.measure.lesions import haze, lesion_cues
from fundusgen.measure.vessels import SHIPPED as VESSELS_SHIPPED
from fundusgen.measure.vessels import classical_vessels, network_vessels, regional_morphology, shipped_vessel_net

VERSION = 5  # bump when a measurement changes, so stored measurements are redone
VESSEL_MARGIN = 8  # px of black around a view before its vessels are segmented (vessel_mask)
VESSEL_METHODS = ("auto", "network", "classical")


def digest(files, *extra: str) -> str:
    """A short digest of source files and strings: part of cache keys, so that changing the code,
    weights or precision that computed a cached result recomputes it."""
    h = hashlib.sha1()
    for f in files:
        h.update(Path(f).read_bytes())
    h.update("|".join(extra).encode())
    return h.hexdigest()[:16]


def precision_id() -> str:
    """Whether the vessel network runs in bf16 here (its masks differ slightly from float32's)."""
    from fundusgen.measure.vessels import _bf16_is_native
    return f"bf16={_bf16_is_native()}"


@functools.lru_cache(maxsize=1)
def weights_id() -> str:
    """A digest of the shipped measurement networks' weights and calibrated thresholds: part of
    every stored measurement's fingerprint, so that new weights redo what the old ones measured."""
    h = hashlib.sha1()
    for folder in (VESSELS_SHIPPED, DISC_CUP_SHIPPED, LATERALITY_SHIPPED):
        for name in ("model.safetensors", "config.json"):
            path = folder / name
            h.update(path.read_bytes() if path.is_file() else b"absent")
    return h.hexdigest()[:12]


def vessel_mask(image: np.ndarray, fov: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """(mask, method used): the shipped vessel network ('auto' uses it when its weights are
    present; F1 0.788 / AUC 0.973 on DRIVE test) or the classical top-hat (F1 0.754 / AUC 0.936,
    about 20 times faster).

    Either runs on the view inside a black margin of VESSEL_MARGIN px: the network was trained on
    photographs with a black surround, and where a field of view fills the frame (as generated
    images often do) it marks the frame edge as vessel (two thirds of the vessel pixels of 24
    images of the default model lay in a 4 px band along it)."""
    if method not in VESSEL_METHODS:
        raise ValueError(f"vessel method {method!r}: expected one of {VESSEL_METHODS}")
    net = shipped_vessel_net() if method != "classical" else None
    if net is None and method == "network":
        from fundusgen.errors import FundusgenError
        raise FundusgenError("--vessels network: the vessel network's weights are not installed")
    m = VESSEL_MARGIN
    padded, padded_fov = np.pad(image, ((m, m), (m, m), (0, 0))), np.pad(fov, m)
    if net is None:
        return classical_vessels(padded, padded_fov)[1][m:-m, m:-m], "classical"
    return network_vessels(net, padded, padded_fov)[1][m:-m, m:-m], "network"


def measure(image: np.ndarray, fov: np.ndarray, vessels: np.ndarray | None = None, vessel_method: str = "auto") -> dict:
    """Attributes of a square RGB fundus image (uint8) with its FOV mask (bool).

    ``vessels`` may be given (a manual mask); otherwise ``vessel_method`` makes one (vessel_mask).
    Disc, fovea and eye come from ``anatomy`` (relative brightness, vessel convergence, and the
    shipped laterality network or else the arcades, on a working-size copy); the shipped disc/cup network then refines the disc, started
    there, and gives the vertical cup-to-disc ratio. Where its weights are absent or it finds no
    disc, the classical disc stands and the CDR is unknown (None).
    Positions are fractions of the image side, so they do not depend on the resolution.
    """
    fov = fov.astype(bool)
    method = "given"
    if vessels is None:
        vessels, method = vessel_mask(image, fov, vessel_method)
    a = anatomy(image, fov)
    net = shipped_net()
    found = segment_disc_cup(net, image, fov, disc_start(a, fov)) if net is not None else None
    if found:
        a = replace(a, disc_x=found.x, disc_y=found.y, disc_diameter=found.diameter,
                    disc_ratio=found.diameter / (2 * fov_geometry(fov)[2]))
    side = float(image.shape[1])
    q = assess(image, fov)
    return {
        "version": VERSION,
        "quality": q.to_json(),
        "haze": haze(image, fov),
        "disc": {"x": round(a.disc_x / side, 4), "y": round(a.disc_y / side, 4),
                 "diameter": round(a.disc_diameter / side, 4), "ratio": round(a.disc_ratio, 4),
                 "cdr": round(found.cdr, 4) if found else None, "method": "network" if found else "classical"},
        "fovea": None if a.fovea_x is None else {"x": round(a.fovea_x / side, 4), "y": round(a.fovea_y / side, 4)},
        "eye": a.eye, "eye_confidence": round(a.eye_confidence, 4), "eye_method": a.eye_method,
        "vessels": regional_morphology(vessels, fov, regions(fov.shape, fov, a)),
        "vessel_method": method,
        "lesions": lesion_cues(image, fov, vessels, a),
    }
