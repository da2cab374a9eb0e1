"""``fundusgen evaluate``: realism, a first anatomical-validity check and memorisation of a
synthetic image set, written as one self-contained HTML report and the same figures as JSON.

Features come from ``fundusgen.eval.features`` (cached, so a second run costs seconds), the
figures from ``realism``, ``anatomy`` and ``memorisation``; this module only gathers the inputs,
runs those steps and lays out what they return.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import json
import shlex
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

import fundusgen
from fundusgen.data.prepare import read_index
from fundusgen.data.shards import atomic_write_text
from fundusgen.data.splits import SPLITS
from fundusgen.errors import FundusgenError
from fundusgen.eval import anatomy
from fundusgen.eval import memorisation as memorisation_module
from fundusgen.eval.features import (FeatureSet, default_cache_dir, file_key, folder_features, is_prepared,
                                     load_inception, read_rgb, shards_signature)
from fundusgen.eval.memorisation import (MemorisationResult, calibrate_threshold, memorisation_check,
                                         nearest_by_cosine)
from fundusgen.eval.realism import kid, realism_report

MIN_FID_IMAGES = 10          # below this per set, FID is not reported (see ``_withhold_small_fids``)
GENERATE_EXTRAS = ("contact_sheet.png",)  # written by `fundusgen generate` beside its images: not a sample
HELDOUT_SPLITS = ("val", "test")
THUMB_SIDE = 160


@dataclass
class RealSet:
    """A real reference set: ``NAME=PATH[:split]`` on the command line."""
    name: str
    path: Path
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> "RealSet":
        name, sep, rest = text.partition("=")
        if not sep or not name.strip() or not rest:
            raise FundusgenError(f"--real {text!r}: expected NAME=PREPARED_DIR[:split] (for example "
                                 f"heldout=prepared/:test)")
        path, colon, split = rest.rpartition(":")
        if not colon or split not in SPLITS:
            path, split = rest, None
        return cls(name.strip(), Path(path), split)

    def __str__(self) -> str:
        return f"{self.name}={self.path.resolve()}{':' + self.split if self.split else ''}"


@dataclass
class EvaluateConfig:
    synthetic: Path
    real: list[RealSet]
    train: Path
    out: Path
    cache_dir: Path | None = None
    k: int = 3                      # neighbours of the precision/recall manifolds
    seed: int = 0
    quantile: float = 0.999         # held-out quantile that sets the memorisation threshold
    max_real_anatomy: int = 1000    # real images per set run through the anatomy check
    thumbnails: int = 24            # synthetic/nearest-real pairs shown
    downstream: Path | None = None  # a prepared folder: train classifiers with and without the synthetic set
    downstream_tasks: tuple[str, ...] = ("dr_grade", "glaucoma", "cataract")
    downstream_seeds: int = 5

    def downstream_config(self) -> "DownstreamConfig":
        from fundusgen.eval.downstream import DownstreamConfig
        return DownstreamConfig(prepared=self.downstream, synthetic=self.synthetic, tasks=self.downstream_tasks,
                                seeds=self.downstream_seeds, cache_dir=self.cache_dir)


def reproduce_command(cfg: EvaluateConfig) -> str:
    """The command line that gives this report again (absolute paths, options that differ from
    their defaults)."""
    words = ["fundusgen", "evaluate", "--synthetic", str(cfg.synthetic.resolve())]
    for real in cfg.real:
        words += ["--real", str(real)]
    words += ["--train", str(cfg.train.resolve()), "--out", str(cfg.out.resolve())]
    defaults = EvaluateConfig(cfg.synthetic, cfg.real, cfg.train, cfg.out)
    for name, flag in (("k", "--k"), ("seed", "--seed"), ("quantile", "--quantile"),
                       ("max_real_anatomy", "--max-real-anatomy"), ("thumbnails", "--thumbnails")):
        if getattr(cfg, name) != getattr(defaults, name):
            words += [flag, str(getattr(cfg, name))]
    if cfg.downstream is not None:
        words += ["--downstream", str(cfg.downstream.resolve()), "--downstream-tasks", ",".join(cfg.downstream_tasks),
                  "--downstream-seeds", str(cfg.downstream_seeds)]
    if cfg.cache_dir is not None:
        words += ["--cache", str(cfg.cache_dir.resolve())]
    return shlex.join(words)


class ImageSource:
    """Images of a FeatureSet's source by id: a file of an image folder, or a sample of a prepared
    folder (whose shard members are indexed once, so reading a few images costs no full pass)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._members: dict[str, tuple[Path, tarfile.TarInfo]] | None = None

    def _index(self) -> dict[str, tuple[Path, tarfile.TarInfo]]:
        members = {}
        for tar in sorted((self.folder / "shards").glob("*.tar")):
            with tarfile.open(tar) as t:
                for m in t.getmembers():
                    key, _, ext = m.name.partition(".")
                    if ext in ("jpg", "png"):
                        members[key] = (tar, m)
        return members

    def keys(self, ids: list[str]) -> list[str]:
        """What identifies each image's contents, for a cache (as the feature cache keys them)."""
        if not is_prepared(self.folder):
            return [file_key(self.folder / item) for item in ids]
        signature = shards_signature(self.folder)
        return [f"{self.folder.resolve()}|{signature}|{item}" for item in ids]

    def __call__(self, item_id: str) -> np.ndarray:
        if not is_prepared(self.folder):
            return read_rgb(self.folder / item_id)
        if self._members is None:
            self._members = self._index()
        if item_id not in self._members:
            raise FundusgenError(f"{self.folder}: no sample called {item_id}")
        tar, member = self._members[item_id]
        with tarfile.open(tar) as t:
            return np.asarray(Image.open(io.BytesIO(t.extractfile(member).read())).convert("RGB"))


class _LazyInception:
    """The Inception network, loaded on first use: a re-run served from the cache never loads it."""

    def __init__(self):
        self._model = None

    def __call__(self, x):
        if self._model is None:
            self._model = load_inception()
        return self._model(x)


