"""Caption faithfulness: does a synthetic image show what its prompt asked for?

A prompt set with known attributes (``prompt_cells``: each eye with each DR grade, cataract or
not, a small or a large cup) is written into captions by the caption module and generated with
the attributes stored in every sidecar (``fundusgen generate`` does this for attribute prompts).
Each image is then measured by the same networks and rules that caption real photographs
(``fundusgen.measure``), and, where given, by classifiers trained on real photographs:

* eye: the measured laterality (disc side and vessel arcades) against the requested eye;
* DR: a classifier's grade against the requested grade (accuracy, quadratic weighted kappa, a
  5x5 confusion matrix); since a classifier fitted on real photographs may read a synthetic set's
  look as one grade, also whether its expected grade (sum of k x p(k)) *orders* the images as
  requested (Spearman rank correlation, and the AUC of DR >= 1 against no DR), which a constant
  shift does not change; and, with no classifier needed, whether the measured dark lesions
  (microaneurysms, haemorrhages) are present exactly when DR (grade >= 1) was requested;
* cataract: the measured media haze, thresholded where it best separates cataract from clear
  real photographs of the training split, against the request;
* CDR: the disc/cup network's vertical cup-to-disc ratio against the requested one (mean absolute
  error, and the mean measured per requested value).

Every figure comes with the same predictor's score on real photographs whose labels are known
(the held-out splits of a prepared folder): the ceiling a perfect generator could reach with these
measurements. A synthetic score near the ceiling means the image carries the attribute as well
as real photographs do; a score near chance means the prompt was ignored. The real eye ceiling is
lowered by photographs stored mirrored relative to their eye label (the DR and cataract photos of
the 10-class eye-diseases set), and the dark-lesion cue also fires on many photographs without DR:
both are properties of the real data and the measurement, shown so that the synthetic figures
can be read against them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from fundusgen.caption.lesions import LESION_MIN_SPOTS, spots_off_disc
from fundusgen.errors import FundusgenError
from fundusgen.vocab import has_dr

DR_GRADES = (0, 1, 2, 3, 4)
CDR_LEVELS = (0.3, 0.8)
EYES = ("left", "right")


def prompt_cells() -> list[dict]:
    """The default prompt set: 10 eye x DR-grade cells, 4 eye x cataract cells, 4 eye x CDR cells."""
    cells = [{"eye": e, "dr_grade": g} for e in EYES for g in DR_GRADES]
    cells += [{"eye": e, "cataract_severity": c} for e in EYES for c in ("none", "severe")]
    cells += [{"eye": e, "cdr": c} for e in EYES for c in CDR_LEVELS]
    return cells


def generate_prompt_set(out: Path, per_cell: int = 2, model=None, seed: int = 0, progress: bool = True,
                        cells: list[dict] | None = None, seed_per_prompt: bool = False, **settings) -> list[Path]:
    """Generate ``per_cell`` images for every cell, with each cell's attributes in the sidecars: the
    same seeds in every cell, so that cells differ only by their prompt, or with ``seed_per_prompt``
    seeds of their own (held-out records: a sample of real variety, also scored for realism)."""
    from fundusgen.caption.template import describe
    from fundusgen.generate import generate_to_folder
    cells = cells or prompt_cells()
    prompts = [describe(cell, seed=i) for i, cell in enumerate(cells)]
    return generate_to_folder(prompts, Path(out), model=model, num_images=per_cell, seed=seed, progress=progress,
                              attributes=cells, seed_per_prompt=seed_per_prompt, **settings)


def read_index(prepared: Path):
    """The record index of a prepared folder (labels and splits; no shards needed), or one clear error.
    (``downstream.read_prepared_index`` also demands the shards, which prompts written from labels do not.)"""
    import pandas as pd
    try:
        index = pd.read_parquet(Path(prepared) / "index.parquet")
    except (OSError, ValueError) as e:
        raise FundusgenError(f"{prepared}: not a prepared folder ({e})") from None
    if "split" not in index.columns:
        raise FundusgenError(f"{Path(prepared) / 'index.parquet'}: no 'split' column (not written by fundusgen prepare)")
    return index


# what a record's whole-label-set prompt is written from (``record_cells``): its labels and the
# quality grade that ``prepare`` gave it, as the training captions have them
RECORD_LABELS = ("eye", "quality_grade", "dr_grade", "dr_stage", "dr", "dme", "glaucoma", "cdr", "cataract",
                 "cataract_severity", "amd", "myopia", "hypertension", "other")


def record_cells(prepared: Path, n: int = 100, splits: Iterable[str] = ("test",), seed: int = 0) -> list[dict]:
    """A second, harder prompt set: the whole label sets of ``n`` seeded random records of the
    ``splits`` of a prepared folder (several findings per prompt, as real photographs carry them,
    where ``prompt_cells`` asks for the eye and one finding). Labels and quality grade, no measurements."""
    import pandas as pd
    if n < 1:
        raise FundusgenError(f"{n} records asked for: expected at least 1")
    prepared = Path(prepared)
    index = read_index(prepared)
    held = index[index["split"].isin(list(splits))]
    if held.empty:
        raise FundusgenError(f"{prepared}: no records in split {', '.join(splits)}")
    rows = held.sample(n=min(n, len(held)), random_state=seed)

    def value(k, v):
        v = v.item() if hasattr(v, "item") else v
        return int(v) if k == "dr_grade" else v   # a float column where some records have no grade
    return [{k: value(k, r[k]) for k in RECORD_LABELS if k in r and not pd.isna(r[k])} for _, r in rows.iterrows()]


def requested(folder: Path) -> dict[str, dict]:
    """image file (relative to ``folder``) -> the attributes its sidecar says it was generated from."""
    out = {}
    for sidecar in sorted(Path(folder).rglob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("attributes"), dict) or not meta.get("file"):
            continue
        image = sidecar.parent / meta["file"]
        if image.is_file():
            out[str(image.relative_to(folder))] = meta["attributes"]
    return out


# --- predictors: one image's measurements -> what it shows -------------------------------------



def measure_image(rgb: np.ndarray, side: int = 512) -> dict:
    """The measurement step on one image, at the side the prepared real photographs have."""
    from fundusgen.data.fundus import preprocess
    from fundusgen.measure.attributes import measure
    image, fov, _ = preprocess(rgb, side)
    return measure(image, fov)


def measure_version() -> str:
    """Part of the cache key of measurements: the measurement code, its networks' weights, bf16 use."""
    from fundusgen.measure import attributes
    return attributes.digest(sorted(Path(attributes.__file__).parent.glob("*.py")), attributes.weights_id(),
                             attributes.precision_id())


