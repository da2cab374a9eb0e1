"""A retina-domain feature space for a Fréchet distance: the encoder of the project's vessel
U-Net, trained on fundus photographs (DRIVE, CHASE_DB1, STARE), not on ImageNet.

Each image is resized to 512 px (the scale the net was trained at: square FOV-cropped photos),
run through the encoder, and every level's activations are averaged over the field of view (the
mask of ``fundusgen.data.fundus.detect_fov``; the whole image when none is found): a vector of
16 + 32 + 64 + 128 + 256 = 496 numbers per image that describes vessel-scale texture, calibre and
contrast from fine to coarse. Averaged over the whole image instead, the figure weighed how much
of the frame is black, the camera's frame and not the retina: the same model's 100 images scored
167 with the circular aperture (33% dark pixels; real photographs 21%) and 78 without it (27%);
over the field of view, 258 and 223. Inception's ImageNet features see a fundus photo mostly as
"orange disc"; these respond to what a fundus expert looks at first. The Fréchet distance on
them is computed exactly as FID is (``fundusgen.eval.realism.fid``).
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from fundusgen.errors import FundusgenError

SIDE = 512
DESCRIPTION = ("encoder of the project's vessel U-Net (trained on DRIVE, CHASE_DB1, STARE), image at 512 px, "
               "each of its 5 levels averaged over the field of view: 496 features")


def version() -> str:
    """Part of the cache key of these features: this code and the vessel network's weights."""
    from fundusgen.measure import vessels
    from fundusgen.measure.attributes import digest, weights_id
    return digest([__file__, vessels.__file__], weights_id())


def _network():
    from fundusgen.measure.vessels import shipped_vessel_net
    net = shipped_vessel_net()
    if net is None:
        raise FundusgenError("retina-domain features need the shipped vessel network's weights "
                             "(fundusgen/measure/weights/vessels)")
    return net


@torch.no_grad()
def encoder_features(net, batch: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """(B, SIDE, SIDE, 3) uint8 -> (B, F): each encoder level's activations averaged over the
    field of view ``fov`` ((B, SIDE, SIDE) bool; the whole image where it is None or empty).

    At each level the mask is average-pooled to that level's grid, so a cell is weighed by the
    share of it inside the field of view."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    weight = torch.ones(len(batch), 1, *batch.shape[1:3]) if fov is None else torch.from_numpy(fov[:, None]).float()
    empty = weight.sum(dim=(1, 2, 3)) == 0
    weight[empty] = 1.0
    feats = []
    for i, block in enumerate(net.down):
        if i:
            x, weight = torch.nn.functional.max_pool2d(x, 2), torch.nn.functional.avg_pool2d(weight, 2)
        x = block(x)
        feats.append((x * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-8))
    return torch.cat(feats, 1).double().numpy()


def retina_features(ids: list[str], load: Callable[[str], np.ndarray], *, batch_size: int = 8,
                    progress: bool = True, desc: str = "retina features") -> np.ndarray:
    """Features of the images ``load(id)`` returns, in the order of ``ids``."""
    from fundusgen.data.fundus import detect_fov
    net = _network()
    out, batch, fovs = [], [], []
    for item in tqdm(ids, desc=desc, unit="img", disable=not progress):
        rgb = load(item)
        if rgb.shape[:2] != (SIDE, SIDE):
            rgb = cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA if rgb.shape[0] > SIDE else cv2.INTER_LINEAR)
        batch.append(rgb)
        fovs.append(detect_fov(rgb))
        if len(batch) == batch_size:
            out.append(encoder_features(net, np.stack(batch), np.stack(fovs)))
            batch, fovs = [], []
    if batch:
        out.append(encoder_features(net, np.stack(batch), np.stack(fovs)))
    return np.concatenate(out) if out else np.zeros((0, 496))


def retina_frechet(real: dict[str, np.ndarray], synth: np.ndarray, seed: int = 0) -> dict:
    """Per real set: the Fréchet distance of synthetic vs real and its real-vs-real floor."""
    from fundusgen.eval.realism import fid, floor_split
    out = {}
    for name, feats in real.items():
        entry = {"n_real": len(feats), "n_synth": len(synth)}
        for key, (a, b) in {"fd": (feats, synth), "floor": floor_split(feats, len(synth), seed)}.items():
            try:
                entry[key] = fid(a, b).value
            except FundusgenError as e:
                entry[key], entry[f"{key}_error"] = None, str(e)
        out[name] = entry
    return out
