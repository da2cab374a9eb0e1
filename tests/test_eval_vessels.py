"""Vessel geometry for evaluation: plausible values on a real fundus photo, and distances that
are zero for identical distributions and grow with a shift."""
import numpy as np
import torch
from skimage import data

from fundusgen.data.fundus import preprocess
from fundusgen.eval.vessels import METRICS, compare_geometry, vessel_geometry


def test_geometry_of_a_real_fundus_photo_is_plausible():
    torch.set_num_threads(1)
    rgb, _, _ = preprocess(data.retina(), 256)
    g = vessel_geometry(rgb)
    assert g["method"] in ("network", "classical")
    assert 0.03 < g["density"] < 0.3 and 1.2 < g["fractal_dimension"] < 1.9 and g["tortuosity"] >= 1.0


def test_distances_are_zero_for_the_same_values_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    rows = [{m: float(v) for m, v in zip(METRICS, rng.normal(1.0, 0.1, 4))} for _ in range(40)]
    shifted = [{m: r[m] + 0.5 for m in METRICS} for r in rows]
    same = compare_geometry({"real": rows}, rows)
    moved = compare_geometry({"real": rows}, shifted)
    for m in METRICS:
        assert same[m]["real"]["real"]["wasserstein"] == 0 and same[m]["real"]["real"]["ks"] == 0
        assert abs(moved[m]["real"]["real"]["wasserstein"] - 0.5) < 1e-6 and moved[m]["real"]["real"]["ks_p"] < 1e-6
    few = compare_geometry({"real": rows[:1]}, rows)
    assert "wasserstein" not in few["density"]["real"]["real"] and few["density"]["synthetic"]["n"] == 40
