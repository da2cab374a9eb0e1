"""Autoencoder reconstruction scores: exact on identical images, lower on a degraded one, and
the evaluation runs end to end on a tiny autoencoder; so does the realism floor it sets."""
import numpy as np
from skimage import data

from fundusgen.data.fundus import preprocess
from fundusgen.eval.reconstruction import evaluate_autoencoder, reconstruction_realism, scores
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


def test_realism_floor_scores_photographs_and_their_reconstructions_against_the_same_real_set():
    """An untrained autoencoder's reconstructions are far from the real set; held-out photographs of
    the same kind are near it. A cheap stand-in network keeps the test fast."""
    import torch
    rgb, _ = _retina(64)
    rng = np.random.default_rng(0)

    def variant():  # the same photograph, flipped and brightened a little: a real set of one kind
        im = rgb[:, ::-1] if rng.random() < 0.5 else rgb
        return np.clip(im.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 4, im.shape), 0, 255).astype(np.uint8)

    def network(x):  # Inception's input range and output size, 2048-d
        return torch.nn.functional.adaptive_avg_pool2d(x, (27, 27)).flatten(1)[:, :2048]

    from fundusgen.eval.features import features_of_images
    real = features_of_images([variant() for _ in range(40)], network, progress=False)
    torch.manual_seed(0)
    ae = FundusAutoencoder(latent_channels=4, block_out_channels=[8, 16], norm_num_groups=4).eval()
    report = reconstruction_realism(ae, [variant() for _ in range(12)], real, network=network, progress=False)
    for part in ("photographs", "reconstructions"):
        assert report[part]["n_real"] == 40 and report[part]["n_synth"] == 12
        assert np.isfinite(report[part]["fid"]["value"]) and np.isfinite(report[part]["kid"]["value"])
    assert report["photographs"]["fid"]["value"] < report["reconstructions"]["fid"]["value"] / 10


def test_realism_floor_keeps_the_photographs_features_for_the_next_decoder(tmp_path):
    """With ``cache_dir`` the photographs run through the network once: scoring a second decoder on
    the same photographs runs only its reconstructions, and other photographs are not served stale."""
    import torch
    rgb, _ = _retina(64)
    seen = []

    def network(x):
        seen.append(len(x))
        return torch.nn.functional.adaptive_avg_pool2d(x, (27, 27)).flatten(1)[:, :2048]

    from fundusgen.eval.features import features_of_images
    real = features_of_images([rgb, rgb[:, ::-1].copy(), rgb[::-1].copy()], network, progress=False)
    photographs = [rgb, rgb[:, ::-1].copy()]
    torch.manual_seed(0)
    first = FundusAutoencoder(latent_channels=4, block_out_channels=[8, 16], norm_num_groups=4).eval()
    second = FundusAutoencoder(latent_channels=4, block_out_channels=[8, 16], norm_num_groups=4).eval()
    seen.clear()
    a = reconstruction_realism(first, photographs, real, network=network, progress=False, cache_dir=tmp_path)
    assert sum(seen) == 4 and len(list(tmp_path.glob("arrays_*.npz"))) == 1
    seen.clear()
    b = reconstruction_realism(second, photographs, real, network=network, progress=False, cache_dir=tmp_path)
    assert sum(seen) == 2, "the photographs ran through the network again"
    assert a["photographs"]["fid"]["value"] == b["photographs"]["fid"]["value"]
    assert a["reconstructions"]["fid"]["value"] != b["reconstructions"]["fid"]["value"]
    seen.clear()
    reconstruction_realism(second, [rgb], real, network=network, progress=False, cache_dir=tmp_path)
    assert sum(seen) == 2 and len(list(tmp_path.glob("arrays_*.npz"))) == 2
