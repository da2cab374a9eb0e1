"""Latents and caption states computed once, so the denoiser trains on tensors only.

For each training image: autoencoder latents (posterior mean, normalised) at every resolution
the recipe uses, and caption variants (seeded phrasings of its labels and, once ``fundusgen
measure`` has run on the folder, of its measurements; for images with a known eye, the same
captions with left and right swapped, for horizontally flipped training samples), and whether
``fundusgen purify`` kept it (the purified subset of the later stages). Captions are
deduplicated before encoding: label-derived captions repeat a lot. Their token states are stored
without padding (each caption's tokens end to end, and where each starts): padded to the longest
caption they took twice the memory (2.2 GB for 16,648 captions of this project's data, 82 of 160
tokens on average); a batch is padded to its own longest caption when it is drawn.

A recipe that weighs its loss by vessels (``denoiser.vessel_weight``) also caches, per image and
resolution, the vessel network's probability averaged over each latent cell (``vessels.safetensors``,
beside the cache: added to an existing cache without re-encoding it); one that weighs it by the
layout (``denoiser.anatomy_weight``), each cell's share of the measured disc and macula
(``anatomy.safetensors``); one that weighs it by lesions (``denoiser.lesion_weight``), which cells hold a
bright or dark spot of ``fundusgen measure``'s lesion cues (``lesions.safetensors``), or by dark spots only
(``denoiser.dark_spot_weight``, ``dark_spots.safetensors``).

Each file is stamped with what it was made from (the prepared folder's index, measurements and
purify verdicts, the code that writes captions, the networks' weights, the recipe's settings) and
is made again, with one line saying so, when any of it changes.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from fundusgen.caption.template import describe
from fundusgen.data.shards import atomic_write_file, iter_samples
from fundusgen.errors import FundusgenError
from fundusgen.measure.run import read_measurements
from fundusgen.model.autoencoder import FundusAutoencoder
from fundusgen.model.text_encoder import TextEncoder
from fundusgen.train.config import LOSS_MAPS
from fundusgen.train.data import load_images, resize, to_model_range

_SWAP = {"left": "right", "right": "left"}


def _seed(key: str, variant: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}:{variant}".encode()).digest()[:4], "big")


def captions_for(meta: dict, variants: int, measurements: dict | None = None) -> list[tuple[str, str]]:
    """[(caption, caption of the mirrored image)] * variants. With the image's measurements
    (``fundusgen measure``) the captions also say what was measured (disc, fovea, vessels, haze,
    lesion cues at the calibrated counts of ``fundusgen.caption.lesions``), as the template
    writer of ``fundusgen caption`` does; the mirrored image's measured eye is swapped like its
    label. An expert description, when the record has one, replaces the last variant: it is a
    real caption."""
    record = dict(meta["record"])
    record["quality_grade"] = meta["quality"]["grade"]
    mirrored = dict(record, eye=_SWAP.get(record.get("eye")))
    if measurements:
        record["measurements"] = measurements
        mirrored["measurements"] = dict(measurements, eye=_SWAP.get(measurements.get("eye")))
    out = [(describe(record, _seed(meta["key"], v)), describe(mirrored, _seed(meta["key"], v))) for v in range(variants)]
    if record.get("description"):
        out[-1] = (record["description"], record["description"])  # CSDI prose names no eye
    return out


@torch.no_grad()
def build_cache(data: str | Path, out: Path, vae: FundusAutoencoder, text_encoder: TextEncoder,
                resolutions: list[int], variants: int, progress: bool = True, batch: int = 32,
                exclude_datasets: list[str] | tuple[str, ...] = ()) -> Path:
    path = out / "cache.safetensors"
    stamp = {"data": data_digest(data), "autoencoder": module_digest(vae), "text_encoder": text_encoder.name,
             "text_window": text_encoder.window, "resolutions": sorted(resolutions), "variants": variants,
             "exclude_datasets": sorted(exclude_datasets)}
    if cache_is_current(path, stamp):
        return path
    images, metas = load_images(data, "train", progress, exclude_datasets)
    measured, kept = caption_sources(data)
    tensors: dict[str, torch.Tensor] = {}
    device = next(vae.parameters()).device
    for res in resolutions:
        zs = []
        for i in tqdm(range(0, len(images), batch), desc=f"latents {res}px", unit="batch", disable=not progress):
            x = resize(to_model_range(images[i:i + batch]), res).to(device)
            zs.append(vae.normalise(vae.encode(x).mean).half().cpu())
        tensors[f"latents_{res}"] = torch.cat(zs)
    pairs = [captions_for(m, variants, measured.get(m["key"])) for m in metas]
    unique = sorted({c for p in pairs for pair in p for c in pair} | {""})
    lookup = {c: i for i, c in enumerate(unique)}
    ids = torch.tensor([[lookup[c] for pair in p for c in pair] for p in pairs], dtype=torch.int32)  # N, 2V
    states, masks = [], []
    for i in tqdm(range(0, len(unique), 64), desc="caption states", unit="batch", disable=not progress):
        s, m = text_encoder.encode(unique[i:i + 64])
        states.append(s.half().cpu())
        masks.append(m.cpu())
    tensors.update(pack_states(states, masks))
    tensors["caption_ids"] = ids
    return save_cache(path, tensors, metas, unique, variants, kept, stamp)


def source_code(*objects) -> str:
    """The code of modules, classes or functions as Python runs it: their source parsed and written
    back without comments, docstrings or layout (``ast.unparse``), so that a stamp made from it changes
    with the code, not with its prose. (By hand: no library strips docstrings from an AST.)"""
    parts = []
    for obj in objects:
        tree = ast.parse(inspect.getsource(obj))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        parts.append(ast.unparse(tree))
    return "\n".join(parts)


def _read_caption_code() -> str:
    from fundusgen import vocab
    from fundusgen.caption import lesions, template
    return source_code(template, lesions, vocab, captions_for)


def _read_detector_code() -> str:
    from fundusgen.measure import lesions
    return source_code(lesions)


# Read once, when this module is imported: inspect reads source files from disk, so a later read would
# name the files as they are then (or, for captions_for, the wrong lines of an edited file), not the
# code this process runs; a cache stamped with it would be made again for nothing, or not when due.
_CAPTION_CODE = _read_caption_code()
_DETECTOR_CODE = _read_detector_code()


def caption_code() -> str:
    """The code that writes training captions (the template, its lesion counts, the clinical
    vocabulary, ``captions_for``), as this process imported it (``source_code``). Any change to the
    code makes caches again, including changes that leave every caption as it was: remaking a cache
    costs minutes, training on stale captions a run. Edits to comments and docstrings do not."""
    return _CAPTION_CODE


def data_digest(data: str | Path) -> str:
    """A digest of what a prepared folder's training captions and subsets are written from: its
    index (records, labels, splits), its measurements, the keys ``fundusgen purify`` kept, and the
    code that turns them into captions (:func:`caption_code`)."""
    data = Path(data)
    h = hashlib.sha1(caption_code().encode())
    for path in [data / "index.parquet", data / "purified.parquet", *sorted((data / "measure").glob("*.jsonl"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.is_file() else b"absent")
    return h.hexdigest()[:12]


def module_digest(module: torch.nn.Module) -> str:
    """A digest of a network's weights (names, shapes, values)."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def stamp_text(stamp: dict) -> str:
    """How a cache file records what it was made from (its safetensors metadata ``stamp``)."""
    return json.dumps(stamp, sort_keys=True)


