"""The source pool: plan the shards, then ingest (or generate) each shard.

(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""


import json

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets import ui
from assets.partitions import shards
from assets.resources import ClusterResource, ThymeStorage

PLAN_FILE = "plan.json"
POOL = ["pool", "source_pool"]


class SourcePoolConfig(Config):
    """What the pool is made of. The default is the generated pool with ground truth."""

    format: str = Field("generated", description="generated | thyme-sft | thyme-rl | deepeyes | generic")
    inputs: list[str] = Field(default_factory=list, description="files or directories (not for generated)")
    count: int = Field(400, description="generated: number of samples")
    seed: int = Field(0, description="generated: seed (same seed, same pool)")
    shard_size: int = Field(200, description="rows per shard; thousands for real pools")
    image_root: str | None = Field(None, description="generic: root of relative image paths")
    mapping: dict[str, str] = Field(default_factory=dict, description="field -> column: the generic "
                                    "reader's columns and, any format, ground truth (box, angle, "
                                    "category, ...; box_format, set_task, preset: pipelines/pool/truth.py)")
    max_pixels: int = Field(100_000_000, description="decompression-bomb guard")
    min_side: int = Field(28, description="smallest allowed image side, px")
    max_aspect_ratio: float = Field(200.0, description="largest allowed aspect ratio")
    workers: int | None = Field(None, description="decoding processes; default one per core")


class SourcePoolChecks(Config):
    max_quarantine_rate: float = Field(0.05, description="blocking check: quarantined / rows read")


def _ingest_config(config: SourcePoolConfig, out: str):
    from pipelines.pool.ingest import IngestConfig
    return IngestConfig(format=config.format, out=out, inputs=list(config.inputs),
                        shard_size=config.shard_size, workers=config.workers,
                        image_root=config.image_root, mapping=dict(config.mapping),
                        max_pixels=config.max_pixels, min_side=config.min_side,
                        max_aspect_ratio=config.max_aspect_ratio, count=config.count, seed=config.seed)


@asset(key_prefix="pool", group_name="pool", kinds={"python", "json"})
def source_manifest(context: AssetExecutionContext, config: SourcePoolConfig,
                    storage: ThymeStorage) -> MaterializeResult:
    """The shard plan of the source pool: which rows of which inputs form each shard. Registers
    one `shards` partition per shard (and removes partitions of an earlier, larger plan)."""
    from pipelines.core.atomic import write_json
    from pipelines.pool.ingest import plan_shards

    out = storage.path("pool")
    cfg = _ingest_config(config, str(out))
    plan = plan_shards(cfg)
    keys = [s.key for s in plan]
    write_json(out / PLAN_FILE, {"config": config.model_dump(), "shards": keys})
    existing = set(context.instance.get_dynamic_partitions(shards.name))
    context.instance.add_dynamic_partitions(shards.name, [k for k in keys if k not in existing])
    for stale in existing - set(keys):
        context.instance.delete_dynamic_partition(shards.name, stale)
    return MaterializeResult(metadata={
        "shards": len(keys), "rows": sum(s.rows for s in plan), "format": config.format,
        "inputs": MetadataValue.json(list(config.inputs)),
        "plan": MetadataValue.path(storage.relative(out / PLAN_FILE)),
    })


@asset(
    key_prefix="pool", group_name="pool", kinds={"python", "parquet"},
    partitions_def=shards, deps=[source_manifest], backfill_policy=BackfillPolicy.single_run(),
    automation_condition=AutomationCondition.on_missing(),
    check_specs=[
        ui.partitioned_check_spec("schema", POOL, shards, "the shard's samples match SAMPLE_SCHEMA"),
        ui.partitioned_check_spec("images_exist", POOL, shards,
                                  "every image the shard references is in the store"),
        ui.partitioned_check_spec("quarantine_rate", POOL, shards,
                                  "the shard's quarantined / rows read stays below the threshold",
                                  blocking=True),
    ],
)
def source_pool(context: AssetExecutionContext, config: SourcePoolChecks, storage: ThymeStorage,
                cluster: ClusterResource):
    """Clean, deduplicated `Sample` rows with images in the content-addressed store; bad rows in
    quarantine with their origin and a reason. One shard per partition; a range of partitions
    runs in one process pool (or, on a Ray cluster, a task per shard). Finished shards with
    unchanged inputs are skipped. A shard that a new plan adds is ingested by itself
    (on_missing)."""
    from tqdm import tqdm

    from pipelines.pool.checks import check_images_exist, check_schema, preview_markdown
    from pipelines.pool.ingest import plan_shards, summarise

    out = storage.path("pool")
    plan = json.loads((out / PLAN_FILE).read_text())
    cfg = _ingest_config(SourcePoolConfig(**plan["config"]), str(out))
    wanted = set(context.partition_keys)
    todo = [s for s in plan_shards(cfg) if s.key in wanted]
    missing = wanted - {s.key for s in todo}
    if missing:
        raise ValueError(f"partitions {sorted(missing)} are not in the current plan; "
                         "re-materialize pool/source_manifest")
    reports, checks = [], {"schema": {}, "images_exist": {}, "quarantine_rate": {}}
    with cluster.open(storage.base) as engine, tqdm(total=sum(s.rows for s in todo), unit="row",
                                                    desc="source_pool") as bar:
        for report in engine.ingest(cfg, todo, bar):
            key = report["shard"]
            reports.append(report)
            file = out / "samples" / f"{key}.parquet"
            context.log.info(f"{key}: {report}")
            context.add_asset_metadata({
                "dagster/row_count": report["kept"],
                "rows_in": report["rows_read"], "rows_out": report["kept"],
                "deduplicated": report["deduplicated"], "quarantined": report["quarantined"],
                "quarantined_by_reason": ui.counts(report["quarantined_by_reason"], "reason"),
                "unreadable": MetadataValue.json(report.get("unreadable", [])),  # whole files, row groups
                "images_written": report["images_written"], "image_bytes": report["image_bytes"],
                "images_per_s": round(report["images_written"] / report["seconds"], 1)
                if report["seconds"] else 0.0,
                "skipped": report.get("skipped", False),
                "preview": MetadataValue.md(preview_markdown([file], out)),
            }, partition_key=key)
            schema_ok, schema_detail = check_schema([file])
            missing_images = check_images_exist([file], out / "images")
            rate = report["quarantined"] / max(report["rows_read"], 1)
            checks["schema"][key] = (schema_ok, {"detail": schema_detail})
            checks["images_exist"][key] = (not missing_images, {
                "missing": len(missing_images), "examples": MetadataValue.json(missing_images[:10])})
            checks["quarantine_rate"][key] = (rate <= config.max_quarantine_rate, {
                "rate": round(rate, 4), "threshold": config.max_quarantine_rate,
                "quarantined": report["quarantined"], "rows_in": report["rows_read"]})
    total = summarise(reports)
    yield MaterializeResult(metadata={"shards_in_run": len(todo),
                                      "skipped_shards": total["skipped_shards"],
                                      "engine": cluster.engine})
    yield from ui.partition_check_results(context, checks)
