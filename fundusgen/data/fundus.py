"""Fundus photograph preprocessing: load safely, find the circular field of view, crop, resize.

Hand-written because no library detects a fundus field of view; the steps are standard
(threshold the red channel, keep the largest blob, fill, take its convex hull) and run in
OpenCV at a reduced size, so preprocessing stays far below the cost of decoding the JPEG.
"""
from __future__ import annotations

from fundusgen.errors import FundusgenError

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

_DETECT_SIDE = 384  # FOV detection runs at this long side; the mask is resized back


class ImageError(FundusgenError, ValueError):
    """An input that is not a usable image (missing, empty, truncated, not an image)."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3), or raise ImageError saying what is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror})") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from None


def load_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """A binary mask (bool H, W) from a mask image; soft maps are thresholded at ``threshold``."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > threshold


def detect_fov(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the circular field of view of a fundus photograph.

    Threshold: the camera's black surround is far darker than any retina, so a threshold at a
    fraction of the bright-retina level (red channel, 90th percentile) separates them even in
    dark photos; the convex hull restores dark rims that belong to the circle.
    """
    h, w = rgb.shape[:2]
    scale = _DETECT_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    red = cv2.GaussianBlur(small[..., 0], (5, 5), 0)
    level = float(np.percentile(red, 90))
    threshold = max(6.0, min(0.2 * level, 40.0))
    binary = (red > threshold).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(np.concatenate(contours))
    filled = np.zeros_like(blob)
    cv2.fillConvexPoly(filled, hull, 1)
    if scale < 1:
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    return filled.astype(bool)


@dataclass(frozen=True)
class Crop:
    """Where the square output came from: the FOV box in source pixels and the padding added."""
    x0: int
    y0: int
    x1: int
    y1: int
    side: int      # side of the square (source pixels) after padding
    pad_x: int     # offset of the box inside the square
    pad_y: int

    def to_json(self):
        return self.__dict__.copy()


def fov_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ImageError("no field of view found (blank or almost black image)")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_square(mask: np.ndarray) -> Crop:
    """The square around the FOV: crop to its box, pad the short side (clipped circles)."""
    x0, y0, x1, y1 = fov_box(mask)
    side = max(x1 - x0, y1 - y0)
    return Crop(x0, y0, x1, y1, side, (side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2)


def apply_crop(array: np.ndarray, crop: Crop, size: int, *, nearest: bool = False) -> np.ndarray:
    """Crop ``array`` (image or mask) to ``crop``, pad with zeros to a square, resize to ``size``."""
    box = array[crop.y0:crop.y1, crop.x0:crop.x1]
    square = np.zeros((crop.side, crop.side) + array.shape[2:], array.dtype)
    square[crop.pad_y:crop.pad_y + box.shape[0], crop.pad_x:crop.pad_x + box.shape[1]] = box
    if nearest or array.dtype == bool:
        out = cv2.resize(square.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        return out.astype(array.dtype)
    interp = cv2.INTER_AREA if crop.side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def preprocess(rgb: np.ndarray, size: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Crop]:
    """Fundus photo -> (square RGB of ``size``, its FOV mask, the crop). Outside the FOV is black.
    ``mask``: the photo's FOV when the caller has already detected it."""
    mask = detect_fov(rgb) if mask is None else mask
    crop = crop_square(mask)
    image = apply_crop(rgb, crop, size)
    fov = apply_crop(mask, crop, size)
    image[~fov] = 0
    return image, fov, crop


def aperture(size: int, margin: float = 0.0) -> np.ndarray:
    """The field of view ``preprocess`` gives an unclipped photograph: the disk inscribed in the
    ``size`` square (float coverage 0-1, anti-aliased over one pixel), its radius grown by ``margin`` px."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    r = np.hypot(xx - size / 2, yy - size / 2)
    return np.clip(size / 2 + margin - r + 0.5, 0.0, 1.0).astype(np.float32)


def fov_roundness(mask: np.ndarray, side: int = 128) -> float:
    """How well ``mask`` matches a disk clipped by its bounding box (IoU, 0-1); 0 when no circle fits.

    A fundus camera's field of view is a circle, often cut by the frame: wide photos lose its
    top and bottom, zoomed ones keep only its four corners. The circle is fitted (least
    squares, Kasa) to the outline points off the box edges. Those arcs must lie in all four
    quadrants around its centre and the circle must be small enough to cut the box's corners;
    a photograph that fills its frame, or loses a dark corner or two, has no such circle and
    scores 0.
    """
    h, w = mask.shape
    scale = side / max(h, w)
    small = cv2.resize(mask.astype(np.uint8), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_NEAREST)
    if not small.any():
        return 0.0
    x0, y0, x1, y1 = fov_box(small)
    contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(contours)[:, 0, :].astype(np.float64)
    p = pts[(pts[:, 0] > x0 + 1) & (pts[:, 0] < x1 - 2) & (pts[:, 1] > y0 + 1) & (pts[:, 1] < y1 - 2)]
    if len(p) < 12:
        return 0.0
    (cx, cy, c), *_ = np.linalg.lstsq(np.column_stack([2 * p, np.ones(len(p))]), (p ** 2).sum(1), rcond=None)
    r2 = c + cx ** 2 + cy ** 2
    quadrants = np.unique(np.floor(np.arctan2(p[:, 1] - cy, p[:, 0] - cx) / (np.pi / 2)))
    if len(quadrants) < 4 or 4 * r2 > 1.1 * ((x1 - x0) ** 2 + (y1 - y0) ** 2):
        return 0.0
    yy, xx = np.mgrid[:small.shape[0], :small.shape[1]]
    disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r2
    disk[:y0] = disk[y1:] = False
    disk[:, :x0] = disk[:, x1:] = False
    return iou(disk, small > 0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
