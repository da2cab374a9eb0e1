"""Autoencoder reconstruction scores: exact on identical images, lower on a degraded one, and
the evaluation runs end to end on a tiny autoencoder."""
import numpy as np
from skimage import data

from fundusgen.data.fundus import preprocess
from fundusgen.eval.reconstruction import evaluate_autoencoder, scores
from fundusgen.measure.attributes import vessel_mask
from fundusgen.model.autoencoder import FundusAutoencoder


def _retina(size=256):
    rgb, fov, _ = preprocess(data.retina(), size)
    return rgb, fov.astype(bool)


def test_identical_images_score_perfectly_and_blur_scores_lower():
    import cv2
    rgb, fov = _retina()
    def segment(im, f):
        return vessel_mask(im, f)[0]
    with np.errstate(divide="ignore"):  # PSNR of identical images is infinite
        same = scores(rgb, rgb.copy(), fov, segment)
    assert same["ssim"] == 1.0 and same["vessel_f1"] == 1.0 and same["psnr"] == float("inf")
    blurred = scores(rgb, cv2.GaussianBlur(rgb, (0, 0), 3), fov, segment)
    assert 15 < blurred["psnr"] < 60 and blurred["ssim"] < 0.99 and blurred["vessel_f1"] < 0.9


def test_evaluate_autoencoder_reports_mean_and_spread():
    rgb, fov = _retina(64)
    ae = FundusAutoencoder(latent_channels=4, block_out_channels=[8, 16], norm_num_groups=4).eval()
    report = evaluate_autoencoder(ae, [(rgb, fov), (rgb[:, ::-1].copy(), fov[:, ::-1].copy())], progress=False)
    assert report["images"] == 2 and report["vessel_method"] in ("network", "classical")
    for k in ("psnr", "ssim", "vessel_f1"):
        assert set(report[k]) == {"mean", "sd"} and np.isfinite(report[k]["mean"])
