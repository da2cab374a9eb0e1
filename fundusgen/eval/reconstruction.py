"""How faithfully an autoencoder reproduces held-out fundus photographs: PSNR, SSIM, and vessel
fidelity (the vessel mask of the reconstruction scored against the vessel mask of the original,
F1 inside the field of view), with the measurement step's ``vessel_mask`` (the project's vessel
network, or the classical top-hat without its weights); and ``reconstruction_realism``, the realism
floor an autoencoder sets for every model drawn through it: photographs and their reconstructions
scored (FID, KID, precision, recall) against the same real set."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from fundusgen.measure.vessels import shipped_vessel_net
from fundusgen.model.autoencoder import FundusAutoencoder


@torch.no_grad()
def reconstruct(ae: FundusAutoencoder, rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> its reconstruction through the posterior mean, uint8 RGB."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().to(ae.device) / 127.5 - 1
    y = ae.decode(ae.encode(x.to(ae.dtype)).mean).float()
    return ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def scores(original: np.ndarray, recon: np.ndarray, fov: np.ndarray,
           segment: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
    v0, v1 = segment(original, fov) & fov, segment(recon, fov) & fov
    overlap = int((v0 & v1).sum())
    return {"psnr": float(peak_signal_noise_ratio(original, recon, data_range=255)),
            "ssim": float(structural_similarity(original, recon, channel_axis=2, data_range=255)),
            "vessel_f1": 2 * overlap / max(int(v0.sum()) + int(v1.sum()), 1)}


def evaluate_autoencoder(ae: FundusAutoencoder, samples: Iterable[tuple[np.ndarray, np.ndarray]], total: int | None = None,
                         progress: bool = True) -> dict:
    """Mean and standard deviation of each score over (rgb, fov) samples."""
    from fundusgen.measure.attributes import vessel_mask
    rows = [scores(rgb, reconstruct(ae, rgb), fov.astype(bool), lambda im, f: vessel_mask(im, f)[0])
            for rgb, fov in tqdm(samples, total=total, desc="reconstructions", unit="img", disable=not progress)]
    if not rows:
        return {"images": 0}
    out = {"images": len(rows), "vessel_method": "network" if shipped_vessel_net() is not None else "classical"}
    for k in rows[0]:
        v = np.array([r[k] for r in rows])
        out[k] = {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)}
    return out


def reconstruction_realism(ae: FundusAutoencoder, photographs: list[np.ndarray], real_features: np.ndarray,
                           network=None, progress: bool = True, cache_dir: str | Path | None = None) -> dict:
    """Realism of ``photographs`` and of their reconstructions against ``real_features`` (Inception pool3
    of a real set, e.g. a prepared test split). A latent diffusion model draws through the decoder, so
    the reconstructions' figures bound its images' from below; the photographs' are the real floor.
    ``network``: the feature network (default: the standard Inception, which ``real_features`` must match).
    ``cache_dir``: the photographs' features are kept there (``array_features``), so scoring the next
    decoder on the same photographs runs only the reconstructions."""
    from fundusgen.eval.features import array_features, features_of_images, load_inception
    from fundusgen.eval.realism import compare
    net = network if network is not None else load_inception()
    ours = array_features(photographs, net, cache_dir, progress=progress, desc="inception photographs")
    recon = features_of_images((reconstruct(ae, p) for p in photographs), net, total=len(photographs),
                               progress=progress, desc="inception reconstructions")
    return {"photographs": compare(real_features, ours), "reconstructions": compare(real_features, recon)}
