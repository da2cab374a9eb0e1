"""Optic disc and cup: a small U-Net with two sigmoid outputs (disc, cup) on a disc-centred crop.

Two steps, as in most disc/cup segmenters since M-Net (Fu et al. 2018, "Joint optic disc and
cup segmentation based on multi-label deep network and polar transformation"): find the disc
on the whole image, then segment disc and cup on a crop around it. Here the crop's side is a
fixed multiple (``CONTEXT``) of the disc diameter, resampled to ``crop`` pixels, so the network
sees every disc at one scale whatever the camera, field angle or resolution. The start is the
classical locator (``disc.classical_disc``); the network's disc on a first crop around it then
re-centres and re-scales a second crop, so an off-centre or mis-sized start costs little.
Training draws crops at random scale, offset and rotation around the experts' disc for that
reason.

Outputs are independent sigmoids (the cup lies inside the disc, so the two overlap); the
targets are the Drishti-GS1 soft maps (expert agreement / 255), so 0.5 on a probability is the
README's "> 127" threshold. The vertical cup-to-disc ratio is the clinical one: vertical extent
of the cup over vertical extent of the disc.

Train: ``python -m fundusgen.measure.disccup train --data DRISHTI_ROOT --out out/disc_cup``;
evaluate on the 51 test images: ``python -m fundusgen.measure.disccup evaluate DRISHTI_ROOT``.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from fundusgen.errors import FundusgenError
from fundusgen.measure.vessels import build_unet, dice_bce, fit_segmentation  # noqa: F401 (dice_bce: part of this module's API)

SHIPPED = Path(__file__).parent / "weights" / "disc_cup"
KIND = "disc-cup-unet"
SIZE = 512            # training and test images are FOV-cropped to this side, as `fundusgen prepare` does
CONTEXT = 2.0         # crop side over disc diameter when segmenting
FIRST_CONTEXT = 2.5   # around the classical start, whose diameter may be off by a third
MIN_DISC_PIXELS = 16  # a smaller blob is no disc
TRAIN_CONTEXT = (1.6, 4.0)  # crop side over disc diameter drawn in training (log-uniform)
TRAIN_OFFSET = 0.3    # centre jitter in training, disc diameters
TRAIN_ROTATION = 25.0  # degrees


def _torch():
    import torch
    return torch


# --- crops -----------------------------------------------------------------------------------

def crop_transform(cx: float, cy: float, side: float, crop: int, angle: float = 0.0, flip: bool = False) -> np.ndarray:
    """The 2x3 affine map from crop pixels to image pixels: a square of ``side`` image pixels
    centred on (cx, cy), rotated by ``angle`` degrees and optionally mirrored, sampled at ``crop`` px."""
    k = side / crop
    t = math.radians(angle)
    rotate = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    linear = rotate @ np.diag([-k if flip else k, k])
    centre = (crop - 1) / 2.0
    return np.hstack([linear, (np.array([cx, cy]) - linear @ [centre, centre])[:, None]])


def take_crop(array: np.ndarray, m: np.ndarray, crop: int) -> np.ndarray:
    """``array`` (image, mask or maps) sampled through crop transform ``m``; zero outside."""
    return cv2.warpAffine(array, m, (crop, crop), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def normalise(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Network input (3, H, W) float32: each channel standardised over the crop's FOV pixels, so
    exposure, gain and colour balance of the camera drop out; zero (the mean) outside the FOV."""
    x = rgb.astype(np.float32)
    inside = fov if fov.sum() > 16 else np.ones(fov.shape, bool)
    mean, std = x[inside].mean(0), x[inside].std(0) + 1.0
    return np.where(inside[..., None], (x - mean) / std, 0.0).astype(np.float32).transpose(2, 0, 1)


# --- the segmentation of one image -----------------------------------------------------------

@dataclass
class DiscCup:
    disc: np.ndarray      # bool masks in the image's pixels
    cup: np.ndarray
    x: float              # disc centroid, pixels
    y: float
    diameter: float       # disc equivalent diameter (of a circle of its area), pixels
    cdr: float            # vertical cup-to-disc ratio


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected blob of a mask (all False when there is none)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def vertical_extent(mask: np.ndarray) -> int:
    rows = np.flatnonzero(mask.any(1))
    return int(rows[-1] - rows[0] + 1) if len(rows) else 0


