"""Optic disc, fovea and laterality, found classically on a square FOV-cropped fundus image.

All three are found on a copy of ``WORK_SIDE`` px (a disc is then about 40 px across), with its
own classical vessel map; positions are scaled back to the measured image.

Disc: the point that is both a bright blob and the place the vessels radiate from.
- Brightness: each colour channel is divided by its local background (a Gaussian of 1.5 disc
  diameters taken inside the FOV only), which removes vignetting and the dim exposure of dark
  photos; the mean of red and green is then filtered by a difference of Gaussians of the disc's
  scale.
- Convergence: vessels leave the disc radially, whereas they run across the macula and around
  lesions. The vessel orientation (double angle of the structure tensor of the vessel response)
  is compared with the radial direction from every candidate point over an annulus of 0.5-2
  nominal diameters: one correlation with two fixed kernels, normalised by the vessel pixels in
  the annulus.
- score = z(brightness) + 1.5 z(convergence), searched at least 0.7 nominal diameters inside the
  FOV edge (bright camera rims and halo crescents of dark photos otherwise win).
  Against the previous finder (raw brightness plus vessel density) this raised the share of
  centres inside the experts' disc box on CSDI's cataract photos from 87.6% to 95.5% (178 with a
  visible disc) and kept Drishti-GS1 at 100% inside the experts' disc (101).
Its diameter is the equivalent diameter of the bright blob around that point, on the measured image.

Laterality (which eye): the shipped laterality network (``fundusgen.measure.laterality``: a tiny
CNN whose logit is odd under a horizontal flip by construction, on this working copy and its
vessel response) when its weights are present (``laterality_method='auto'``); else, or with
``laterality_method='classical'``, two classical cues, each an odd function under a horizontal flip:
- the disc's horizontal offset from the FOV centre over the FOV radius (the disc lies nasal to
  the macula: on the image's right in a right eye);
- the arcade orientation: the major temporal arcades leave the disc above and below and bend
  towards the macula, so the thick vessels (top 3% of the vessel response) run like ">" with its
  vertex at the disc for a right eye and "<" for a left eye: the mean of sin(2 theta) times the
  sign of the height relative to the FOV centre is negative for a right eye. This cue does not
  need the disc, so it holds when the disc is missed (exudates, reflexes) or is at the centre.
score = 5.0 offset - 8.0 arcade (logistic weights fitted on the 10-class set, so the Mexican set
tests them out of sample); right eye when score > 0; eye_confidence = tanh(|score| / 2), the
logistic probability of the chosen eye rescaled to 0-1 (the network's confidence is the same
function of its logit). On the held-out splits (test / val) the two are about equally accurate
(Mexican set 96.8% / 98.7% both, 10-class set 100% / 94.6% network, 100% / 96.4% classical; the
errors are nearly all unreadable dark photos and two swapped labels), but the network is sure of
far more photos: at confidence >= 0.9 it answers 94% / 96% of the Mexican photos (98.3% / 100%
right), the classical cues 82% / 85% (98.1% / 99.2% right). Figures: ``python -m
fundusgen.measure.laterality evaluate --data PREPARED`` or ``python -m fundusgen.measure.validate
DATA --only laterality``.
Fovea: the darkest smoothed point 1.8-3.2 disc diameters temporal to the disc (towards the macula
of the measured eye, whichever method measured it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from fundusgen.measure.vessels import classical_vessels
from fundusgen.vocab import Eye

WORK_SIDE = 256
NOMINAL_DISC = 0.15        # disc diameter over FOV diameter in a 45 degree photograph
BACKGROUND_SCALE = 1.5     # Gaussian sigma of the local background, in nominal disc diameters
RIM_MARGIN = 0.7           # disc centres at least this many nominal diameters inside the FOV edge
CONVERGENCE_WEIGHT = 1.5
CONVERGENCE_ANNULUS = (0.5, 2.0)  # nominal diameters
THICK_VESSEL_SHARE = 0.03  # the arcade cue reads the strongest 3% of the vessel response
EYE_WEIGHTS = (5.0, -8.0)  # (disc offset, arcade orientation) -> logit of "right eye"


@dataclass
class Anatomy:
    disc_x: float          # disc centre, pixels of the measured image
    disc_y: float
    disc_diameter: float   # pixels
    disc_ratio: float      # disc diameter over FOV diameter
    fovea_x: float | None
    fovea_y: float | None
    eye: str | None        # laterality: the shipped network, or the disc position and the vessel arcades
    eye_confidence: float  # tanh(|score| / 2): 0 no evidence .. 1 certain
    eye_method: str = "classical"  # "network" or "classical"

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _z(a: np.ndarray, where: np.ndarray) -> np.ndarray:
    v = a[where]
    return (a - v.mean()) / (v.std() + 1e-6)


def fov_geometry(fov: np.ndarray) -> tuple[float, float, float]:
    """(centre x, centre y, radius) of the FOV."""
    ys, xs = np.nonzero(fov)
    return float(xs.mean()), float(ys.mean()), max(xs.max() - xs.min(), ys.max() - ys.min()) / 2.0


def smooth_inside(a: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of ``a`` over FOV pixels only (normalised convolution), so the black
    surround does not darken the rim. Wide kernels run on a 4x smaller copy: same result, far cheaper."""
    f = fov.astype(np.float32)
    h, w = a.shape
    k = max(1, int(sigma // 4))
    num, den = a.astype(np.float32) * f, f
    if k > 1:
        num = cv2.resize(num, (w // k, h // k), interpolation=cv2.INTER_AREA)
        den = cv2.resize(den, (w // k, h // k), interpolation=cv2.INTER_AREA)
    out = cv2.GaussianBlur(num, (0, 0), sigma / k) / np.maximum(cv2.GaussianBlur(den, (0, 0), sigma / k), 1e-3)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR) if k > 1 else out


def relative_brightness(rgb: np.ndarray, fov: np.ndarray, dd: float) -> np.ndarray:
    """Mean of red and green, each over its local background (1 = background)."""
    out = np.zeros(fov.shape, np.float32)
    for c in (0, 1):
        ch = rgb[..., c].astype(np.float32)
        out += ch / np.maximum(smooth_inside(ch, fov, BACKGROUND_SCALE * dd), 1.0)
    return out / 2


def vessel_orientation(response: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos 2 theta, sin 2 theta) of the vessel direction theta on ``mask`` pixels, 0 elsewhere.

    The gradient structure tensor's dominant direction is across a vessel; the vessel runs at
    90 degrees to it, which negates the double-angle vector."""
    r = response.astype(np.float32)
    gx, gy = cv2.Sobel(r, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(r, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = (cv2.GaussianBlur(g, (0, 0), 2.0) for g in (gx * gx, gy * gy, gx * gy))
    c, s = jyy - jxx, -2 * jxy
    norm = np.sqrt(c * c + s * s) + 1e-6
    m = mask.astype(np.float32)
    return c / norm * m, s / norm * m


def radial_kernels(dd: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cos 2 phi and sin 2 phi of the direction phi from the kernel centre, on an annulus, and the annulus."""
    r0, r1 = CONVERGENCE_ANNULUS
    rad = int(r1 * dd) + 1
    yy, xx = np.mgrid[-rad:rad + 1, -rad:rad + 1].astype(np.float32)
    r, phi2 = np.hypot(xx, yy), 2 * np.arctan2(yy, xx)
    ring = ((r >= r0 * dd) & (r <= r1 * dd)).astype(np.float32)
    return ring * np.cos(phi2), ring * np.sin(phi2), ring


def convergence(cos2: np.ndarray, sin2: np.ndarray, mask: np.ndarray, dd: float) -> np.ndarray:
    """Mean cos 2(theta - phi) over the vessel pixels of an annulus around each point: 1 when
    every vessel there points at the centre, 0 for random directions (or no vessels)."""
    kc, ks, ring = radial_kernels(dd)
    corr = lambda a, k: cv2.filter2D(a, -1, k, borderType=cv2.BORDER_CONSTANT)  # noqa: E731
    agree = corr(cos2, kc) + corr(sin2, ks)
    return agree / (corr(mask.astype(np.float32), ring) + 0.05 * ring.sum())


def working_copy(rgb: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(rgb, fov, scale) at WORK_SIDE px; scale multiplies working pixels into measured ones."""
    side = rgb.shape[1]
    if side <= WORK_SIDE:
        return rgb, fov, 1.0
    size = (WORK_SIDE, round(rgb.shape[0] * WORK_SIDE / side))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return small, cv2.resize(fov.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0, side / WORK_SIDE


def disc_score_map(rgb: np.ndarray, fov: np.ndarray, vessels: np.ndarray,
                   orientation: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """(score, where it is searched, nominal disc diameter) on a working-size image:
    score = z(brightness blob) + CONVERGENCE_WEIGHT z(vessel convergence), searched at least
    RIM_MARGIN nominal diameters inside the FOV edge."""
    _, _, radius = fov_geometry(fov)
    dd = NOMINAL_DISC * 2 * radius
    light = relative_brightness(rgb, fov, dd)
    blob = smooth_inside(light, fov, 0.25 * dd) - smooth_inside(light, fov, 0.75 * dd)
    inner = cv2.distanceTransform(fov.astype(np.uint8), cv2.DIST_L2, 3) > RIM_MARGIN * dd
    if inner.sum() < 10:
        inner = fov
    score = _z(blob, inner) + CONVERGENCE_WEIGHT * _z(convergence(*orientation, vessels, dd), inner)
    return score, inner, dd


def find_disc(rgb: np.ndarray, fov: np.ndarray, response: np.ndarray, vessels: np.ndarray,
              orientation: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
    """(x, y) of the optic disc centre on a working-size image."""
    score, inner, _ = disc_score_map(rgb, fov, vessels, orientation)
    y, x = np.unravel_index(int(np.argmax(np.where(inner, score, -np.inf))), score.shape)
    return int(x), int(y)


def disc_candidates(rgb: np.ndarray, fov: np.ndarray, n: int = 3,
                    separation: float = 2.0) -> list[tuple[float, float, float]]:
    """The ``n`` best disc candidates, (x, y, score) in ``rgb``'s pixels, best first: local maxima
    of ``disc_score_map`` at least ``separation`` nominal disc diameters apart. The first is the
    disc that ``anatomy`` finds; the others are what a second disc would look like."""
    from skimage.feature import peak_local_max
    if fov.sum() < 100:
        return []
    small, sfov, scale = working_copy(rgb, fov)
    response, vessels = classical_vessels(small, sfov)
    score, inner, dd = disc_score_map(small, sfov, vessels, vessel_orientation(response, vessels))
    floor = float(score[inner].min())
    peaks = peak_local_max(np.where(inner, score, floor), min_distance=max(1, int(separation * dd)),
                           num_peaks=n, exclude_border=False)
    return [(float(x) * scale, float(y) * scale, float(score[y, x])) for y, x in peaks if inner[y, x]]


def arcade_orientation(response: np.ndarray, fov: np.ndarray, sin2: np.ndarray) -> float:
    """Mean sin 2 theta of the thickest vessels, signed by the side of the horizontal midline:
    negative when they form '>' (a right eye), positive for '<' (a left eye)."""
    _, cy, _ = fov_geometry(fov)
    thick = (response > np.quantile(response[fov], 1 - THICK_VESSEL_SHARE)) & fov
    below = np.sign(np.arange(fov.shape[0], dtype=np.float32) - cy)[:, None]
    return float((sin2 * below * thick).sum() / (thick.sum() + 1))


def laterality(offset: float, arcade: float) -> tuple[str, float]:
    """(eye, confidence) from the disc offset (over the FOV radius) and the arcade orientation."""
    score = EYE_WEIGHTS[0] * offset + EYE_WEIGHTS[1] * arcade
    return (Eye.RIGHT.value if score > 0 else Eye.LEFT.value), float(np.tanh(abs(score) / 2))


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


def find_fovea(rgb: np.ndarray, fov: np.ndarray, disc: tuple[float, float, float],
               eye: str) -> tuple[float, float] | None:
    """The darkest smoothed point 1.8-3.2 disc diameters temporal to the disc, or None."""
    dx, dy, dd = disc
    temporal = -1.0 if eye == Eye.RIGHT.value else 1.0
    green = cv2.GaussianBlur(rgb[..., 1].astype(np.float32), (0, 0), max(1.0, dd / 4))
    yy, xx = np.ogrid[:fov.shape[0], :fov.shape[1]]
    along = (xx - dx) * temporal
    # the frame's edge counts as outside: a FOV cut by the frame has no dark rim to take for a fovea there
    inner = cv2.erode(fov.astype(np.uint8), np.ones((int(dd) | 1, int(dd) | 1), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    window = inner & (along > 1.8 * dd) & (along < 3.2 * dd) & (np.abs(yy - dy) < 1.0 * dd)
    if window.sum() < 10:
        return None
    fy, fx = np.unravel_index(int(np.argmin(np.where(window, green, np.inf))), green.shape)
    return float(fx), float(fy)


LATERALITY_METHODS = ("auto", "network", "classical")


def anatomy(rgb: np.ndarray, fov: np.ndarray, laterality_method: str = "auto") -> Anatomy:
    """Disc, fovea and eye of a square FOV-cropped image. The eye comes from the shipped laterality
    network (``fundusgen.measure.laterality``) when ``laterality_method`` is 'network', or 'auto'
    and its weights are present; otherwise from the classical cues. The fovea is searched on the
    temporal side of the eye so found."""
    if laterality_method not in LATERALITY_METHODS:
        raise ValueError(f"laterality method {laterality_method!r}: expected one of {LATERALITY_METHODS}")
    small, sfov, scale = working_copy(rgb, fov)
    response, vessels = classical_vessels(small, sfov)
    cos2, sin2 = vessel_orientation(response, vessels)
    x, y = find_disc(small, sfov, response, vessels, (cos2, sin2))
    cx, cy, radius = fov_geometry(sfov)
    net = None
    if laterality_method != "classical":
        from fundusgen.measure.laterality import shipped_laterality_net
        net = shipped_laterality_net()
        if net is None and laterality_method == "network":
            from fundusgen.errors import FundusgenError
            raise FundusgenError("laterality network: its weights are not installed")
    if net is not None:
        from fundusgen.measure.laterality import network_laterality
        (eye, confidence), eye_method = network_laterality(net, small, sfov, response), "network"
    else:
        eye, confidence = laterality((x - cx) / radius, arcade_orientation(response, sfov, sin2))
        eye_method = "classical"
    _, _, full_radius = fov_geometry(fov)
    dx, dy = min(x * scale, rgb.shape[1] - 1), min(y * scale, rgb.shape[0] - 1)
    gray = rgb.astype(np.float32).mean(-1)
    dd = disc_diameter(gray, fov, int(dx), int(dy), NOMINAL_DISC * 2 * full_radius)
    fovea = find_fovea(small, sfov, (x, y, dd / scale), eye)
    return Anatomy(dx, dy, dd, float(dd / (2 * full_radius)),
                   fovea[0] * scale if fovea else None, fovea[1] * scale if fovea else None, eye, confidence,
                   eye_method)


def dark_spot(rgb: np.ndarray, fov: np.ndarray, disc: tuple[float, float], dd: float,
              distance: tuple[float, float] = (1.5, 3.6), max_angle: float = 35.0) -> tuple[float, float, float] | None:
    """The darkest macula-sized spot ``distance`` disc diameters from the disc, on either side and
    at most ``max_angle`` degrees above or below the horizontal through it: (x, y, z), z its
    darkness in standard deviations of the centre-surround contrast over the FOV. Unlike
    ``find_fovea`` it does not assume the eye, so that an image whose fovea lies on the wrong side
    of its disc can be told apart. Contrast: the green channel over its local background, smoothed
    at 0.3 diameters minus at one diameter (the macula's dark centre against the retina around it),
    with the disc itself (within 0.75 diameters of its centre) left out of every mean: a bright disc
    in the surround makes the retina beside it look dark, which took the fovea for a spot next to
    the disc in a quarter of real photographs. The window spans the fovea's place in real
    photographs (about 2-3 diameters out, a few degrees below the disc) with room on every side,
    so a misplaced macula is still found and then judged by the calibrated ranges."""
    x0, y0 = disc
    yy, xx = np.ogrid[:fov.shape[0], :fov.shape[1]]
    r = np.hypot(xx - x0, yy - y0) / dd
    retina = fov & (r > 0.75)
    green = rgb[..., 1].astype(np.float32)
    rel = green / np.maximum(smooth_inside(green, retina, BACKGROUND_SCALE * dd), 1.0)
    contrast = smooth_inside(rel, retina, 0.3 * dd) - smooth_inside(rel, retina, 1.0 * dd)
    inner = cv2.erode(fov.astype(np.uint8), np.ones((int(dd) | 1, int(dd) | 1), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    angle = np.degrees(np.arctan2(np.abs(yy - y0), np.abs(xx - x0)))
    window = inner & (r > distance[0]) & (r < distance[1]) & (angle <= max_angle)
    if window.sum() < 10:
        return None
    fy, fx = np.unravel_index(int(np.argmin(np.where(window, contrast, np.inf))), contrast.shape)
    return float(fx), float(fy), float(-contrast[fy, fx] / (contrast[retina].std() + 1e-6))


def regions(shape: tuple[int, int], fov: np.ndarray, a: Anatomy) -> dict[str, np.ndarray]:
    """Boolean masks: 'disc' (0.5-1.5 disc diameters from its centre), 'macula' (within one disc
    diameter of the fovea) and 'periphery' (outer quarter of the FOV radius)."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    cx, cy, radius = fov_geometry(fov)
    r_disc = np.hypot(xx - a.disc_x, yy - a.disc_y) / a.disc_diameter
    out = {"disc": (r_disc >= 0.5) & (r_disc <= 1.5)}
    if a.fovea_x is not None:
        out["macula"] = np.hypot(xx - a.fovea_x, yy - a.fovea_y) <= a.disc_diameter
    out["periphery"] = np.hypot(xx - cx, yy - cy) > 0.75 * radius
    return out


def disc_start(a: Anatomy, fov: np.ndarray) -> tuple[float, float, float]:
    """(x, y, diameter) the disc/cup network starts from: the classical disc, its diameter at least
    the nominal one (the network recovers from a start that is too large, not from one much too small)."""
    return a.disc_x, a.disc_y, max(a.disc_diameter, NOMINAL_DISC * 2 * fov_geometry(fov)[2])


def classical_disc(rgb: np.ndarray, fov: np.ndarray) -> tuple[float, float, float]:
    """``disc_start`` of the classical anatomy of an image."""
    return disc_start(anatomy(rgb, fov), fov)
