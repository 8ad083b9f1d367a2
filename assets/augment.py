"""Augmentations as a stage: rotated and low-contrast copies of each pool shard's real images
(`pipelines.pool.augment`), one output shard per pool shard, images in the pool's store. The
copies are samples like any other: the teacher, the sandbox and the audit read them with the
shard's pool samples (`shard_samples`). Off by default (the generated pool has its own rotation
and contrast samples): set `rotate_share` / `contrast_share` to turn it on.

(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

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

from assets.partitions import shards
from assets.pool import source_pool
from assets.resources import ThymeStorage


class AugmentSettings(Config):
    rotate_share: float = Field(0.0, description="share of eligible samples given a rotated copy")
    angle_min: int = Field(30, description="rotation angle range, degrees counter-clockwise "
                                           "(the paper: 30-335)")
    angle_max: int = Field(335, description="see angle_min")
    contrast_share: float = Field(0.0, description="share of eligible samples given a "
                                                   "low-contrast copy")
    contrast_factor_min: float = Field(0.15, description="tone range kept by a faint copy, low end")
    contrast_factor_max: float = Field(0.35, description="tone range kept by a faint copy, high end")
    min_contrast: float = Field(0.08, description="target RMS contrast a source needs for a faint copy")
    min_side: int = Field(224, description="short side a source image needs, px")
    tasks: list[str] = Field(default_factory=list, description="source tasks eligible (empty: any)")
    sources: list[str] = Field(default_factory=list, description="source names eligible (empty: any)")
    seed: int = Field(0, description="the draw of who gets a copy, the angle, the factor")


def augment_config(settings: AugmentSettings):
    from pipelines.pool.augment import AugmentConfig
    return AugmentConfig(
        rotate_share=settings.rotate_share, angle_min=settings.angle_min,
        angle_max=settings.angle_max, contrast_share=settings.contrast_share,
        contrast_factor=(settings.contrast_factor_min, settings.contrast_factor_max),
        min_contrast=settings.min_contrast, min_side=settings.min_side,
        tasks=tuple(settings.tasks), sources=tuple(settings.sources), seed=settings.seed)


@asset(key_prefix="pool", group_name="pool", kinds={"python", "parquet"}, partitions_def=shards,
       deps=[source_pool], backfill_policy=BackfillPolicy.single_run(),
       automation_condition=AutomationCondition.eager())
def augmented(context: AssetExecutionContext, config: AugmentSettings,
              storage: ThymeStorage) -> MaterializeResult:
    """Rotated copies (the angle recorded) and low-contrast copies (the transform recorded) of
    the shard's real images, each a new sample with lineage to its source; per transform, how
    many samples got a copy and why the others did not."""
    from pipelines.core.images import ImageStore
    from pipelines.pool.augment import augment_shard

    cfg = augment_config(config)
    store = ImageStore(storage.path("pool", "images"))
    copies = 0
    for key in context.partition_keys:
        report = augment_shard(storage.path("pool", "samples", f"{key}.parquet"),
                               storage.path("augmented"), store, cfg)
        copies += report["copies"]
        context.add_asset_metadata({
            "dagster/row_count": report["copies"], "samples_in": report["samples_in"],
            "by_transform": MetadataValue.json(report["by_transform"]),
            "quarantined": report["quarantined"],
            "quarantined_by_reason": MetadataValue.json(report["quarantined_by_reason"]),
            "skipped": report["skipped"],
        }, partition_key=key)
    return MaterializeResult(metadata={"enabled": cfg.enabled, "copies_in_run": copies})


def shard_samples(storage: ThymeStorage, key: str) -> dict:
    """Sample id -> Sample of a shard: the pool's samples and their augmented copies."""
    from pipelines.samples.stages import Layout
    return Layout(storage.base).shard_samples(key)