def vertical_cdr(disc: np.ndarray, cup: np.ndarray) -> float:
    """Vertical cup-to-disc ratio: vertical cup extent / vertical disc extent."""
    return vertical_extent(cup) / max(vertical_extent(disc), 1)


def predict_crop(net, rgb: np.ndarray, fov: np.ndarray, m: np.ndarray, mirror: bool = False) -> np.ndarray:
    """(disc, cup) probabilities (2, crop, crop) through crop transform ``m``; ``mirror`` averages
    them with those of the mirrored crop (a left eye's disc looks like a right eye's, mirrored)."""
    torch = _torch()
    crop = net.crop
    x = normalise(take_crop(rgb, m, crop), take_crop(fov.astype(np.uint8), m, crop) > 0)
    batch = torch.from_numpy(np.stack([x, x[:, :, ::-1].copy()] if mirror else [x]))
    with torch.no_grad():
        p = torch.sigmoid(net(batch)).numpy()
    return (p[0] + p[1, :, :, ::-1]) / 2 if mirror else p[0]


def equivalent_diameter(mask: np.ndarray) -> float:
    """Diameter of the circle with the mask's area."""
    return 2 * math.sqrt(float(mask.sum()) / math.pi)


def segment_disc_cup(net, rgb: np.ndarray, fov: np.ndarray, start: tuple[float, float, float]) -> DiscCup | None:
    """Disc and cup of a FOV-cropped RGB image, from a start (x, y, diameter) near the disc;
    None when the network sees no disc there. A first crop around the start locates the disc;
    a second, centred on it and scaled to it, segments disc and cup."""
    h, w = fov.shape
    x, y, d = start
    m = crop_transform(x, y, FIRST_CONTEXT * d, net.crop)
    disc = largest_component(predict_crop(net, rgb, fov, m)[0] > 0.5)
    if disc.sum() < MIN_DISC_PIXELS:
        return None
    ys, xs = np.nonzero(disc)
    x, y = m @ [xs.mean(), ys.mean(), 1.0]
    d = equivalent_diameter(disc) * FIRST_CONTEXT * d / net.crop
    m = crop_transform(x, y, CONTEXT * d, net.crop)
    p = predict_crop(net, rgb, fov, m, mirror=True)
    disc_p, cup_p = (cv2.warpAffine(c, m, (w, h), flags=cv2.INTER_LINEAR) for c in p)
    disc = largest_component((disc_p > 0.5) & fov)
    if disc.sum() < MIN_DISC_PIXELS:
        return None
    cup = largest_component((cup_p > 0.5) & disc)
    ys, xs = np.nonzero(disc)
    return DiscCup(disc, cup, float(xs.mean()), float(ys.mean()), equivalent_diameter(disc), vertical_cdr(disc, cup))


# --- the network -----------------------------------------------------------------------------

def build_net(channels: int = 12, depth: int = 4, crop: int = 128):
    """The U-Net with two outputs (disc, cup logits), knowing the crop side it was trained at."""
    net = build_unet(channels, depth, outputs=2)
    net.crop = crop
    net.config["crop"] = crop
    return net


def load_disc_cup_net(folder: str | Path):
    """A trained network from a model folder (config.json + model.safetensors), fp32, in eval mode."""
    from fundusgen.measure.vessels import read_model_folder
    cfg, state = read_model_folder(folder, KIND, "disc/cup network")
    net = build_net(cfg["channels"], cfg["depth"], cfg["crop"])
    net.load_state_dict(state)
    return net.eval()


@functools.lru_cache(maxsize=1)
def shipped_net():
    """The network that ships in the package, or None when its weights are absent."""
    return load_disc_cup_net(SHIPPED) if (SHIPPED / "model.safetensors").is_file() else None


# --- training --------------------------------------------------------------------------------

