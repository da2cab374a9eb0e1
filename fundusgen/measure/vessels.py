"""Retinal vessels: a classical segmentation, the morphology of a vessel mask, and a small U-Net.

Classical method (used until learned weights ship): vessels are thin dark lines on the
green channel, so the black top-hat (closing minus image) with disks a little wider than the
widest vessel, averaged over three sizes, responds to vessels and not to the slowly varying
background. CLAHE first evens out illumination. The response is thresholded at mean + 0.9 sd
inside the FOV and specks are removed. It was chosen over Frangi/Sato after comparing them on
the DRIVE test set: the top-hat had the higher AUC (0.936 vs 0.870 for Frangi) and runs in
~10 ms at 512 px, where Frangi takes ~160 ms. All sizes scale with the FOV diameter
(constants are for a 512 px diameter).

The learned network (``build_unet``, ``train_vessel_net``) replaces it once trained; see
``python -m fundusgen.measure.vessels --help``.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

_TOPHAT_SIZES = (9, 15, 21)   # disk diameters at a 512 px FOV: wider than the widest vessel
_THRESHOLD_SD = 0.9
_MIN_SPECK = 30               # px at 512: smaller components are noise
SHIPPED = Path(__file__).parent / "weights" / "vessels"


def fov_scale(fov: np.ndarray) -> float:
    """FOV diameter over 512: the factor every pixel constant is multiplied by."""
    return max(int(fov.any(1).sum()), int(fov.any(0).sum()), 1) / 512.0


def clahe_green(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """CLAHE-equalised green channel; outside the FOV filled with the median so its rim is no edge."""
    g = rgb[..., 1].copy()
    if fov.any():
        g[~fov] = int(np.median(g[fov]))
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(g)


def vesselness(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Float vessel response (higher = more vessel-like), zero outside the eroded FOV."""
    s = fov_scale(fov)
    g = clahe_green(rgb, fov).astype(np.float32)
    out = np.zeros_like(g)
    for d in _TOPHAT_SIZES:
        k = int(round(d * s)) | 1
        out += cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    out = cv2.GaussianBlur(out / len(_TOPHAT_SIZES), (3, 3), 0)
    rim = int(round(9 * s)) | 1  # the FOV edge itself is a dark-to-bright step, not a vessel
    inner = cv2.erode(fov.astype(np.uint8), np.ones((rim, rim), np.uint8)) > 0
    return out * inner


def remove_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


