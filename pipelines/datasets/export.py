"""Exporters (issue 5): the same built splits in other frameworks' documented formats.

    export(split_dir, store_root, out_dir, ExportConfig(format="trl" | "swift" | "llamafactory" | "verl"))

- `trl`: conversational vision rows, `{"images": [...], "messages": [{"role", "content": [{"type":
  "image"} | {"type": "text", "text": ...}]}]}`, as parquet with `Sequence(Image)` features
  (`datasets.load_dataset("parquet", data_files=...)` gives PIL images); one `image` part per
  `<image>`, in order, so sandbox-produced images sit inside the assistant turn where they arrived.
- `swift` (ms-swift): JSONL `{"messages": [system, user, assistant], "images": [paths]}`; each
  `<image>` in the text is the next path.
- `llamafactory`: ShareGPT JSON lines `{"messages": [...], "images": [...], "system": ...}` plus
  `dataset_info.json` naming each file, its columns and tags.
- `verl`: RL parquet (`data_source`, `prompt`, `images`, `ability`, `reward_model`, `extra_info`),
  written through `pipelines.core.formats.deepeyes_table` (DeepEyes data is verl parquet).

SFT formats read the three SFT splits, `verl` the RL split; file names are `<split>-<part>` (an
empty part gets no parquet file). Image
files are copied under `out_dir/images/` (JSONL formats name them relative to `out_dir`: run the
trainer from there, or set LLaMA-Factory's `media_dir`); TRL and verl embed the bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.formats import SourceRow, deepeyes_table
from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT
from pipelines.datasets.names import PARTS, RL, SFT_SPLITS
from pipelines.datasets.splits import iter_split, split_file, store_resolver
from sandbox.protocol import IMAGE_TOKEN

FORMATS = ("trl", "swift", "llamafactory", "verl")
_IMAGE = re.compile(re.escape(IMAGE_TOKEN))


@dataclass
class ExportConfig:
    """One export."""

    format: str = "trl"                            # one of FORMATS
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # SFT formats: the system message (None: none)
    splits: tuple[str, ...] = ()                   # which splits (default: the SFT splits, or rl for verl)
    batch_rows: int = 64                           # rows per parquet row group (rows carry images)
    ability: str = "visual_reasoning"              # verl's `ability` column

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS} (got {self.format!r})")
        if not self.splits:
            self.splits = (RL,) if self.format == "verl" else SFT_SPLITS
        if self.format == "verl" and set(self.splits) != {RL}:
            raise ValueError("verl exports the rl split")
        if self.format != "verl" and RL in self.splits:
            raise ValueError(f"{self.format} exports SFT splits, not rl")


def content_parts(text: str) -> list[dict]:
    """Text with `<image>` tokens as TRL content parts, in order."""
    parts = []
    for k, piece in enumerate(_IMAGE.split(text)):
        if k:
            parts.append({"type": "image", "text": None})
        if piece.strip():
            parts.append({"type": "text", "text": piece})
    return parts


def _system(cfg: ExportConfig) -> list[dict]:
    return [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []


def trl_row(row: dict, cfg: ExportConfig, read) -> dict:
    messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in _system(cfg)]
    messages += [{"role": "user", "content": content_parts(row["question"])},
                 {"role": "assistant", "content": content_parts(row["response"])}]
    return {"images": [{"bytes": read(p), "path": p} for p in row["images"]], "messages": messages,
            "id": row["id"], "task": row["task"]}


def swift_row(row: dict, cfg: ExportConfig) -> dict:
    messages = _system(cfg) + [{"role": "user", "content": row["question"]},
                               {"role": "assistant", "content": row["response"]}]
    return {"messages": messages, "images": list(row["images"]), "id": row["id"], "task": row["task"]}


def llamafactory_row(row: dict, cfg: ExportConfig) -> dict:
    out = {"messages": [{"role": "user", "content": row["question"]},
                        {"role": "assistant", "content": row["response"]}],
           "images": list(row["images"])}
    if cfg.system_prompt:
        out["system"] = cfg.system_prompt
    return out


def trl_features():
    from datasets import Features, Image, List, Value

    text = Value("string")
    return Features({"images": List(Image()),
                     "messages": List({"role": text, "content": List({"type": text, "text": text})}),
                     "id": text, "task": text})


def verl_table(rows: list[dict], part: str, cfg: ExportConfig, read) -> pa.Table:
    """verl RL rows via the DeepEyes (verl) writer, with Thyme's system + user prompt."""
    table = deepeyes_table([SourceRow(question=r["question"], images=[read(p) for p in r["images"]],
                                      answer=r["solution"], data_source="thyme") for r in rows])
    prompt = pa.array([r["messages"] for r in rows], pa.list_(pa.struct([("role", pa.string()),
                                                                          ("content", pa.string())])))
    reward = pa.array([{"ground_truth": r["solution"], "style": "rule"} for r in rows])
    extra = pa.array([{"index": i, "answer": r["solution"], "question": r["question"], "split": part,
                       "id": r["id"], "task": r["task"]} for i, r in enumerate(rows)])
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", prompt)
    table = table.set_column(table.schema.get_field_index("reward_model"), "reward_model", reward)
    table = table.set_column(table.schema.get_field_index("extra_info"), "extra_info", extra)
    return table.set_column(table.schema.get_field_index("ability"), "ability",
                            pa.array([cfg.ability] * len(rows)))


