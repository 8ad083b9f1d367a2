"""Command line for the data pipeline.

    python -m pipelines ingest --format {thyme-sft,thyme-rl,deepeyes,generic} --input PATH... --out DIR
    python -m pipelines generate --count N [--seed S] --out DIR
    python -m pipelines samples --data ROOT [--shards KEY...] [--teacher template|openai|vllm ...]
    python -m pipelines cluster --ray-address ADDR [--stop-teachers]
    python -m pipelines rewrite-paths --input thyme-{sft,rl}.parquet --images-root DIR --out OUT.parquet
    python -m pipelines prompt-sets
    python -m pipelines export --format {trl,swift,llamafactory,verl} --dataset DIR --out DIR
    python -m pipelines vstar-rows --bench DIR --out FILE.jsonl
    python -m pipelines augment --pool DIR --out DIR [--rotate-share S] [--contrast-share S]
    python -m pipelines review-export --audited DIR --samples DIR... --images DIR --out DIR
    python -m pipelines review-import --review DIR --verdicts FILE.csv... [--rule any]
    python -m pipelines funnel --data DIR [--markdown]

Ingest and generate write DIR/samples/*.parquet, DIR/quarantine/*.parquet, DIR/images/ and
DIR/report.json, and print the report; a file or row group that could not be read is quarantined
whole, listed under `unreadable` and named in a warning on stderr. rewrite-paths decodes the
released rows' images into DIR once (content-addressed), rewrites the paths in questions and code,
validates, writes OUT and OUT's .report.json, and prints the report. export reads a published
dataset directory (or built splits, with --images) and writes the framework's files, a README on
how to train them, and quarantine.jsonl for rows it could not write; it prints the report
(docs/exports.md). `--map` also names ground-truth columns and settings (box=COL, angle=COL,
category=COL, box_format=xywh, set_task=auto, preset=vstar|hr-rl: pipelines/pool/truth.py).
vstar-rows turns a V*-Bench folder into JSONL rows for `ingest --format generic --map
preset=vstar`; augment adds rotated / low-contrast copies of a pool's images (one output shard
per pool shard, in the pool's image store); review-export and review-import hand a stratified
sample of audited trajectories to reviewers and bring their verdicts back; funnel reports what
each stage of a data root kept and dropped, and why (docs/recipes.md).

samples runs teacher -> sandbox -> audit over the pool at ROOT/pool (what `ingest --out ROOT/pool`
wrote) into ROOT/code_samples, ROOT/executions and ROOT/audited, the layout the Dagster assets
use, and prints per-stage seconds and totals. ingest, generate and samples take `--ray-address ADDR`
to run their shards on a Ray cluster (every path on a filesystem all nodes share, at the same
path; README "Running on a cluster"); the files are the same as a local run's. cluster lists the cluster's
nodes, or stops the teacher engines kept alive (`--keep-teachers`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from pipelines.core.atomic import WriteFailed
from pipelines.core.images import ImageLimits
from pipelines.pool.ingest import IngestConfig, ingest
from pipelines.pool.readers import FORMATS
from pipelines.samples.stages import TEACHER_KINDS, VLLM_DEVICES
from pipelines.scale import ENGINES, open_engine
from pipelines.scale.funnel import STAGES


def _json_object(text: str) -> dict:
    """A JSON object given on the command line (argparse names the option on error)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard-size", type=int, default=5000, help="rows per shard")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    p.add_argument("--max-pixels", type=int, default=ImageLimits.max_pixels)
    p.add_argument("--min-side", type=int, default=ImageLimits.min_side)
    p.add_argument("--max-aspect-ratio", type=float, default=ImageLimits.max_aspect_ratio)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _engine(p)


