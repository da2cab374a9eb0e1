"""Anatomical validity of a fundus image, from the project's measurement step.

Users of published fundus generators report images with two optic discs, no macula, or no
vessel tree. Every image (synthetic or real, the real ones being the reference) is put through
the same steps as ``fundusgen measure``, on a square FOV-cropped copy ``ANALYSIS_SIDE`` px
across (the generator's output size), and is valid when all of these hold:

1. **Fundus and field of view**: it passes the fundus check of ``fundusgen prepare`` (a round
   field of view on a dark surround, exposure, retina colours, a usable quality score) and its
   field of view is a clean circle, possibly clipped by the frame (roundness >= ``MIN_ROUNDNESS``).
2. **Exactly one optic disc.** Candidates are the best local maxima of the measurement step's
   disc score (``fundusgen.measure.disc.disc_score_map``: a bright blob of disc size that the
   vessels radiate from), at least two nominal disc diameters apart. A candidate is confirmed
   when the project's disc/cup network (``fundusgen.measure.disccup``, trained on Drishti-GS1)
   segments a disc of at least ``MIN_CONFIRMED_DIAMETER`` nominal diameters there. The image has
   as many discs as distinct confirmed candidates; when the network confirms none, the best
   candidate still counts as the disc if its score is at least the calibrated
   ``disc_score_min``, the score that 99% of the discs the network confirms reach (at 256 px the
   network misses about a quarter of real discs, mostly small or low-contrast ones). Two confirmed
   discs make an image invalid when the second is as disc-like as real discs (score at least
   ``disc_score_min``) and at least ``SECOND_DISC_MIN_RATIO`` of the first's diameter: in real
   photographs the network also outlines bright exudate clusters, which are small and have no
   vessels radiating from them.
3. **A macula where it belongs.** The darkest macula-sized spot 1.5-3.6 disc diameters from the
   disc, on either side and within 35 degrees of the horizontal through it (``disc.dark_spot``,
   which leaves the bright disc out of its contrast), is the fovea when it is at least
   ``fovea_z_min`` standard deviations dark; the disc-to-fovea distance (in disc diameters) and
   angle (degrees below the horizontal through the disc) must lie inside the range of real
   photographs. Where the media are too hazy for the tree test (below) a missing fovea is not
   held against the image: a cataract hides the macula as it hides the vessels.
4. **A vessel tree**: the share of the FOV that the project's vessel network marks as vessel is
   at least ``vessel_density_min``; and, where the media are clear enough for vessels to show
   (the measurement step's haze at most ``tree_haze_max``), the marked vessels branch: the
   skeleton pieces with three or more free ends add up to at least ``tree_length_min`` nominal
   disc diameters (``branching_length``). A real photograph's tree is one or a few such pieces,
   tens of disc diameters long; what the network marks in an image without vessels (blob edges,
   streaks, dashes) are lines, arcs and rings, which have two free ends or none. The mask is the
   measurement step's (``measure.attributes.vessel_mask``), which segments the view inside a
   black margin, as the network was trained: where a field of view fills the frame, without it
   the network marks the frame itself.

The thresholds in ``CALIBRATION_FILE`` are quantiles (``REAL_QUANTILES``) of the same
measurements on real training photographs of good quality, written by ``python -m fundusgen.eval.anatomy
calibrate PREPARED_DIR``; so by construction a few percent of real photographs fail one test,
and the real held-out sets in the report show how many. Three are fitted differently, because a
cataract hides the vessel tree (a fifth of the calibration photographs show almost none):
``tree_haze_max`` is the haze that best separates the photographs labelled cataract from those
labelled clear, and ``tree_length_min`` and ``fovea_z_min`` are the low quantiles over the
photographs at or below it that are not labelled cataract.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fundusgen.data import fundus, quality
from fundusgen.data.fundus import detect_fov, fov_roundness
from fundusgen.data.quality import MIN_ROUNDNESS, assess
from fundusgen.measure import disc as disc_measure
from fundusgen.measure import attributes, lesions
from fundusgen.measure.disc import NOMINAL_DISC, dark_spot, disc_candidates, fov_geometry

ANALYSIS_SIDE = 256           # the FOV-cropped square every image is judged at, in pixels
CANDIDATES = 3                # disc candidates looked at per image
MIN_CONFIRMED_DIAMETER = 0.4  # a network disc smaller than this many nominal diameters is a bright speck
SAME_DISC = 1.0               # confirmed discs closer than this many nominal diameters are one disc
SECOND_DISC_MIN_RATIO = 0.6   # a second disc at least this share of the first's diameter (real discs vary about ±25%)
REAL_QUANTILES = (0.01, 0.99)  # the real range each measurement must fall in (one-sided where it says min)
MIN_FREE_ENDS = 3             # a skeleton piece with this many free ends branches (a line has 2, a ring 0)
CALIBRATION_FILE = Path(__file__).with_name("anatomy_calibration.json")


@functools.lru_cache(maxsize=1)
def calibration() -> dict:
    """The thresholds fitted on real training photographs (``calibrate``)."""
    return json.loads(CALIBRATION_FILE.read_text())["thresholds"]


@dataclass
class Disc:
    """An optic disc found in an image, in the input image's pixels."""
    x: float
    y: float
    diameter: float
    score: float         # the measurement step's disc score at the candidate
    confirmed: bool      # the disc/cup network segments a disc there


