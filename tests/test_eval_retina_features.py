"""Retina-domain features (the vessel network's encoder): shape, determinism, and a Fréchet
distance that is zero for identical sets and grows when the images are degraded."""
import cv2
import numpy as np
import torch
from skimage import data

from fundusgen.data.fundus import preprocess
from fundusgen.eval.report import _sample_ids as sample_ids
from fundusgen.eval.retina_features import retina_features, retina_frechet


def _images(n=12):
    rgb, _, _ = preprocess(data.retina(), 256)
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):  # small shifts and brightness changes: a set with some spread
        shifted = np.roll(rgb, int(rng.integers(-8, 9)), axis=int(rng.integers(0, 2)))
        out[f"r{i}"] = np.clip(shifted.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
    return out


def test_features_are_496_numbers_per_image_and_deterministic():
    torch.set_num_threads(1)
    imgs = _images(3)
    a = retina_features(list(imgs), imgs.__getitem__, progress=False)
    b = retina_features(list(imgs), imgs.__getitem__, progress=False)
    assert a.shape == (3, 496) and np.isfinite(a).all() and np.array_equal(a, b)


def test_frechet_is_zero_for_identical_sets_and_larger_for_blurred_images():
    torch.set_num_threads(1)
    imgs = _images()
    real = retina_features(list(imgs), imgs.__getitem__, progress=False)
    blurred = retina_features(list(imgs), lambda k: cv2.GaussianBlur(imgs[k], (0, 0), 4), progress=False)
    same = retina_frechet({"real": real}, real.copy())["real"]
    worse = retina_frechet({"real": real}, blurred)["real"]
    assert abs(same["fd"]) < 1e-6 and worse["fd"] > 10 * max(same["fd"], 1e-9) and worse["fd"] > 0
    assert worse["floor"] is not None and worse["n_real"] == 12


def test_sample_ids_is_seeded_and_keeps_order():
    ids = [f"i{k}" for k in range(100)]
    a, b = sample_ids(ids, 10, 0), sample_ids(ids, 10, 0)
    assert a == b and len(a) == 10 and a == sorted(a, key=ids.index)
    assert sample_ids(ids[:5], 10, 0) == ids[:5]


def test_features_describe_the_field_of_view_not_how_much_of_the_frame_is_black():
    from fundusgen.data.fundus import aperture
    torch.set_num_threads(1)
    rgb = _images(1)["r0"]
    smaller = (rgb * aperture(256, -24)[..., None]).astype(np.uint8)  # the same retina, a narrower field of view
    rim = (rgb * aperture(256, 0)[..., None]).astype(np.uint8)
    a, b = (retina_features(["x"], lambda _: im, progress=False)[0] for im in (rim, smaller))
    from fundusgen.eval.retina_features import _network, encoder_features
    big = cv2.resize(rim, (512, 512))[None]
    whole = encoder_features(_network(), big)[0]
    masked = encoder_features(_network(), big, np.zeros((1, 512, 512), bool))[0]  # empty mask: the whole image
    assert np.allclose(whole, masked)
    small = cv2.resize(smaller, (512, 512))[None]
    unmasked_gap = np.abs(encoder_features(_network(), small)[0] - whole).sum()
    assert np.abs(a - b).sum() < 0.5 * unmasked_gap