def _engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="where shards run: this machine (the default), or a Ray cluster (the "
                        "default when --ray-address is given)")
    p.add_argument("--ray-address", default="",
                   help="the Ray cluster: head:6379 or ray://head:10001 (with --engine ray and "
                        "no address: $RAY_ADDRESS, else a one-node cluster here)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", help="ingest parquet/JSONL/saved-dataset sources")
    ing.add_argument("--format", required=True, choices=FORMATS)
    ing.add_argument("--input", required=True, nargs="+", help="files or directories")
    ing.add_argument("--image-root", default=None, help="generic: root of relative image paths")
    ing.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                     help="generic: column for question/image/answer/task; any format: ground "
                          "truth (box, angle, category, difficulty, target, options, answer) and "
                          "its settings (box_format, box_units, angle_sense, set_task, preset); "
                          "repeatable")
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
    fun = sub.add_parser("samples", help="teacher -> sandbox -> audit over the pool's shards")
    fun.add_argument("--data", required=True, help="data root: ROOT/pool holds the ingested pool")
    fun.add_argument("--shards", nargs="+", default=None, help="shard keys (default: all)")
    fun.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    fun.add_argument("--teacher", default="template", choices=TEACHER_KINDS)
    fun.add_argument("--teacher-model", default="", help="openai: served name; vllm: model dir")
    fun.add_argument("--teacher-url", default="http://127.0.0.1:8000/v1", help="openai: API root")
    fun.add_argument("--teacher-concurrency", type=int, default=8,
                     help="openai: requests in flight (on a cluster: in all)")
    fun.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per engine")
    fun.add_argument("--teacher-device", default="gpu", choices=VLLM_DEVICES,
                     help="vllm: cpu for vLLM's CPU build (Ray engine actors reserve CPUs)")
    fun.add_argument("--teacher-engine-kwargs", type=_json_object, default={},
                     help='vllm: other vllm.LLM arguments as JSON, e.g. \'{"max_model_len": 16384}\'')
    fun.add_argument("--loop", default="off", choices=("off", "prefill", "turns"),
                     help="model teachers: the sandbox in the loop")
    fun.add_argument("--keep-teachers", action="store_true",
                     help="ray + vllm: keep the engines alive for later runs")
    fun.add_argument("--seed", type=int, default=0, help="teacher seed")
    fun.add_argument("--sandbox-workers", type=int, default=None,
                     help="per machine, and per teacher engine actor in the loop on Ray "
                          "(default: one per core; an actor: its share of its node's cores)")
    fun.add_argument("--timeout", type=float, default=10.0, help="seconds per code block")
    fun.add_argument("--sandbox-url", default=None,
                     help="a sandbox service (python -m sandbox serve) instead of local workers")
    fun.add_argument("--sandbox-token-file", default=None,
                     help="the service's token file (default: $THYME_SANDBOX_TOKEN)")
    fun.add_argument("--audit-workers", type=int, default=None, help="local audit threads")
    fun.add_argument("--quiet", action="store_true", help="no per-shard lines on stderr")
    _engine(fun)
    clu = sub.add_parser("cluster", help="a Ray cluster's nodes; stop kept-alive teachers")
    clu.add_argument("--ray-address", default="", help="head:6379 (default: $RAY_ADDRESS)")
    clu.add_argument("--stop-teachers", action="store_true",
                     help="kill the teacher engine actors kept alive across runs")
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
                    help="SFT: the system prompt's set (thyme, thyme-release, a YAML path, "
                         "from:<dataset>); default: the set the dataset records, else thyme")
    _recipe_commands(sub)
    args = parser.parse_args(argv)
    if args.command in RECIPES:
        return RECIPES[args.command](args)
    if hasattr(args, "engine") and args.engine is None:
        args.engine = "ray" if args.ray_address else "local"

    if args.command == "export":
        from pipelines.core.prompts import load_prompt_set, recorded_spec
        from pipelines.datasets.exports import ExportConfig, export
        prompt_set = args.prompt_set or recorded_spec([args.dataset])   # the dataset's own set
        cfg = ExportConfig(format=args.format, splits=tuple(args.splits),
                           train_last_round_only=args.last_round_only,
                           system_prompt=None if args.no_system_prompt
                           else load_prompt_set(prompt_set).system)
        print(json.dumps(export(args.dataset, args.out, cfg, store_root=args.images), indent=2))
        return 0

    if args.command == "samples":
        return _samples(args)
    if args.command == "cluster":
        return _cluster(args)
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
        if args.engine == "local":
            report = ingest(cfg, progress=not args.quiet)
        else:
            cfg = replace(cfg, out=os.path.abspath(cfg.out),
                          inputs=[os.path.abspath(p) for p in cfg.inputs])
            with open_engine(args.engine, cfg.out, args.ray_address) as engine:
                report = ingest(cfg, progress=not args.quiet, engine=engine)
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


