"""Lesion cues and media haze.

Bright cues (exudates, drusen, cotton-wool spots): small spots much brighter than their
surroundings, i.e. the white top-hat of the CLAHE green channel with a disk wider than any
exudate, above mean + 5 sd, outside the optic disc (the brightest normal structure). Dark
cues (microaneurysms, haemorrhages): compact dark spots from the black top-hat, above mean +
4 sd, that do not touch the vessel tree (the vessel mask's large components) and are not
elongated. These
are cues, not a lesion segmentation: nothing here is validated against lesion masks, so
captions call them "bright/dark spots" and name a lesion type only where a label allows it.

Haze (media opacity): a cataract spreads light, lowering both global contrast and the fine
detail (high-frequency energy) of the green channel; haze = 1 - sqrt(contrast x detail), each
ramped to 0-1. Against CSDI's expert cataract severity (0-10) over its 187 images the
Spearman rank correlation is 0.78 (``python -m fundusgen.measure.validate``).
"""
from __future__ import annotations

import cv2
import numpy as np

from fundusgen.measure.disc import Anatomy, fov_geometry
from fundusgen.measure.vessels import clahe_green, fov_scale
from fundusgen.vocab import Region


MIN_CONTRAST = 15.0  # grey levels of top-hat response: fainter spots are texture, not lesions


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def _spots(response: np.ndarray, allowed: np.ndarray, sd: float, min_area: int, max_area: int,
           max_elongation: float) -> tuple[list[tuple[float, float, int]], np.ndarray]:
    """([(x, y, area)] of the kept spots, their pixels as a bool mask)."""
    v = response[allowed]
    if v.size == 0:
        return [], np.zeros(response.shape, dtype=bool)
    level = max(v.mean() + sd * v.std(), MIN_CONTRAST)
    mask = ((response > level) & allowed).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out, kept = [], np.zeros(n, dtype=bool)
    for i in range(1, n):
        area, w, h = stats[i, cv2.CC_STAT_AREA], stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]
        if min_area <= area <= max_area and max(w, h) / max(min(w, h), 1) <= max_elongation:
            out.append((float(cents[i][0]), float(cents[i][1]), int(area)))
            kept[i] = True
    return out, kept[labels]


def region_of(x: float, y: float, geometry: tuple[float, float, float], a: Anatomy) -> Region:
    """Where a point sits relative to disc, fovea and the arcades (``geometry``: FOV centre, radius)."""
    cx, cy, radius = geometry
    dd = a.disc_diameter
    if a.fovea_x is not None and np.hypot(x - a.fovea_x, y - a.fovea_y) <= 1.0 * dd:
        return Region.MACULA
    if np.hypot(x - a.disc_x, y - a.disc_y) <= 1.5 * dd:
        return Region.PERIPAPILLARY
    if np.hypot(x - cx, y - cy) > 0.75 * radius:
        return Region.PERIPHERY
    return Region.SUPERIOR_ARCADE if y < a.disc_y else Region.INFERIOR_ARCADE


def find_spots(rgb: np.ndarray, fov: np.ndarray, vessels: np.ndarray, a: Anatomy
               ) -> dict[str, tuple[list[tuple[float, float, int]], np.ndarray]]:
    """{'bright' | 'dark': ([(x, y, area)] in pixels, the spots' pixel mask)}: the cues of the module
    docstring, where they are, for :func:`lesion_cues` to count and for the lesion-weighted loss
    (``fundusgen.train.cache.lesion_mask``) to weigh."""
    s = fov_scale(fov)
    g = clahe_green(rgb, fov).astype(np.float32)
    rim = int(round(15 * s)) | 1
    inner = cv2.erode(fov.astype(np.uint8), np.ones((rim, rim), np.uint8)) > 0
    yy, xx = np.ogrid[:fov.shape[0], :fov.shape[1]]
    off_disc = np.hypot(xx - a.disc_x, yy - a.disc_y) > 1.0 * a.disc_diameter
    # the fovea is a normal dark spot
    off_fovea = (np.hypot(xx - a.fovea_x, yy - a.fovea_y) > 0.4 * a.disc_diameter) if a.fovea_x is not None else True
    k = int(round(25 * s)) | 1
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    bright = cv2.morphologyEx(g, cv2.MORPH_TOPHAT, disk)
    dark = cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, disk)
    # the vessel tree is the mask's large components; small compact ones are spots, not vessels
    n, labels, stats, _ = cv2.connectedComponentsWithStats(vessels.astype(np.uint8), connectivity=8)
    tree = (stats[:, cv2.CC_STAT_AREA] >= 200 * s * s)[labels] & vessels
    near_vessel = cv2.dilate(tree.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    a2 = s * s
    return {"bright": _spots(bright, inner & off_disc, 5.0, max(2, int(6 * a2)), int(4000 * a2), 4.0),
            "dark": _spots(np.where(near_vessel, 0, dark), inner & off_disc & off_fovea & ~near_vessel, 4.0,
                           max(2, int(6 * a2)), int(3000 * a2), 2.5)}


def lesion_cues(rgb: np.ndarray, fov: np.ndarray, vessels: np.ndarray, a: Anatomy) -> dict:
    """{'bright': {'count', 'area', 'regions': {region: count}}, 'dark': {...}}."""
    out, geometry = {}, fov_geometry(fov)
    for kind, (spots, _) in find_spots(rgb, fov, vessels, a).items():
        counts: dict[str, int] = {}
        for x, y, _ in spots:
            r = region_of(x, y, geometry, a).name.lower()
            counts[r] = counts.get(r, 0) + 1
        out[kind] = {"count": len(spots), "area": round(sum(ar for *_, ar in spots) / float(fov.sum()), 5),
                     "regions": counts}
    return out


def haze(rgb: np.ndarray, fov: np.ndarray) -> dict:
    """Media haze 0 (clear) .. 1 (no detail), with its two cues."""
    s = fov_scale(fov)
    green = rgb[..., 1].astype(np.float32)
    rim = int(round(15 * s)) | 1
    inner = cv2.erode(fov.astype(np.uint8), np.ones((rim, rim), np.uint8)) > 0
    if inner.sum() < 100:
        return {"haze": 1.0, "contrast": 0.0, "detail": 0.0}
    vals = green[inner]
    level = max(float(np.median(vals)), 1.0)
    contrast = _ramp(float(np.percentile(vals, 95) - np.percentile(vals, 5)) / level, 0.1, 0.8)
    fine = green - cv2.GaussianBlur(green, (0, 0), 2.0 * s)
    detail = _ramp(float(np.abs(fine[inner]).mean()) / level, 0.004, 0.03)
    return {"haze": round(1.0 - float(np.sqrt(contrast * detail)), 4), "contrast": round(contrast, 4),
            "detail": round(detail, 4)}