def classical_vessels(rgb: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(response float, binary mask bool) of the classical method."""
    v = vesselness(rgb, fov)
    inside = v[fov] if fov.any() else v.ravel()
    mask = (v > inside.mean() + _THRESHOLD_SD * inside.std()) & fov
    return v, remove_specks(mask, max(4, int(_MIN_SPECK * fov_scale(fov) ** 2)))


# --- morphology of a vessel mask -------------------------------------------------------------

def fractal_dimension(mask: np.ndarray) -> float | None:
    """Box-counting (Minkowski-Bouligand) dimension: slope of log N(s) against log 1/s."""
    side = 1 << int(math.floor(math.log2(min(mask.shape))))
    m = mask[:side, :side]
    sizes, counts = [], []
    s = 2
    while s <= side // 4:
        # boxes of side s from those of side s / 2: each scale costs a quarter of the one before
        n = m.shape[0] // 2
        m = m.reshape(n, 2, n, 2).any(axis=(1, 3))
        blocks = int(m.sum())
        if blocks:
            sizes.append(s)
            counts.append(blocks)
        s *= 2
    if len(sizes) < 3:
        return None
    slope = np.polyfit(np.log(1.0 / np.array(sizes)), np.log(counts), 1)[0]
    return float(slope)


def skeleton_segments(skeleton: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Branch-free pieces of a skeleton (junction pixels removed): (middle pixel (N, 2) row/col,
    length in pixels (N,), arc length over chord (N,), NaN where a piece is not a simple path).

    Arc length is the 8-connected path length (diagonal steps count sqrt 2), chord the distance
    between the path's two end pixels (those with exactly one 8-neighbour in the piece). Counted
    on the label image with shifts and bincounts, so the cost does not grow with a piece's length squared.
    """
    sk = skeleton.astype(np.uint8)
    neighbours = cv2.filter2D(sk, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT) - sk
    n, labels = cv2.connectedComponents((sk & (neighbours <= 2)).astype(np.uint8), connectivity=8)
    padded = np.pad(labels, 1)
    h, w = labels.shape
    in_piece = np.zeros(labels.shape, np.int32)   # 8-neighbours in the same piece
    straight = np.zeros(n, np.int64)              # 4-adjacent pixel pairs per piece
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                same = (padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == labels) & (labels > 0)
                in_piece += same
                if (dy, dx) in ((0, 1), (1, 0)):
                    straight += np.bincount(labels[same], minlength=n)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")
    ys, xs, lab = ys[order], xs[order], lab[order]
    length = np.bincount(lab, minlength=n)[1:]
    first = np.cumsum(length) - length
    middle = np.column_stack([ys[first + length // 2], xs[first + length // 2]])
    end = in_piece[ys, xs] == 1
    n_ends = np.bincount(lab[end], minlength=n)[1:]
    ey, ex, el = ys[end], xs[end], lab[end]  # sorted by piece: a simple path's two ends are adjacent
    pair = np.flatnonzero((n_ends == 2))
    starts = np.searchsorted(el, pair + 1)
    chord = np.full(n - 1, np.nan)
    chord[pair] = np.hypot(ey[starts] - ey[starts + 1], ex[starts] - ex[starts + 1])
    steps = length - 1
    diagonal = np.maximum(steps - straight[1:], 0)
    arc = (steps - diagonal) + diagonal * np.sqrt(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(chord > 0, arc / chord, np.nan)
    return middle, length, ratio


@dataclass
class VesselMorphology:
    density: float          # vessel share of the region's FOV pixels
    calibre: float          # mean vessel width in px at a 512 px FOV (2 x distance to background on the skeleton, - 1)
    tortuosity: float       # mean arc/chord of skeleton segments (1 = straight)
    fractal_dimension: float


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def regional_morphology(mask: np.ndarray, fov: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, dict]:
    """Vessel density, calibre, tortuosity and fractal dimension over the whole FOV ('all') and
    over each named region (a segment belongs to the region holding its middle pixel)."""
    from skimage.morphology import skeletonize
    s = fov_scale(fov)
    skeleton = skeletonize(mask) & fov
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    min_length, max_length = max(8, int(20 * s)), int(200 * s)
    middle, length, ratio = skeleton_segments(skeleton)
    keep = (length >= min_length) & (length <= max_length) & np.isfinite(ratio)
    middle, ratio = middle[keep], ratio[keep]
    out = {}
    for name, region in {"all": fov, **regions}.items():
        region = region & fov
        area = int(region.sum())
        if area < 100:
            continue
        m = mask & region
        widths = 2.0 * dist[skeleton & region] - 1.0
        ratios = ratio[region[middle[:, 0], middle[:, 1]]]
        out[name] = asdict(VesselMorphology(
            density=round(float(m.sum()) / area, 4),
            calibre=round(float(widths.mean()) / s, 3) if len(widths) else None,
            tortuosity=round(float(np.mean(ratios)), 4) if len(ratios) else None,
            fractal_dimension=_round(fractal_dimension(m)) if m.sum() > 50 else None))
    return out


# --- evaluation against manual masks ---------------------------------------------------------

def segmentation_scores(score: np.ndarray, predicted: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> dict:
    """F1 (= Dice) of the binary prediction and ROC AUC of the response, inside the FOV."""
    from sklearn.metrics import roc_auc_score
    y, p = truth[fov], predicted[fov]
    tp = int((y & p).sum())
    f1 = 2 * tp / max(int(y.sum()) + int(p.sum()), 1)
    return {"f1": f1, "auc": float(roc_auc_score(y, score[fov])),
            "sensitivity": tp / max(int(y.sum()), 1), "specificity": float((~y & ~p).sum() / max(int((~y).sum()), 1))}


def evaluate_on_records(records, segment) -> dict:
    """Mean scores of ``segment(rgb, fov) -> (score, mask)`` over records with vessel and FOV masks."""
    from fundusgen.data.fundus import detect_fov, load_mask, load_rgb
    rows = []
    for r in records:
        if "vessels" not in r.masks:
            continue
        rgb = load_rgb(r.image)
        fov = load_mask(r.masks["fov"]) if "fov" in r.masks else detect_fov(rgb)
        truth = load_mask(r.masks["vessels"])
        score, mask = segment(rgb, fov)
        rows.append(segmentation_scores(score, mask, truth, fov))
    if not rows:
        return {"images": 0}
    return {"images": len(rows), **{k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}}


# --- the learned network ---------------------------------------------------------------------

def _torch():
    import torch
    return torch


def build_unet(channels: int = 16, depth: int = 3, outputs: int = 1):
    """A small U-Net (about 0.5 M parameters at 16 channels, depth 3): RGB -> ``outputs`` logits per
    pixel (one for vessels; disc and cup in ``fundusgen.measure.disccup``)."""
    torch = _torch()
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [channels * 2 ** i for i in range(depth + 1)]
            self.config = {"channels": channels, "depth": depth, "outputs": outputs}
            self.down = nn.ModuleList([block(3, widths[0])] + [block(widths[i], widths[i + 1]) for i in range(depth)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
            self.merge = nn.ModuleList([block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
            self.head = nn.Conv2d(widths[0], outputs, 1)

        def forward(self, x):
            skips = []
            for i, b in enumerate(self.down):
                x = b(x if i == 0 else torch.nn.functional.max_pool2d(x, 2))
                skips.append(x)
            skips.pop()
            for up, merge in zip(self.up, self.merge):
                x = merge(torch.cat([up(x), skips.pop()], 1))
            return self.head(x)

    return UNet()


@dataclass
class VesselTrainConfig:
    data: str                     # a prepared folder (fundusgen prepare) holding images with `vessels` masks
    out: str                      # model folder: config.json + model.safetensors, checkpoint.pt while training
    steps: int = 20000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    channels: int = 16
    depth: int = 3
    seed: int = 0
    checkpoint_every: int = 500
    init: str | None = None       # start from this trained model folder (fine-tuning); channels/depth come from it
    augment: str = "full"         # "flip": horizontal flips only (the first shipped run); "full": see _batch


def _vessel_images(folder: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rgb float CHW, vessels, fov) of every sample with a vessel mask, except DRIVE/CHASE/STARE test images."""
    from fundusgen.data.shards import iter_samples
    out = []
    for s in iter_samples(folder):
        if "vessels" not in s or s["meta"]["record"].get("source_labels", {}).get("split") == "test":
            continue
        out.append((s["image"].transpose(2, 0, 1).astype(np.float32) / 255.0, s["vessels"], s["fov"]))
    return out


def dice_bce(logits, target):
    """BCE + soft Dice loss: BCE for per-pixel calibration, Dice against the foreground/background
    imbalance. Dice is taken per output channel over the batch and averaged over channels."""
    torch = _torch()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dims = (0, 2, 3)
    dice = 1 - (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return bce + dice.mean()


def fit_segmentation(model, draw_batch, cfg, out: Path, *, desc: str, progress: bool = True,
                     images_per_step: int = 0, loss_fn=None, on_checkpoint=None):
    """The training loop of the project's measurement networks (vessel and disc/cup U-Nets, the
    laterality net): AdamW, cosine decay, ``loss_fn(output, y)`` (default BCE + Dice, ``dice_bce``);
    ``draw_batch(g)`` gives (x, y) from the step's generator, so that a run
    resumed from ``out/checkpoint.pt`` after a kill draws exactly what an uninterrupted one would.
    ``cfg`` has steps, lr, seed and checkpoint_every. The progress bar counts steps, or images when
    ``images_per_step`` is given. ``on_checkpoint(model, steps_done)``, when given, runs after each
    checkpoint (a trainer writes its model folder there, so a run stopped early leaves one).
    Returns the trained model (on the CPU, unwrapped)."""
    torch = _torch()
    from accelerate import Accelerator
    from tqdm import tqdm

    from fundusgen.train.checkpoint import load_checkpoint, save_checkpoint, step_generator

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    ckpt = load_checkpoint(out / "checkpoint.pt")
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    per = images_per_step or 1
    bar = tqdm(total=cfg.steps * per, initial=start * per, desc=desc, unit="img" if images_per_step else "step",
               disable=not progress)
    for step in range(start, cfg.steps):
        x, y = draw_batch(step_generator(cfg.seed, step))
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine decay, a function of step only
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss = (loss_fn or dice_bce)(model(x.to(accelerator.device)), y.to(accelerator.device))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        bar.update(per)
        bar.set_postfix(step=step + 1, loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out / "checkpoint.pt", model=accelerator.unwrap_model(model).state_dict(),
                            optimizer=optimizer.state_dict(), step=torch.tensor(step + 1))
            if on_checkpoint is not None:
                on_checkpoint(accelerator.unwrap_model(model), step + 1)
    bar.close()
    return accelerator.unwrap_model(model)


def train_vessel_net(cfg: VesselTrainConfig, progress: bool = True) -> Path:
    """Train the vessel U-Net on random crops; resumes exactly from ``out/checkpoint.pt`` after a kill."""
    torch = _torch()
    from safetensors.torch import save

    from fundusgen.errors import FundusgenError

    if cfg.augment not in AUGMENTATIONS:
        raise FundusgenError(f"unknown augmentation {cfg.augment!r} (choose from {', '.join(AUGMENTATIONS)})")
    images = _vessel_images(cfg.data)
    if not images:
        raise FundusgenError(f"{cfg.data}: no training images with vessel masks (prepare DRIVE, CHASE_DB1, STARE)")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model = load_vessel_net(cfg.init, inference=False).train()
        model.config.pop("threshold", None)
        cfg = replace(cfg, channels=model.config["channels"], depth=model.config["depth"])
    else:
        model = build_unet(cfg.channels, cfg.depth)

    def write_folder(net, steps_done: int) -> None:  # a loadable model folder at every checkpoint
        from fundusgen.data.shards import atomic_write_bytes, atomic_write_text
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "model.safetensors",
                           save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}))
        atomic_write_text(out / "config.json", json.dumps({"kind": "vessel-unet", **net.config, "trained": asdict(cfg),
                                                           "steps_done": steps_done}, indent=2))

    fit_segmentation(model, lambda g: _batch(images, cfg.batch_size, cfg.crop, g, cfg.augment), cfg, out,
                     desc="train vessels", progress=progress, on_checkpoint=write_folder)
    return out


AUGMENTATIONS = ("flip", "full")


def _batch(images, batch_size: int, crop: int, g, augment: str = "full"):
    """Random crops that overlap the FOV, drawn from generator ``g``, with a horizontal flip half the
    time. ``augment="full"`` adds what 54 training photographs cannot show: the eight flips and
    quarter turns of the crop (vessels run every way) and the camera's colour: a gain per channel
    within 0.8-1.25, a gamma within 0.7-1.4 and an offset within +-0.05."""
    torch = _torch()
    xs, ys = [], []
    for _ in range(batch_size):
        rgb, ves, fov = images[int(torch.randint(len(images), (1,), generator=g))]
        h, w = ves.shape
        c = min(crop, h, w)
        for _attempt in range(10):
            y0 = int(torch.randint(h - c + 1, (1,), generator=g))
            x0 = int(torch.randint(w - c + 1, (1,), generator=g))
            if fov[y0:y0 + c, x0:x0 + c].mean() > 0.5:
                break
        x = torch.from_numpy(rgb[:, y0:y0 + c, x0:x0 + c].copy())
        y = torch.from_numpy(ves[y0:y0 + c, x0:x0 + c].astype(np.float32))[None]
        if torch.rand((), generator=g) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if augment == "full":
            turns = int(torch.randint(4, (1,), generator=g))
            x, y = torch.rot90(x, turns, (1, 2)), torch.rot90(y, turns, (1, 2))
            u = torch.rand(7, generator=g)
            gain = torch.exp((u[:3] - 0.5) * 2 * math.log(1.25))[:, None, None]
            gamma = float(torch.exp((u[3] - 0.5) * 2 * math.log(1.4)))
            offset = (u[4:7] - 0.5).mul(0.1)[:, None, None]
            x = (x.clamp(0, 1) ** gamma * gain + offset).clamp(0, 1)
        xs.append(x.contiguous())
        ys.append(y.contiguous())
    return torch.stack(xs), torch.stack(ys)


def read_model_folder(folder: str | Path, kind: str, what: str) -> tuple[dict, dict]:
    """(config, float32 state dict) of a measurement network's model folder (config.json +
    model.safetensors), after checking that it holds a ``kind`` model; ``what`` names it in errors."""
    from safetensors.torch import load_file
    from fundusgen.errors import FundusgenError
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise FundusgenError(f"{folder}: no readable config.json ({e})") from None
    if cfg.get("kind") != kind:
        raise FundusgenError(f"{folder}: a {cfg.get('kind')!r} model, not a {what} ({kind!r})")
    if not (folder / "model.safetensors").is_file():
        raise FundusgenError(f"{folder}: no model.safetensors beside config.json")
    state = load_file(str(folder / "model.safetensors"))
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_vessel_net(folder: str | Path, inference: bool = True):
    """A trained U-Net from a model folder (config.json + model.safetensors), in eval mode.

    ``inference=True`` returns it ready for fast CPU inference (``for_inference``); ``False`` keeps
    the trainable layout (batch norms separate), for fine-tuning."""
    cfg, state = read_model_folder(folder, "vessel-unet", "vessel model folder")
    net = build_unet(cfg["channels"], cfg["depth"])
    net.load_state_dict(state)
    net.config["threshold"] = float(cfg.get("threshold", 0.5))
    return for_inference(net.eval()) if inference else net.eval()


@functools.lru_cache(maxsize=1)
def _bf16_is_native() -> bool:
    torch = _torch()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16():
    """bfloat16 autocast on CPUs with native bf16 arithmetic (AVX512-BF16, AMX), else nothing.

    There it halves the vessel net's time; on the DRIVE test images F1 moves by 0.0006 and AUC
    by 0.0001 (measured with the shipped net). Elsewhere bf16 would be emulated and slower, so
    the net runs in float32. ``FUNDUSGEN_FP32=1`` forces float32 everywhere."""
    import contextlib
    import os
    torch = _torch()
    if os.environ.get("FUNDUSGEN_FP32") == "1" or not _bf16_is_native():
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def for_inference(net):
    """The same eval-mode U-Net with every batch norm folded into the convolution before it and the
    weights in channels-last layout: identical outputs (to float rounding, ~1e-5) at about 0.6x the
    CPU time, because oneDNN's convolutions run fastest on NHWC and a folded norm is free."""
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    nn = torch.nn
    for module in list(net.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    return net.to(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=1)
def shipped_vessel_net():
    """The vessel network that ships in the package, or None when its weights are absent."""
    return load_vessel_net(SHIPPED) if (SHIPPED / "model.safetensors").is_file() else None


def calibrate_threshold(net, records, grid=np.arange(0.30, 0.71, 0.025)) -> tuple[float, float]:
    """The probability threshold with the best mean F1 over ``records`` (the training images,
    never the test images): (threshold, F1 there)."""
    from fundusgen.data.fundus import detect_fov, load_mask, load_rgb
    f1 = np.zeros(len(grid))
    n = 0
    for r in records:
        if "vessels" not in r.masks:
            continue
        rgb = load_rgb(r.image)
        fov = load_mask(r.masks["fov"]) if "fov" in r.masks else detect_fov(rgb)
        truth = load_mask(r.masks["vessels"])[fov]
        prob = network_vessels(net, rgb, fov)[0][fov]
        for i, t in enumerate(grid):
            p = prob > t
            f1[i] += 2 * int((p & truth).sum()) / max(int(p.sum()) + int(truth.sum()), 1)
        n += 1
    best = int(np.argmax(f1))
    return float(round(grid[best], 3)), float(f1[best] / max(n, 1))


def network_vessels(net, rgb: np.ndarray, fov: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probability, mask) from a trained U-Net.

    The net was trained on images whose FOV is 512 px across (``fundusgen prepare --size 512``),
    so vessels have the widths it knows only at that scale: the image is resized to it, padded to
    a multiple of 2**depth, and the probability map resized back."""
    torch = _torch()
    mult = 2 ** net.config["depth"]
    h, w = fov.shape
    scale = fov_scale(fov)
    img = rgb
    if abs(scale - 1.0) > 0.02:
        size = (max(1, round(w / scale)), max(1, round(h / scale)))
        img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    sh, sw = img.shape[:2]
    x = np.pad(img.astype(np.float32) / 255.0, ((0, -sh % mult), (0, -sw % mult), (0, 0)))
    device = next(net.parameters()).device  # the CPU, or a GPU the caller moved the net to
    with torch.no_grad(), native_bf16():
        batch = torch.from_numpy(x.transpose(2, 0, 1).copy())[None].to(device, memory_format=torch.channels_last)
        prob = torch.sigmoid(net(batch).float())[0, 0, :sh, :sw].cpu().contiguous().numpy()
    if (sh, sw) != (h, w):
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    prob = prob * fov
    return prob, prob > (net.config.get("threshold", 0.5) if threshold is None else threshold)


def add_training_arguments(parser, config_cls) -> None:
    """--steps, --batch-size, --crop, --channels, --depth, --seed, --checkpoint-every and --lr options
    with the defaults of a training config dataclass (vessels, disc/cup, laterality); those the
    dataclass lacks are left out."""
    for name in ("steps", "batch_size", "crop", "channels", "depth", "seed", "checkpoint_every"):
        if name in config_cls.__dataclass_fields__:
            parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(config_cls, name))
    parser.add_argument("--lr", type=float, default=config_cls.lr)


def model_cli(prog: str, description: str, config_cls, *, train_help: str, data_help: str, evaluate_help: str):
    """(parser, train subparser, evaluate subparser) of a measurement network's command line: ``train``
    with --data, --out and the config's training options; both with --threads (parse, then call
    ``torch.set_num_threads(args.threads)``)."""
    import argparse
    p = argparse.ArgumentParser(prog=prog, description=description)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help=train_help)
    t.add_argument("--data", required=True, help=data_help)
    t.add_argument("--out", required=True, help="model folder to write")
    add_training_arguments(t, config_cls)
    e = sub.add_parser("evaluate", help=evaluate_help)
    for q in (t, e):  # small convolutions gain little from more threads, and lose much on a busy machine
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p, t, e


def main(argv: list[str] | None = None) -> int:
    """Train the vessel network, or evaluate a method on the DRIVE and CHASE_DB1 test sets."""
    import argparse
    from fundusgen.data.sources import read_source
    p = argparse.ArgumentParser(prog="python -m fundusgen.measure.vessels", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the U-Net on a prepared folder of DRIVE + CHASE_DB1 + STARE")
    t.add_argument("--data", required=True, help="prepared folder with `vessels` masks")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--init", help="fine-tune this trained model folder instead of starting from random weights")
    t.add_argument("--augment", choices=AUGMENTATIONS, default=VesselTrainConfig.augment,
                   help="flip: horizontal flips only; full (default): flips, quarter turns and colour jitter")
    add_training_arguments(t, VesselTrainConfig)
    c = sub.add_parser("calibrate", help="set a trained model's threshold to the best F1 on the training images "
                       "(DRIVE and CHASE_DB1 training splits, STARE), written into its config.json")
    c.add_argument("data_root", help="folder holding drive/, chase_db1/ and stare/ in their native layouts")
    c.add_argument("--model", required=True, help="the trained model folder")
    e = sub.add_parser("evaluate", help="F1/AUC against the first observer on DRIVE and CHASE_DB1 test images")
    e.add_argument("data_root", help="folder holding drive/ and chase_db1/ in their native layouts")
    e.add_argument("--model", help="a trained model folder (default: the classical method)")
    args = p.parse_args(argv)
    if args.command == "calibrate":
        records = [r for name in ("drive", "chase_db1", "stare") for r in read_source(name, Path(args.data_root) / name)
                   if r.source_labels.get("split") != "test"]
        threshold, f1 = calibrate_threshold(load_vessel_net(args.model), records)
        cfg_path = Path(args.model) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["threshold"] = threshold
        cfg["threshold_calibration"] = {"images": len(records), "mean_f1": round(f1, 4),
                                        "on": "DRIVE and CHASE_DB1 training splits, STARE"}
        from fundusgen.data.shards import atomic_write_text
        atomic_write_text(cfg_path, json.dumps(cfg, indent=2))
        print(json.dumps(cfg["threshold_calibration"] | {"threshold": threshold}))
        return 0
    if args.command == "train":
        cfg = VesselTrainConfig(**{k: getattr(args, k) for k in VesselTrainConfig.__dataclass_fields__})
        print(f"wrote {train_vessel_net(cfg)}")
        return 0
    segment = classical_vessels
    if args.model:
        net = load_vessel_net(args.model)
        segment = lambda rgb, fov: network_vessels(net, rgb, fov)  # noqa: E731
    report = {}
    for name, folder in (("drive", "drive"), ("chase_db1", "chase_db1")):
        records = [r for r in read_source(name, Path(args.data_root) / folder)
                   if r.source_labels.get("split") == "test"]
        report[name] = evaluate_on_records(records, segment)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
