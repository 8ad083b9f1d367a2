"""Command line for the data pipeline.

    python -m pipelines ingest --format {thyme-sft,thyme-rl,deepeyes,generic} --input PATH... --out DIR
    python -m pipelines generate --count N [--seed S] --out DIR
    python -m pipelines rewrite-paths --input thyme-{sft,rl}.parquet --images-root DIR --out OUT.parquet
    python -m pipelines prompt-sets
    python -m pipelines export --format {trl,swift,llamafactory,verl} --dataset DIR --out DIR

Ingest and generate write DIR/samples/*.parquet, DIR/quarantine/*.parquet, DIR/images/ and
DIR/report.json, and print the report; a file or row group that could not be read is quarantined
whole, listed under `unreadable` and named in a warning on stderr. rewrite-paths decodes the
released rows' images into DIR once (content-addressed), rewrites the paths in questions and code,
validates, writes OUT and OUT's .report.json, and prints the report. export reads a published
dataset directory (or built splits, with --images) and writes the framework's files, a README on
how to train them, and quarantine.jsonl for rows it could not write; it prints the report
(docs/exports.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.core.atomic import WriteFailed
from pipelines.core.images import ImageLimits
from pipelines.pool.ingest import IngestConfig, ingest
from pipelines.pool.readers import FORMATS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard-size", type=int, default=5000, help="rows per shard")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    p.add_argument("--max-pixels", type=int, default=ImageLimits.max_pixels)
    p.add_argument("--min-side", type=int, default=ImageLimits.min_side)
    p.add_argument("--max-aspect-ratio", type=float, default=ImageLimits.max_aspect_ratio)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", help="ingest parquet/JSONL/saved-dataset sources")
    ing.add_argument("--format", required=True, choices=FORMATS)
    ing.add_argument("--input", required=True, nargs="+", help="files or directories")
    ing.add_argument("--image-root", default=None, help="generic: root of relative image paths")
    ing.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                     help="generic: column for question/image/answer/task (repeatable)")
    _common(ing)
    gen = sub.add_parser("generate", help="generate the default pool (with ground truth)")
    gen.add_argument("--count", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    _common(gen)
    rw = sub.add_parser("rewrite-paths", help="released Thyme-SFT/RL parquet: decode images, rewrite paths")
    rw.add_argument("--input", required=True, help="a Thyme-SFT or Thyme-RL parquet file")
    rw.add_argument("--images-root", required=True, help="where the images are decoded to")
    rw.add_argument("--out", required=True, help="the rewritten parquet (paths relative to its folder)")
    rw.add_argument("--keep-invalid", action="store_true", help="keep rows that fail validation")
    rw.add_argument("--max-pixels", type=int, default=None, help="validation's pixel budget per image")
    sub.add_parser("prompt-sets", help="list the shipped prompt sets (system + user templates)")
    ex = sub.add_parser("export", help="a Thyme dataset in TRL/ms-swift/LLaMA-Factory/verl format")
    ex.add_argument("--format", required=True, choices=("trl", "swift", "llamafactory", "verl"))
    ex.add_argument("--dataset", required=True,
                    help="a published dataset directory (data/<encoding>/*.parquet) or built splits")
    ex.add_argument("--out", required=True, help="the export directory (written as a whole)")
    ex.add_argument("--images", default=None, help="built splits: the image store's root")
    ex.add_argument("--splits", nargs="+", default=(), help="only these splits (default: all)")
    ex.add_argument("--last-round-only", action="store_true",
                    help="SFT: no loss before the last round of multi-round rows (stage-1 recipe)")
    ex.add_argument("--no-system-prompt", action="store_true",
                    help="SFT: no system message (the model's template default applies)")
    ex.add_argument("--prompt-set", default=None,
                    help="SFT: the system prompt's set (thyme, thyme-release, a YAML path, from:<dataset>)")
    args = parser.parse_args(argv)

    if args.command == "export":
        from pipelines.core.prompts import load_prompt_set
        from pipelines.datasets.exports import ExportConfig, export
        cfg = ExportConfig(format=args.format, splits=tuple(args.splits),
                           train_last_round_only=args.last_round_only,
                           system_prompt=None if args.no_system_prompt
                           else load_prompt_set(args.prompt_set).system)
        print(json.dumps(export(args.dataset, args.out, cfg, store_root=args.images), indent=2))
        return 0

    if args.command == "prompt-sets":
        from pipelines.core.prompts import available_prompt_sets, load_prompt_set
        for name in available_prompt_sets():
            print(f"{name}: {load_prompt_set(name).description}")
        return 0
    if args.command == "rewrite-paths":
        from pipelines.datasets.released import RewriteConfig, rewrite_released
        report = rewrite_released(RewriteConfig(input=args.input, images_root=args.images_root,
                                                out=args.out, keep_invalid=args.keep_invalid,
                                                max_pixels=args.max_pixels))
        print(json.dumps({k: v for k, v in report.items() if k != "rejected"}, indent=2))
        return 0

    limits = dict(max_pixels=args.max_pixels, min_side=args.min_side,
                  max_aspect_ratio=args.max_aspect_ratio)
    if args.command == "ingest":
        mapping = dict(item.split("=", 1) for item in args.map)
        cfg = IngestConfig(format=args.format, out=args.out, inputs=args.input,
                           shard_size=args.shard_size, workers=args.workers,
                           image_root=args.image_root, mapping=mapping, **limits)
    else:
        cfg = IngestConfig(format="generated", out=args.out, count=args.count, seed=args.seed,
                           shard_size=args.shard_size, workers=args.workers, **limits)
    try:
        report = ingest(cfg, progress=not args.quiet)
    except WriteFailed as exc:  # finished shards stay; a re-run resumes after space is freed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    for unit in report["unreadable"]:  # the run went on without them: say so where it shows
        where = "" if unit["row_group"] is None else f" row group {unit['row_group']}"
        rows = "unknown" if unit["rows"] is None else unit["rows"]
        print(f"warning: {unit['file']}{where} quarantined whole ({unit['reason']}; rows: {rows}): "
              f"{unit['detail']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
