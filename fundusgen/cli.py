"""The ``fundusgen`` command: one subcommand per step of the data flow. Thin: it parses
arguments, calls into the package, prints where outputs went, and turns user errors into
one line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fundusgen.errors import FundusgenError
from fundusgen.eval.cli import add_downstream_parser, add_evaluate_parser
from fundusgen.measure.cli import add_measure_parsers
from fundusgen.web.cli import add_serve_parser


def _parse_source(text: str) -> tuple[str, str, dict]:
    """``NAME=PATH[,key=value...]`` -> (adapter, root, options)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise FundusgenError(f"--source {text!r}: expected NAME=PATH (for example aptos=/data/aptos2019)")
    path, *opts = rest.split(",")
    options = {}
    for opt in opts:
        k, sep, v = opt.partition("=")
        if not sep:
            raise FundusgenError(f"--source {text!r}: option {opt!r} is not key=value")
        options[k.strip()] = v.strip()
    return name.strip(), path, options


def _errata_files(args) -> list[str] | None:
    """The label errata prepare applies: the shipped ones unless --no-errata, then each --errata."""
    from fundusgen.data.sources.errata import SHIPPED
    if not args.errata and not args.no_errata:
        return None
    for path in args.errata:
        if not Path(path).is_file():
            raise FundusgenError(f"{path}: errata file not found")
    return ([] if args.no_errata else [str(SHIPPED)]) + list(args.errata)


def cmd_prepare(args) -> int:
    from fundusgen.data.prepare import PrepareConfig, prepare
    cfg = PrepareConfig(sources=[_parse_source(s) for s in args.source], out=Path(args.out), size=args.size,
                        shard_size=args.shard_size, workers=args.workers, image_format=args.format,
                        seed=args.seed, copy_correlation=args.copy_correlation,
                        errata=_errata_files(args))
    try:
        result = prepare(cfg, progress=not args.quiet)
    except OSError as e:  # an output folder that cannot be written, a full disk
        raise FundusgenError(f"{e.filename or cfg.out}: {e.strerror}") from None
    print(f"kept {result.kept} images, rejected {result.rejected} "
          f"({result.shards_written} shards written, {result.shards_skipped} already done)")
    print(f"copies of one photograph: {result.copy_pairs} pairs, kept in one split ({result.moved_by_copies} "
          f"records moved to their copies' split: {cfg.out}/copies.csv)")
    print(f"wrote {cfg.out}/shards, {cfg.out}/index.parquet, {cfg.out}/rejects.csv")
    for line in result.failed_sources:
        print(f"fundusgen prepare: error: {line}", file=sys.stderr)
    return 1 if result.failed_sources else 0


def _prompts(args) -> tuple[list[str], list[dict] | None]:
    """The prompts to generate from, and the attributes each was written from (None for prose)."""
    from fundusgen.caption.template import attributes_from_options, describe
    attrs = attributes_from_options(eye=args.eye, dr_grade=args.dr_grade, dme=args.dme, glaucoma=args.glaucoma,
                                    cataract=args.cataract, cdr=args.cdr, quality=args.quality)
    given = [bool(args.prompt), bool(args.prompts_file), bool(attrs)]
    if sum(given) == 0:
        raise FundusgenError("nothing to generate: give a prompt, --prompts-file, or attributes such as --dr-grade 2 --eye left")
    if sum(given) > 1:
        raise FundusgenError("give one of: a prompt, --prompts-file, or attributes (--eye, --dr-grade, ...)")
    if args.prompts_file:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise FundusgenError(f"{path}: cannot read prompts file ({getattr(e, 'strerror', None) or e})") from None
        from fundusgen.caption.prompt import check_prompt
        prompts = []
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                check_prompt(line.strip(), f"{path}:{number}: prompt")  # before any image is drawn, with its line
                prompts.append(line.strip())
        if not prompts:
            raise FundusgenError(f"{path}: no prompts (one per line; # starts a comment)")
        return prompts, None
    if attrs:
        return [describe(attrs, seed=0)], [attrs]
    return [args.prompt], None