@dataclass
class Fovea:
    x: float
    y: float
    z: float             # darkness, standard deviations of the centre-surround contrast
    distance: float      # from the disc centre, in nominal disc diameters
    angle: float         # degrees below the horizontal through the disc (negative: above)


@dataclass
class AnatomyCheck:
    """What the measurement step sees in one image, and why it is invalid (``reasons``; empty = valid)."""
    fov_roundness: float
    quality: float
    quality_grade: str
    optic_discs: int
    discs: list[Disc] = field(default_factory=list)
    fovea: Fovea | None = None
    vessel_density: float | None = None
    branching_length: float | None = None  # nominal disc diameters (rule 4)
    haze: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {**asdict(self), "valid": self.valid}

    @classmethod
    def from_dict(cls, d: dict) -> "AnatomyCheck":
        return cls(d["fov_roundness"], d["quality"], d["quality_grade"], d["optic_discs"],
                   [Disc(**x) for x in d["discs"]], Fovea(**d["fovea"]) if d.get("fovea") else None,
                   d.get("vessel_density"), d.get("branching_length"), d.get("haze"), list(d["reasons"]))


@dataclass
class Measurements:
    """The raw measurements of one square FOV-cropped image, before any threshold."""
    candidates: list[tuple[float, float, float]]       # (x, y, score), best first
    confirmed: list[tuple[float, float, float] | None]  # network disc (x, y, diameter) per candidate
    dd: float                                            # nominal disc diameter, pixels
    fovea: tuple[float, float, float] | None             # (x, y, z) of the darkest macula-sized spot
    vessel_density: float
    branching_length: float                              # nominal disc diameters (``branching_length``)
    haze: float                                          # the measurement step's media haze, 0-1


