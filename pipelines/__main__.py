"""Command line for the data pipeline.

    python -m pipelines ingest --format {thyme-sft,thyme-rl,deepeyes,generic} --input PATH... --out DIR
    python -m pipelines generate --count N [--seed S] --out DIR
    python -m pipelines rewrite-paths --input thyme-{sft,rl}.parquet --images-root DIR --out OUT.parquet

Ingest and generate write DIR/samples/*.parquet, DIR/quarantine/*.parquet, DIR/images/ and
DIR/report.json, and print the report; a file or row group that could not be read is quarantined
whole, listed under `unreadable` and named in a warning on stderr. rewrite-paths decodes the
released rows' images into DIR once (content-addressed), rewrites the paths in questions and code,
validates, writes OUT and OUT's .report.json, and prints the report.
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
    args = parser.parse_args(argv)

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