def _samples(args) -> int:
    from pipelines.samples.audit import AuditConfig
    from pipelines.samples.stages import SandboxSpec, TeacherSpec
    from pipelines.scale.funnel import layout_for, pool_keys, run_funnel

    layout = layout_for(args.data)
    keys = args.shards or pool_keys(layout)
    if not keys:
        print(f"error: no pool shards under {layout.pool / 'samples'}", file=sys.stderr)
        return 1
    teacher = TeacherSpec(kind=args.teacher, model=args.teacher_model, base_url=args.teacher_url,
                          max_concurrency=args.teacher_concurrency, seed=args.seed,
                          tensor_parallel_size=args.tensor_parallel_size,
                          device=args.teacher_device, engine_kwargs=args.teacher_engine_kwargs,
                          loop=args.loop)
    teacher.check()
    sandbox = SandboxSpec(workers=args.sandbox_workers, timeout=args.timeout,
                          url=args.sandbox_url, token_file=args.sandbox_token_file)
    options = {"keep_teachers": args.keep_teachers} if args.engine == "ray" else {}
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    with open_engine(args.engine, layout.root, args.ray_address, **options) as engine:
        report = run_funnel(engine, layout, keys, teacher, sandbox,
                            AuditConfig(workers=args.audit_workers), stages=tuple(args.stages),
                            log=log)
    report.pop("per_shard")
    print(json.dumps(report, indent=2))
    return 0


