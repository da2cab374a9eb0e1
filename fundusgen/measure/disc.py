"""Optic disc, fovea and laterality, found classically on a square FOV-cropped fundus image.

Disc: the place where a disc-sized window is brighter than its surroundings (the disc is the
largest compact bright structure; a difference of box filters, disc-sized minus three times
that, ignores slow illumination gradients) and dense in vessels (they converge there); the
z-scored brightness plus half the z-scored vessel density is maximal at the disc. On
Drishti-GS1 and the Mexican set this beat raw brightness (disc hit 100% vs 96%, laterality 87%
vs 81% on a 150-image sample); a larger vessel weight followed noise in dark photos.
Its diameter is the equivalent diameter of the bright blob around that point.
Fovea: the darkest smooth spot 2-3 disc diameters from the disc towards the FOV centre.
Laterality: in a standard (macula-centred or posterior-pole) photograph the disc lies nasal to
the fovea, which is on the image's right for a right eye; the horizontal offset of the disc
from the FOV centre, over the FOV radius, is the confidence.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from fundusgen.measure.vessels import fov_scale
from fundusgen.vocab import Eye

NOMINAL_DISC = 0.15   # disc diameter over FOV diameter in a 45 degree photograph
VESSEL_WEIGHT = 0.5


@dataclass
class Anatomy:
    disc_x: float          # disc centre, pixels of the measured image
    disc_y: float
    disc_diameter: float   # pixels
    disc_ratio: float      # disc diameter over FOV diameter
    fovea_x: float | None
    fovea_y: float | None
    eye: str | None        # laterality from the disc position
    eye_confidence: float  # |disc offset| / FOV radius: 0 central (unsure) .. 1 at the rim

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _z(a: np.ndarray, where: np.ndarray) -> np.ndarray:
    v = a[where]
    return (a - v.mean()) / (v.std() + 1e-6)


def fov_geometry(fov: np.ndarray) -> tuple[float, float, float]:
    """(centre x, centre y, radius) of the FOV."""
    ys, xs = np.nonzero(fov)
    return float(xs.mean()), float(ys.mean()), max(xs.max() - xs.min(), ys.max() - ys.min()) / 2.0


def find_disc(rgb: np.ndarray, fov: np.ndarray, vessels: np.ndarray) -> tuple[float, float, float]:
    """(x, y, diameter) of the optic disc."""
    s = fov_scale(fov)
    d0 = NOMINAL_DISC * 512 * s
    k = int(round(d0)) | 1
    gray = rgb.astype(np.float32).mean(-1)
    inner = cv2.erode(fov.astype(np.uint8), np.ones((k // 2 | 1, k // 2 | 1), np.uint8)) > 0
    filled = np.where(fov, gray, np.median(gray[fov]))  # the black surround is no dark background
    bright = cv2.blur(filled, (k, k)) - cv2.blur(filled, (3 * k | 1, 3 * k | 1))
    density = cv2.blur(vessels.astype(np.float32), (k, k))
    score = np.where(inner, _z(bright, inner) + VESSEL_WEIGHT * _z(density, inner), -np.inf)
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(x), float(y), disc_diameter(gray, fov, x, y, d0)


def disc_diameter(gray: np.ndarray, fov: np.ndarray, x: int, y: int, d0: float) -> float:
    """Equivalent diameter of the blob at (x, y) brighter than 30% of the way from the local
    background (median) to the disc's peak, within 0.5-2 nominal diameters. (Otsu's threshold
    had the same error on Drishti-GS1 but leaked into bright surroundings on other cameras.)"""
    r = int(round(1.2 * d0))
    y0, y1, x0, x1 = max(0, y - r), min(gray.shape[0], y + r), max(0, x - r), min(gray.shape[1], x + r)
    win = cv2.GaussianBlur(gray[y0:y1, x0:x1], (0, 0), max(1.0, d0 / 20))
    inside = fov[y0:y1, x0:x1]
    if inside.sum() < 10:
        return d0
    peak = win[max(0, y - y0 - 2):y - y0 + 3, max(0, x - x0 - 2):x - x0 + 3].max()
    base = float(np.median(win[inside]))
    blob = ((win > base + 0.3 * (peak - base)) & inside).astype(np.uint8)
    n, labels = cv2.connectedComponents(blob)
    label = labels[y - y0, x - x0]
    if label == 0:
        return d0
    area = float((labels == label).sum())
    return float(np.clip(2 * np.sqrt(area / np.pi), 0.5 * d0, 2.0 * d0))


def find_fovea(rgb: np.ndarray, fov: np.ndarray, disc: tuple[float, float, float]) -> tuple[float, float] | None:
    """The darkest smoothed point 2-3 disc diameters from the disc towards the FOV centre, or None."""
    cx, cy, radius = fov_geometry(fov)
    dx, dy, dd = disc
    side = 1.0 if cx >= dx else -1.0
    green = cv2.GaussianBlur(rgb[..., 1].astype(np.float32), (0, 0), max(1.0, dd / 4))
    yy, xx = np.mgrid[:fov.shape[0], :fov.shape[1]]
    along = (xx - dx) * side
    inner = cv2.erode(fov.astype(np.uint8), np.ones((int(dd) | 1, int(dd) | 1), np.uint8)) > 0
    window = inner & (along > 1.8 * dd) & (along < 3.2 * dd) & (np.abs(yy - dy) < 1.0 * dd)
    if window.sum() < 10:
        return None
    i = int(np.argmin(np.where(window, green, np.inf)))
    fy, fx = np.unravel_index(i, green.shape)
    return float(fx), float(fy)


def anatomy(rgb: np.ndarray, fov: np.ndarray, disc: tuple[float, float, float]) -> Anatomy:
    """Fovea and laterality around a disc (x, y, diameter) found by ``find_disc`` or the network."""
    dx, dy, dd = disc
    cx, cy, radius = fov_geometry(fov)
    fovea = find_fovea(rgb, fov, (dx, dy, dd))
    offset = (dx - cx) / radius
    eye = Eye.RIGHT.value if offset > 0 else Eye.LEFT.value
    return Anatomy(dx, dy, dd, float(dd / (2 * radius)), fovea[0] if fovea else None, fovea[1] if fovea else None,
                   eye, float(min(abs(offset), 1.0)))


def regions(shape: tuple[int, int], fov: np.ndarray, a: Anatomy) -> dict[str, np.ndarray]:
    """Boolean masks: 'disc' (0.5-1.5 disc diameters from its centre), 'macula' (within one disc
    diameter of the fovea) and 'periphery' (outer quarter of the FOV radius)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cx, cy, radius = fov_geometry(fov)
    r_disc = np.hypot(xx - a.disc_x, yy - a.disc_y) / a.disc_diameter
    out = {"disc": (r_disc >= 0.5) & (r_disc <= 1.5)}
    if a.fovea_x is not None:
        out["macula"] = np.hypot(xx - a.fovea_x, yy - a.fovea_y) <= a.disc_diameter
    out["periphery"] = np.hypot(xx - cx, yy - cy) > 0.75 * radius
    return out