# --- Inputs --------------------------------------------------------------------------------------

def _check_inputs(cfg: EvaluateConfig) -> None:
    names = [r.name for r in cfg.real]
    if not names:
        raise FundusgenError("no real reference set: give --real NAME=PREPARED_DIR[:split] at least once")
    for name in names:
        if names.count(name) > 1:
            raise FundusgenError(f"--real: the name {name!r} is given twice")
        if name == "pooled":
            raise FundusgenError("--real: the name 'pooled' is kept for all real sets together; choose another")
    for real in cfg.real:
        if not real.path.is_dir():
            raise FundusgenError(f"--real {real.name}: {real.path}: folder not found")
    if not cfg.train.is_dir():
        raise FundusgenError(f"--train {cfg.train}: folder not found")
    if not is_prepared(cfg.train):
        raise FundusgenError(f"--train {cfg.train}: not a folder made by `fundusgen prepare` (memorisation needs "
                             f"its patient-level train/val/test split)")
    if not 0 < cfg.quantile < 1:
        raise FundusgenError(f"--quantile {cfg.quantile}: expected a number between 0 and 1")
    if cfg.downstream is not None:
        from fundusgen.eval.downstream import check_inputs
        check_inputs(cfg.downstream_config())
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FundusgenError(f"--out {cfg.out}: cannot create the folder ({e.strerror})") from None


def _subset(features: FeatureSet, keep: Callable[[str], bool]) -> FeatureSet:
    rows = [i for i, item in enumerate(features.ids) if keep(item)]
    return FeatureSet(features.source, [features.ids[i] for i in rows], features.features[rows], features.cache_path)


def gather_features(requests: list[tuple[Path, str | None]], *, model, cache_dir: Path | None,
                    progress: bool) -> dict[tuple[Path, str | None], FeatureSet]:
    """Features of every (folder, split) asked for. A prepared folder needed in several splits
    is run through the network once, as a whole, and cut by the split in its index."""
    wanted: dict[Path, set] = {}
    for folder, split in requests:
        wanted.setdefault(folder, set()).add(split)
    out = {}
    for folder, splits in wanted.items():
        if is_prepared(folder) and (len(splits) > 1 or None in splits):
            whole = folder_features(folder, model=model, cache_dir=cache_dir, progress=progress)
            index = read_index(folder)
            split_of = dict(zip(index["key"], index["split"]))
            for split in splits:
                out[folder, split] = whole if split is None else _subset(whole, lambda k: split_of.get(k) == split)
        else:
            for split in splits:
                out[folder, split] = folder_features(folder, split=split, model=model, cache_dir=cache_dir,
                                                     progress=progress)
    return out


def _require(features: FeatureSet, what: str) -> FeatureSet:
    if len(features) == 0:
        raise FundusgenError(f"{what}: no images")
    return features


# --- Figures -------------------------------------------------------------------------------------

def _withhold_small_fids(realism: dict) -> list[str]:
    """Replace FIDs computed from fewer than MIN_FID_IMAGES images per set by the reason.

    Such a figure is mostly sampling noise: the covariance of n images has rank n - 1 of 2048.
    KID is unbiased at any size and stays; so do precision and recall where k allows."""
    notes = set()
    comparisons = [c for figures in realism["per_real_set"].values() for c in (figures, figures["floor"])]
    for c in comparisons + realism["real_vs_real"]:
        n = min(c["n_real"], c["n_synth"])
        if n < MIN_FID_IMAGES and "value" in c["fid"]:
            c["fid"] = {"error": f"{n} image(s): too few for FID, which is reported from {MIN_FID_IMAGES} images "
                                 f"per set (KID is unbiased at any size: read it instead)"}
            notes.add(c["fid"]["error"])
    if realism["n_synth"] < MIN_FID_IMAGES:
        return [f"{realism['n_synth']} synthetic images: too few for FID (needs at least {MIN_FID_IMAGES}); KID, "
                f"precision/recall where possible, anatomy and memorisation are still reported"]
    return sorted(notes)


def cached_per_image(source: ImageSource, ids: list[str], compute_many: Callable[[list[str]], list], *,
                     kind: str, version: str, cache_dir: Path | None) -> list:
    """``compute_many(ids)`` (JSON-able results, one per id), cached beside the features: one JSON per
    source and ``version`` (a digest of the code and weights that compute it), keyed by what
    identifies each image's contents, so a re-run computes only images it has not seen."""
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    name = hashlib.sha1(f"{source.folder.resolve()}|{version}".encode()).hexdigest()[:20]
    cache = cache_dir / f"{kind}-{name}.json"
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}  # absent or unreadable: recompute
    keys = source.keys(ids)
    todo = [(key, item) for key, item in zip(keys, ids) if key not in cached]
    if todo:
        results = compute_many([item for _, item in todo])
        cached.update({key: r for (key, _), r in zip(todo, results)})
        atomic_write_text(cache, json.dumps(cached))
    return [cached[key] for key in keys]


def run_anatomy(source: ImageSource, ids: list[str], *, cache_dir: Path | None, desc: str,
                progress: bool) -> list[anatomy.AnatomyCheck]:
    """``anatomy.check_image`` of every image, cached."""
    def compute(todo: list[str]) -> list[dict]:
        return [anatomy.check_image(source(item)).to_dict()
                for item in tqdm(todo, desc=desc, unit="img", disable=not progress)]
    rows = cached_per_image(source, ids, compute, kind="anatomy", version=anatomy.version(), cache_dir=cache_dir)
    return [anatomy.AnatomyCheck.from_dict(r) for r in rows]


def run_vessels(source: ImageSource, ids: list[str], *, cache_dir: Path | None, desc: str, progress: bool) -> list[dict]:
    """Vessel geometry of every image (``fundusgen.eval.vessels``), cached."""
    from fundusgen.eval import vessels as vessel_eval
    return cached_per_image(source, ids, lambda todo: vessel_eval.geometry_of(todo, source, desc=desc, progress=progress),
                            kind="vessels", version=vessel_eval.version(), cache_dir=cache_dir)


