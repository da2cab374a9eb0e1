"""The model card's protocol in one command: measure a model as the shipped one was measured.

Two image sets, each scored by the evaluation's own code:

* **records**: one image per held-out record of a prepared folder (``--records-n``, default 100),
  its prompt written from the record's whole label set, each record drawn from its own seed
  (``faithfulness generate --records``); then ``fundusgen evaluate`` against the folder's test split
  (realism, retina-domain distance, anatomy, vessel geometry, faithfulness, memorisation against its
  training split);
* **attributes**: the faithfulness prompt set (18 eye x finding cells, ``--per-cell`` 4 seeds each,
  the same seeds in every cell, contrastive guidance), scored against the requested eye, DR, cataract
  and cup-to-disc ratio with the folder's held-out photographs as the ceiling.

``run`` writes both sets, ``records_report/`` and ``attributes.json`` under its output folder and a
``summary.json`` with the figures the model card's tables show; it resumes (images already drawn
with the same settings are kept, per-image measurements are cached). ``table`` prints those rows
for several runs side by side, in Markdown, so two models are compared on one page, then every run
against the first image by image (``paired_anatomy``: the same records drawn from the same seeds,
so the anatomy outcomes pair up)::

    python -m fundusgen.eval.protocol run out/shipped --prepared data/prepared512
    python -m fundusgen.eval.protocol run out/h200 --prepared data/prepared512 --model runs/h200/model
    python -m fundusgen.eval.protocol table out/shipped out/h200

``--steps``, ``--sampler``, ``--guidance``, ``--guidance-eta`` / ``--guidance-momentum`` /
``--guidance-threshold`` (adaptive projected guidance), ``--zero-star`` / ``--zero-init-steps`` (CFG-Zero*)
and ``--time-shift`` measure a sampling setting (recorded
under ``settings`` in the summary and in the table's row label). ``--anatomy-retries K`` measures the
images as ``fundusgen generate --anatomy-retries K`` (and ``make demo``) draws them: the anatomy
figures then judge a set the check already filtered.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from fundusgen.errors import FundusgenError

REAL_SET = "test"          # the reference set's name in the records report
MAX_REAL_ANATOMY = 300     # real test photographs through the anatomy check (the card's protocol)
GUIDANCE_VARIANTS = ("guidance_eta", "guidance_momentum", "guidance_threshold",  # adaptive projected guidance
                     "zero_star", "zero_init_steps")                              # CFG-Zero*


def _get(d, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _dr_spots(faithfulness: dict) -> dict:
    """The dark-lesion cue against the requested DR, as both image sets report it."""
    return {"dr_spots_balanced": _get(faithfulness, "dr_lesions", "balanced_accuracy"),
            "dr_spots_when_dr": _get(faithfulness, "dr_lesions", "share_with_lesions_when_dr"),
            "dr_spots_when_no_dr": _get(faithfulness, "dr_lesions", "share_with_lesions_when_no_dr")}


def _dr_order(faithfulness: dict) -> dict:
    """The DR-grade classifier's expected grade against the requested one: does it order the images?"""
    return {"dr_grade_spearman": _get(faithfulness, "dr_grade", "spearman"),
            "dr_grade_auc": _get(faithfulness, "dr_grade", "auc_dr")}


def summarise_records(report: dict, real: str = REAL_SET) -> dict:
    """The model card's figures of the records set, from its ``report.json``."""
    per = _get(report, "realism", "per_real_set", real) or {}
    anatomy = _get(report, "anatomy", "synthetic") or {}
    vessels = _get(report, "vessels", "metrics") or {}
    faith = _get(report, "faithfulness", "synthetic") or {}
    return {
        "n": anatomy.get("n") or 0,
        "fid": _get(per, "fid", "value"), "kid": _get(per, "kid", "value"), "kid_se": _get(per, "kid", "se"),
        "precision": _get(per, "precision", "value"), "recall": _get(per, "recall", "value"),
        "retina_fd": _get(report, "realism", "retina_domain", "per_real_set", real, "fd"),
        "valid": anatomy.get("valid_share"), "one_disc": anatomy.get("one_disc_share"),
        "disc_confirmed": anatomy.get("confirmed_disc_share"), "fovea": anatomy.get("fovea_share"),
        "vessel_tree": anatomy.get("vessel_tree_share"),
        "vessel_density": _get(vessels, "density", "synthetic", "mean"),
        "vessel_density_real": _get(vessels, "density", "real", real, "summary", "mean"),
        "vessel_density_w1": _get(vessels, "density", "real", real, "wasserstein"),
        "calibre_w1": _get(vessels, "calibre", "real", real, "wasserstein"),
        "eye": _get(faith, "eye", "accuracy"),
        "haze_cataract": _get(faith, "cataract", "mean_haze_cataract"),
        "haze_clear": _get(faith, "cataract", "mean_haze_clear"),
        **_dr_spots(faith), **_dr_order(faith),
        "memorisation_flagged": len(_get(report, "memorisation", "flagged") or []),
        "memorisation_max": _get(report, "memorisation", "synthetic_quantiles", "q1"),
        "memorisation_threshold": _get(report, "memorisation", "threshold", "value"),
    }


