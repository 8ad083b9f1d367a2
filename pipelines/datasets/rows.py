"""Split rows: how a trajectory becomes an SFT row and a sample an RL prompt, the parquet schemas
of both, and the buffered writer (pipelines.datasets.splits drives them).

Every input image of a sample is kept, in order: an SFT row's `images` are the inputs, then
each sandbox-produced image; its question holds one `<image>` per input. The User Image Path and
Size name the first input (the prompt template has one such line). Image paths are
dataset-relative (`images/<hash[:2]>/<hash>.<ext>`, the store layout under `images/`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.prompts import PromptSet
from pipelines.core.schema import Sample, normalise_question
from pipelines.core.trajectory import Trajectory
from pipelines.datasets.names import COMPUTATION, RL, SINGLE, TWO_ROUND
from pipelines.datasets.paths import dataset_path, rewrite_trajectory

SFT_SCHEMA = pa.schema([
    ("id", pa.string()),              # the trajectory's id
    ("sample_id", pa.string()),
    ("task", pa.string()),
    ("kind", pa.string()),            # direct | single | further_enhancement | error_correction
    ("has_image", pa.bool_()),
    ("question", pa.string()),        # the user message (one <image> per input image)
    ("response", pa.string()),        # the assistant message (Trajectory.render)
    ("images", pa.list_(pa.string())),  # dataset paths: the inputs, then each produced image
    ("image_key", pa.string()),       # first input image hash, or q:<hash of the question> if text-only
    ("answer", pa.string()),          # the sample's ground truth
])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
RL_SCHEMA = pa.schema([
    ("id", pa.string()),              # the sample's id (a prompt, not a trajectory)
    ("task", pa.string()),
    ("has_image", pa.bool_()),
    ("messages", pa.list_(MESSAGE)),  # system + user
    ("images", pa.list_(pa.string())),  # dataset paths of every input; User Image Path names images[0]
    ("solution", pa.string()),
    ("question", pa.string()),        # the bare question (for judges)
    ("meta", pa.string()),            # JSON: the sample's ground truth and options, for curricula
    ("image_key", pa.string()),
])
SCHEMAS = {SINGLE: SFT_SCHEMA, TWO_ROUND: SFT_SCHEMA, COMPUTATION: SFT_SCHEMA, RL: RL_SCHEMA}


def unit_draw(*parts) -> float:
    """A deterministic number in [0, 1) from the parts (the same on every machine and run)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def question_key(question: str) -> str:
    """A text-only row's stand-in for an image hash: its normalised question."""
    return "q:" + hashlib.blake2b(normalise_question(question).encode(), digest_size=16).hexdigest()


def image_key(image_hash: str | None, question: str) -> str:
    """A row's key for near-duplicate grouping: its first input image, or a text-only question."""
    return image_hash if image_hash else question_key(question)


def _inputs(sample: Sample) -> tuple[list[str], tuple[int, int] | None]:
    """Every input's dataset path, and the first input's size."""
    if not sample.images:
        return [], None
    return [dataset_path(ref.relpath) for ref in sample.images], (sample.images[0].width,
                                                                   sample.images[0].height)


def sft_row(trajectory: Trajectory, sample: Sample, prompts: PromptSet) -> dict:
    """One SFT row: the user message and the assistant message of a trajectory, paths rewritten."""
    inputs, size = _inputs(sample)
    first = inputs[0] if inputs else None
    originals = [sample.meta.get("original_path")] if sample.meta.get("original_path") else []
    rewritten = rewrite_trajectory(trajectory, first, originals)
    produced = [dataset_path(p) for t in rewritten.code_turns if t.result is not None
                for p in t.result.images]
    return {"id": trajectory.id, "sample_id": sample.id, "task": trajectory.task,
            "kind": trajectory.kind, "has_image": first is not None,
            "question": prompts.render_user(sample.question, first, size, images=len(inputs)),
            "response": rewritten.render(),
            "images": inputs + produced,
            "image_key": image_key(sample.images[0].hash if sample.images else None, sample.question),
            "answer": sample.answer}


def rl_row(sample: Sample, prompts: PromptSet, task: str | None = None) -> dict:
    """One RL prompt: the system prompt and the user message naming the image file(s). `task`:
    the task the audit found for it (a real pool's samples carry `unknown`), else the sample's."""
    inputs, size = _inputs(sample)
    first = inputs[0] if inputs else None
    return {"id": sample.id, "task": task or sample.task, "has_image": first is not None,
            "messages": [{"role": "system", "content": prompts.system},
                         {"role": "user", "content": prompts.render_user(sample.question, first, size,
                                                                         images=len(inputs))}],
            "images": inputs, "solution": sample.answer,
            "question": sample.question,
            "meta": json.dumps(sample.meta, ensure_ascii=False, sort_keys=True),
            "image_key": image_key(sample.images[0].hash if sample.images else None, sample.question)}


class RowWriter:
    """Rows buffered and written as row groups of one parquet file."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int):
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        self.rows: list[dict] = []
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.count = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