@dataclass
class DiscCupTrainConfig:
    data: str                     # Drishti-GS1 root in its native layout (holding data/Training)
    out: str                      # model folder: config.json + model.safetensors, checkpoint.pt while training
    steps: int = 2500
    batch_size: int = 8
    crop: int = 128
    lr: float = 2e-3
    channels: int = 12
    depth: int = 4
    seed: int = 0
    checkpoint_every: int = 100


@dataclass
class Example:
    """One FOV-cropped image with its soft disc and cup maps (0-1) and the experts' disc."""
    id: str
    rgb: np.ndarray       # uint8 (SIZE, SIZE, 3)
    fov: np.ndarray       # uint8 0/1
    maps: np.ndarray      # float32 (SIZE, SIZE, 2): disc, cup agreement
    cdr: float | None     # the experts' mean vertical CDR
    x: float
    y: float
    diameter: float


def drishti_examples(root: str | Path, split: str) -> list[Example]:
    """The Drishti-GS1 images of ``split`` ('training' or 'test'), FOV-cropped to SIZE like `prepare`."""
    from PIL import Image

    from fundusgen.data.fundus import apply_crop, load_rgb, preprocess
    from fundusgen.data.sources import read_source
    out = []
    for r in read_source("drishti_gs1", root):
        if r.source_labels.get("split") != split or not {"disc", "cup"} <= set(r.masks):
            continue
        rgb, fov, crop = preprocess(load_rgb(r.image), SIZE)
        maps = np.stack([apply_crop(np.asarray(Image.open(r.masks[k]).convert("L")), crop, SIZE)
                         for k in ("disc", "cup")], -1).astype(np.float32) / 255.0
        disc = maps[..., 0] > 0.5
        ys, xs = np.nonzero(disc)
        out.append(Example(r.id, rgb, fov.astype(np.uint8), maps, r.cdr, float(xs.mean()), float(ys.mean()),
                           equivalent_diameter(disc)))
    if not out:
        raise FundusgenError(f"{root}: no Drishti-GS1 {split} images with disc and cup maps "
                             "(expected data/{Training,Test}/Images and GT)")
    return out