def summarise_attributes(result: dict) -> dict:
    """The model card's figures of the attribute set, from ``faithfulness score``'s JSON."""
    s = result.get("synthetic", {})
    by_cdr = _get(s, "cdr", "mean_measured_by_requested") or {}
    return {
        "n": result.get("n_synthetic"),
        "eye": _get(s, "eye", "accuracy"), "eye_confident": _get(s, "eye", "confident_share"),
        "eye_confident_accuracy": _get(s, "eye", "confident_accuracy"),
        "haze_severe": _get(s, "cataract", "mean_haze_cataract"), "haze_none": _get(s, "cataract", "mean_haze_clear"),
        "cdr_for_0.3": by_cdr.get("0.3"), "cdr_for_0.8": by_cdr.get("0.8"),
        "cdr_mae": _get(s, "cdr", "mean_absolute_error"), "cdr_found": _get(s, "cdr", "measured_share"),
        **_dr_spots(s), **_dr_order(s),
    }


def _model_id(model: str | None) -> dict:
    """Which weights were measured: the folder and what its model_index.json says of them."""
    from fundusgen.model.pipeline import DEFAULT_MODEL
    folder = Path(model) if model else DEFAULT_MODEL
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    return {"path": str(folder.resolve()), "name": index.get("name"), "checkpoint": index.get("checkpoint")}


def run_protocol(out: Path, prepared: Path, model: str | None = None, records_n: int = 100, per_cell: int = 4,
                 anatomy_retries: int = 0, cache_dir: Path | None = None, progress: bool = True,
                 **sampling) -> dict:
    """Draw and score both sets under ``out``; returns (and writes) ``summary.json``. ``sampling``:
    settings of the pipeline (``steps``, ``sampler``, ``guidance``, ``guidance_eta``, ``guidance_momentum``,
    ``guidance_threshold``, ``zero_star``, ``zero_init_steps``, ``time_shift``; None: the model's own)."""
    from fundusgen.data.shards import atomic_write_text
    from fundusgen.eval.faithfulness import evaluate_faithfulness, generate_prompt_set, record_cells
    from fundusgen.eval.report import EvaluateConfig, RealSet, evaluate
    out, prepared = Path(out), Path(prepared)
    if per_cell < 1:
        raise FundusgenError(f"--per-cell {per_cell}: expected at least 1")
    cells = record_cells(prepared, records_n, ("test",), 0)   # before any image: a bad folder fails at once
    sampling = {k: v for k, v in sampling.items() if v is not None}
    generate_prompt_set(out / "records", per_cell=1, model=model, seed=0, progress=progress, cells=cells,
                        seed_per_prompt=True, anatomy_retries=anatomy_retries, **sampling)
    report = evaluate(EvaluateConfig(synthetic=out / "records", real=[RealSet(REAL_SET, prepared, "test")],
                                     train=prepared, out=out / "records_report", cache_dir=cache_dir,
                                     max_real_anatomy=MAX_REAL_ANATOMY), progress=progress)
    generate_prompt_set(out / "attributes", per_cell=per_cell, model=model, seed=0, progress=progress,
                        anatomy_retries=anatomy_retries, **sampling)
    attributes = evaluate_faithfulness(out / "attributes", prepared, progress=progress, cache_dir=cache_dir)
    atomic_write_text(out / "attributes.json", json.dumps(attributes, indent=2))
    summary = {"model": _model_id(model), "prepared": str(prepared.resolve()),
               "settings": {"records_n": len(cells), "per_cell": per_cell, "anatomy_retries": anatomy_retries,
                            **sampling},
               "records": summarise_records(report), "attributes": summarise_attributes(attributes),
               "warnings": report.get("warnings", [])}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def read_summary(folder: Path) -> dict:
    path = Path(folder) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except OSError:
        raise FundusgenError(f"{path}: not found (run `python -m fundusgen.eval.protocol run {folder} ...` first)") from None
    except ValueError as e:
        raise FundusgenError(f"{path}: not a protocol summary ({e})") from None
    if not isinstance(summary, dict) or not {"settings", "records", "attributes"} <= set(summary):
        raise FundusgenError(f"{path}: not a protocol summary (no settings, records and attributes)")
    return summary


def _f(value, digits: int = 2, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.0%}" if percent else f"{value:.{digits}f}"