def cache_is_current(path: Path, stamp: dict) -> bool:
    """Whether the cache at ``path`` was made from what ``stamp`` describes (data, networks, settings).
    A cache made from anything else (new measurements, another autoencoder, a stage at a new
    resolution, other vessel weights; or written before caches were stamped) is made again, with
    one line saying so, rather than trained on stale. Used by the latent cache, the vessel maps and
    the diffusers fine-tune's cache."""
    if not path.exists():
        return False
    with safe_open(str(path), "pt") as f:
        made = (f.metadata() or {}).get("stamp")
    if made == stamp_text(stamp):
        return True
    print(f"{path}: made from other data, weights or settings than this recipe's; making it again", file=sys.stderr)
    return False


def pack_states(states: list[torch.Tensor], masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batches of padded caption states (B, L, D) and masks (B, L) -> ``text_tokens`` (T, D): every
    caption's real tokens end to end, in caption order; ``text_offsets`` (U + 1): where each starts."""
    tokens = torch.cat([s[m.bool()] for s, m in zip(states, masks)])
    lengths = torch.cat([m.bool().sum(1) for m in masks])
    return {"text_tokens": tokens, "text_offsets": F.pad(lengths.cumsum(0), (1, 0))}


def caption_states(cache: dict, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states (b, L, D) float and mask (b, L) bool of captions ``cap``, padded to the longest of
    them. Reads packed states (``text_tokens``/``text_offsets``) or padded ones (``text``/``text_mask``:
    caches written before packing, and the fixed-length prompt states of diffusers pipelines)."""
    if "text_tokens" not in cache:
        return cache["text"][cap].float(), cache["text_mask"][cap].bool()
    offsets, tokens = cache["text_offsets"], cache["text_tokens"]
    start = offsets[cap]
    length = offsets[cap + 1] - start
    pos = torch.arange(int(length.max()), device=cap.device)
    mask = pos < length[:, None]
    rows = (start[:, None] + pos).clamp(max=len(tokens) - 1)  # past a caption's end: masked out below
    return tokens[rows].float() * mask[..., None], mask


def lesion_mask(image, fov, measurements: dict, vessels=None, kinds: tuple[str, ...] = ("bright", "dark")
                ) -> torch.Tensor:
    """(H, W) bool: the pixels of the spots of ``fundusgen measure``'s lesion cues of ``kinds`` (bright:
    exudates; dark: microaneurysms and haemorrhages; ``fundusgen.measure.lesions.find_spots``), given the
    image's measured disc and fovea and its vessel mask (``vessels``; by default the one ``fundusgen
    measure`` makes)."""
    return _spot_pixels(_find_spots(image, fov, measurements, vessels), kinds)


def _spot_pixels(spots: dict, kinds: tuple[str, ...]) -> torch.Tensor:
    return torch.from_numpy(np.logical_or.reduce([spots[k][1] for k in kinds]))


def _find_spots(image, fov, measurements: dict, vessels=None) -> dict:
    from fundusgen.measure.attributes import vessel_mask
    from fundusgen.measure.disc import Anatomy
    from fundusgen.measure.lesions import find_spots
    fov = fov.astype(bool)
    px, disc, fovea = float(image.shape[1]), measurements["disc"], measurements.get("fovea")
    a = Anatomy(disc["x"] * px, disc["y"] * px, disc["diameter"] * px, disc.get("ratio", 0.0),
                fovea["x"] * px if fovea else None, fovea["y"] * px if fovea else None, None, 0.0)
    return find_spots(image, fov, vessel_mask(image, fov)[0] if vessels is None else vessels, a)


def lesion_map(mask: torch.Tensor, side: int) -> torch.Tensor:
    """(side, side) float: 1 where a latent cell holds part of a spot of :func:`lesion_mask`, else 0.
    A cell's presence, not its share: a microaneurysm covers a tenth of an 8 x 8 px cell, and averaged
    it would weigh next to nothing."""
    return F.adaptive_max_pool2d(mask[None, None].float(), side)[0, 0]


# The lesion maps and the spot kinds each holds, and the loss maps (config.LOSS_MAPS) that need the
# vessel network: made in one pass by build_network_maps.
LESION_MAPS = {"lesions": ("bright", "dark"), "dark_spots": ("dark",)}
NETWORK_MAPS = ("vessels", *LESION_MAPS)


def network_maps_needed(denoiser) -> tuple[str, ...]:
    """The maps of :data:`NETWORK_MAPS` whose loss weight (``config.LOSS_MAPS``) a denoiser recipe sets:
    what :func:`build_network_maps` makes for it, and why it needs the vessel network."""
    return tuple(kind for kind in NETWORK_MAPS if getattr(denoiser, LOSS_MAPS[kind]) > 0)


def dr_labelled(data: str | Path, keys: list[str]) -> torch.Tensor:
    """(N,) float: 1 for the records of ``keys`` whose labels say DR as the captions read them
    (``vocab.has_dr``: the grade, else the stage, else the flag), 0 for the rest, those labelled free
    of DR and those whose source says nothing of it."""
    from fundusgen.data.prepare import read_index
    from fundusgen.vocab import has_dr
    rows = read_index(data).set_index("key").reindex(keys)
    return torch.tensor([float(has_dr(r) is True) for r in rows.to_dict("records")])


def gate_lesion_maps(cache: dict, gate: torch.Tensor) -> None:
    """``denoiser.lesion_gate: dr``: every cached lesion map (``lesions_*``, ``dark_spots_*``) kept only
    for the records ``gate`` marks (:func:`dr_labelled`), zero elsewhere, in place. The extra weight
    then falls on spots in photographs whose captions name DR, tying them to those words; what the
    detector finds in the others (reflections, drusen, pigment, noise) weighs as any cell."""
    for name in [n for n in cache if any(n.startswith(f"{kind}_") for kind in LESION_MAPS)]:
        cache[name] = cache[name] * gate.to(cache[name].dtype).view(-1, *([1] * (cache[name].dim() - 1)))


@torch.no_grad()
def build_network_maps(data: str | Path, out: Path, keys: list[str], latent_sides: dict[int, int],
                       kinds: tuple[str, ...] = ("vessels",), progress: bool = True,
                       workers: int | None = None) -> dict[str, Path]:
    """The per-image maps that need the vessel network, in one pass over the images (the network is
    most of the time; both maps of 4,395 photographs at 512 px: 7 min on a 2-core CPU), each in its
    own stamped file, in the order of the cache's ``keys``; only those not current are made:

    - ``vessels``: ``vessels_{res}`` (N, 1, side, side), float16, the fraction of each latent cell that
      is vessel by the project's vessel network (``fundusgen.measure.vessels``; its probability, so a
      faint vessel counts in part). The network reads each prepared image at its stored size (the scale
      it was trained at) inside the image's field of view; the map is then averaged down to the latent
      grid of every resolution the recipe trains at.
    - ``lesions``: ``lesions_{res}``, :func:`lesion_map` of the image's :func:`lesion_mask`, with the
      network's vessel mask of the same pass (``fundusgen measure``'s but for its black margin, which
      changes it only where the field of view fills the frame, as no prepared photograph's does).
      ``fundusgen measure`` stores lesion counts per region, not positions, so the detector runs again
      here; the images must have been measured (their disc and fovea).
    - ``dark_spots``: ``dark_spots_{res}``, the same of the dark spots only (microaneurysms and
      haemorrhages: the DR cue, where the bright one also fires on reflections); the detector runs once
      for both lesion maps, in ``workers`` threads (default: the cores but one, at most 8) beside the
      network, which has the main thread."""
    from fundusgen.measure.attributes import VERSION, weights_id
    from fundusgen.measure.vessels import network_vessels, shipped_vessel_net
    if set(kinds) - set(NETWORK_MAPS):
        raise ValueError(f"unknown network maps {sorted(set(kinds) - set(NETWORK_MAPS))}: expected {NETWORK_MAPS}")
    weights = weights_id()
    stamps = {"vessels": {"keys": keys, "weights": weights, "sides": latent_sides}}
    if any(kind in LESION_MAPS for kind in kinds):
        made_from = {"keys": keys, "data": data_digest(data), "weights": weights, "measure": VERSION,
                     "detector": hashlib.sha256(_DETECTOR_CODE.encode()).hexdigest()[:12], "sides": latent_sides}
        stamps.update({kind: {**made_from, "spots": list(spots)} for kind, spots in LESION_MAPS.items()})
    paths = {kind: out / f"{kind}.safetensors" for kind in kinds}
    todo = [kind for kind in kinds if not cache_is_current(paths[kind], stamps[kind])]
    if not todo:
        return paths
    net = shipped_vessel_net()
    if net is None:
        raise FundusgenError(f"denoiser.{LOSS_MAPS[todo[0]]} needs the vessel "
                             "network's weights, which this install lacks (fundusgen/measure/weights/vessels)")
    measured: dict[str, dict] = {}
    lesion_kinds = [kind for kind in todo if kind in LESION_MAPS]
    if lesion_kinds:
        measured, _ = caption_sources(data)
        missing = [k for k in keys if not (measured.get(k) or {}).get("disc")]
        if missing:
            raise FundusgenError(f"{data}: denoiser.{LOSS_MAPS[lesion_kinds[0]]} needs `fundusgen measure` of the "
                                 "training images, "
                                 f"and {len(missing)} of {len(keys)} have none (first: {missing[0]}): run `fundusgen "
                                 f"measure {data}`")
    if torch.cuda.is_available():  # 4,000 photographs: minutes on a CPU, seconds on a GPU
        net = net.cuda()
    row = {k: i for i, k in enumerate(keys)}
    maps = {kind: {r: torch.zeros(len(keys), 1, s, s, dtype=torch.float16) for r, s in latent_sides.items()}
            for kind in todo}

    def lesion_maps(i: int, sample: dict, vessels: np.ndarray) -> None:
        spots = _find_spots(sample["image"], sample["fov"], measured[sample["key"]], vessels.astype(bool))
        for kind in lesion_kinds:
            mask = _spot_pixels(spots, LESION_MAPS[kind])
            for r, side in latent_sides.items():
                maps[kind][r][i, 0] = lesion_map(mask, side).half()

    # The spot detector (OpenCV, which releases the GIL) runs in threads beside the network: on a
    # 16-core GPU machine it would otherwise be most of the time. At most 4 images per thread wait.
    workers = max(1, workers or min(8, (os.cpu_count() or 2) - 1))
    pending: deque = deque()
    seen = 0
    with ThreadPoolExecutor(max_workers=workers) if lesion_kinds else nullcontext() as pool:  # no threads for vessels
        for sample in tqdm(iter_samples(data, "train", keep=lambda m: m["key"] in row), total=len(keys),
                           desc=" and ".join(f"{kind[:-1]} maps" for kind in todo), unit="img",
                           disable=not progress):
            prob, vessels = network_vessels(net, sample["image"], sample["fov"])
            i = row[sample["key"]]
            if "vessels" in todo:
                for r, side in latent_sides.items():
                    maps["vessels"][r][i] = F.adaptive_avg_pool2d(torch.from_numpy(prob)[None, None].float(),
                                                                  side)[0].half()
            if lesion_kinds:
                pending.append(pool.submit(lesion_maps, i, sample, vessels))
                while len(pending) > 4 * workers:
                    pending.popleft().result()
            seen += 1
        while pending:
            pending.popleft().result()   # a detector error surfaces here, before anything is written
    if seen != len(keys):
        raise FundusgenError(f"{data}: {len(keys) - seen} cached training images are no longer in the folder; "
                             f"delete {out / 'cache.safetensors'} to rebuild the cache")
    for kind in todo:
        atomic_write_file(paths[kind], lambda tmp, kind=kind: save_file(
            {f"{kind}_{r}": m for r, m in maps[kind].items()}, tmp, metadata={"stamp": stamp_text(stamps[kind])}))
    return paths


# The macula the anatomy maps mark: one disc diameter around the measured fovea, the ring
# against which the anatomy check (fundusgen.measure.disc.dark_spot) finds the fovea's dark centre.
MACULA_RADIUS_DD = 1.0


def anatomy_map(measurements: dict, side: int, supersample: int = 4) -> torch.Tensor:
    """(side, side) float: the share of each latent cell inside the measured optic disc or within
    ``MACULA_RADIUS_DD`` disc diameters of the measured fovea (0 where ``fundusgen measure`` found
    neither). Coordinates are fractions of the square prepared image, as the measurements store them."""
    disc, fovea = measurements.get("disc"), measurements.get("fovea")
    n = side * supersample
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    y, x = torch.meshgrid(c, c, indexing="ij")
    inside = torch.zeros(n, n, dtype=torch.bool)
    if disc and disc.get("diameter"):
        inside |= (x - disc["x"]) ** 2 + (y - disc["y"]) ** 2 <= (disc["diameter"] / 2) ** 2
        if fovea:
            inside |= (x - fovea["x"]) ** 2 + (y - fovea["y"]) ** 2 <= (MACULA_RADIUS_DD * disc["diameter"]) ** 2
    return F.avg_pool2d(inside.float()[None, None], supersample)[0, 0]


def build_anatomy_maps(data: str | Path, out: Path, keys: list[str], latent_sides: dict[int, int]) -> Path:
    """``anatomy_{res}`` (N, 1, side, side), float16: :func:`anatomy_map` of each cached training image
    at every resolution's latent grid, in the order of the cache's ``keys``. From the measurements
    alone (no image is read: seconds for thousands); a folder never measured is one clear error."""
    path = out / "anatomy.safetensors"
    stamp = {"keys": keys, "data": data_digest(data), "sides": latent_sides, "macula_dd": MACULA_RADIUS_DD}
    if cache_is_current(path, stamp):
        return path
    measured, _ = caption_sources(data)
    missing = [k for k in keys if k not in measured]
    if missing:
        raise FundusgenError(f"{data}: denoiser.anatomy_weight needs `fundusgen measure` of the training images, and "
                             f"{len(missing)} of {len(keys)} have none (first: {missing[0]}): run `fundusgen measure "
                             f"{data}`")
    maps = {r: torch.stack([anatomy_map(measured[k], s)[None] for k in keys]).half() for r, s in latent_sides.items()}
    atomic_write_file(path, lambda tmp: save_file({f"anatomy_{r}": m for r, m in maps.items()}, tmp,
                                                  metadata={"stamp": stamp_text(stamp)}))
    return path


def caption_sources(data: str | Path) -> tuple[dict[str, dict], set[str] | None]:
    """What a prepared folder adds to its labels: measurements per image key (``fundusgen
    measure``; empty when it was not measured) and the keys ``fundusgen purify`` kept (None
    when it was not purified)."""
    data = Path(data)
    measured: dict[str, dict] = {}
    for tar in sorted((data / "shards").glob("*.tar")):
        measured.update(read_measurements(data, tar.stem))
    purified = data / "purified.parquet"
    kept = set(pd.read_parquet(purified, columns=["key"])["key"]) if purified.is_file() else None
    return measured, kept


def save_cache(path: Path, tensors: dict[str, torch.Tensor], metas: list[dict], captions: list[str],
               variants: int, purified: set[str] | None = None, stamp: dict | None = None) -> Path:
    """Write cached tensors with what reading them back needs: image keys, the caption table
    (``caption_ids`` index into it), the empty caption's index, and the number of variants;
    per image its quality score and whether ``fundusgen purify`` kept it (all, when not purified)."""
    tensors["quality"] = torch.tensor([m["quality"]["score"] for m in metas])
    tensors["purified"] = torch.tensor([purified is None or m["key"] in purified for m in metas], dtype=torch.bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"keys": json.dumps([m["key"] for m in metas]), "captions": json.dumps(captions),
            "null_caption": str(captions.index("")), "variants": str(variants),
            "stamp": stamp_text(stamp or {})}
    atomic_write_file(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta))
    return path


def load_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), {"keys": json.loads(meta["keys"]), "captions": json.loads(meta["captions"]),
                                  "null_caption": int(meta["null_caption"]), "variants": int(meta["variants"])}
