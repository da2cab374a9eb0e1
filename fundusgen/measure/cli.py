"""Subcommands ``measure``, ``caption`` and ``purify`` (the captioned-dataset steps)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from fundusgen.errors import FundusgenError


def _folder(path: str) -> Path:
    folder = Path(path)
    if not (folder / "shards").is_dir():
        raise FundusgenError(f"{folder}: not a prepared folder (no shards/); run `fundusgen prepare` first")
    return folder


def cmd_measure(args) -> int:
    from fundusgen.measure.run import measure_folder, parse_shard
    res = measure_folder(_folder(args.dir), parse_shard(args.shard), args.workers, progress=not args.quiet,
                         vessel_method=args.vessels)
    print(f"measured {res.items} images ({res.done} shards written, {res.skipped} already done)")
    print(f"wrote {res.out}")
    return 0


def _vlm_writer(args, folder: Path):
    from fundusgen.caption.vlm import VLMWriter
    if not args.base_url or not args.model:
        raise FundusgenError("--writer vlm needs --base-url and --model")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise FundusgenError(f"environment variable {args.api_key_env} (--api-key-env) is not set")
    return VLMWriter(base_url=args.base_url, model=args.model, api_key=key, cache_dir=folder / "captions" / "vlm-cache",
                     concurrency=args.concurrency, timeout=args.timeout, retries=args.retries)


def cmd_caption(args) -> int:
    from fundusgen.caption.run import caption_folder, failures, over_limit
    from fundusgen.measure.run import parse_shard
    folder = _folder(args.dir)
    if args.page and args.page_images < 1:
        raise FundusgenError(f"--page-images {args.page_images}: need at least 1")
    vlm = _vlm_writer(args, folder) if args.writer == "vlm" else None
    res = caption_folder(folder, args.writer, parse_shard(args.shard), progress=not args.quiet, vlm=vlm)
    print(f"captioned {res.items} images ({res.done} shards written, {res.skipped} already done)")
    failed = failures(folder, args.writer)
    for key, error in failed[:20]:
        print(f"failed: {key}: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} images failed and were skipped; run the same command again to retry them", file=sys.stderr)
    if not args.no_token_check:
        from fundusgen.model.text_encoder import TextEncoder
        enc = TextEncoder(args.text_encoder)
        limit = enc.window - 2
        long = over_limit(folder, args.writer, enc.token_count, limit)
        for key, n in long[:20]:
            print(f"over the text encoder's {limit}-token window: {key} ({n} tokens)")
        print(f"{len(long)} captions exceed the {limit}-token window of {args.text_encoder} (kept whole)")
    print(f"wrote {res.out}")
    if args.page:
        from fundusgen.caption.page import write_caption_page
        print(f"wrote {write_caption_page(folder, args.page, args.writer, args.page_images, args.seed)}")
    return 0


def cmd_purify(args) -> int:
    from fundusgen.caption.purify import purify_folder
    folder = _folder(args.dir)
    report = purify_folder(folder, args.writer, args.second, strict=args.strict)
    print(f"kept {report['kept']} of {report['images']} images")
    for reason, n in sorted(report["drop_reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  dropped {n}: {reason}")
    for flag, n in sorted(report["flags"].items(), key=lambda kv: -kv[1]):
        print(f"  flagged {n}: {flag}")
    print(f"wrote {folder / 'purified.parquet'}, {folder / 'purify'}/report.json and decisions.csv")
    return 0


def add_measure_parsers(sub) -> None:
    p = sub.add_parser("measure", help="anatomy, vessel, lesion and quality measurements per prepared image")
    p.add_argument("dir", help="a prepared folder (fundusgen prepare)")
    p.add_argument("--shard", metavar="i/N", help="process only input shards k with k mod N == i")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    p.add_argument("--vessels", choices=("auto", "network", "classical"), default="auto",
                   help="vessel segmentation: the shipped network (auto: when installed) or the ~20x faster classical one")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("caption", help="a caption per prepared image from labels and measurements, or from a VLM")
    p.add_argument("dir", help="a prepared folder (measured first for fine-grained captions)")
    p.add_argument("--writer", choices=("template", "vlm"), default="template")
    p.add_argument("--shard", metavar="i/N", help="process only input shards k with k mod N == i")
    p.add_argument("--base-url", help="vlm: OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    p.add_argument("--model", help="vlm: model name")
    p.add_argument("--api-key-env", help="vlm: name of the environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4, help="vlm: requests in flight (default 4)")
    p.add_argument("--timeout", type=float, default=60.0, help="vlm: seconds per request (default 60)")
    p.add_argument("--retries", type=int, default=4, help="vlm: retries of a failed request (default 4)")
    p.add_argument("--text-encoder", default="minilm", help="encoder whose token window captions are checked against")
    p.add_argument("--no-token-check", action="store_true", help="skip the token-length report")
    p.add_argument("--page", metavar="HTML", help="also write a review page of random images beside their captions "
                                                  "and measurements, e.g. out/captions.html")
    p.add_argument("--page-images", type=int, default=20, help="images on the review page (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the review page's random draw (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("purify", help="drop captions that contradict labels, and bad images; write the kept list")
    p.add_argument("dir", help="a captioned prepared folder")
    p.add_argument("--writer", default="template", help="the captions to keep or drop (default template)")
    p.add_argument("--second", default="vlm", help="a second writer to compare with, when present (default vlm)")
    p.add_argument("--strict", action="store_true",
                   help="drop flagged images too (a confidently measured eye or a haze that disagrees with the "
                        "labels, writers that disagree), not only captions that contradict labels")
    p.set_defaults(func=cmd_purify)
