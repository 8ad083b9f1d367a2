"""Checks and previews over pool shards (no Dagster here; the assets report them)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipelines.core.previews import cell, markdown_table, thumbnails
from pipelines.core.schema import SAMPLE_SCHEMA, ImageRef


def check_schema(files: list[Path]) -> tuple[bool, str]:
    for f in files:
        schema = pq.read_schema(f).remove_metadata()
        if not schema.equals(SAMPLE_SCHEMA):
            return False, f"{f.name}: {schema} != {SAMPLE_SCHEMA}"
    return True, f"{len(files)} shard files match"


def image_relpaths(files: list[Path]) -> list[str]:
    """Distinct store paths of every image the shards reference (lazy scan, no Python loop; the
    columnar form of `ImageRef.relpath`)."""
    if not files:
        return []
    refs = (pl.scan_parquet([str(f) for f in files]).select(pl.col("images").explode())
            .drop_nulls().unnest("images")
            .select(pl.format("{}/{}.{}", pl.col("hash").str.slice(0, 2), pl.col("hash"), pl.col("ext")))
            .unique().collect())
    return refs.to_series().to_list()


def check_images_exist(files: list[Path], images_root: Path) -> list[str]:
    """Referenced images missing from the store (empty when all are there)."""
    return [p for p in image_relpaths(files) if not (images_root / p).is_file()]


def preview_markdown(files: list[Path], out: Path, rows: int = 8) -> str:
    """A markdown table of the first rows, every image as a thumbnail, for the Dagster UI."""
    if not files:
        return "(no shards)"
    table = pl.scan_parquet([str(f) for f in files]).head(rows).collect()
    lines = []
    for row in table.iter_rows(named=True):
        refs = [ImageRef(**im) for im in row["images"] or []]
        images = thumbnails([out / "images" / ref.relpath for ref in refs])
        sizes = ", ".join(f"{ref.width}x{ref.height}" for ref in refs) or "no image"
        meta = json.loads(row["meta"] or "{}")
        truth = {k: v for k, v in meta.items() if k in ("box", "angle", "options", "expression")}
        lines.append([images, cell(sizes), cell(row["task"]), cell(row["question"]),
                      cell(row["answer"], 40), cell(json.dumps(truth), 80)])
    return markdown_table(["images", "size", "task", "question", "answer", "ground truth"], lines)
