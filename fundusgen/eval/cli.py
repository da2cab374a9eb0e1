"""``fundusgen evaluate``: register it on the main parser with ``add_evaluate_parser(subparsers)``."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_evaluate(args) -> int:
    from fundusgen.eval.report import EvaluateConfig, RealSet, evaluate
    cfg = EvaluateConfig(synthetic=Path(args.synthetic), real=[RealSet.parse(r) for r in args.real],
                         train=Path(args.train), out=Path(args.out),
                         cache_dir=Path(args.cache) if args.cache else None, k=args.k, seed=args.seed,
                         quantile=args.quantile, max_real_anatomy=args.max_real_anatomy, thumbnails=args.thumbnails,
                         downstream=Path(args.downstream) if args.downstream else None,
                         downstream_tasks=tuple(t.strip() for t in args.downstream_tasks.split(",") if t.strip()),
                         downstream_seeds=args.downstream_seeds)
    report = evaluate(cfg, progress=not args.quiet)
    for line in report["warnings"]:
        print(f"note: {line}")
    realism = report["realism"]
    for name, c in realism["per_real_set"].items():
        print(f"realism vs {name} ({c['n_real']} real): " + ", ".join(
            f"{label} {_figure(c[key], scale)} (floor {_figure(c['floor'][key], scale)})"
            for label, key, scale in (("FID", "fid", 1), ("KID×1000", "kid", 1000), ("precision", "precision", 1),
                                      ("recall", "recall", 1))))
    a = report["anatomy"]
    refs = "; ".join(f"{name}: {s['valid_share']:.1%} valid, {s['one_disc_share']:.1%} one disc"
                     for name, s in a["real"].items())
    print(f"anatomy: {a['synthetic']['valid_share']:.1%} of {a['synthetic']['n']} synthetic images valid, "
          f"{a['synthetic']['one_disc_share']:.1%} with exactly one optic disc (real {refs})")
    f = report.get("faithfulness", {})
    if "synthetic" in f:
        parts = []
        for attr, key, label in (("eye", "accuracy", "eye"), ("dr_grade", "accuracy", "DR grade"),
                                 ("dr_grade", "spearman", "DR grade rank rho"),
                                 ("dr_lesions", "balanced_accuracy", "DR lesions"),
                                 ("cataract", "haze_balanced_accuracy", "cataract"), ("cdr", "mean_absolute_error", "CDR MAE")):
            value, ceiling = f["synthetic"].get(attr, {}).get(key), f["real"].get(attr, {}).get(key)
            if value is not None:
                parts.append(f"{label} {value:.2f}" + (f" (real {ceiling:.2f})" if ceiling is not None else ""))
        print(f"caption faithfulness ({f['n_synthetic']} images): " + ", ".join(parts))
    print(report["verdict"])
    for line in report.get("downstream", {}).get("verdicts", []):
        print(line)
    print(f"wrote {cfg.out / 'report.html'} and {cfg.out / 'report.json'} ({report['timings']['total_s']:.0f} s)")
    return 0


def _figure(figure: dict, scale: float) -> str:
    if "error" in figure:
        return "n/a"
    text = f"{figure['value'] * scale:.3g}"
    return text + (f"±{figure['se'] * scale:.2g}" if figure.get("se") is not None else "")


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="realism, anatomy and memorisation of synthetic images: "
                                               "one HTML report and its JSON")
    p.add_argument("--synthetic", "--generated", required=True, metavar="DIR",
                   help="folder of synthetic images (PNG/JPEG, searched recursively), e.g. from `fundusgen generate`")
    p.add_argument("--real", action="append", required=True, metavar="NAME=PREPARED_DIR[:split]",
                   help="a real reference set: a folder made by `fundusgen prepare` (optionally one split: "
                        "train, val, test) or a folder of images; repeatable")
    p.add_argument("--train", required=True, metavar="PREPARED_DIR",
                   help="the prepared folder the model was trained on: its train split is searched for "
                        "memorised images, its val and test splits calibrate the threshold")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="where report.html and report.json go")
    p.add_argument("--cache", metavar="DIR",
                   help="feature cache folder (default $FUNDUSGEN_CACHE/features or ~/.cache/fundusgen/features)")
    p.add_argument("--k", type=int, default=3, help="neighbours of the precision/recall manifolds (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of KID subsets, floors and anatomy subsets")
    p.add_argument("--quantile", type=float, default=0.999,
                   help="held-out quantile that sets the memorisation threshold (default 0.999)")
    p.add_argument("--max-real-anatomy", type=int, default=1000,
                   help="real images per set run through the anatomy check (default 1000)")
    p.add_argument("--thumbnails", type=int, default=24, help="synthetic/nearest-real pairs shown (default 24)")
    p.add_argument("--downstream", metavar="PREPARED_DIR",
                   help="also train classifiers on this prepared folder's real images with and without the synthetic "
                        "images (labels from their sidecars) against oversampling and class weighting")
    p.add_argument("--downstream-tasks", default="dr_grade,glaucoma,cataract",
                   help="downstream tasks, comma-separated (default dr_grade,glaucoma,cataract)")
    p.add_argument("--downstream-seeds", type=int, default=5, help="seeds per downstream arm (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)


DOWNSTREAM_HELP = ("train the same classifier on real images, with oversampling, with class weighting and with the "
                   "synthetic images added; test on held-out and external real images (tables, plots, JSON)")


def cmd_downstream(args) -> int:
    from fundusgen.eval.downstream import cmd_downstream as run
    return run(args)


def add_downstream_arguments(p) -> None:
    p.add_argument("--prepared", required=True, metavar="DIR", help="a folder made by `fundusgen prepare`")
    p.add_argument("--synthetic", metavar="DIR",
                   help="synthetic images with JSON sidecars whose 'attributes' are their labels (fundusgen generate)")
    p.add_argument("--out", required=True, metavar="DIR", help="where downstream.json and downstream.html go")
    p.add_argument("--tasks", default="dr_grade,glaucoma,cataract", help="comma-separated, of: dr_grade, glaucoma, cataract")
    p.add_argument("--seeds", type=int, default=5, help="seeds per arm (default 5)")
    p.add_argument("--mode", default="probe", choices=("probe", "finetune"),
                   help="probe: logistic regression on cached frozen features (CPU); finetune: every layer (GPU)")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="first generate up to N images in all into --synthetic, to balance the train classes "
                        "(resumable; default 0: use the folder as it is)")
    p.add_argument("--model", help="generation model folder (default: the shipped default model)")
    p.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=False,
                   help="with --generate: contrastive guidance, each class's prompt guided away from its reversed "
                        "findings (`fundusgen generate`'s default for attribute prompts; default off here)")
    p.add_argument("--epochs", type=int, help="training epochs (default: probe 60, finetune 10)")
    p.add_argument("--max-train", type=int, help="at most this many real training images per task, stratified")
    p.add_argument("--image-size", type=int, default=224,
                   help="network input side in pixels (default 224, as in ImageNet training)")
    p.add_argument("--cache", metavar="DIR", help="feature cache (default $FUNDUSGEN_CACHE/features)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_downstream_parser(subparsers) -> None:
    p = subparsers.add_parser("downstream", help="does the synthetic set help a classifier more than oversampling "
                                                 "or class weighting?", description=DOWNSTREAM_HELP)
    add_downstream_arguments(p)
    p.set_defaults(func=cmd_downstream)
