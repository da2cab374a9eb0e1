"""Laterality (which eye) from a tiny CNN, odd under a horizontal flip by construction.

A left eye is a mirrored right eye: the disc lies nasal to the macula and the temporal arcades
bend towards it, both mirrored between the eyes. The network therefore scores an image as
``logit(x) = g(x) - g(flip(x))`` with one small convolutional net ``g``: the logit of a mirrored
photo is exactly minus the logit of the photo, so the two eyes are treated alike and every
training photo counts as both eyes at no cost. ``g`` keeps where things are (its head is a linear
map of an 8 x 8 feature grid, not a global pooling), since "the disc is on the right" is the cue.

Input (``net_input``): the working-size copy of ``disc.anatomy`` (256 px) resized to ``INPUT``
(128) px, each colour channel standardised over the FOV (as the disc/cup net does: exposure and
colour balance drop out), and a fourth channel, the classical vessel response that ``anatomy``
already computes, standardised the same way. eye = right when the logit is > 0; confidence =
tanh(|logit| / 2), as for the classical cues (``disc.laterality``): the logistic probability of
the chosen eye rescaled to 0-1.

Train (on the train split of the prepared photos with a known eye: the Mexican set, the 10-class
set and CHASE_DB1; not the Kaggle eye-diseases set, whose DR and cataract photos are often stored
mirrored): ``python -m fundusgen.measure.laterality train --data PREPARED --out MODEL_DIR``;
accuracy per dataset and split, network and classical: ``python -m fundusgen.measure.laterality
evaluate --data PREPARED [--model MODEL_DIR]``.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from fundusgen.errors import FundusgenError
from fundusgen.vocab import Eye

SHIPPED = Path(__file__).parent / "weights" / "laterality"
KIND = "laterality-cnn"
INPUT = 128                                   # network input side, px
TRAIN_DATASETS = ("mex_dme_dr", "srahim_dr", "chase_db1")
EVAL_DATASETS = ("mex_dme_dr", "srahim_dr", "chase_db1", "eye_diseases_4class")
CONFIDENCE_LEVELS = (0.5, 0.9, 0.95)
# training augmentation: rotation (degrees), scale, shift (share of the side), channel gain and offset
AUG_ROTATION, AUG_SCALE, AUG_SHIFT, AUG_GAIN, AUG_OFFSET, AUG_NOISE = 15.0, 0.1, 0.05, 0.3, 0.3, 0.1


def _torch():
    import torch
    return torch


# --- input -----------------------------------------------------------------------------------

def _standardise(a: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """(a - mean) / sd over the FOV pixels, per channel (last axis), 0 outside the FOV."""
    inside = fov if fov.sum() > 16 else np.ones(fov.shape, bool)
    v = a[inside]
    return np.where(inside[..., None], (a - v.mean(0)) / (v.std(0) + 1e-3), 0.0).astype(np.float32)


def net_input(small: np.ndarray, sfov: np.ndarray, response: np.ndarray) -> np.ndarray:
    """(4, INPUT, INPUT) float32 from the working copy (RGB uint8), its FOV and its classical
    vessel response: RGB standardised per channel over the FOV (+1 on the sd, so a black channel
    stays flat), then the vessel response standardised; 0 outside the FOV."""
    size = (INPUT, INPUT)
    # area averaging, not nearest: the FOV of a mirrored photo is then the mirrored FOV
    fov = cv2.resize(sfov.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    rgb = cv2.resize(small, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    inside = fov if fov.sum() > 16 else np.ones(fov.shape, bool)
    mean, sd = rgb[inside].mean(0), rgb[inside].std(0) + 1.0
    rgb = np.where(inside[..., None], (rgb - mean) / sd, 0.0)
    ves = _standardise(cv2.resize(response.astype(np.float32), size, interpolation=cv2.INTER_AREA)[..., None], fov)
    return np.concatenate([rgb, ves], -1).astype(np.float32).transpose(2, 0, 1)


def image_input(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """``net_input`` of a square FOV-cropped image (uint8 RGB, bool FOV), made as ``anatomy`` makes it."""
    from fundusgen.measure.disc import working_copy
    from fundusgen.measure.vessels import classical_vessels
    small, sfov, _ = working_copy(rgb, fov.astype(bool))
    return net_input(small, sfov, classical_vessels(small, sfov)[0])


# --- the network -----------------------------------------------------------------------------

def build_laterality_net(channels: int = 16, inputs: int = 4):
    """``g``: four stride-2 stages (128 -> 8 px) of 3x3 conv + BN + ReLU (another at 32 px), a 1x1 conv to 4 maps and
    a linear map of the 8 x 8 x 4 grid to one score (about 75 k parameters at 16 channels); the
    module's output is g(x) - g(flip x), the logit of "right eye"."""
    torch = _torch()
    nn = torch.nn

    def conv(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    c = channels

    class LateralityNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = {"channels": channels, "inputs": inputs, "input": INPUT}
            cells = (INPUT // 16) ** 2
            self.g = nn.Sequential(*conv(inputs, c, 2), *conv(c, 2 * c, 2), *conv(2 * c, 2 * c),
                                   *conv(2 * c, 4 * c, 2), *conv(4 * c, 4 * c, 2),
                                   nn.Conv2d(4 * c, 4, 1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * cells, 1))

        def forward(self, x):
            n = x.shape[0]
            s = self.g(torch.cat([x, x.flip(-1)])).squeeze(-1)  # one batch: batch norm sees both alike
            return s[:n] - s[n:]

    return LateralityNet()


def load_laterality_net(folder: str | Path):
    """A trained network from a model folder (config.json + model.safetensors), fp32, in eval mode."""
    from fundusgen.measure.vessels import read_model_folder
    cfg, state = read_model_folder(folder, KIND, "laterality network")
    if cfg.get("input", INPUT) != INPUT:
        raise FundusgenError(f"{folder}: trained on {cfg['input']} px inputs, this code makes {INPUT} px")
    net = build_laterality_net(cfg["channels"], cfg.get("inputs", 4))
    net.load_state_dict(state)
    return net.eval()


@functools.lru_cache(maxsize=1)
def shipped_laterality_net():
    """The network that ships in the package, or None when its weights are absent."""
    return load_laterality_net(SHIPPED) if (SHIPPED / "model.safetensors").is_file() else None


def logits(net, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of "right eye" for a stack of ``net_input``s (N, 4, INPUT, INPUT)."""
    torch = _torch()
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            out.append(net(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch]))).float().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def eye_from_logit(logit: float) -> tuple[str, float]:
    """(eye, confidence): right when the logit is > 0; confidence tanh(|logit| / 2)."""
    return (Eye.RIGHT.value if logit > 0 else Eye.LEFT.value), float(np.tanh(abs(logit) / 2))


def network_laterality(net, small: np.ndarray, sfov: np.ndarray, response: np.ndarray) -> tuple[str, float]:
    """(eye, confidence) of the working copy that ``disc.anatomy`` made."""
    return eye_from_logit(float(logits(net, net_input(small, sfov, response)[None])[0]))


# --- data ------------------------------------------------------------------------------------

@dataclass
class EyeSet:
    keys: list[str]
    datasets: list[str]
    splits: list[str]
    right: np.ndarray     # (N,) 1.0 right eye, 0.0 left
    inputs: np.ndarray    # (N, 4, INPUT, INPUT) float16
    source_right: np.ndarray | None = None  # (N,) the eye as the dataset gave it, before label errata


def load_eye_set(folder: str | Path, datasets=TRAIN_DATASETS, splits=None, classical: bool = False,
                 progress: bool = True) -> tuple[EyeSet, list | None]:
    """The prepared photos of ``datasets`` (and ``splits``) whose eye is known, as network inputs;
    with ``classical``, also the classical (eye, confidence) of each (``disc.anatomy``)."""
    from tqdm import tqdm

    from fundusgen.data.shards import iter_samples
    from fundusgen.data.sources.errata import source_label
    from fundusgen.measure.disc import anatomy

    def keep(meta):
        rec = meta["record"]
        return rec["dataset"] in datasets and rec.get("eye") in ("left", "right") and (
            splits is None or meta["split"] in splits)

    keys, names, sp, right, source, inputs, cl = [], [], [], [], [], [], []
    for s in tqdm(iter_samples(folder, keep=keep), desc="photos with a known eye", unit="img", disable=not progress):
        rec = s["meta"]["record"]
        keys.append(s["key"])
        names.append(rec["dataset"])
        sp.append(s["meta"]["split"])
        right.append(1.0 if rec["eye"] == Eye.RIGHT.value else 0.0)
        said = source_label(rec, "eye")
        source.append(1.0 if said == Eye.RIGHT.value else 0.0 if said == Eye.LEFT.value else np.nan)
        inputs.append(image_input(s["image"], s["fov"]).astype(np.float16))
        if classical:
            a = anatomy(s["image"], s["fov"].astype(bool), laterality_method="classical")
            cl.append((a.eye, a.eye_confidence))
    shape = (0, 4, INPUT, INPUT)
    data = EyeSet(keys, names, sp, np.array(right, np.float32),
                  np.stack(inputs) if inputs else np.zeros(shape, np.float16), np.array(source, np.float32))
    return data, (cl if classical else None)


# --- training --------------------------------------------------------------------------------

@dataclass
class LateralityTrainConfig:
    data: str                     # a prepared folder (fundusgen prepare, FOV-cropped photos with their splits)
    out: str                      # model folder: config.json + model.safetensors, checkpoint.pt while training
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    channels: int = 16
    seed: int = 0
    checkpoint_every: int = 250


def augment(x, g):
    """Random rotation, scale and shift (one affine resampling), channel gain and offset and
    Gaussian noise, drawn from generator ``g``; the FOV's outside stays 0. The distribution is
    symmetric under mirroring, as the labels are."""
    torch = _torch()
    F = torch.nn.functional
    n = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand((n, *shape), generator=g)

    angle = torch.deg2rad(u(-AUG_ROTATION, AUG_ROTATION))
    scale = torch.exp(u(-AUG_SCALE, AUG_SCALE))
    shift = u(-2 * AUG_SHIFT, 2 * AUG_SHIFT, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fov = (x.abs().sum(1, keepdim=True) > 0).float()
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(fov, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    c = x.shape[1]
    x = x * (1 + u(-AUG_GAIN, AUG_GAIN, c, 1, 1)) + u(-AUG_OFFSET, AUG_OFFSET, c, 1, 1)
    x = x + AUG_NOISE * torch.randn(x.shape, generator=g)
    return x * inside


def _batch(data: EyeSet, rows: np.ndarray, batch_size: int, g):
    torch = _torch()
    pick = rows[torch.randint(len(rows), (batch_size,), generator=g).numpy()]
    torch.manual_seed(int(torch.randint(2 ** 31, (1,), generator=g)))  # dropout's masks: a resumed run draws the same
    x = torch.from_numpy(data.inputs[pick].astype(np.float32))
    return augment(x, g), torch.from_numpy(data.right[pick])


def bce(logit, right):
    return _torch().nn.functional.binary_cross_entropy_with_logits(logit, right)


def train_laterality_net(cfg: LateralityTrainConfig, progress: bool = True, data: EyeSet | None = None) -> Path:
    """Train on the train split of the photos with a known eye; resumes exactly from
    ``out/checkpoint.pt`` after a kill. ``data`` may be given (tests); otherwise it is read from ``cfg.data``."""
    torch = _torch()
    from safetensors.torch import save_file

    from fundusgen.data.shards import atomic_write_text
    from fundusgen.measure.vessels import fit_segmentation

    if data is None:
        data, _ = load_eye_set(cfg.data, TRAIN_DATASETS, ("train",), progress=progress)
    rows = np.array([i for i, s in enumerate(data.splits) if s == "train"])
    if len(rows) == 0:
        raise FundusgenError(f"{cfg.data}: no training photos with a known eye ({', '.join(TRAIN_DATASETS)})")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model = build_laterality_net(cfg.channels)
    net = fit_segmentation(model, lambda g: _batch(data, rows, cfg.batch_size, g), cfg, out, desc="train laterality",
                           progress=progress, images_per_step=cfg.batch_size, loss_fn=bce)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    counts = {name: int(sum(1 for r in rows if data.datasets[r] == name)) for name in sorted(set(data.datasets))}
    atomic_write_text(out / "config.json", json.dumps({"kind": KIND, **net.config, "trained": asdict(cfg),
                                                       "training_photos": counts}, indent=2))
    return out


# --- evaluation ------------------------------------------------------------------------------

def summarise(ok, confidence) -> dict:
    """Accuracy over all photos and, at each confidence level, the share of photos answered that
    confidently (coverage) and their accuracy."""
    ok, confidence = np.asarray(ok, bool), np.asarray(confidence, float)
    if not len(ok):
        return {"images": 0}
    levels = {}
    for level in CONFIDENCE_LEVELS:
        sure = confidence >= level
        levels[str(level)] = {"coverage": round(float(sure.mean()), 4),
                              "accuracy": round(float(ok[sure].mean()), 4) if sure.any() else None}
    return {"images": int(len(ok)), "accuracy": round(float(ok.mean()), 4), "errors": int((~ok).sum()),
            "when_confident": levels}


def by_split(ok, confidence, splits) -> dict:
    """``summarise`` over the held-out splits (test, val), the train split, and all photos."""
    ok, confidence, splits = np.asarray(ok, bool), np.asarray(confidence, float), np.asarray(splits)
    out = {s: summarise(ok[splits == s], confidence[splits == s]) for s in ("test", "val", "train") if (splits == s).any()}
    out["all"] = summarise(ok, confidence)
    return out


def evaluate(folder: str | Path, net=None, datasets=EVAL_DATASETS, progress: bool = True) -> dict:
    """Per dataset and split: accuracy and coverage of the network (when given) and of the
    classical cues, on the prepared photos with a known eye. Where label errata changed eyes of a
    dataset (``fundusgen.data.sources.errata``), each method is also scored against the eyes the
    dataset gave ("METHOD, source labels"), and "corrected" lists the photos."""
    data, classical = load_eye_set(folder, datasets, classical=True, progress=progress)
    truth = np.where(data.right > 0.5, Eye.RIGHT.value, Eye.LEFT.value)
    methods = {"classical": (np.array([e for e, _ in classical]), np.array([c for _, c in classical]))}
    if net is not None:
        pairs = [eye_from_logit(v) for v in logits(net, data.inputs.astype(np.float32))]
        methods = {"network": (np.array([e for e, _ in pairs]), np.array([c for _, c in pairs])), **methods}
    source = np.where(data.source_right > 0.5, Eye.RIGHT.value, Eye.LEFT.value)
    corrected = (source != truth) & ~np.isnan(data.source_right)
    names, splits, keys = np.array(data.datasets), np.array(data.splits), np.array(data.keys)
    report = {}
    for name in datasets:
        on = names == name
        if not on.any():
            continue
        report[name] = {m: by_split(eye[on] == truth[on], conf[on], splits[on]) for m, (eye, conf) in methods.items()}
        fixed = on & corrected
        if fixed.any():
            for m, (eye, conf) in methods.items():
                report[name][f"{m}, source labels"] = by_split(eye[on] == source[on], conf[on], splits[on])
            report[name]["corrected"] = {str(k): str(s) for k, s in zip(keys[fixed], splits[fixed])}
    return report


def main(argv: list[str] | None = None) -> int:
    """Train the laterality network, or evaluate it and the classical cues per dataset and split."""
    import sys

    from fundusgen.measure.vessels import model_cli
    p, t, e = model_cli("python -m fundusgen.measure.laterality", main.__doc__, LateralityTrainConfig,
                        train_help="train on the train split of the Mexican, 10-class and CHASE_DB1 photos",
                        data_help="prepared folder (fundusgen prepare)",
                        evaluate_help="accuracy and coverage per dataset and split, network and classical")
    e.add_argument("--data", required=True, help="prepared folder (fundusgen prepare)")
    e.add_argument("--model", default=str(SHIPPED), help="model folder (default: the shipped weights)")
    e.add_argument("--classical-only", action="store_true", help="evaluate the classical cues only")
    e.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = p.parse_args(argv)
    _torch().set_num_threads(args.threads)
    try:
        if args.command == "train":
            cfg = LateralityTrainConfig(**{k: getattr(args, k) for k in LateralityTrainConfig.__dataclass_fields__})
            print(f"wrote {train_laterality_net(cfg)}")
            return 0
        net = None if args.classical_only else load_laterality_net(args.model)
        report = evaluate(args.data, net)
    except FundusgenError as err:
        print(f"python -m fundusgen.measure.laterality {args.command}: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from fundusgen.data.shards import atomic_write_text
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