def analysis_view(rgb: np.ndarray, fov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
    """(square FOV-cropped RGB of ANALYSIS_SIDE, its FOV, input pixels per view pixel, (x, y) offset
    of the view's origin in the input): every image is judged at the same scale. ``fov``: the
    input's FOV when already detected."""
    image, fov, crop = fundus.preprocess(rgb, ANALYSIS_SIDE, fov)
    return image, fov, crop.side / ANALYSIS_SIDE, (crop.x0 - crop.pad_x, crop.y0 - crop.pad_y)


_RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # the 8 neighbours, in turn


def free_ends(skeleton: np.ndarray) -> np.ndarray:
    """Skeleton pixels where a line ends: one off-to-on step going round the 8 neighbours (the
    crossing number). Counting neighbours instead misses a line that ends in a staircase step."""
    h, w = skeleton.shape
    p = np.pad(skeleton.astype(bool), 1)
    ring = [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _RING]
    crossings = sum((~ring[i] & ring[(i + 1) % 8]).astype(np.uint8) for i in range(8))
    return skeleton.astype(bool) & (crossings == 1)


def branching_length(mask: np.ndarray, dd: float) -> float:
    """Skeleton length, in disc diameters ``dd``, of the vessel-mask pieces with at least
    MIN_FREE_ENDS free ends: the pieces that branch.

    It tells a vessel tree from what the vessel network marks where there are no vessels: lines,
    arcs and rings (blob edges, streaks, dashes) have two free ends or none, and a ring that a
    dash touches has one, so none of them counts however long it is. Measured at 256 px: on the
    clear real training photographs the median is about 49 disc diameters (almost the whole tree
    is one or a few such pieces); of 24 images of the default model 12 have none and the rest
    0.3-5.4. Total skeleton length does not separate them (the model's dashes add up to 2-24 disc
    diameters, as much as a sparse real tree), nor does counting branch points (a ring that a
    dash touches has one). Its 1% floor is low (about a disc diameter) because a few percent of
    clear-looking real photographs show hardly any tree, so it fails images whose marks barely
    branch, not every image with a poor tree.
    """
    from skimage.morphology import skeletonize
    skeleton = skeletonize(mask)
    n, labels = cv2.connectedComponents(skeleton.astype(np.uint8), connectivity=8)
    ends = np.bincount(labels[free_ends(skeleton)], minlength=n)
    branching = np.flatnonzero(ends >= MIN_FREE_ENDS)
    return float(np.isin(labels, branching[branching > 0]).sum()) / dd


def measure_view(image: np.ndarray, fov: np.ndarray) -> Measurements:
    """Disc candidates, their confirmation by the disc/cup network, the fovea, the vessel density,
    branching vessel length and haze of a square FOV-cropped image."""
    from fundusgen.measure.disccup import segment_disc_cup, shipped_net
    dd = NOMINAL_DISC * 2 * fov_geometry(fov)[2]
    candidates = disc_candidates(image, fov, CANDIDATES)
    net = shipped_net()
    confirmed = []
    for x, y, _ in candidates:
        found = segment_disc_cup(net, image, fov, (x, y, dd)) if net is not None else None
        confirmed.append((found.x, found.y, found.diameter) if found else None)
    vessels = attributes.vessel_mask(image, fov)[0]
    m = Measurements(candidates, confirmed, dd, None, float(vessels[fov].mean()), branching_length(vessels, dd),
                     lesions.haze(image, fov)["haze"])
    # the fovea is looked for from where count_discs puts the disc: the first disc the network confirms
    # (no score reaches infinity: no second disc, no unconfirmed one), else the best candidate
    first = count_discs(m, np.inf)
    anchor = (first[0].x, first[0].y) if first else candidates[0][:2] if candidates else None
    m.fovea = dark_spot(image, fov, anchor, dd) if anchor else None
    return m


def count_discs(m: Measurements, disc_score_min: float) -> list[Disc]:
    """The optic discs of the module docstring's rule 2, best first (view pixels)."""
    discs: list[Disc] = []
    for (x, y, score), found in zip(m.candidates, m.confirmed):
        if found is None or found[2] < MIN_CONFIRMED_DIAMETER * m.dd:
            continue
        if discs and (score < disc_score_min or found[2] < SECOND_DISC_MIN_RATIO * discs[0].diameter):
            continue  # a bright lesion the network outlines: not as disc-like as real discs, or far smaller than the first
        if all(np.hypot(found[0] - d.x, found[1] - d.y) > SAME_DISC * m.dd for d in discs):
            discs.append(Disc(found[0], found[1], found[2], score, True))
    if not discs and m.candidates and m.candidates[0][2] >= disc_score_min:
        x, y, score = m.candidates[0]
        discs.append(Disc(x, y, m.dd, score, False))
    return discs


def fovea_geometry(m: Measurements, disc: Disc) -> Fovea | None:
    if m.fovea is None:
        return None
    fx, fy, z = m.fovea
    return Fovea(fx, fy, z, float(np.hypot(fx - disc.x, fy - disc.y) / m.dd),
                 float(np.degrees(np.arctan2(fy - disc.y, abs(fx - disc.x)))))


def check_image(rgb: np.ndarray) -> AnatomyCheck:
    """Field of view, quality, optic discs, fovea and vessel tree of one uint8 RGB image."""
    t = calibration()
    full_fov = detect_fov(rgb)
    roundness = fov_roundness(full_fov) if full_fov.any() else 0.0
    reasons = []
    if not full_fov.any():
        q = assess(rgb, full_fov)
        return AnatomyCheck(0.0, q.score, q.grade.value, 0, reasons=[q.reason or "no field of view found"])
    image, fov, scale, (ox, oy) = analysis_view(rgb, full_fov)
    q = assess(image, fov)
    if q.reason:  # not a fundus (which includes a field of view that is not round), too dark, unusable
        reasons.append(q.reason)
    elif roundness < MIN_ROUNDNESS:
        reasons.append(f"field of view is not a clean circle (roundness {roundness:.2f} < {MIN_ROUNDNESS})")
    m = measure_view(image, fov)
    discs = count_discs(m, t["disc_score_min"])
    if len(discs) != 1:
        reasons.append("no optic disc found" if not discs else f"{len(discs)} optic discs")
    fovea = fovea_geometry(m, discs[0]) if discs else None
    if discs:
        if fovea is None or fovea.z < t["fovea_z_min"]:
            if m.haze <= t["tree_haze_max"]:  # hazy media hide the macula as they hide the vessels
                reasons.append("no fovea found")
        else:
            lo, hi = t["fovea_distance"]
            if not lo <= fovea.distance <= hi:
                reasons.append(f"fovea {fovea.distance:.1f} disc diameters from the disc (real {lo:.1f}-{hi:.1f})")
            lo, hi = t["fovea_angle"]
            if not lo <= fovea.angle <= hi:
                reasons.append(f"fovea at {fovea.angle:.0f} degrees from the disc's horizontal (real {lo:.0f} to {hi:.0f})")
    if m.vessel_density < t["vessel_density_min"]:
        reasons.append(f"no vessel tree (vessel density {m.vessel_density:.3f} < {t['vessel_density_min']:.3f})")
    elif m.haze <= t["tree_haze_max"] and m.branching_length < t["tree_length_min"]:
        reasons.append(f"no vessel tree (branching vessels {m.branching_length:.1f} disc diameters long "
                       f"< {t['tree_length_min']:.1f}, haze {m.haze:.2f})")
    to_input = lambda x, y: (ox + x * scale, oy + y * scale)  # noqa: E731
    discs = [Disc(*to_input(d.x, d.y), d.diameter * scale, round(d.score, 3), d.confirmed) for d in discs]
    if fovea is not None:
        fovea = Fovea(*to_input(fovea.x, fovea.y), round(fovea.z, 3), round(fovea.distance, 3), round(fovea.angle, 2))
    return AnatomyCheck(round(roundness, 4), q.score, q.grade.value, len(discs), discs, fovea,
                        round(m.vessel_density, 4), round(m.branching_length, 3), m.haze, reasons)


# The per-image outcomes whose shares ``summarise`` reports, by name: a paired comparison of two
# models on the same prompts and seeds counts them image by image (``fundusgen.eval.protocol``).
OUTCOMES = {
    "valid": lambda c: c.valid,
    "one_disc": lambda c: c.optic_discs == 1,
    "disc_confirmed": lambda c: bool(c.discs) and c.discs[0].confirmed,
    "fovea": lambda c: c.optic_discs == 1 and not any("fovea" in r for r in c.reasons),
    "vessel_tree": lambda c: not any("no vessel tree" in r for r in c.reasons),
}


def summarise(checks: list[AnatomyCheck]) -> dict:
    """Shares and distributions of a set of checks, ready for JSON."""
    n = len(checks)
    if n == 0:
        return {"n": 0}
    roundness = np.array([c.fov_roundness for c in checks])
    quality_scores = np.array([c.quality for c in checks])
    discs = np.array([c.optic_discs for c in checks])
    density = np.array([c.vessel_density if c.vessel_density is not None else 0.0 for c in checks])
    branching = np.array([c.branching_length if c.branching_length is not None else 0.0 for c in checks])
    tree_haze_max = calibration()["tree_haze_max"]
    quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)
    share = lambda outcome: float(np.mean([OUTCOMES[outcome](c) for c in checks]))  # noqa: E731
    return {
        "n": n,
        "valid_share": share("valid"),
        "round_fov_share": float(np.mean(roundness >= MIN_ROUNDNESS)),
        "one_disc_share": share("one_disc"),
        "disc_count_shares": {**{str(k): float(np.mean(discs == k)) for k in (0, 1, 2)},
                              "3+": float(np.mean(discs >= 3))},
        "confirmed_disc_share": share("disc_confirmed"),
        "fovea_share": share("fovea"),
        "vessel_tree_share": share("vessel_tree"),
        "fov_roundness_quantiles": {f"q{q:g}": float(np.quantile(roundness, q)) for q in quantiles},
        "quality_quantiles": {f"q{q:g}": float(np.quantile(quality_scores, q)) for q in quantiles},
        "vessel_density_quantiles": {f"q{q:g}": float(np.quantile(density, q)) for q in quantiles},
        "branching_length_quantiles": {f"q{q:g}": float(np.quantile(branching, q)) for q in quantiles},
        # too hazy for the branching test (haze above tree_haze_max): judged by the density alone
        "hazy_share": float(np.mean([c.haze is not None and c.haze > tree_haze_max for c in checks])),
        "quality_grade_shares": {g: float(np.mean([c.quality_grade == g for c in checks]))
                                 for g in ("good", "usable", "reject")},
    }