def cmd_generate(args) -> int:
    from fundusgen.generate import generate_to_folder
    prompts, attributes = _prompts(args)
    if args.memorisation is not None and not Path(args.memorisation).is_dir():
        raise FundusgenError(f"--memorisation {args.memorisation}: folder not found")
    written = generate_to_folder(prompts, Path(args.out), model=args.model, num_images=args.n, seed=args.seed,
                                 attributes=attributes, anatomy_retries=args.anatomy_retries,
                                 steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                                 resolution=args.resolution, aperture=args.aperture, time_shift=args.time_shift,
                                 negative_prompt=args.negative_prompt, contrast=args.contrast,
                                 guidance_interval=args.guidance_interval and list(args.guidance_interval),
                                 autoguidance=args.autoguidance, guidance_eta=args.guidance_eta,
                                 guidance_momentum=args.guidance_momentum,
                                 guidance_threshold=args.guidance_threshold, zero_star=args.zero_star,
                                 zero_init_steps=args.zero_init_steps, seed_per_prompt=args.seed_per_prompt,
                                 progress=not args.quiet)
    print(f"wrote {len(written)} images, their JSON sidecars and contact_sheet.png to {args.out}")
    if args.anatomy_retries:
        checks = [json.loads(p.with_suffix(".json").read_text())["anatomy"] for p in written]
        print(f"anatomy: {sum(c['valid'] for c in checks)} of {len(checks)} images valid, "
              f"{sum(c['attempts'] > 1 for c in checks)} drawn again (up to {args.anatomy_retries} retries each)")
    if args.memorisation is not None:
        from fundusgen.data.shards import atomic_write_text
        from fundusgen.eval.report import memorisation_of_folder
        result = memorisation_of_folder(Path(args.out), Path(args.memorisation), progress=not args.quiet)
        atomic_write_text(Path(args.out) / "memorisation.json", json.dumps(result.to_dict(), indent=2))
        print(result.verdict)
    return 0


def cmd_train(args) -> int:
    from fundusgen.train.config import load_recipe
    from fundusgen.train.run import train
    overrides = {}
    for item in args.set or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise FundusgenError(f"--set {item!r}: expected key=value (top-level keys, e.g. data=/path)")
        overrides[k] = v
    cfg = load_recipe(args.config, overrides)
    if args.only == "autoencoder":
        from fundusgen.train.autoencoder import train_autoencoder
        print(f"wrote the autoencoder folder {train_autoencoder(cfg, progress=not args.quiet)} "
              f"(checkpoints and TensorBoard logs under {cfg.out}/autoencoder)")
        return 0
    model_dir = train(cfg, progress=not args.quiet)
    print(f"wrote the model folder {model_dir} (checkpoints and TensorBoard logs under {cfg.out})")
    return 0


def cmd_export(args) -> int:
    from fundusgen.train.run import export_fp16
    config = export_fp16(args.src, args.dst, guide=args.guide, stage=args.stage, merge=args.merge,
                         weights=args.weight, autoencoder=args.autoencoder)
    ckpt = config.get("checkpoint")
    taken = (f"; denoiser: EMA of the checkpoint at stage {ckpt['stage']!r} step {ckpt['step']} of {ckpt['of']}"
             if ckpt else "")
    merged = ""
    if args.merge:
        own = 1 - sum(m["weight"] for m in config["merged"])
        merged = f"; denoiser: {own:.3g} of its own weights" + "".join(f" + {m['weight']:.3g} of {m['with']}'s"
                                                                      for m in config["merged"])
    swapped = f"; autoencoder: {args.autoencoder}" if args.autoencoder else ""
    print(f"wrote {args.dst} (float16 weights{taken}{merged}{swapped})")
    return 0


