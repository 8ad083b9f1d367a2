"""How the assets put `pipelines`' previews into the Dagster UI: tables as table metadata, charts
as inline images, and asset check results recorded on each partition a run covered.

The rendering itself (markdown, thumbnails, charts, table rows) is Dagster-free, in
`pipelines.core.previews` and the stages' report helpers; this module only adapts it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    MetadataValue,
    Output,
    TableColumn,
    TableMetadataValue,
    TableRecord,
    TableSchema,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from pipelines.core.previews import Table, image_markdown


def table(t: Table) -> TableMetadataValue:
    """A `pipelines.core.previews.Table` as Dagster table metadata (sortable in the UI)."""
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in t.columns])
    records = [TableRecord({name: row[name] for name, _ in t.columns}) for row in t.rows]
    return MetadataValue.table(records, schema)


def counts(mapping: Mapping[str, int], key: str) -> TableMetadataValue:
    """A {name: count} mapping as a two-column table, largest first."""
    return table(Table([(key, "string"), ("count", "int")],
                       [{key: k, "count": v} for k, v in sorted(mapping.items(),
                                                                  key=lambda kv: (-kv[1], kv[0]))]))


def placement(stats: Mapping) -> dict:
    """A shard's `node` metadata when a cluster ran it (the Ray node id; none when local)."""
    return {"node": stats["node"]} if stats.get("node") else {}


def chart(png: Path, alt: str) -> MetadataValue:
    return MetadataValue.md(image_markdown(png, alt))


def partitioned_check_spec(name: str, asset: list[str], partitions_def, description: str,
                           blocking: bool = False) -> AssetCheckSpec:
    """A check evaluated per partition, so each shard's page shows its own result."""
    with warnings.catch_warnings():   # partitioned checks are a preview feature of Dagster 1.13
        warnings.simplefilter("ignore")
        return AssetCheckSpec(name, asset=asset, blocking=blocking, description=description,
                              partitions_def=partitions_def)


def partition_check_results(context: AssetExecutionContext,
                            results: Mapping[str, Mapping[str, tuple[bool, dict]]],
                            severity: AssetCheckSeverity = AssetCheckSeverity.ERROR) -> Iterator:
    """Yield, after the materialization, one check evaluation per (check, partition) from
    `results` ({check name: {partition key: (passed, metadata)}}), each tied to that partition's
    materialization, then the check's output. A failed blocking check still fails the step once
    every result is recorded, so downstream steps of the run do not start."""
    asset_key: AssetKey = context.asset_key
    specs = {s.name: s for s in context.assets_def.check_specs}
    for name, by_partition in results.items():
        spec = specs[name]
        for partition, (passed, metadata) in by_partition.items():
            yield AssetCheckEvaluation(
                asset_key=asset_key, check_name=name, passed=passed, metadata=metadata,
                severity=severity, blocking=spec.blocking, partition=partition,
                description=spec.description,
                target_materialization_data=_latest(context, asset_key, partition))
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(
            AssetCheckKey(asset_key, name)))


def _latest(context, asset_key: AssetKey, partition: str):
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp)
