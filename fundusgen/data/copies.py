"""Copies of one photograph among the records of ``fundusgen prepare``, so that the split keeps them
on one side.

Public fundus sets share photographs: the same picture sits in two datasets (CSDI and the Kaggle
4-class set), under two patient ids of one dataset (the Mexican set), or as flipped, rotated and
re-coloured augmentations (the 4-class set's ``_N_*.jpg`` families, some of them copies of its
ODIR-named photographs). A patient-level split then puts a copy of a training photograph into the
held-out splits: on ``../shared/data`` a quarter of the held-out photographs had one, which made
the memorisation threshold 1.0 and let held-out classifiers be tested on their training images.

Two records are copies when

- their adapter says so: the same ``source_labels["copy_group"]`` within one dataset (the 4-class
  set's augmentation families), or
- their **signatures** correlate at least ``COPY_CORRELATION`` under one of the eight flips and
  quarter turns. The signature is the central 60% of the field of view's bounding box (what any
  crop or frame of the same picture keeps), in grey, 32 x 32, high-pass filtered (fine structure:
  vessels, lesions, the disc's edge; not the illumination or the colour balance, which re-coding
  changes) and normalised. On the shared data, pairs at 0.9 or more were the same photograph in
  every pair looked at; pairs of distinct photographs reach 0.7-0.9 when both are featureless
  (dense cataract), and some augmented copies fall there too, so this finds most copies, not all.

Written by hand: image-hashing libraries answer "the same file re-encoded", not "the same fundus
flipped and re-coloured", and the all-pairs search is one matrix product per flip. It is
quadratic: 6,741 photographs take 4.5 s on two cores; a million would need an approximate index.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from fundusgen.data.fundus import detect_fov

SIDE = 32
COPY_CORRELATION = 0.9
BLOCK = 1024  # rows per matrix product: two (BLOCK, n) float32 arrays in memory


def signature(rgb: np.ndarray) -> np.ndarray:
    """The (SIDE, SIDE) float32 signature of a photograph (module docstring), unit norm."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    fov = detect_fov(rgb)
    if not fov.any():
        fov = grey > 0.1 * grey.max()
    if not fov.any():
        return np.zeros((SIDE, SIDE), np.float32)
    ys, xs = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    h, w = ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1
    centre = grey[ys[0] + int(0.2 * h):ys[0] + int(0.8 * h) + 1, xs[0] + int(0.2 * w):xs[0] + int(0.8 * w) + 1]
    small = cv2.resize(centre, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    fine = small - cv2.GaussianBlur(small, (0, 0), SIDE / 16)
    fine -= fine.mean()
    norm = np.linalg.norm(fine)
    return (fine / norm).astype(np.float32) if norm > 1e-6 else np.zeros_like(fine)


def _dihedral(signatures: np.ndarray) -> list[np.ndarray]:
    """The signatures under the eight flips and quarter turns, each flattened to (n, SIDE * SIDE)."""
    out = []
    for k in range(4):
        turned = np.rot90(signatures, k, axes=(1, 2))
        out += [turned.reshape(len(signatures), -1), turned[:, :, ::-1].reshape(len(signatures), -1)]
    return out


def copy_pairs(signatures: np.ndarray, threshold: float = COPY_CORRELATION) -> list[tuple[int, int, float]]:
    """(i, j, correlation) with i < j for every pair of signatures that correlate at least
    ``threshold`` under some flip or quarter turn."""
    n = len(signatures)
    if n < 2:
        return []
    plain = signatures.reshape(n, -1)
    variants = _dihedral(signatures)
    pairs = []
    for start in range(0, n, BLOCK):
        rows = plain[start:start + BLOCK]
        # <x, T y> = <T^-1 x, y>, and the eight transforms are closed under inverse: the maximum is
        # symmetric, so each pair is kept once, from its lower index
        best = rows @ variants[0].T
        for v in variants[1:]:
            np.maximum(best, rows @ v.T, out=best)
        pairs += [(start + int(a), int(b), float(best[a, b])) for a, b in zip(*np.nonzero(best >= threshold))
                  if start + int(a) < int(b)]
    return pairs


def copy_groups(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Component label of each of n records, records joined by ``pairs`` (copies of copies too)."""
    if not pairs:
        return np.arange(n)
    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]