def _sample_ids(ids: list[str], limit: int, seed: int) -> list[str]:
    if len(ids) <= limit:
        return list(ids)
    keep = np.sort(np.random.default_rng(seed).choice(len(ids), limit, replace=False))
    return [ids[i] for i in keep]


def check_memorisation(synth: FeatureSet, train: FeatureSet, heldout: np.ndarray, what: str, quantile: float,
                       synth_source: ImageSource, train_source: ImageSource,
                       ) -> tuple[MemorisationResult | None, np.ndarray, str | None]:
    """The memorisation step: the threshold from the held-out features, each synthetic image's nearest
    training image, and the held-out similarities (for the plot); or the reason it cannot run, named
    after ``what`` (the option that gave the prepared folder, e.g. "--train DIR")."""
    try:
        threshold = calibrate_threshold(train.features, heldout, quantile)
    except FundusgenError as e:
        return None, np.zeros(0), f"{what}: {e} (val and test splits), so no threshold can be calibrated"
    result = memorisation_check(synth.features, train.features, threshold, synth_ids=synth.ids, train_ids=train.ids,
                                load_synth=synth_source, load_train=train_source)
    return result, nearest_by_cosine(heldout, train.features)[1], None


def memorisation_of_folder(folder: Path, prepared: Path, *, quantile: float = 0.999, cache_dir: Path | None = None,
                           progress: bool = True, model=None) -> MemorisationResult:
    """``fundusgen generate --memorisation PREPARED``: the memorisation step of ``evaluate`` alone,
    for a folder of synthetic images against the training split of a prepared folder (its val and
    test splits calibrate the threshold). Features are cached as ``evaluate`` caches them."""
    if not is_prepared(prepared):
        raise FundusgenError(f"--memorisation {prepared}: not a folder made by `fundusgen prepare` (the check needs "
                             f"its patient-level train/val/test split)")
    model = model if model is not None else _LazyInception()
    synth = folder_features(folder, model=model, cache_dir=cache_dir, progress=progress, exclude=GENERATE_EXTRAS)
    feats = gather_features([(prepared, s) for s in ("train", *HELDOUT_SPLITS)], model=model, cache_dir=cache_dir,
                            progress=progress)
    train = _require(feats[prepared, "train"], f"--memorisation {prepared}: split train")
    heldout = np.concatenate([feats[prepared, s].features for s in HELDOUT_SPLITS])
    result, _, error = check_memorisation(_require(synth, str(folder)), train, heldout, f"--memorisation {prepared}",
                                          quantile, ImageSource(folder), ImageSource(prepared))
    if result is None:
        raise FundusgenError(error)
    return result