def _cluster(args) -> int:
    from pipelines.scale.ray_engine import import_ray, stop_teachers

    if args.stop_teachers:
        print(json.dumps({"stopped": stop_teachers(args.ray_address)}, indent=2))
        return 0
    ray = import_ray()
    ray.init(address=args.ray_address or "auto", log_to_driver=False)
    nodes = [{"node": n["NodeID"][:12], "address": n["NodeManagerAddress"], "alive": n["Alive"],
              "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0)}
             for n in ray.nodes()]
    print(json.dumps(nodes, indent=2))
    return 0


def _recipe_commands(sub) -> None:
    vs = sub.add_parser("vstar-rows", help="a V*-Bench folder as JSONL rows (boxes included)")
    vs.add_argument("--bench", required=True, help="the folder of <category>/<name>.jpg + .json")
    vs.add_argument("--out", required=True, help="the JSONL file to write")
    vs.add_argument("--seed", type=int, default=0, help="shuffles the options")
    au = sub.add_parser("augment", help="rotated / low-contrast copies of a pool's real images")
    au.add_argument("--pool", required=True, help="a pool directory (samples/, images/)")
    au.add_argument("--out", required=True, help="the augmented pool: samples/, quarantine/, "
                                                  "report.json (images go to POOL/images)")
    au.add_argument("--rotate-share", type=float, default=0.0)
    au.add_argument("--contrast-share", type=float, default=0.0)
    au.add_argument("--angle-min", type=int, default=30)
    au.add_argument("--angle-max", type=int, default=335)
    au.add_argument("--min-side", type=int, default=224)
    au.add_argument("--tasks", nargs="*", default=(), help="source tasks eligible (default: all)")
    au.add_argument("--sources", nargs="*", default=(), help="source names eligible (default: all)")
    au.add_argument("--seed", type=int, default=0)
    re_ = sub.add_parser("review-export", help="audited trajectories as a page + form for reviewers")
    re_.add_argument("--audited", required=True, nargs="+", help="audited shard files or folders")
    re_.add_argument("--samples", required=True, nargs="+",
                     help="pool sample shard files or folders (augmented copies' too)")
    re_.add_argument("--images", required=True, help="the image store the samples refer to")
    re_.add_argument("--out", required=True, help="the review folder (written whole)")
    re_.add_argument("--per-stratum", type=int, default=20, help="items per task x audit verdict")
    re_.add_argument("--seed", type=int, default=0)
    re_.add_argument("--overwrite", action="store_true", help="replace a different earlier export")
    ri = sub.add_parser("review-import", help="reviewers' verdicts: validation and agreement")
    ri.add_argument("--review", required=True, help="the review folder")
    ri.add_argument("--verdicts", required=True, nargs="+", help="filled CSV files")
    ri.add_argument("--rule", default="any", choices=("any", "majority", "all"),
                    help="how reviewers' verdicts combine (any: one reject rejects)")
    ri.add_argument("--reviewer", default=None, help="the reviewer of lines that name none")
    fu = sub.add_parser("funnel", help="what each stage of a data root kept and dropped")
    fu.add_argument("--data", required=True, help="the data root (Dagster storage layout)")
    fu.add_argument("--markdown", action="store_true", help="tables instead of JSON")
    ri.add_argument("--out", default=None, help="where verdicts/rejected/report go (default: "
                                                "the review folder)")


def _vstar_rows(args) -> int:
    from pipelines.pool.vstar import vstar_rows
    print(json.dumps(vstar_rows(args.bench, args.out, args.seed), indent=2))
    return 0


def _augment(args) -> int:
    from pathlib import Path

    from pipelines.core.atomic import write_json
    from pipelines.core.images import ImageStore
    from pipelines.pool.augment import AugmentConfig, augment_shard, summarise
    cfg = AugmentConfig(rotate_share=args.rotate_share, contrast_share=args.contrast_share,
                        angle_min=args.angle_min, angle_max=args.angle_max, min_side=args.min_side,
                        tasks=tuple(args.tasks), sources=tuple(args.sources), seed=args.seed)
    pool = Path(args.pool)
    out = Path(args.out)
    store = ImageStore(pool / "images")
    reports = [augment_shard(f, out, store, cfg) for f in sorted((pool / "samples").glob("shard-*.parquet"))]
    total = summarise(reports)
    write_json(out / "report.json", {**total, "shards_report": reports})
    print(json.dumps(total, indent=2))
    return 0


def _shards(paths: list[str]) -> list[str]:
    from pathlib import Path
    return sorted(str(f) for p in map(Path, paths)
                  for f in (sorted(p.glob("shard-*.parquet")) if p.is_dir() else [p]))


def _review_export(args) -> int:
    from pipelines.samples.review import ReviewConfig, export_review
    manifest = export_review(_shards(args.audited), _shards(args.samples), args.images, args.out,
                             ReviewConfig(per_stratum=args.per_stratum, seed=args.seed,
                                          overwrite=args.overwrite))
    print(json.dumps({k: manifest[k] for k in ("export_id", "strata", "missing_samples")}, indent=2))
    return 0


def _review_import(args) -> int:
    from pipelines.samples.review import import_verdicts
    report = import_verdicts(args.review, args.verdicts, args.rule, args.reviewer, args.out)
    print(json.dumps(report, indent=2))
    for p in report["problems"]:
        print(f"warning: {p['file']} line {p['line']}: {p['reason']} (left out)", file=sys.stderr)
    return 0


def _funnel(args) -> int:
    from pipelines.funnel import funnel_report, markdown
    report = funnel_report(args.data)
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))
    return 0


RECIPES = {"funnel": _funnel, "vstar-rows": _vstar_rows, "augment": _augment, "review-export": _review_export,
           "review-import": _review_import}


if __name__ == "__main__":
    sys.exit(main())
