"""Exports: a Thyme dataset in other frameworks' formats, labelled so that each framework's own
loader and collator train the model's own writing only.

    export(source_dir, out_dir, ExportConfig(format="trl" | "swift" | "llamafactory" | "verl"),
           store_root=None) -> report
    python -m pipelines export --format F --dataset DIR --out DIR

`source_dir` is a published dataset directory (`pipelines.datasets.publish`, what a user
downloads) or a built-splits directory (then `store_root` is the image store). Each split becomes
one file named after it (`<split>.parquet` / `.jsonl`; built splits `<split>-<part>`).

How each framework is kept off the sandbox outputs (docs/exports.md has the measurements):
- `trl` (`exports.trl`): conversational vision parquet + `chat_template.jinja`, a Qwen2.5-VL
  template whose `{% generation %}` markers cover the model's writing only, for
  `SFTConfig(assistant_only_loss=True, chat_template_path=...)`.
- `swift` (`exports.swift`): messages JSONL, the assistant turn cut at its sandbox outputs, each
  piece with ms-swift's per-message `loss` flag; ms-swift joins the pieces into one turn.
- `llamafactory` (`exports.llamafactory`): ShareGPT with sandbox outputs as `observation` turns +
  `dataset_info.json` + `thyme_llamafactory.py`, whose `thyme_qwen2_vl` template renders them
  inline in one assistant turn.
- `verl` (`exports.verl`): RL parquet in verl's schema (prompts only: nothing to mask).
Every export writes a README.md saying how to train it. Rows that cannot be written (unbalanced
sandbox tags, undecodable or missing images, an `<image>` count that differs from the images)
go to `quarantine.jsonl` with their origin and reason; so do responses with an `<image>` outside
a sandbox output (it would be labelled); the rest of the split goes on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT
from pipelines.datasets.exports import llamafactory, swift, trl, verl
from pipelines.datasets.exports.readme import export_readme
from pipelines.datasets.exports.segments import BadRow, response_segments
from pipelines.datasets.exports.source import SourceSplit, load_images, open_source
from pipelines.datasets.exports.trl import content_parts  # noqa: F401  (re-exported)
from sandbox.protocol import IMAGE_TOKEN

FORMATS = ("trl", "swift", "llamafactory", "verl")


@dataclass
class ExportConfig:
    """One export."""

    format: str = "trl"                                # one of FORMATS
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # SFT formats: the system message (None: the template's)
    train_last_round_only: bool = False                # SFT: no loss before the last round (stage-1 recipe)
    splits: tuple[str, ...] = ()                       # which splits (default: all of the format's kind)
    batch_rows: int = 64                               # rows per batch / parquet row group (rows carry images)
    ability: str = "visual_reasoning"                  # verl's `ability` column

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS} (got {self.format!r})")

    @property
    def kind(self) -> str:
        return "rl" if self.format == "verl" else "sft"


def _check_row(row: dict) -> None:
    """Raise BadRow for what no framework can train correctly."""
    if "response" in row:
        if any(IMAGE_TOKEN in s.text for s in response_segments(row["response"]) if not s.sandbox):
            # every image of a response is a sandbox result; one in the model's text would be trained
            raise BadRow("image_outside_output", "an <image> of the response is not inside a sandbox output")
        found = (row["question"] + row["response"]).count(IMAGE_TOKEN)
    else:
        found = sum(m["content"].count(IMAGE_TOKEN) for m in row["messages"])
    if found != len(row["images"]):
        raise BadRow("image_count", f"{found} <image> placeholders but {len(row['images'])} images")


def _rows(split: SourceSplit, cfg: ExportConfig, read, quarantine: list[dict]):
    """Batches of checked rows with their images; bad rows go to `quarantine`."""
    for batch in split.batches(cfg.batch_rows):
        good = []
        for row in batch:
            try:
                row["images"] = load_images(row, read)
                _check_row(row)
            except BadRow as exc:
                quarantine.append({"split": split.name, "id": row.get("id"), "origin": row["_origin"],
                                   "reason": exc.reason, "detail": str(exc)})
                continue
            good.append(row)
        yield good


def _write_split(cfg: ExportConfig, split: SourceSplit, tmp: Path, read, quarantine: list[dict],
                 images: set[str]) -> dict[str, int]:
    if cfg.format in ("swift", "llamafactory"):
        file, rows = f"{split.name}.jsonl", 0
        with open(tmp / file, "w", encoding="utf-8") as f:
            for batch in _rows(split, cfg, read, quarantine):
                for row in batch:
                    out = (swift.swift_row if cfg.format == "swift" else llamafactory.llamafactory_row)(
                        row, cfg.system_prompt, cfg.train_last_round_only)
                    for im in row["images"]:
                        if im.path not in images:  # each image file once, at its content address
                            (tmp / im.path).parent.mkdir(parents=True, exist_ok=True)
                            (tmp / im.path).write_bytes(im.data)
                            images.add(im.path)
                    f.write(json.dumps(out, ensure_ascii=False) + "\n")
                    rows += 1
        return {file: rows}
    file, rows, writer = f"{split.name}.parquet", 0, None
    try:
        for batch in _rows(split, cfg, read, quarantine):
            if not batch:
                continue
            table = trl.trl_table(batch, cfg.system_prompt) if cfg.format == "trl" else \
                verl.verl_table(batch, split.name.rsplit("-", 1)[-1], cfg.ability)
            if writer is None:
                writer = pq.ParquetWriter(tmp / file, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return {file: rows} if rows else {}  # a split with no rows writes no parquet file


def export(source_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: ExportConfig | None = None,
           store_root: str | os.PathLike | None = None) -> dict:
    """Write the export directory (atomically, as a whole). Returns the report: rows per file,
    quarantined rows per reason, image files written, the path."""
    cfg = cfg or ExportConfig()
    splits, read = open_source(source_dir, store_root)
    chosen = [s for s in splits if s.kind == cfg.kind and (not cfg.splits or s.name in cfg.splits)]
    if cfg.splits and {s.name for s in chosen} != set(cfg.splits):
        raise ValueError(f"splits {sorted(set(cfg.splits) - {s.name for s in chosen})} are not "
                         f"{cfg.kind} splits of {source_dir} (it has {[s.name for s in splits]})")
    if not chosen:
        raise ValueError(f"{cfg.format} exports {cfg.kind.upper()} data; {source_dir} has none "
                         f"(its splits: {[f'{s.name} ({s.kind})' for s in splits]})")
    counts: dict[str, int] = {}
    quarantine: list[dict] = []
    images: set[str] = set()
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for split in chosen:
            counts.update(_write_split(cfg, split, tmp, read, quarantine, images))
        if cfg.format == "trl":
            (tmp / trl.TEMPLATE_FILE).write_text(trl.chat_template(cfg.train_last_round_only))
        if cfg.format == "llamafactory":
            (tmp / "dataset_info.json").write_text(llamafactory.dataset_info(counts, cfg.system_prompt))
            (tmp / llamafactory.PLUGIN_FILE).write_text(llamafactory.plugin_source())
        if quarantine:
            (tmp / "quarantine.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n"
                                                          for q in quarantine))
        reasons: dict[str, int] = {}
        for q in quarantine:
            reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
        (tmp / "README.md").write_text(export_readme(cfg, counts, reasons))
    return {"path": str(out), "format": cfg.format, "rows": counts, "quarantined": reasons,
            "image_files": len(images), "train_last_round_only": cfg.train_last_round_only}