def version() -> str:
    """Part of every cache key of these checks: a digest of the code, calibration and measurement
    weights they use, so that changing any of them recomputes them."""
    code = b"".join(Path(m.__file__).read_bytes() for m in (fundus, quality, disc_measure, lesions, attributes))
    code += Path(__file__).read_bytes() + CALIBRATION_FILE.read_bytes() + attributes.weights_id().encode()
    return hashlib.sha1(code).hexdigest()[:16]


# --- calibration on real photographs ---------------------------------------------------------------

def fit_thresholds(rows: list[Measurements], cataract: list[bool | None]) -> dict:
    """The thresholds of ``check_image`` from the measurements of real photographs and their
    cataract labels (None: not labelled): each is the REAL_QUANTILES quantile of its measurement.
    The disc score's is taken over the discs the network confirms: a candidate it does not confirm
    still counts when it is as disc-like as nearly every confirmed disc. The branching test's haze
    limit best separates labelled cataract from labelled clear photographs (every photograph counts
    as clear without both labels), and its length is taken over the clear photographs: a cataract
    hides the tree, and a labelled cataract that measures clear is the haze measure's miss. The
    macula's darkness is taken over the clear photographs too."""
    from fundusgen.eval.faithfulness import balanced_threshold
    lo, hi = REAL_QUANTILES
    q = lambda a, p: round(float(np.quantile(np.asarray(a, float), p)), 4)  # noqa: E731
    confirmed = [m.candidates[0][2] for m in rows if m.candidates and m.confirmed[0] is not None]
    disc_score_min = q(confirmed, lo) if confirmed else 0.0
    labelled = [(m.haze, c) for m, c in zip(rows, cataract) if c is not None]
    haze_max = round(balanced_threshold(*zip(*labelled)), 4) if len({c for _, c in labelled}) == 2 else 1.0
    is_clear = [m.haze <= haze_max and c is not True for m, c in zip(rows, cataract)]
    geometry = []  # (fovea, from a clear photograph)
    for m, clear in zip(rows, is_clear):
        discs = count_discs(m, disc_score_min)
        if len(discs) == 1 and (f := fovea_geometry(m, discs[0])) is not None:
            geometry.append((f, clear))
    # the macula's darkness over the clear photographs: a cataract hides it (and the test skips hazy images)
    z_min = q([f.z for f, clear in geometry if clear] or [f.z for f, _ in geometry], lo)
    kept = [f for f, _ in geometry if f.z >= z_min]
    return {
        "disc_score_min": disc_score_min,
        "fovea_z_min": z_min,
        "fovea_distance": [q([f.distance for f in kept], lo), q([f.distance for f in kept], hi)],
        "fovea_angle": [q([f.angle for f in kept], lo), q([f.angle for f in kept], hi)],
        "vessel_density_min": q([m.vessel_density for m in rows], lo),
        "tree_haze_max": haze_max,
        "tree_length_min": q([m.branching_length for m, clear in zip(rows, is_clear) if clear], lo),
    }


