"""Field-of-view detection, square crop and resize (fundusgen.data.fundus)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from fundusgen.data import fundus
from fundusgen.data.sources import read_source


def disk(shape, cx, cy, r) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


@pytest.fixture(scope="module")
def clipped_photo(retina_rgb):
    """A wide 3:2 photo whose circle is cut at top and bottom, as many cameras take them."""
    h, w, r = 300, 450, 200
    retina = cv2.resize(retina_rgb, (2 * r, 2 * r), interpolation=cv2.INTER_AREA)
    truth = disk((h, w), w / 2, h / 2, r)
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[:, w // 2 - r:w // 2 + r] = retina[r - h // 2:r + h // 2]
    canvas[~truth] = 0
    return canvas, truth


def test_fov_of_skimage_retina_is_a_centred_round_disk(retina_rgb):
    fov = fundus.detect_fov(retina_rgb)
    h, w = fov.shape
    ys, xs = np.nonzero(fov)
    assert abs(xs.mean() - w / 2) < 0.02 * w and abs(ys.mean() - h / 2) < 0.02 * h
    assert fundus.fov_roundness(fov) > 0.97
    x0, y0, x1, y1 = fundus.fov_box(fov)
    r = (x1 - x0) / 2
    assert fundus.iou(fov, disk(fov.shape, (x0 + x1) / 2, (y0 + y1) / 2, r)) > 0.97


def test_fov_of_clipped_circle_matches_the_clipped_disk(clipped_photo):
    rgb, truth = clipped_photo
    fov = fundus.detect_fov(rgb)
    assert fundus.iou(fov, truth) > 0.97
    assert fundus.fov_roundness(fov) > 0.95


def test_crop_of_clipped_circle_pads_top_and_bottom(clipped_photo):
    rgb, truth = clipped_photo
    image, fov, crop = fundus.preprocess(rgb, 256)
    assert (crop.x1 - crop.x0, crop.y1 - crop.y0) == pytest.approx((400, 300), abs=4)
    assert crop.side == crop.x1 - crop.x0 and crop.pad_x == 0 and crop.pad_y > 40
    band = np.zeros((256, 256), bool)
    band[round(crop.pad_y * 256 / crop.side):round((crop.pad_y + crop.y1 - crop.y0) * 256 / crop.side)] = True
    assert fundus.iou(fov, disk((256, 256), 127.5, 127.5, 128) & band) > 0.97
    assert not fov[:10].any() and not fov[-10:].any()


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_crop_to_square_and_resize_keeps_the_fov_mask(retina_rgb, size):
    image, fov, crop = fundus.preprocess(retina_rgb, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert fov.shape == (size, size) and fov.dtype == bool
    assert not image[~fov].any(), "outside the field of view must be black"
    assert image[fov].mean() > 40
    ys, xs = np.nonzero(fov)
    assert xs.min() <= 1 and ys.min() <= 1 and xs.max() >= size - 2 and ys.max() >= size - 2
    assert fov.mean() == pytest.approx(np.pi / 4, abs=0.02)
    full = fundus.detect_fov(retina_rgb)
    again = fundus.apply_crop(full, crop, size)
    assert fundus.iou(again, fov) == 1.0


def test_fov_masks_agree_across_output_sizes(retina_rgb):
    _, small, _ = fundus.preprocess(retina_rgb, 256)
    _, large, _ = fundus.preprocess(retina_rgb, 1024)
    down = cv2.resize(large.astype(np.uint8), (256, 256), interpolation=cv2.INTER_AREA) > 0
    assert fundus.iou(small, down) > 0.99


def test_black_image_has_no_field_of_view():
    with pytest.raises(fundus.ImageError, match="no field of view"):
        fundus.preprocess(np.zeros((200, 300, 3), np.uint8), 128)


def test_photo_filling_its_frame_is_not_round(retina_rgb):
    square = retina_rgb[400:1000, 400:1000]
    assert fundus.fov_roundness(fundus.detect_fov(square)) == 0.0


@pytest.mark.parametrize("name", ["drive", "chase_db1", "stare"])
def test_fov_iou_against_expert_masks(shared_data, name):
    records = [r for r in read_source(name, shared_data / name) if "fov" in r.masks]
    assert records, f"{name}: no FOV masks found"
    ious = [fundus.iou(fundus.detect_fov(fundus.load_rgb(r.image)), fundus.load_mask(r.masks["fov"]))
            for r in records]
    assert np.mean(ious) >= 0.97, f"{name}: mean FOV IoU {np.mean(ious):.4f}"


def test_aperture_is_the_inscribed_disk_and_a_margin_grows_it():
    from fundusgen.data.fundus import aperture
    a = aperture(64)
    assert a.shape == (64, 64) and a.min() == 0.0 and a.max() == 1.0
    assert abs(a.sum() - math.pi * 32 ** 2) < 0.01 * math.pi * 32 ** 2
    assert np.allclose(a, a[::-1]) and np.allclose(a, a.T)
    assert a[0, 0] == 0.0 and a[32, 32] == 1.0 and a[32, 0] > 0.5
    assert (aperture(64, margin=4) >= a).all() and aperture(64, margin=4)[4, 8] > 0 == a[4, 8]
