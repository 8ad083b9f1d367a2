"""Writers for the released dataset formats (THYME.md §3), the inverse of `pipelines.pool.readers`:
tests and benchmarks build real-format files with them, and publishing exports through them.

Rows carry image *bytes*; the writers encode them the way each release does (base64 text for
Thyme, `{"bytes", "path"}` structs for verl/DeepEyes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.prompts import PromptSet, load_prompt_set


@dataclass
class SourceRow:
    question: str
    images: list[bytes]                  # the question's image(s); Thyme-SFT: then sandbox outputs
    answer: str = ""
    response: str = ""                   # Thyme-SFT: the reference trajectory
    image_path: str = "/mnt/data/images/input.jpg"
    image_size: tuple[int, int] = (0, 0)
    data_source: str = "synthetic"
    extra: dict = field(default_factory=dict)
    inputs: int | None = None            # Thyme-SFT: how many of `images` are the question's
                                         # (None: the first one; the rest are sandbox outputs)


def b64(data: bytes) -> str:
    """Base64 text of bytes (the released datasets' image encoding)."""
    return base64.b64encode(data).decode("ascii")


def _user(prompts: PromptSet | None, row: SourceRow, inputs: int) -> str:
    """The row's user message in the set's template: one `<image>` per input image (text-only
    when it has none)."""
    prompts = prompts or load_prompt_set()
    if not row.images or inputs == 0:
        return prompts.render_user(row.question)
    return prompts.render_user(row.question, row.image_path, row.image_size, images=inputs)


def _sft_inputs(row: SourceRow) -> int:
    return (1 if row.images else 0) if row.inputs is None else row.inputs


def thyme_sft_table(rows: Iterable[SourceRow], prompts: PromptSet | None = None) -> pa.Table:
    rows = list(rows)
    return pa.table({
        "image": [[b64(b) for b in r.images] for r in rows],
        "question": [_user(prompts, r, _sft_inputs(r)) for r in rows],
        "response": [r.response for r in rows],
    })


def thyme_rl_table(rows: Iterable[SourceRow], prompts: PromptSet | None = None) -> pa.Table:
    rows = list(rows)
    return pa.table({
        "messages": [[{"role": "system", "content": (prompts or load_prompt_set()).system},
                      {"role": "user", "content": _user(prompts, r, len(r.images))}]
                     for r in rows],
        "images": [[b64(b) for b in r.images] for r in rows],
        "solution": [r.answer for r in rows],
        "question": [r.question for r in rows],
    })


def deepeyes_table(rows: Iterable[SourceRow]) -> pa.Table:
    rows = list(rows)
    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table({
        "data_source": [r.data_source for r in rows],
        "prompt": [[{"role": "user", "content": "<image>\n" * len(r.images) + r.question}] for r in rows],
        "images": pa.array([[{"bytes": b, "path": None} for b in r.images] for r in rows], image_type),
        "ability": ["visual_reasoning"] * len(rows),
        "reward_model": [{"ground_truth": r.answer, "style": "model"} for r in rows],
        "extra_info": [{"index": i, "answer": r.answer, "question": r.question, "split": "train"}
                       for i, r in enumerate(rows)],
    })


WRITERS = {"thyme-sft": thyme_sft_table, "thyme-rl": thyme_rl_table, "deepeyes": deepeyes_table}


def write_parquet(table: pa.Table, path, row_group_size: int = 1000) -> None:
    pq.write_table(table, path, row_group_size=row_group_size)