def measure_cached(folder: Path, ids: list[str], *, cache_dir: Path | None, desc: str, progress: bool) -> list[dict]:
    """``measure_image`` of images of a folder or prepared folder, cached per image beside the features."""
    from fundusgen.eval.report import ImageSource, cached_per_image
    source = ImageSource(Path(folder))

    def compute(todo: list[str]) -> list[dict]:
        return [measure_image(source(i)) for i in tqdm(todo, desc=desc, unit="img", disable=not progress)]
    return cached_per_image(source, ids, compute, kind="measure", version=measure_version(), cache_dir=cache_dir)


def shows_dark_lesions(m: dict) -> bool:
    """Dark lesions as the caption writer names them: enough spots off the disc (``fundusgen.caption.lesions``)."""
    return spots_off_disc(m["lesions"]["dark"]) >= LESION_MIN_SPOTS["dark"]


def haze_value(m: dict) -> float:
    return float(m["haze"]["haze"])


def balanced_threshold(values: np.ndarray, positive: np.ndarray) -> float:
    """The threshold t on ``values`` (positive when value > t) with the best balanced accuracy."""
    values, positive = np.asarray(values, float), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise FundusgenError("a threshold needs both positive and negative real images")
    candidates = np.unique(values)
    best, best_t = -1.0, float(candidates[0])
    for t in candidates:
        score = balanced_accuracy(positive, values > t)
        if score > best:
            best, best_t = score, float(t)
    return best_t


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of the recalls of the classes present in ``truth``."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
    return float(np.mean(recalls)) if recalls else float("nan")