def _uniform(g, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(_torch().rand((), generator=g))


def augmented_crop(ex: Example, crop: int, g) -> tuple[np.ndarray, np.ndarray]:
    """(input (3, crop, crop), target (2, crop, crop)) of a random crop around the experts' disc:
    random scale, offset, rotation and mirroring; gamma per channel, blur and noise for cameras
    and resolutions Drishti-GS1 lacks (exposure and gain drop out in ``normalise``)."""
    context = math.exp(_uniform(g, *map(math.log, TRAIN_CONTEXT)))
    r, t = TRAIN_OFFSET * ex.diameter * math.sqrt(_uniform(g, 0, 1)), _uniform(g, 0, 2 * math.pi)
    m = crop_transform(ex.x + r * math.cos(t), ex.y + r * math.sin(t), context * ex.diameter, crop,
                       angle=_uniform(g, -TRAIN_ROTATION, TRAIN_ROTATION), flip=_uniform(g, 0, 1) < 0.5)
    rgb = take_crop(ex.rgb, m, crop).astype(np.float32) / 255.0
    fov = take_crop(ex.fov, m, crop) > 0
    target = take_crop(ex.maps, m, crop)
    gamma = np.exp([_uniform(g, -0.3, 0.3) + _uniform(g, -0.15, 0.15) for _ in range(3)])
    rgb = rgb ** gamma.astype(np.float32)
    if _uniform(g, 0, 1) < 0.3:
        rgb = cv2.GaussianBlur(rgb, (0, 0), _uniform(g, 0.3, 1.5))
    noise = _torch().randn(rgb.shape, generator=g).numpy() * _uniform(g, 0, 0.02)
    rgb = np.clip(rgb + noise, 0, 1) * 255
    return normalise(rgb, fov), target.transpose(2, 0, 1)


def _batch(examples: list[Example], batch_size: int, crop: int, g):
    torch = _torch()
    pairs = [augmented_crop(examples[int(torch.randint(len(examples), (1,), generator=g))], crop, g)
             for _ in range(batch_size)]
    return torch.from_numpy(np.stack([x for x, _ in pairs])), torch.from_numpy(np.stack([y for _, y in pairs]))


def train_disc_cup_net(cfg: DiscCupTrainConfig, progress: bool = True) -> Path:
    """Train on the Drishti-GS1 training images; resumes exactly from ``out/checkpoint.pt`` after a kill."""
    torch = _torch()
    from safetensors.torch import save_file

    from fundusgen.data.shards import atomic_write_text

    examples = drishti_examples(cfg.data, "training")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model = build_net(cfg.channels, cfg.depth, cfg.crop)
    net = fit_segmentation(model, lambda g: _batch(examples, cfg.batch_size, cfg.crop, g), cfg, out,
                           desc="train disc/cup", progress=progress, images_per_step=cfg.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    # fp16 halves the shipped file; loading casts back to fp32
    save_file({k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    atomic_write_text(out / "config.json", json.dumps({"kind": KIND, **net.config, "context": CONTEXT,
                                                       "trained": asdict(cfg)}, indent=2))
    return out


# --- evaluation ------------------------------------------------------------------------------

def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum()) + int(b.sum()), 1)


def evaluate(net, examples: list[Example], progress: bool = False) -> dict:
    """Disc and cup Dice against the experts' maps (> 0.5 agreement) and the absolute error of the
    vertical CDR against the experts' mean, starting from the classical locator, per image and mean.
    An image where the network finds no disc scores Dice 0 and CDR error against a CDR of 0."""
    from tqdm import tqdm

    from fundusgen.measure.disc import classical_disc
    rows = []
    for ex in tqdm(examples, desc="evaluate disc/cup", unit="img", disable=not progress):
        fov = ex.fov > 0
        start = classical_disc(ex.rgb, fov)
        found = segment_disc_cup(net, ex.rgb, fov, start)
        disc, cup = ex.maps[..., 0] > 0.5, ex.maps[..., 1] > 0.5
        none = np.zeros_like(disc)
        rows.append({"id": ex.id,
                     "disc_dice": round(dice(found.disc if found else none, disc), 4),
                     "cup_dice": round(dice(found.cup if found else none, cup), 4),
                     "cdr": round(found.cdr, 4) if found else None, "cdr_experts": ex.cdr,
                     "cdr_error": None if ex.cdr is None else round(abs((found.cdr if found else 0.0) - ex.cdr), 4)})
    mean = {k: round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4)
            for k in ("disc_dice", "cup_dice", "cdr_error")}
    return {"images": len(rows), "found": sum(r["cdr"] is not None for r in rows),
            "disc_dice": mean["disc_dice"], "cup_dice": mean["cup_dice"], "cdr_mae": mean["cdr_error"],
            "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    """Train the disc/cup network on Drishti-GS1, or evaluate one on its test set."""
    import sys

    from fundusgen.measure.vessels import model_cli
    p, t, e = model_cli("python -m fundusgen.measure.disccup", main.__doc__, DiscCupTrainConfig,
                        train_help="train on the 50 Drishti-GS1 training images",
                        data_help="Drishti-GS1 root (holding data/Training)",
                        evaluate_help="disc/cup Dice and CDR error on the 51 Drishti-GS1 test images")
    e.add_argument("data", help="Drishti-GS1 root (holding data/Test)")
    e.add_argument("--model", default=str(SHIPPED), help="model folder (default: the shipped weights)")
    e.add_argument("--per-image", action="store_true", help="also print every image's scores")
    args = p.parse_args(argv)
    _torch().set_num_threads(args.threads)
    try:
        if args.command == "train":
            cfg = DiscCupTrainConfig(**{k: getattr(args, k) for k in DiscCupTrainConfig.__dataclass_fields__})
            print(f"wrote {train_disc_cup_net(cfg)}")
            return 0
        report = evaluate(load_disc_cup_net(args.model), drishti_examples(args.data, "test"), progress=True)
    except FundusgenError as err:
        print(f"python -m fundusgen.measure.disccup {args.command}: error: {err}", file=sys.stderr)
        return 2
    if not args.per_image:
        report.pop("per_image")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