def evaluate(cfg: EvaluateConfig, *, model=None, progress: bool = True) -> dict:
    """Run every step, write ``report.html`` and ``report.json`` into ``cfg.out``, return the report."""
    _check_inputs(cfg)
    timings, started = {}, time.perf_counter()
    tick = time.perf_counter()
    model = model if model is not None else _LazyInception()
    requests = [(r.path, r.split) for r in cfg.real] + [(cfg.train, s) for s in ("train", *HELDOUT_SPLITS)]
    synth = folder_features(cfg.synthetic, model=model, cache_dir=cfg.cache_dir, progress=progress,
                            exclude=GENERATE_EXTRAS)
    feats = gather_features(requests, model=model, cache_dir=cfg.cache_dir, progress=progress)
    reals = {r.name: _require(feats[r.path, r.split], f"--real {r}") for r in cfg.real}
    train = _require(feats[cfg.train, "train"], f"--train {cfg.train}: split train")
    heldout = [feats[cfg.train, s] for s in HELDOUT_SPLITS]
    timings["features_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    realism = realism_report({name: f.features for name, f in reals.items()}, synth.features, k=cfg.k, seed=cfg.seed)
    warnings = _withhold_small_fids(realism)
    timings["realism_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    real_ids = {name: _sample_ids(f.ids, cfg.max_real_anatomy, cfg.seed) for name, f in reals.items()}
    realism["retina_domain"] = _retina_domain(cfg, synth.ids, real_ids, progress, warnings)
    timings["retina_features_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    synth_source, train_source = ImageSource(cfg.synthetic), ImageSource(cfg.train)
    real_sources = {r.name: ImageSource(r.path) for r in cfg.real}
    heldout_features = np.concatenate([h.features for h in heldout])
    memorisation, heldout_sims, memorisation_error = check_memorisation(
        synth, train, heldout_features, f"--train {cfg.train}", cfg.quantile, synth_source, train_source)
    warnings.extend([memorisation_error] if memorisation_error else memorisation.threshold.warnings)
    verdict = memorisation.verdict if memorisation else f"memorisation: not checked ({memorisation_error})"
    timings["memorisation_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    synth_checks = run_anatomy(synth_source, synth.ids, cache_dir=cfg.cache_dir, desc="anatomy synthetic",
                               progress=progress)
    real_checks = {name: run_anatomy(real_sources[name], ids, cache_dir=cfg.cache_dir, desc=f"anatomy {name}",
                                     progress=progress) for name, ids in real_ids.items()}
    warnings += _size_warnings(synth_source, synth.ids, real_sources, real_ids)
    warnings += _retry_warnings(cfg.synthetic, synth.ids)
    timings["anatomy_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    from fundusgen.eval import vessels as vessel_eval
    synth_vessels = run_vessels(synth_source, synth.ids, cache_dir=cfg.cache_dir, desc="vessels synthetic",
                                progress=progress)
    real_vessels = {name: run_vessels(real_sources[name], ids, cache_dir=cfg.cache_dir, desc=f"vessels {name}",
                                      progress=progress)
                    for name, ids in real_ids.items()}
    timings["vessels_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    faithful = _faithfulness(cfg, progress, warnings)
    timings["faithfulness_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    downstream = None
    if cfg.downstream is not None:
        from fundusgen.eval.downstream import run_downstream
        downstream = run_downstream(cfg.downstream_config(), progress=progress)
    timings["downstream_s"] = time.perf_counter() - tick

    report = {
        "fundusgen_version": fundusgen.__version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": reproduce_command(cfg),
        "inputs": {
            "synthetic": {"path": str(cfg.synthetic.resolve()), "n": len(synth)},
            "real": [{"name": r.name, "path": str(r.path.resolve()), "split": r.split, "n": len(reals[r.name]),
                      "n_anatomy": len(real_ids[r.name])} for r in cfg.real],
            "train": {"path": str(cfg.train.resolve()), "n_train": len(train),
                      "n_heldout": int(len(heldout_features)), "heldout_splits": list(HELDOUT_SPLITS)},
        },
        "verdict": verdict,
        "realism": realism,
        "memorisation": _memorisation_json(memorisation, heldout_sims, memorisation_error),
        "anatomy": {
            "method": anatomy.__doc__.strip(),
            "thresholds": anatomy.calibration(),
            "synthetic": anatomy.summarise(synth_checks),
            "real": {name: anatomy.summarise(checks) for name, checks in real_checks.items()},
            "images": {item: c.to_dict() for item, c in zip(synth.ids, synth_checks)},
        },
        "vessels": {"method": vessel_eval.__doc__.strip(),
                    "metrics": vessel_eval.compare_geometry(real_vessels, synth_vessels)},
        "faithfulness": faithful,
        "warnings": warnings,
    }
    if downstream is not None:
        report["downstream"] = downstream
    tick = time.perf_counter()
    page = render_html(report, _Assets(cfg, synth.ids, synth_source, train_source, synth_checks, real_checks,
                                       memorisation, heldout_sims, synth_vessels, real_vessels))
    timings["report_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    atomic_write_text(cfg.out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(cfg.out / "report.html", page)
    return report


def _memorisation_json(result: MemorisationResult | None, heldout_sims: np.ndarray, error: str | None) -> dict:
    if result is None:
        return {"error": error}
    out = result.to_dict()
    out["method"] = memorisation_module.__doc__.strip()
    sims = np.array([m.similarity for m in result.nearest])
    out["synthetic_quantiles"] = {f"q{q:g}": float(np.quantile(sims, q)) for q in (0.5, 0.9, 0.99, 1.0)}
    out["n_heldout"] = int(len(heldout_sims))
    return out


def _retry_warnings(folder: Path, ids: list[str]) -> list[str]:
    """Say when the synthetic images were drawn with `generate --anatomy-retries` (their sidecars
    say so): the anatomy check then judges a set it already filtered."""
    checked = redrawn = 0
    for item in ids:
        try:
            meta = json.loads((folder / item).with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        anatomy = meta.get("anatomy") if isinstance(meta, dict) else None
        if isinstance(anatomy, dict) and anatomy.get("retries"):
            checked += 1
            redrawn += anatomy.get("attempts", 1) > 1
    if not checked:
        return []
    return [f"{checked} of {len(ids)} synthetic images were generated with --anatomy-retries ({redrawn} drawn again "
            f"after failing the anatomy check): the anatomy figures describe that filtered set, not the model's own "
            f"draws; generate without retries to measure the model"]


def _size_warnings(synth_source: ImageSource, synth_ids: list[str], real_sources: dict[str, ImageSource],
                   real_ids: dict[str, list[str]]) -> list[str]:
    """Resolution matters to FID even though Inception resizes every image to 299 px: say when the
    synthetic and real images differ (judged on the first few images of each)."""
    def sizes(source, ids):
        return {f"{a.shape[1]}x{a.shape[0]}" for a in (source(i) for i in ids[:8])}
    synth = sizes(synth_source, synth_ids)
    out = []
    for name, source in real_sources.items():
        real = sizes(source, real_ids[name])
        if real and synth and real != synth:
            out.append(f"image sizes differ: synthetic {', '.join(sorted(synth))}, {name} {', '.join(sorted(real))}; "
                       f"Inception resizes both to 299 px, but FID also measures the resolution difference")
    return out


# --- HTML ----------------------------------------------------------------------------------------

@dataclass
class _Assets:
    """What the page shows beyond the JSON figures: images and per-image results."""
    cfg: EvaluateConfig
    synth_ids: list[str]
    synth_source: ImageSource
    train_source: ImageSource
    synth_checks: list[anatomy.AnatomyCheck]
    real_checks: dict[str, list[anatomy.AnatomyCheck]]
    memorisation: MemorisationResult | None
    heldout_sims: np.ndarray
    synth_vessels: list[dict]
    real_vessels: dict[str, list[dict]]


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(rgb: np.ndarray, discs: list[anatomy.Disc] = (), side: int = THUMB_SIDE) -> str:
    """A JPEG data URI of ``rgb`` (long side ``side``), with the optic discs found circled."""
    img = Image.fromarray(rgb)
    scale = side / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for d in discs:
        r = d.diameter * scale / 2 + 2
        draw.ellipse([d.x * scale - r, d.y * scale - r, d.x * scale + r, d.y * scale + r], outline=(0, 255, 0), width=2)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _plot(draw: Callable) -> str:
    """A matplotlib figure drawn by ``draw(ax)``, as a PNG data URI."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _data_uri(buf.getvalue(), "image/png")


def _histograms(series: dict[str, np.ndarray], xlabel: str, bins: np.ndarray, line: float | None = None,
                line_label: str = "") -> str:
    def draw(ax):
        for name, values in series.items():
            if len(values):
                ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8,
                        label=f"{name} (n={len(values)})")
        if line is not None:
            ax.axvline(line, color="crimson", linestyle="--", label=line_label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    return _plot(draw)


def _disc_bars(shares: dict[str, dict[str, float]]) -> str:
    def draw(ax):
        labels = ["0", "1", "2", "3+"]
        width = 0.8 / max(1, len(shares))
        for i, (name, s) in enumerate(shares.items()):
            ax.bar(np.arange(4) + i * width, [s[k] for k in labels], width, label=name)
        ax.set_xticks(np.arange(4) + 0.4 - width / 2, labels)
        ax.set_xlabel("optic discs found")
        ax.set_ylabel("share of images")
        ax.legend(fontsize=8)
    return _plot(draw)


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(figure: dict, digits: int = 2, scale: float = 1.0) -> str:
    if "error" in figure:
        return f'<span class="na" title="{_e(figure["error"])}">n/a</span>'
    text = f"{figure['value'] * scale:.{digits}f}"
    if figure.get("se") is not None:
        text += f" ± {figure['se'] * scale:.{digits}f}"
    return text


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.floor{color:#666}
.na{color:#a00;cursor:help}.verdict{font-size:1.1em;padding:.6em;background:#f6f6e8;border-left:4px solid #aa8}
.grid{display:flex;flex-wrap:wrap;gap:10px}.pair{border:1px solid #ddd;padding:4px;font-size:.75em;width:330px}
.pair img{width:160px;height:160px;object-fit:contain;background:#000}.grid>img{width:540px}
.flagged{border:3px solid crimson}.cell{border:1px solid #ddd;padding:4px;font-size:.75em;width:170px}
.cell img{width:160px;height:160px;object-fit:contain;background:#000}
code,pre{background:#f4f4f4;padding:.2em .4em;white-space:pre-wrap;word-break:break-all}
details{margin:.6em 0}.warn{color:#a60}
"""


def render_html(report: dict, assets: _Assets) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fundusgen evaluation</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {_e(report['inputs']['synthetic']['path'])}</h1>",
             f"<p class='verdict'>{_e(report['verdict'])}</p>",
             f"<p>{report['inputs']['synthetic']['n']} synthetic images; made {_e(report['created'])} by fundusgen "
             f"{_e(report['fundusgen_version'])}. Reproduce with:</p><pre>{_e(report['command'])}</pre>"]
    if report["warnings"]:
        parts.append("<ul>" + "".join(f"<li class='warn'>{_e(w)}</li>" for w in report["warnings"]) + "</ul>")
    parts += [_realism_html(report), _anatomy_html(report, assets), _vessels_html(report, assets),
              _faithfulness_html(report), _downstream_html(report), _memorisation_html(report, assets),
              _inputs_html(report), "</body></html>"]
    return "\n".join(parts)


def _faithfulness(cfg: EvaluateConfig, progress: bool, warnings: list[str]) -> dict:
    """Section 4, for the synthetic images whose sidecars say which attributes they were asked for."""
    from fundusgen.eval import faithfulness
    if not faithfulness.requested(cfg.synthetic):
        return {"skipped": "no synthetic image has requested attributes in its sidecar (generate from attributes, "
                           "e.g. `python -m fundusgen.eval.faithfulness generate DIR`)"}
    try:
        result = faithfulness.evaluate_faithfulness(cfg.synthetic, cfg.train, progress=progress, cache_dir=cfg.cache_dir)
        warnings.extend(f"caption faithfulness: {n}" for n in result.get("notes", []))
        return result
    except FundusgenError as e:
        warnings.append(f"caption faithfulness: {e}")
        return {"skipped": str(e)}


def _faithfulness_html(report: dict) -> str:
    f = report.get("faithfulness") or {}
    if "skipped" in f:
        return f"<h2>4. Caption faithfulness</h2><p>Not measured: {_e(f['skipped'])}</p>"
    syn, real = f["synthetic"], f["real"]

    def num(d: dict, key: str, pct: bool = True) -> str:
        v = d.get(key)
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "n/a"
        return _pct(v) if pct else f"{v:.3g}"

    rows = []
    for attr, key, label, pct in (("eye", "accuracy", "eye: measured laterality = requested", True),
                                  ("eye", "confident_accuracy", "eye, where the measurement is confident (>= 0.9)", True),
                                  ("dr_grade", "accuracy", "DR grade: classifier = requested", True),
                                  ("dr_grade", "quadratic_kappa", "DR grade: quadratic weighted kappa", False),
                                  ("dr_grade", "spearman", "DR grade: rank correlation of the classifier's expected grade", False),
                                  ("dr_grade", "auc_dr", "DR grade: AUC of the expected grade, DR against no DR", False),
                                  ("dr_lesions", "balanced_accuracy", "DR: dark lesions present exactly when DR requested (balanced accuracy)", True),
                                  ("cataract", "haze_balanced_accuracy", "cataract: haze above the real-data threshold (balanced accuracy)", True),
                                  ("cataract", "classifier_balanced_accuracy", "cataract: classifier (balanced accuracy)", True),
                                  ("cdr", "mean_absolute_error", "CDR: mean absolute error of the disc/cup network", False)):
        s, r = syn.get(attr, {}), real.get(attr, {})
        if s.get(key) is None and r.get(key) is None:
            continue
        rows.append(f"<tr><td>{_e(label)}</td><td>{num(s, key, pct)} (n={s.get('n', 0)})</td>"
                    f"<td>{num(r, key, pct)} (n={r.get('n', 0)})</td></tr>")
    confusion = ""
    for who, d in (("synthetic: requested", syn), (f"real {real.get('dr_grade', {}).get('dataset', '')} test: true", real)):
        if "dr_grade" not in d:
            continue
        m = d["dr_grade"]["confusion"]
        confusion += (f"<h3>DR grade, {_e(who)} (rows) vs classified (columns)</h3><table><tr><th></th>"
                      + "".join(f"<th>{g}</th>" for g in range(len(m)))
                      + "".join(f"<tr><th>{i}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                                for i, row in enumerate(m)) + "</table>")
    by = real.get("eye", {}).get("by_dataset")
    eyes = ("<p>Real eye ceiling per dataset: " + ", ".join(f"{_e(d)} {_pct(v['accuracy'])} (n={v['n']})"
                                                          for d, v in by.items()) + "</p>") if by else ""
    cdr = ""
    if syn.get("cdr", {}).get("mean_measured_by_requested"):
        cdr = "<p>Measured CDR per requested CDR: " + ", ".join(
            f"{k} &rarr; {v:.2f}" for k, v in syn["cdr"]["mean_measured_by_requested"].items()) + "</p>"
    return f"""<h2>4. Caption faithfulness</h2>
<p>{f['n_synthetic']} synthetic images generated from known attributes, measured by the project's measurement
networks; beside each figure, the same predictor on {f['n_real']} real held-out photographs with known labels
(the ceiling). Chance is 50% for the balanced accuracies and the eye, 20% for the DR grade.</p>
<table><tr><th>attribute</th><th>synthetic</th><th>real (ceiling)</th></tr>{''.join(rows)}</table>
{eyes}{confusion}{cdr}
<details><summary>How these were computed</summary><p>{_e(f['method'])}</p>
<p>Haze threshold {_e(syn.get('cataract', {}).get('haze_threshold', 'n/a'))}, fitted on the {_e(f['haze_threshold_fitted_on'])}
of the real photographs labelled cataract or not.</p></details>"""


def _vessels_html(report: dict, assets: _Assets) -> str:
    from fundusgen.eval import vessels as vessel_eval
    metrics = report["vessels"]["metrics"]
    rows = []
    for metric, m in metrics.items():
        syn = m["synthetic"]
        for name, d in m["real"].items():
            r = d["summary"]
            dist = (f"{d['wasserstein']:.4g}</td><td>{d['ks']:.2f} (p {d['ks_p']:.2g})" if "ks" in d else "n/a</td><td>n/a")
            rows.append(f"<tr><td>{_e(metric)}</td><td>{_e(m['unit'])}</td><td>{_e(name)}</td>"
                        f"<td>{r.get('mean', float('nan')):.4g} ± {r.get('sd', float('nan')):.2g} (n={r['n']})</td>"
                        f"<td>{syn.get('mean', float('nan')):.4g} ± {syn.get('sd', float('nan')):.2g} (n={syn['n']})</td>"
                        f"<td>{dist}</td></tr>")
    plots = []
    for metric in vessel_eval.METRICS:
        values = vessel_eval.series(assets.real_vessels, assets.synth_vessels, metric)
        both = np.concatenate([v for v in values.values() if len(v)]) if any(len(v) for v in values.values()) else np.zeros(0)
        if len(both) >= 2 and both.max() > both.min():
            plots.append(_histograms(values, f"{metric} ({vessel_eval.UNITS[metric]})",
                                     np.linspace(both.min(), both.max(), 25)))
    return f"""<h2>3. Vessels</h2>
<p>Vessel geometry over the field of view of every synthetic image and of the real images sampled for
the anatomy check, from the project's vessel network; the distance between the two distributions per
metric: 1-Wasserstein (in the metric's unit) and the Kolmogorov-Smirnov statistic.</p>
<table><tr><th>metric</th><th>unit</th><th>real set</th><th>real mean ± sd</th><th>synthetic mean ± sd</th>
<th>Wasserstein</th><th>KS</th></tr>{''.join(rows)}</table>
{''.join(plots)}
<details><summary>How these were computed</summary><p>{_e(report['vessels']['method'])}</p></details>"""


def _retina_domain(cfg: EvaluateConfig, synth_ids: list[str], real_ids: dict[str, list[str]], progress: bool,
                   warnings: list[str]) -> dict:
    """Fréchet distance on features of the project's fundus-trained vessel network, per real set
    (the images sampled for the anatomy check), with its real-vs-real floor."""
    from fundusgen.eval import retina_features as rf
    try:
        def features(source: ImageSource, ids: list[str], desc: str) -> np.ndarray:
            rows = cached_per_image(source, ids, lambda todo: rf.retina_features(todo, source, progress=progress,
                                                                                  desc=desc).tolist(),
                                    kind="retina", version=rf.version(), cache_dir=cfg.cache_dir)
            return np.array(rows, dtype=np.float64).reshape(len(ids), -1)

        synth = features(ImageSource(cfg.synthetic), synth_ids, "retina features synthetic")
        real = {r.name: features(ImageSource(r.path), real_ids[r.name], f"retina features {r.name}") for r in cfg.real}
    except FundusgenError as e:
        warnings.append(f"retina-domain Fréchet distance: {e}")
        return {"features": rf.DESCRIPTION, "error": str(e), "per_real_set": {}}
    return {"features": rf.DESCRIPTION, "per_real_set": rf.retina_frechet(real, synth, seed=cfg.seed)}


def _realism_html(report: dict) -> str:
    r = report["realism"]
    rd = r.get("retina_domain", {})

    def fd(x):
        return "n/a" if x is None else f"{x:.2f}"
    rd_rows = "".join(f"<tr><td>{_e(name)}</td><td>{c['n_real']} / {c['n_synth']}</td><td>{fd(c['fd'])}</td>"
                      f"<td class='floor'>{fd(c['floor'])}</td></tr>" for name, c in rd.get("per_real_set", {}).items())
    rd_html = (f"<h3>Retina-domain Fréchet distance</h3><p>{_e(rd.get('features', ''))}; computed as FID is. "
               "Lower is closer; the floor is real against real at the same size.</p>"
               f"<table><tr><th>real set</th><th>images real / synthetic</th><th>FD</th><th>floor</th></tr>{rd_rows}</table>"
               if rd_rows else (f"<p>Retina-domain Fréchet distance: {_e(rd['error'])}</p>" if rd.get("error") else ""))
    rows = []
    for name, c in r["per_real_set"].items():
        f = c["floor"]
        rows.append(f"<tr><td>{_e(name)}</td><td>{c['n_real']}</td><td>{_fmt(c['fid'])}</td>"
                    f"<td class='floor'>{_fmt(f['fid'])}</td><td>{_fmt(c['kid'], 2, 1000)}</td>"
                    f"<td class='floor'>{_fmt(f['kid'], 2, 1000)}</td><td>{_fmt(c['precision'])}</td>"
                    f"<td class='floor'>{_fmt(f['precision'])}</td><td>{_fmt(c['recall'])}</td>"
                    f"<td class='floor'>{_fmt(f['recall'])}</td></tr>")
    pairs = "".join(f"<tr><td>{_e(p['a'])} vs {_e(p['b'])}</td><td>{p['n_real']} / {p['n_synth']}</td>"
                    f"<td>{_fmt(p['fid'])}</td><td>{_fmt(p['kid'], 2, 1000)}</td><td>{_fmt(p['precision'])}</td>"
                    f"<td>{_fmt(p['recall'])}</td></tr>" for p in r["real_vs_real"])
    pair_table = ("<h3>One real set against another</h3><table><tr><th>sets</th><th>images</th><th>FID</th>"
                  f"<th>KID ×1000</th><th>precision</th><th>recall</th></tr>{pairs}</table>") if pairs else ""
    return f"""<h2>1. Realism</h2>
<p>Synthetic set ({r['n_synth']} images) against each real set; beside each figure, in grey, the
<b>floor</b>: the same figure for real against real (a random part of the real set, as many images as the
synthetic set where possible, against the rest). A synthetic figure is as good as it can be when it reaches
its floor. Hover over n/a for the reason.</p>
<table><tr><th>real set</th><th>images</th><th>FID</th><th>floor</th><th>KID ×1000 ± SE</th><th>floor</th>
<th>precision</th><th>floor</th><th>recall</th><th>floor</th></tr>{''.join(rows)}</table>
{pair_table}
{rd_html}
<details><summary>How these were computed</summary><p>{_e(r['features'])}. FID: Fréchet distance between
Gaussians fitted to the two feature sets (Heusel et al. 2017), computed as pytorch-fid and clean-fid compute it
(with fewer images than features, exactly, from the singular values of the product of the centred feature
matrices); it is biased upwards for small sets, so compare it only with its floor at the same size.
KID: unbiased MMD² with the cubic polynomial kernel (Bińkowski et al. 2018), mean over
{kid.__kwdefaults__['num_subsets']} random subsets of up to {kid.__kwdefaults__['subset_size']} images,
± its jackknife standard error. Precision and recall: improved k-NN manifolds with k = {r['k']}
(Kynkäänniemi et al. 2019). Seed {r['seed']}.</p></details>"""


def _anatomy_html(report: dict, assets: _Assets) -> str:
    a = report["anatomy"]
    sets = {"synthetic": a["synthetic"], **{f"real: {k}": v for k, v in a["real"].items()}}
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{s['n']}</td><td><b>{_pct(s['valid_share'])}</b></td>"
        f"<td>{_pct(s['round_fov_share'])}</td><td>{_pct(s['one_disc_share'])}</td>"
        f"<td>{_pct(s['disc_count_shares']['2'] + s['disc_count_shares']['3+'])}</td>"
        f"<td>{_pct(s['confirmed_disc_share'])}</td><td>{_pct(s['fovea_share'])}</td>"
        f"<td>{_pct(s['vessel_tree_share'])}</td>"
        f"<td>{_pct(s['quality_grade_shares']['good'])} / "
        f"{_pct(s['quality_grade_shares']['usable'])} / {_pct(s['quality_grade_shares']['reject'])}</td></tr>"
        for name, s in sets.items() if s["n"])
    series = {"synthetic": assets.synth_checks, **{f"real: {k}": v for k, v in assets.real_checks.items()}}
    t = a["thresholds"]
    density_plot = _histograms({k: np.array([c.vessel_density or 0.0 for c in v]) for k, v in series.items()},
                               "vessel density (share of the FOV)", np.linspace(0, 0.2, 41),
                               t["vessel_density_min"], "least real density")
    branching_plot = _histograms({k: np.array([c.branching_length for c in v if c.branching_length is not None
                                                and c.haze <= t["tree_haze_max"]]) for k, v in series.items()},
                                 "branching vessel length (disc diameters; images clear enough to judge)",
                                 np.linspace(0, 100, 41), t["tree_length_min"], "least real length")
    distance_plot = _histograms({k: np.array([c.fovea.distance for c in v if c.fovea]) for k, v in series.items()},
                                "disc-to-fovea distance (nominal disc diameters)", np.linspace(1, 4.2, 33))
    roundness_plot = _histograms({k: np.array([c.fov_roundness for c in v]) for k, v in series.items()},
                                 "field-of-view roundness (IoU with a fitted circle)", np.linspace(0, 1, 41),
                                 anatomy.MIN_ROUNDNESS, "threshold for a clean circle")
    discs_plot = _disc_bars({k: s["disc_count_shares"] for k, s in sets.items() if s["n"]})
    invalid = [(item, c) for item, c in zip(assets.synth_ids, assets.synth_checks) if not c.valid]
    cells = "".join(f"<div class='cell'><img src='{thumbnail(assets.synth_source(item), c.discs)}'><br>{_e(item)}<br>"
                    f"<b>{_e('; '.join(c.reasons))}</b></div>" for item, c in invalid[:60])
    more = f"<p>… and {len(invalid) - 60} more (all listed in report.json).</p>" if len(invalid) > 60 else ""
    return f"""<h2>2. Anatomical validity</h2>
<p>Every image goes through the project's measurement step (<code>fundusgen measure</code>): the fundus check
of <code>fundusgen prepare</code>, the optic disc (disc score confirmed by the disc/cup network), the fovea, and
the vessel network. An image is valid when it is a fundus with a clean circular field of view, exactly one
optic disc, a fovea at a distance and angle from the disc inside the range of real photographs, and a vessel
tree. The thresholds are the 1st (and 99th) percentiles of real training photographs, so the real held-out
sets, checked the same way, show what a real photograph scores (goal for synthetic images: 99% valid).
Thresholds: disc score ≥ {t['disc_score_min']:.2f} when the network confirms no disc; fovea darkness ≥
{t['fovea_z_min']:.2f} SD at {t['fovea_distance'][0]:.2f}-{t['fovea_distance'][1]:.2f} disc diameters and
{t['fovea_angle'][0]:.0f} to {t['fovea_angle'][1]:.0f} degrees; vessel density ≥ {t['vessel_density_min']:.3f}
and, where the haze is at most {t['tree_haze_max']:.2f} (clearer than a cataract), vessels that branch: at least
{t['tree_length_min']:.1f} disc diameters of vessel skeleton in pieces with three or more free ends (lines, arcs
and rings, such as the edges of blobs, have fewer).</p>
<table><tr><th>set</th><th>images</th><th>valid</th><th>clean circular FOV</th><th>exactly one disc</th>
<th>two or more discs</th><th>disc confirmed by the network</th><th>fovea in place</th><th>vessel tree</th>
<th>good / usable / reject</th></tr>{rows}</table>
<div class='grid'><img src='{discs_plot}'><img src='{density_plot}'><img src='{branching_plot}'><img src='{distance_plot}'>
<img src='{roundness_plot}'></div>
<h3>Invalid synthetic images ({len(invalid)} of {len(assets.synth_ids)}; optic discs found are circled)</h3>
<div class='grid'>{cells or '<p>None.</p>'}</div>{more}
<details><summary>How these were computed</summary><pre>{_e(a['method'])}</pre>
<p>Roundness: <code>fundusgen.data.fundus.fov_roundness</code> on the mask of
<code>detect_fov</code>; quality: <code>fundusgen.data.quality.assess</code> (illumination, contrast, focus,
geometric mean). Real sets above {assets.cfg.max_real_anatomy} images are checked on a random subset of that
size (seed {assets.cfg.seed}).</p></details>"""


def _memorisation_html(report: dict, assets: _Assets) -> str:
    m = report["memorisation"]
    if "error" in m:
        return f"<h2>6. Memorisation</h2><p class='warn'>{_e(m['error'])}</p>"
    result = assets.memorisation
    t = m["threshold"]
    synth_sims = np.array([x.similarity for x in result.nearest])
    lo = min(synth_sims.min(), assets.heldout_sims.min() if len(assets.heldout_sims) else 1.0, t["value"])
    plot = _histograms({"synthetic → nearest training": synth_sims, "held-out real → nearest training":
                        assets.heldout_sims}, "centred Inception cosine similarity",
                       np.linspace(min(lo, 0.0), 1.0, 41), t["value"], f"threshold {t['value']:.3f}")
    flagged = {x.synth_id for x in result.flagged}
    shown = sorted(result.nearest, key=lambda x: -x.similarity)[:max(assets.cfg.thumbnails, len(flagged))]
    pairs = "".join(
        f"<div class='pair{' flagged' if x.synth_id in flagged else ''}'>"
        f"<img src='{thumbnail(assets.synth_source(x.synth_id))}'>"
        f"<img src='{thumbnail(assets.train_source(x.train_id))}'><br>{_e(x.synth_id)} → {_e(x.train_id)}<br>"
        f"cosine {x.similarity:.3f}{f', SSIM {x.ssim:.3f}' if x.ssim is not None else ''}"
        f"{' <b>flagged</b>' if x.synth_id in flagged else ''}</div>" for x in shown)
    flagged_rows = "".join(f"<tr><td>{_e(x.synth_id)}</td><td>{_e(x.train_id)}</td><td>{x.similarity:.4f}</td>"
                           f"<td>{'' if x.ssim is None else f'{x.ssim:.3f}'}</td></tr>" for x in result.flagged)
    flagged_table = (f"<table><tr><th>synthetic</th><th>nearest training image</th><th>cosine</th><th>SSIM</th></tr>"
                     f"{flagged_rows}</table>") if flagged_rows else "<p>No pair reaches the threshold.</p>"
    q = "".join(f"<td>{v:.3f}</td>" for v in t["heldout_quantiles"].values())
    qs = "".join(f"<td>{v:.3f}</td>" for v in m["synthetic_quantiles"].values())
    return f"""<h2>6. Memorisation</h2>
<p class='verdict'>{_e(report['verdict'])}</p>
<p>Nearest training image ({report['inputs']['train']['n_train']} images, the train split of
{_e(report['inputs']['train']['path'])}) of every synthetic image. The threshold is the {t['quantile']:.1%}
quantile of the same similarity for {t['n_heldout']} held-out real images (val and test splits, other patients):
a synthetic image closer to a training image than that is flagged.</p>
<table><tr><th>nearest-training similarity</th><th>median</th><th>90%</th><th>99%</th><th>max</th></tr>
<tr><td>held-out real</td>{q}</tr><tr><td>synthetic</td>{qs}</tr></table>
<img src='{plot}'>
<h3>Flagged pairs ({len(result.flagged)})</h3>{flagged_table}
<h3>Synthetic images (left) beside their nearest training image (right), most similar first</h3>
<div class='grid'>{pairs}</div>
<details><summary>How these were computed</summary><pre>{_e(m['method'])}</pre><p>SSIM (pixels, luminance,
256 px) is given for the flagged pairs and the 16 most similar ones, as a second look in pixel space.</p></details>"""


def _downstream_html(report: dict) -> str:
    if "downstream" not in report:
        return ""
    from fundusgen.eval.downstream import section_html
    return section_html(report["downstream"], "5. Downstream utility")


def _inputs_html(report: dict) -> str:
    i = report["inputs"]
    rows = "".join(f"<tr><td>{_e(r['name'])}</td><td>{_e(r['path'])}</td><td>{_e(r['split'] or 'all')}</td>"
                   f"<td>{r['n']}</td><td>{r['n_anatomy']}</td></tr>" for r in i["real"])
    return f"""<h2>Inputs</h2><table><tr><th>real set</th><th>path</th><th>split</th><th>images</th>
<th>anatomy-checked</th></tr>{rows}</table>
<p>Training set for memorisation: {_e(i['train']['path'])}: {i['train']['n_train']} train, {i['train']['n_heldout']}
held-out images. Timings and every figure are in <code>report.json</code> beside this file.</p>"""