def export(split_dir: str | os.PathLike, store_root: str | os.PathLike, out_dir: str | os.PathLike,
           cfg: ExportConfig | None = None) -> dict:
    """Write the export directory (atomically, as a whole). Returns {file: rows}."""
    cfg = cfg or ExportConfig()
    resolve = store_resolver(store_root)

    def read(path: str) -> bytes:
        return resolve(path).read_bytes()

    counts: dict[str, int] = {}
    images: set[str] = set()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for split in cfg.splits:
            for part in PARTS:
                if not split_file(split_dir, split, part).exists():
                    raise FileNotFoundError(f"{split_file(split_dir, split, part)}: split not built")
                name = f"{split}-{part}"
                counts.update(_export_part(cfg, split_dir, split, part, tmp, name, read, images))
        if cfg.format in ("swift", "llamafactory"):
            for path in sorted(images):
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(resolve(path), tmp / path)
        if cfg.format == "llamafactory":
            info = {Path(f).stem.replace("-", "_"): {
                "file_name": f, "formatting": "sharegpt",
                "columns": {"messages": "messages", "images": "images",
                            **({"system": "system"} if cfg.system_prompt else {})},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant"}} for f, n in counts.items() if n}
            (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return counts


def _export_part(cfg, split_dir, split, part, tmp: Path, name: str, read, images: set) -> dict[str, int]:
    rows = 0
    if cfg.format in ("swift", "llamafactory"):
        file = f"{name}.jsonl"
        with open(tmp / file, "w", encoding="utf-8") as f:
            for batch in iter_split(split_dir, split, part, cfg.batch_rows):
                for row in batch:
                    out = swift_row(row, cfg) if cfg.format == "swift" else llamafactory_row(row, cfg)
                    images.update(row["images"])
                    f.write(json.dumps(out, ensure_ascii=False) + "\n")
                    rows += 1
        return {file: rows}
    file = f"{name}.parquet"
    writer = None
    try:
        for batch in iter_split(split_dir, split, part, cfg.batch_rows):
            if cfg.format == "trl":
                schema = trl_features().arrow_schema
                table = pa.Table.from_pylist([trl_row(r, cfg, read) for r in batch], schema=schema)
            else:
                table = verl_table(batch, part, cfg, read)
            if writer is None:
                writer = pq.ParquetWriter(tmp / file, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return {file: rows} if rows else {}  # an empty part writes no parquet file
