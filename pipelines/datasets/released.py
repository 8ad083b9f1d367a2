"""Released Thyme-SFT and Thyme-RL parquet made usable on this machine (issue 5): images decoded
to files once (content-addressed), the paths in questions and code rewritten (`pipelines.datasets.
paths`), every row validated (`pipelines.datasets.validate`).

    python -m pipelines rewrite-paths --input thyme-sft.parquet --images-root DIR --out OUT.parquet
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path, write_json
from pipelines.core.images import ImageRejected, ImageStore
from pipelines.core.prompts import parse_user
from pipelines.datasets.paths import Rewrites, rewrite_question, rewrite_text
from pipelines.datasets.validate import ValidationConfig, validate_rl_rows, validate_sft_rows


@dataclass
class RewriteConfig:
    """The `rewrite-paths` command: released Thyme-SFT or Thyme-RL parquet -> the same rows,
    images decoded to files once, paths rewritten."""

    input: str                  # Thyme-SFT (image, question, response) or Thyme-RL (messages, images, ...)
    images_root: str            # where the decoded images go (content-addressed, written once)
    out: str                    # the rewritten parquet; paths in it are relative to its folder
    keep_invalid: bool = False  # keep rows that fail validation (default: drop, list them in the report)
    max_pixels: int | None = None  # the validation's pixel budget (None: ValidationConfig's default)
    batch_rows: int = 64        # rows decoded at a time (rows carry base64 images)


def rewrite_thyme_row(row: dict, store: ImageStore, base: Path, rewrites: Rewrites) -> dict:
    """One released row: images decoded into the store, question and response rewritten.
    Adds `image_paths` (relative to `base`, the output's folder). Raises ImageRejected."""
    paths = []
    sizes = []
    for item in row.get("image") or []:
        ref, _ = store.put_base64(item)
        paths.append(Path(os.path.relpath(store.path(ref), base)).as_posix())
        sizes.append((ref.width, ref.height))
    question = row.get("question") or ""
    _, meta = parse_user(question)
    has_input = "original_path" in meta and bool(paths)
    input_path = paths[0] if has_input else None
    originals = [meta["original_path"]] if has_input else []
    if has_input:
        question = rewrite_question(question, input_path, sizes[0])
    response = rewrite_text(row.get("response") or "", input_path, originals, rewrites)
    return {**row, "question": question, "response": response, "image_paths": paths}


def rewrite_thyme_rl_row(row: dict, store: ImageStore, base: Path) -> dict:
    """One released Thyme-RL row: its images decoded into the store, the user message's User
    Image Path naming the decoded file (relative to `base`) and its size the real one. Adds
    `image_paths`. Raises ImageRejected."""
    paths, sizes = [], []
    for item in row.get("images") or []:
        ref, _ = store.put_base64(item)
        paths.append(Path(os.path.relpath(store.path(ref), base)).as_posix())
        sizes.append((ref.width, ref.height))
    messages = []
    for m in row.get("messages") or []:
        content = m["content"]
        if m["role"] == "user" and paths and "original_path" in parse_user(content)[1]:
            content = rewrite_question(content, paths[0], sizes[0])
        messages.append({**m, "content": content})
    return {**row, "messages": messages, "image_paths": paths}


def _validate_released(new: dict, number: int, base: Path, vcfg) -> list:
    if "messages" in new:           # RL: checked against its own system prompt (the release's)
        row = {"id": str(number), "messages": new["messages"], "images": new["image_paths"],
               "solution": str(new.get("solution") or ""), "has_image": bool(new["image_paths"])}
        system = next((m["content"] for m in new["messages"] if m["role"] == "system"), "")
        return validate_rl_rows([row], lambda p: base / p, replace(vcfg, system_prompt=system))
    row = {"id": str(number), "question": new["question"], "response": new["response"],
           "images": new["image_paths"],
           "has_image": bool(parse_user(new["question"])[1].get("original_path"))}
    return validate_sft_rows([row], lambda p: base / p, vcfg)


def rewrite_released(cfg: RewriteConfig) -> dict:
    """Stream a released Thyme-SFT or Thyme-RL parquet (told apart by its columns) through the
    rewrite and the row validations; write the output atomically. Returns a report (counts,
    failures by check with rows)."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = ImageStore(cfg.images_root)
    vcfg = ValidationConfig() if cfg.max_pixels is None else ValidationConfig(max_pixels=cfg.max_pixels)
    rewrites = Rewrites(Counter())
    rejected: list[dict] = []
    failures_by_check: Counter = Counter()
    written = rows_in = 0
    pf = pq.ParquetFile(cfg.input)
    rl = "messages" in pf.schema_arrow.names
    with atomic_path(out) as tmp:
        writer = None
        try:
            for batch in pf.iter_batches(batch_size=cfg.batch_rows):
                kept = []
                for row in batch.to_pylist():
                    number = rows_in
                    rows_in += 1
                    try:
                        new = (rewrite_thyme_rl_row(row, store, out.parent) if rl
                               else rewrite_thyme_row(row, store, out.parent, rewrites))
                    except ImageRejected as exc:
                        rejected.append({"row": number, "check": "image", "reason": str(exc)})
                        failures_by_check["image"] += 1
                        continue
                    failures = _validate_released(new, number, out.parent, vcfg)
                    for f in failures:
                        failures_by_check[f.check] += 1
                        rejected.append({"row": number, "check": f.check, "reason": f.reason})
                    if failures and not cfg.keep_invalid:
                        continue
                    kept.append(new)
                if not kept:
                    continue
                table = pa.Table.from_pylist(kept)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
                written += len(kept)
            if writer is None:  # nothing kept: still write a valid, empty file
                schema = pf.schema_arrow.append(pa.field("image_paths", pa.list_(pa.string())))
                writer = pq.ParquetWriter(tmp, schema)
            writer.close()
            writer = None
        finally:
            if writer is not None:
                writer.close()
    report = {"input": cfg.input, "out": str(out), "rows": rows_in, "written": written,
              "images_written": store.files_written, "rewrites": dict(rewrites.counts),
              "failures_by_check": dict(failures_by_check), "rejected": rejected[:1000]}
    write_json(out.with_name(out.stem + ".report.json"), report)
    return report