def calibrate(prepared: str | Path, split: str = "train", limit: int = 600, seed: int = 0,
              out: Path = CALIBRATION_FILE, progress: bool = True) -> dict:
    """Measure ``limit`` random photographs of ``split`` in a prepared folder and write the
    thresholds (with how they were made) to ``out``, atomically."""
    import random

    from tqdm import tqdm

    from fundusgen.data.prepare import read_index
    from fundusgen.data.shards import atomic_write_text, iter_samples
    index = read_index(prepared)
    # gradable photographs: what a generator is asked for
    keys = index.loc[(index["split"] == split) & (index["quality_grade"] == "good"), "key"].tolist()
    chosen = set(random.Random(seed).sample(keys, min(limit, len(keys))))
    cataract = index.set_index("key")["cataract"]
    rows, labels = [], []
    bar = tqdm(total=len(chosen), desc="anatomy calibration", disable=not progress)
    for s in iter_samples(prepared, keep=lambda meta: meta["key"] in chosen):
        image, fov, _, _ = analysis_view(s["image"])
        rows.append(measure_view(image, fov))
        label = cataract[s["meta"]["key"]]
        labels.append(None if label is None else bool(label))
        bar.update()
    bar.close()
    thresholds = fit_thresholds(rows, labels)
    record = {"thresholds": thresholds,
              "made_by": f"python -m fundusgen.eval.anatomy calibrate {prepared} --split {split} --limit {limit} "
                         f"--seed {seed}",
              "photographs": len(rows), "real_quantiles": list(REAL_QUANTILES), "side": ANALYSIS_SIDE}
    atomic_write_text(Path(out), json.dumps(record, indent=2) + "\n")
    calibration.cache_clear()
    return record


def main(argv: list[str] | None = None) -> int:
    """Fit the anatomy check's thresholds on real photographs of a prepared folder."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m fundusgen.eval.anatomy", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="measure real photographs and write anatomy_calibration.json")
    c.add_argument("prepared", help="a prepared folder (fundusgen prepare)")
    c.add_argument("--split", default="train")
    c.add_argument("--limit", type=int, default=600)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    args = p.parse_args(argv)
    print(json.dumps(calibrate(args.prepared, args.split, args.limit, args.seed, args.out), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