def quadratic_kappa(truth, predicted, labels=DR_GRADES) -> float:
    from sklearn.metrics import cohen_kappa_score
    if len(set(truth) | set(predicted)) < 2:
        return float("nan")
    return float(cohen_kappa_score(truth, predicted, labels=list(labels), weights="quadratic"))


def grade_ordering(truth: np.ndarray, expected: np.ndarray) -> dict:
    """Does the classifier's expected grade order the images as their grades do? Spearman's rho
    against the (requested or true) grade, and the AUC of DR (grade >= 1) against no DR; both are
    unchanged by a shift of every image's grade, such as a domain gap reads as. None where one side
    is constant or missing."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score
    dr = truth >= 1
    rho = spearmanr(truth, expected).statistic if len(np.unique(truth)) > 1 and len(np.unique(expected)) > 1 else None
    return {"spearman": None if rho is None or not np.isfinite(rho) else float(rho),
            "auc_dr": float(roc_auc_score(dr, expected)) if 0 < dr.sum() < len(dr) else None,
            "mean_expected_by_grade": {int(g): float(expected[truth == g].mean()) for g in np.unique(truth)}}


def confusion(truth, predicted, labels=DR_GRADES) -> list[list[int]]:
    """rows: requested (or true) grade, columns: predicted grade."""
    index = {c: i for i, c in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), int)
    for t, p in zip(truth, predicted):
        m[index[t], index[p]] += 1
    return m.tolist()


# --- scoring --------------------------------------------------------------------------------------

@dataclass
class Item:
    """One image: what it was asked to show (or, for a real photograph, its labels) and what was
    measured on it; ``predicted`` holds classifier outputs (e.g. {'dr_grade': 2})."""
    attributes: dict
    measurements: dict
    predicted: dict = field(default_factory=dict)


def _dr_target(a: dict) -> int | None:
    return int(a["dr_grade"]) if a.get("dr_grade") is not None else None


def _cataract(a: dict) -> bool | None:
    if a.get("cataract_severity") is not None:
        return a["cataract_severity"] != "none"
    return a.get("cataract")


def score(items: list[Item], haze_threshold: float | None) -> dict:
    """Per-attribute agreement of the measurements (and classifiers) with the attributes."""
    out: dict = {}
    eye = [(i.attributes["eye"], i.measurements.get("eye"), float(i.measurements.get("eye_confidence") or 0))
           for i in items if i.attributes.get("eye") in EYES]
    if eye:
        right = np.array([t == p for t, p, _ in eye])
        confident = np.array([c >= 0.9 for *_, c in eye])
        out["eye"] = {"n": len(eye), "accuracy": float(right.mean()),
                      "confident_share": float(confident.mean()),
                      "confident_accuracy": float(right[confident].mean()) if confident.any() else None}
        datasets = [i.attributes.get("dataset") for i in items if i.attributes.get("eye") in EYES]
        if any(datasets):  # real photographs: per dataset, since some store photos mirrored
            out["eye"]["by_dataset"] = {d: {"n": int(sum(x == d for x in datasets)),
                                            "accuracy": float(right[[x == d for x in datasets]].mean())}
                                        for d in sorted({x for x in datasets if x})}
    lesions = [(has_dr(i.attributes), shows_dark_lesions(i.measurements)) for i in items
               if has_dr(i.attributes) is not None]
    if lesions:
        t, p = np.array(lesions).T
        out["dr_lesions"] = {"n": len(lesions), "balanced_accuracy": balanced_accuracy(t, p),
                             "share_with_lesions_when_dr": float(p[t].mean()) if t.any() else None,
                             "share_with_lesions_when_no_dr": float(p[~t].mean()) if (~t).any() else None}
    graded = [i for i in items if _dr_target(i.attributes) is not None and "dr_grade" in i.predicted]
    if graded:
        t = [_dr_target(i.attributes) for i in graded]
        p = [int(i.predicted["dr_grade"]) for i in graded]
        out["dr_grade"] = {"n": len(graded), "accuracy": float(np.mean(np.array(t) == np.array(p))),
                           "quadratic_kappa": quadratic_kappa(t, p), "confusion": confusion(t, p),
                           "mean_absolute_error": float(np.mean(np.abs(np.array(t) - np.array(p))))}
        expected = [(truth, i.predicted["dr_expected"]) for truth, i in zip(t, graded) if "dr_expected" in i.predicted]
        if expected:
            out["dr_grade"].update(grade_ordering(*(np.array(v, float) for v in zip(*expected))))
    cat = [(_cataract(i.attributes), haze_value(i.measurements), i.predicted.get("cataract")) for i in items
           if _cataract(i.attributes) is not None]
    if cat:
        t = np.array([c[0] for c in cat], bool)
        h = np.array([c[1] for c in cat])
        entry = {"n": len(cat), "mean_haze_cataract": float(h[t].mean()) if t.any() else None,
                 "mean_haze_clear": float(h[~t].mean()) if (~t).any() else None}
        if haze_threshold is not None:
            entry["haze_threshold"] = haze_threshold
            entry["haze_balanced_accuracy"] = balanced_accuracy(t, h > haze_threshold)
        if all(c[2] is not None for c in cat):
            entry["classifier_balanced_accuracy"] = balanced_accuracy(t, np.array([bool(c[2]) for c in cat]))
        out["cataract"] = entry
    cdr = [(float(i.attributes["cdr"]), i.measurements["disc"].get("cdr")) for i in items
           if i.attributes.get("cdr") is not None]
    if cdr:
        measured = [(t, m) for t, m in cdr if m is not None]
        entry = {"n": len(cdr), "measured_share": len(measured) / len(cdr)}
        if measured:
            t, m = np.array(measured).T
            entry["mean_absolute_error"] = float(np.abs(t - m).mean())
            if len(np.unique(t)) <= 8:  # a prompt set's few levels (real labels vary continuously)
                entry["mean_measured_by_requested"] = {f"{v:g}": float(m[t == v].mean()) for v in np.unique(t)}
        out["cdr"] = entry
    return out


# --- real photographs: the ceiling ----------------------------------------------------------------

def real_items(prepared: Path, splits: Iterable[str] = ("test", "val"), limit: int = 200, seed: int = 0,
               progress: bool = True, cache_dir: Path | None = None) -> tuple[list[Item], list[Item]]:
    """(held-out items, training items) of a prepared folder: labels from its index, measurements
    from its ``measure/`` output where present (``fundusgen measure``); held-out images without
    stored measurements are measured here, a seeded sample of at most ``limit`` of them. Training
    items (which fit the haze threshold) are only those with stored measurements."""
    import pandas as pd
    from fundusgen.measure.run import read_measurements
    prepared = Path(prepared)
    index = read_index(prepared)
    labels = ["eye", "dr_grade", "dr_stage", "dr", "cataract", "cataract_severity", "cdr"]
    index = index[[c for c in ["key", "shard", "split", "dataset"] + labels if c in index.columns]]
    stored: dict[str, dict] = {}
    for shard in sorted(set(index["shard"])):
        stored.update(read_measurements(prepared, Path(shard).stem))

    def attrs(row) -> dict:
        return {k: (None if pd.isna(row[k]) else row[k]) for k in labels + ["dataset"] if k in row}

    held = index[index["split"].isin(list(splits))]
    train = index[index["split"] == "train"]
    pick = lambda frame: [Item(attrs(r), stored[r["key"]]) for _, r in frame.iterrows() if r["key"] in stored]  # noqa: E731
    items = pick(held)
    missing = held[~held["key"].isin(list(stored))]
    if len(missing):
        rows = missing.sample(n=min(limit, len(missing)), random_state=seed)
        measured = measure_cached(prepared, rows["key"].tolist(), cache_dir=cache_dir,
                                  desc="faithfulness: measure real", progress=progress)
        items += [Item(attrs(r), m) for (_, r), m in zip(rows.iterrows(), measured)]
    return items, pick(train)


def haze_threshold_from(items: list[Item]) -> float | None:
    """The haze threshold fitted on real photographs labelled cataract or clear (training split)."""
    labelled = [(haze_value(i.measurements), _cataract(i.attributes)) for i in items if _cataract(i.attributes) is not None]
    if not labelled or len({c for _, c in labelled}) < 2:
        return None
    values, positive = np.array(labelled, dtype=float).T
    return balanced_threshold(values, positive.astype(bool))


def dr_grade_classifier(prepared: Path, *, cache_dir: Path | None = None, progress: bool = True
                        ) -> tuple[Callable[[list[np.ndarray]], list[dict]], dict]:
    """A DR-grade classifier trained on the real training images of ``prepared`` (the downstream
    module's task: ImageNet EfficientNet-Lite0 features, each photograph and its mirror image, and
    a class-weighted linear probe, so that the rare severe grades are predicted at all), and its
    scores on the real test images of the same dataset: (classify, ceiling)."""
    from fundusgen.eval import classifier
    from fundusgen.eval.downstream import (_LazyLite0, _task_splits, parse_tasks, prepared_images, prepared_keys,
                                           read_prepared_index)
    prepared = Path(prepared)
    task = parse_tasks("dr_grade")[0]
    splits = _task_splits(task, read_prepared_index(prepared), prepared, None, 0)
    cache, model = classifier.FeatureCache(prepared, cache_dir), _LazyLite0()

    def features(split) -> np.ndarray:
        keys = split.keys
        return cache.get(prepared_keys(prepared, keys), lambda rows: prepared_images(prepared, keys, rows),
                         model=model, progress=progress, desc=f"faithfulness: {task.dataset} features")

    train, test = features(splits["train"]), features(splits["test"])
    y = np.concatenate([splits["train"].y, splits["train"].y])
    x = np.concatenate([train[:, 0], train[:, 1]])
    probe = classifier.fit_probe(x, y, len(task.classes), loss_weights=classifier.class_weights(y, len(task.classes)))
    grades = np.arange(len(task.classes))
    proba = probe.predict_proba(test[:, 0])
    truth, predicted = splits["test"].y.tolist(), proba.argmax(1).tolist()
    ceiling = {"n": len(truth), "dataset": task.dataset, "accuracy": float(np.mean(np.array(truth) == np.array(predicted))),
               "quadratic_kappa": quadratic_kappa(truth, predicted), "confusion": confusion(truth, predicted),
               "mean_absolute_error": float(np.mean(np.abs(np.array(truth) - np.array(predicted)))),
               **grade_ordering(np.array(truth, float), proba @ grades)}

    def classify(images: list[np.ndarray]) -> list[dict]:
        proba = probe.predict_proba(classifier.image_features(images, model(), progress=False)[:, 0])
        return [{"dr_grade": int(p.argmax()), "dr_expected": float(p @ grades)} for p in proba]
    return classify, ceiling


def evaluate_faithfulness(synthetic: Path, prepared: Path | None, *, classify: Callable[[list[np.ndarray]], list[dict]] | None = None,
                          load: Callable[[Path], np.ndarray] | None = None, progress: bool = True,
                          cache_dir: Path | None = None) -> dict:
    """The faithfulness section: synthetic scores, the real ceiling beside them, and the method.

    Without ``classify``, a DR-grade classifier is trained on ``prepared`` when it holds DR-graded
    photographs (``dr_grade_classifier``); where it cannot be, DR is judged by the lesion cue alone."""
    from fundusgen.eval.features import read_rgb
    synthetic = Path(synthetic)
    asked = requested(synthetic)
    if not asked:
        raise FundusgenError(f"{synthetic}: no sidecar with 'attributes' (generate with attributes, e.g. "
                             "`python -m fundusgen.eval.faithfulness generate`, to measure faithfulness)")
    load = load or read_rgb
    dr_ceiling, notes = None, []
    wants_grade = any(a.get("dr_grade") is not None for a in asked.values())
    if classify is None and prepared is not None and wants_grade:
        try:
            classify, dr_ceiling = dr_grade_classifier(Path(prepared), cache_dir=cache_dir, progress=progress)
        except FundusgenError as e:
            notes.append(f"no DR-grade classifier: {e}")
    names = sorted(asked)
    measured = measure_cached(synthetic, names, cache_dir=cache_dir, desc="faithfulness: measure synthetic",
                              progress=progress)
    predicted = [{} for _ in names]
    if classify:  # in batches: one network pass per 32 images
        predicted = [p for start in tqdm(range(0, len(names), 32), desc="faithfulness: classify synthetic",
                                         unit="batch", disable=not progress)
                     for p in classify([load(synthetic / n) for n in names[start:start + 32]])]
    items = [Item(asked[n], m, p) for n, m, p in zip(names, measured, predicted)]
    held, train = real_items(prepared, progress=progress, cache_dir=cache_dir) if prepared else ([], [])
    threshold = haze_threshold_from(train)
    if threshold is None:
        threshold = haze_threshold_from(held)
    real = score(held, threshold) if held else {}
    if dr_ceiling is not None:
        real["dr_grade"] = dr_ceiling
    out = {"n_synthetic": len(items), "synthetic": score(items, threshold), "real": real, "n_real": len(held),
           "notes": notes,
           "haze_threshold_fitted_on": "training split" if train else ("held-out split" if held else None),
           "method": " ".join(__doc__.split("\n\n", 1)[1].split())}
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate the faithfulness prompt set, or score a folder of generated images."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m fundusgen.eval.faithfulness", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate the prompt set (attributes in every sidecar)")
    g.add_argument("out")
    g.add_argument("--per-cell", type=int, help="images per prompt cell (default 2 of each of the 18 cells; "
                                                "1 per record with --records)")
    g.add_argument("--records", metavar="PREPARED", help="instead of the 18 cells, prompts written from the whole "
                                                         "label sets of held-out records of this prepared folder")
    g.add_argument("--records-n", type=int, default=100, help="how many records (default 100)")
    g.add_argument("--records-split", default="test", help="their split (default test)")
    g.add_argument("--model", help="model folder (default: the shipped model)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--seed-per-prompt", action=argparse.BooleanOptionalAction,
                   help="every prompt its own seeds (default with --records: 100 records drawn from one seed share "
                        "their layout, which hides how varied the model is and makes its anatomy one draw's luck); "
                        "--no-seed-per-prompt: the same seeds for every prompt (default for the cells, which then "
                        "differ only by their prompt)")
    g.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=True,
                   help="guide away from each cell's reversed findings, as `fundusgen generate` does for "
                        "attribute prompts (default on; --no-contrast: plain classifier-free guidance)")
    g.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    g.add_argument("--anatomy-retries", type=int, default=0, metavar="K",
                   help="draw an image that fails the anatomy check again, up to K times, as `fundusgen generate "
                        "--anatomy-retries` and `make demo` do (default 0: the model's own single draws)")
    e = sub.add_parser("score", help="measure generated images against their requested attributes")
    e.add_argument("synthetic")
    e.add_argument("--real", help="a prepared folder whose held-out labels give the ceiling")
    e.add_argument("--out", help="write the JSON here")
    for q in (g, e):
        q.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        if args.command == "generate":
            cells = (record_cells(Path(args.records), args.records_n, (args.records_split,), args.seed)
                     if args.records else None)
            per_cell = args.per_cell if args.per_cell is not None else (1 if cells else 2)
            distinct = args.seed_per_prompt if args.seed_per_prompt is not None else bool(cells)
            written = generate_prompt_set(Path(args.out), per_cell=per_cell, model=args.model, seed=args.seed,
                                          progress=not args.quiet, contrast=args.contrast, guidance=args.guidance,
                                          cells=cells, seed_per_prompt=distinct,
                                          anatomy_retries=args.anatomy_retries)
            print(f"wrote {len(written)} images with their attributes to {args.out}")
            return 0
        result = evaluate_faithfulness(Path(args.synthetic), Path(args.real) if args.real else None,
                                       progress=not args.quiet)
    except FundusgenError as err:
        import sys
        print(f"faithfulness: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        from fundusgen.data.shards import atomic_write_text
        atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