def cmd_sources(args) -> int:
    from fundusgen.data.sources import available
    print("\n".join(available()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fundusgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="native datasets -> FOV-cropped WebDataset shards, index, splits, rejects")
    p.add_argument("--source", action="append", required=True, metavar="NAME=PATH[,key=value]",
                   help="a dataset in its native layout; repeatable. `fundusgen sources` lists the names")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=512, help="output side in pixels (default 512)")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image encoding in the shards")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    p.add_argument("--copy-correlation", type=float, default=0.9, metavar="R",
                   help="photographs whose fine structure correlates at least R (under a flip or quarter turn) "
                        "are copies and share a split (default 0.9; above 1: only copies the adapters name)")
    p.add_argument("--errata", action="append", default=[], metavar="CSV",
                   help="label corrections to apply (columns dataset,id,field,label,corrected,reason); repeatable, "
                        "added to the shipped ones (fundusgen/data/sources/errata.csv)")
    p.add_argument("--no-errata", action="store_true", help="do not apply the shipped label errata: the sources' labels as given")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("generate", help="text (or attributes) -> fundus photographs, with JSON sidecars")
    p.add_argument("prompt", nargs="?", help="what the fundus should show")
    p.add_argument("-n", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("-o", "--out", default="out", help="output folder (default out/)")
    p.add_argument("--model", help="model folder (default: the shipped default model)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's, 25)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's, 4.0)")
    p.add_argument("--negative-prompt", metavar="TEXT",
                   help="what guidance steers away from, in place of the empty caption (e.g. \"cataract, hazy media\")")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="apply guidance only at times LOW < t <= HIGH (t = 1 is noise; default: the model's, 0 1)")
    p.add_argument("--autoguidance", type=float, metavar="W",
                   help="autoguidance scale: also guide away from the model's weaker guide network given the same "
                        "prompt (Karras et al. 2024), v += (W - 1)(v - v_guide); 1 turns it off (default: the model's)")
    p.add_argument("--guidance-eta", type=float, metavar="ETA",
                   help="adaptive projected guidance (Sadat et al. 2024): keep ETA (0-1) of the guidance update "
                        "parallel to the denoised prediction, the part that oversaturates; 1 is plain "
                        "classifier-free guidance (default: the model's, 1)")
    p.add_argument("--guidance-momentum", type=float, metavar="BETA",
                   help="adaptive projected guidance: add BETA times the previous update (negative, e.g. -0.5, "
                        "damps it; default: the model's, 0)")
    p.add_argument("--guidance-threshold", type=float, metavar="R",
                   help="adaptive projected guidance: shrink updates longer than R (latent units; 0 off; "
                        "default: the model's, 0)")
    p.add_argument("--zero-star", action=argparse.BooleanOptionalAction, default=None,
                   help="CFG-Zero* (Fan et al. 2025): scale the unconditional velocity by its least-squares fit to "
                        "the conditional one before guiding (default: the model's, off)")
    p.add_argument("--zero-init-steps", type=int, metavar="K",
                   help="CFG-Zero*'s zero initialisation: leave the noise as it is for the first K steps "
                        "(default: the model's, 0)")
    p.add_argument("--sampler", help="euler | heun | midpoint (default euler)")
    p.add_argument("--time-shift", type=float, help="SD3 time shift of the sampling schedule: above 1 spends more "
                   "steps at high noise, where the layout forms (default: the model's, 1.0)")
    p.add_argument("--resolution", type=int, help="output side in pixels (default: the model's)")
    p.add_argument("--aperture", choices=("circle", "none"),
                   help="circle: the round field of view of a preprocessed photograph, black outside "
                        "(latents outside it pinned while sampling); none: the model draws the frame "
                        "(default: the model's)")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--seed-per-prompt", action="store_true",
                   help="with --prompts-file: image i of prompt p uses seed + p*n + i, so no two images start from "
                        "the same noise (a synthetic dataset); default: the same seeds for every prompt, so "
                        "prompts compare image for image")
    p.add_argument("--anatomy-retries", type=int, default=0, metavar="K",
                   help="check every image as `fundusgen evaluate` does (one optic disc, a fovea, a vessel tree, "
                        "a round field of view) and draw an invalid one again, up to K times (default 0: no check)")
    p.add_argument("--memorisation", metavar="PREPARED",
                   help="after generating, compare every image with the training split of this prepared folder "
                        "and print the one-line memorisation verdict (memorisation.json beside the images)")
    g = p.add_argument_group("attributes (instead of a prompt: they are written into a caption)")
    g.add_argument("--eye", help="left | right")
    g.add_argument("--dr-grade", help="ICDR grade 0-4")
    g.add_argument("--dme", action=argparse.BooleanOptionalAction, default=None, help="diabetic macular oedema")
    g.add_argument("--glaucoma", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--cataract", help="none | mild | moderate | severe")
    g.add_argument("--cdr", type=float, help="vertical cup-to-disc ratio, 0-1")
    g.add_argument("--quality", help="good | usable")
    g.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=True,
                   help="guide away from the reversed findings (DR -> no DR, a large cup -> a small one ...) "
                        "instead of the empty caption; the eye is left out of the contrast (default on: DR and "
                        "cataract follow the prompt more clearly; with many findings at once it costs anatomy, so "
                        "--no-contrast there; --negative-prompt replaces it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train a model from a YAML recipe (autoencoder, latents, 3 denoiser stages)")
    p.add_argument("--config", required=True, help="recipe YAML, e.g. configs/default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a top-level recipe key")
    p.add_argument("--only", choices=("autoencoder",),
                   help="train only this part (e.g. refine a model's decoder: configs/default_decoder.yaml)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="copy a model folder with float16 weights; from a training run folder, "
                       "the model it holds now (mid-training: the denoiser's latest EMA checkpoint)")
    p.add_argument("src", help="a model folder, or a training run folder (recipe.json, checkpoints)")
    p.add_argument("dst")
    p.add_argument("--guide", metavar="FOLDER", help="a model or run folder (e.g. an earlier export of the same run) "
                   "whose denoiser becomes the copy's guide network for `generate --autoguidance W`")
    p.add_argument("--stage", metavar="NAME", help="from a training run folder: the model as that recipe stage left "
                   "it (its EMA weights at its end, at its resolution), kept whatever later stages did")
    p.add_argument("--merge", metavar="FOLDER", action="append", default=[],
                   help="a model or run folder fine-tuned from the same model (repeatable): the copy's denoiser "
                        "becomes the weighted average of its own and theirs (WiSE-FT; several: a model soup)")
    p.add_argument("--weight", type=float, metavar="W", action="append",
                   help="with --merge: that model's share, one per --merge in order (default: all models equal)")
    p.add_argument("--autoencoder", metavar="FOLDER", help="an autoencoder folder whose decoder was refined on this "
                   "model's encoder (configs/default_decoder.yaml): it replaces the model's autoencoder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sources", help="list the dataset adapters")
    p.set_defaults(func=cmd_sources)

    add_measure_parsers(sub)
    add_evaluate_parser(sub)
    add_downstream_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FundusgenError as e:
        print(f"fundusgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fundusgen {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