def _name(folder: Path, summary: dict, n) -> str:
    """A run's row label: its folder's name, how many images, and the settings it drew them with
    where they are not the model's own."""
    settings = summary["settings"]
    parts = [str(n)] + [f"{key.replace('_', ' ')} {settings[key]}"
                        for key in ("sampler", "steps", "guidance", *GUIDANCE_VARIANTS, "time_shift",
                                    "anatomy_retries")
                        if settings.get(key) is not None and (settings[key] or key != "anatomy_retries")]
    return f"{Path(folder).name} ({', '.join(parts)})"


def _dr_cell(figures: dict) -> str:
    return (f"{_f(figures['dr_spots_balanced'])} ({_f(figures['dr_spots_when_dr'], percent=True)} / "
            f"{_f(figures['dr_spots_when_no_dr'], percent=True)})")


def _order_cell(figures: dict) -> str:
    return f"{_f(figures.get('dr_grade_spearman'))} / {_f(figures.get('dr_grade_auc'))}"


PAIRED = ("valid", "one_disc", "disc_confirmed", "fovea", "vessel_tree")  # anatomy.OUTCOMES compared image by image


def _records_checks(folder: Path) -> dict:
    """name -> (prompt, anatomy check) of a run's records images."""
    from fundusgen.eval.anatomy import AnatomyCheck
    report = Path(folder) / "records_report" / "report.json"
    try:
        images = json.loads(report.read_text())["anatomy"]["images"]
        return {name: (json.loads((Path(folder) / "records" / f"{Path(name).stem}.json").read_text())["prompt"],
                       AnatomyCheck.from_dict(check)) for name, check in images.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FundusgenError(f"{report}: no per-image anatomy checks with their sidecars ({e})") from None


def paired_anatomy(base: Path, other: Path) -> dict:
    """``other``'s anatomy outcomes against ``base``'s, image by image over the records images both
    drew for the same prompt (file name; a protocol run draws record i from seed i, so two runs of one
    prepared folder pair up): per outcome, the images only ``other`` passes (``gained``) and only
    ``base`` passes (``lost``), the change in share d = (gained - lost) / n with its 95% Wald interval
    for paired proportions, and McNemar's exact p (two-sided binomial test of gained against lost).
    Pairing takes out the prompt-to-prompt spread, so it sees smaller changes than the two shares."""
    return _paired(_records_checks(base), _records_checks(other), base, other)


def _paired(a: dict, b: dict, base, other) -> dict:
    """:func:`paired_anatomy` of two runs' records checks already read (``_records_checks``)."""
    from scipy.stats import binomtest
    from fundusgen.eval.anatomy import OUTCOMES
    names = [name for name in sorted(a) if name in b and a[name][0] == b[name][0]]
    if not names:
        raise FundusgenError(f"{other}: none of its records images has a prompt of {base}'s under the same name")
    n, out = len(names), {"n": len(names)}
    for outcome in PAIRED:
        passes = OUTCOMES[outcome]
        gained = sum(passes(b[k][1]) and not passes(a[k][1]) for k in names)
        lost = sum(passes(a[k][1]) and not passes(b[k][1]) for k in names)
        d = (gained - lost) / n
        se = math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
        out[outcome] = {"gained": gained, "lost": lost, "difference": d, "ci95": [d - 1.96 * se, d + 1.96 * se],
                        "p": binomtest(gained, gained + lost).pvalue if gained + lost else 1.0}
    return out


def _paired_cell(c: dict) -> str:
    lo, hi = c["ci95"]
    p = f"p {c['p']:.2f}" if c["p"] >= 0.01 else "p < 0.01"
    return f"{100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({p})"


def markdown_tables(folders: list[Path]) -> str:
    """The model card's two tables, one row per protocol run."""
    runs = [(Path(f), read_summary(f)) for f in folders]
    lines = ["| model (records) | FID / KID | precision / recall | retina FD | valid | one disc | disc confirmed "
             "| fovea | vessel tree | vessel density (W1) | calibre W1 | eye | haze cataract / clear "
             "| DR dark spots: bal. acc. (DR / no DR) | DR classifier: rho / AUC | memorised |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for folder, s in runs:
        r = s["records"]
        lines.append(
            f"| {_name(folder, s, r['n'])} | {_f(r['fid'], 1)} / {_f(r['kid'], 3)} "
            f"| {_f(r['precision'])} / {_f(r['recall'])} | {_f(r['retina_fd'], 0)} | {_f(r['valid'], percent=True)} "
            f"| {_f(r['one_disc'], percent=True)} | {_f(r['disc_confirmed'], percent=True)} "
            f"| {_f(r['fovea'], percent=True)} | {_f(r['vessel_tree'], percent=True)} "
            f"| {_f(r['vessel_density'], 3)} ({_f(r['vessel_density_w1'], 3)}) | {_f(r['calibre_w1'])} "
            f"| {_f(r['eye'], percent=True)} | {_f(r['haze_cataract'])} / {_f(r['haze_clear'])} "
            f"| {_dr_cell(r)} | {_order_cell(r)} | {r['memorisation_flagged']} |")
    lines += ["", "| model (attributes) | eye (confident, right of those) | haze severe / none "
                  "| CDR measured for 0.3 / 0.8 asked (MAE; disc found) | DR dark spots: bal. acc. (DR / no DR) "
                  "| DR classifier: rho / AUC |",
              "|---|---:|---:|---:|---:|---:|"]
    for folder, s in runs:
        a = s["attributes"]
        lines.append(
            f"| {_name(folder, s, a['n'])} | {_f(a['eye'], percent=True)} ({_f(a['eye_confident'], percent=True)}, "
            f"{_f(a['eye_confident_accuracy'], percent=True)}) | {_f(a['haze_severe'])} / {_f(a['haze_none'])} "
            f"| {_f(a['cdr_for_0.3'])} / {_f(a['cdr_for_0.8'])} ({_f(a['cdr_mae'])}; {_f(a['cdr_found'], percent=True)}) "
            f"| {_dr_cell(a)} | {_order_cell(a)} |")
    if len(runs) > 1:
        base = runs[0][0]
        lines += ["", f"| against {base.name}, image by image: change in share, points [95% CI] (McNemar p) "
                      "| valid | one disc | disc confirmed | fovea | vessel tree |",
                  "|---|---:|---:|---:|---:|---:|"]
        base_checks = None
        for folder, s in runs[1:]:
            try:
                base_checks = base_checks or _records_checks(base)   # read once for every run set against it
                paired = _paired(base_checks, _records_checks(folder), base, folder)
            except FundusgenError as e:
                lines.append(f"| {folder.name} | not paired: {e} | | | | |")
                continue
            lines.append(f"| {folder.name} ({paired['n']} pairs) | "
                         + " | ".join(_paired_cell(paired[o]) for o in PAIRED) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure a model by the model card's protocol, or print several runs' figures side by side."""
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m fundusgen.eval.protocol", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="draw and score the records and attribute sets of one model")
    r.add_argument("out", help="output folder (resumes what is there)")
    r.add_argument("--prepared", required=True, help="the prepared folder the model was trained on (its test "
                                                     "split gives the records and the reference, its training "
                                                     "split the memorisation search)")
    r.add_argument("--model", help="model folder (default: the shipped model)")
    r.add_argument("--records-n", type=int, default=100, help="held-out records drawn (default 100)")
    r.add_argument("--per-cell", type=int, default=4, help="attribute images per cell (default 4: 72 images)")
    r.add_argument("--anatomy-retries", type=int, default=0, metavar="K",
                   help="draw an image that fails the anatomy check again, up to K times (default 0)")
    r.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    r.add_argument("--sampler", help="euler | heun | midpoint (default: the model's)")
    r.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    r.add_argument("--guidance-eta", type=float, metavar="ETA",
                   help="adaptive projected guidance: share kept of the update parallel to the denoised "
                        "prediction (1: classifier-free guidance; default: the model's)")
    r.add_argument("--guidance-momentum", type=float, help="adaptive projected guidance's momentum (default: the model's)")
    r.add_argument("--guidance-threshold", type=float,
                   help="adaptive projected guidance's norm threshold, 0 off (default: the model's)")
    r.add_argument("--zero-star", action=argparse.BooleanOptionalAction, default=None,
                   help="CFG-Zero*'s scaled unconditional velocity (default: the model's)")
    r.add_argument("--zero-init-steps", type=int, help="CFG-Zero*'s zero-initialised steps (default: the model's)")
    r.add_argument("--time-shift", type=float, help="the sampling schedule's SD3 shift (default: the model's)")
    r.add_argument("--cache", help="feature cache folder (default as `fundusgen evaluate`)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    t = sub.add_parser("table", help="the figures of protocol runs as the model card's Markdown tables")
    t.add_argument("runs", nargs="+", help="folders written by `run`")
    args = p.parse_args(argv)
    try:
        if args.command == "run":
            run_protocol(Path(args.out), Path(args.prepared), args.model, args.records_n, args.per_cell,
                         args.anatomy_retries, Path(args.cache) if args.cache else None, progress=not args.quiet,
                         steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                         time_shift=args.time_shift,
                         **{key: getattr(args, key) for key in GUIDANCE_VARIANTS})
            print(markdown_tables([Path(args.out)]))
            print(f"wrote {Path(args.out) / 'summary.json'}")
        else:
            print(markdown_tables([Path(r) for r in args.runs]))
    except FundusgenError as err:
        print(f"protocol: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
