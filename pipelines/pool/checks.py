"""Checks and previews over pool shards (no Dagster here; the assets report them)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipelines.core.images import thumbnail_data_url
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
    """A markdown table of the first rows, with thumbnails, for the Dagster UI."""
    if not files:
        return "(no shards)"
    table = pl.scan_parquet([str(f) for f in files]).head(rows).collect()
    lines = ["| image | task | question | answer | ground truth |", "|---|---|---|---|---|"]
    for row in table.iter_rows(named=True):
        image = ""
        if row["images"]:
            ref = ImageRef(**row["images"][0])
            path = out / "images" / ref.relpath
            image = f"![]({thumbnail_data_url(path)}) {ref.width}x{ref.height}"
        meta = json.loads(row["meta"] or "{}")
        truth = {k: v for k, v in meta.items() if k in ("box", "angle", "options", "expression")}
        cells = [image, row["task"], row["question"][:80], row["answer"][:40], json.dumps(truth)[:80]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)
