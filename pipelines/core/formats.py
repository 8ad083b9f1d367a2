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


def b64(data: bytes) -> str:
    """Base64 text of bytes (the released datasets' image encoding)."""
    return base64.b64encode(data).decode("ascii")


def _user(prompts: PromptSet | None, row: SourceRow) -> str:
    """The row's user message in the set's template (text-only when it has no image)."""
    prompts = prompts or load_prompt_set()
    if not row.images:
        return prompts.render_user(row.question)
    return prompts.render_user(row.question, row.image_path, row.image_size)


def thyme_sft_table(rows: Iterable[SourceRow], prompts: PromptSet | None = None) -> pa.Table:
    rows = list(rows)
    return pa.table({
        "image": [[b64(b) for b in r.images] for r in rows],
        "question": [_user(prompts, r) for r in rows],
        "response": [r.response for r in rows],
    })


def thyme_rl_table(rows: Iterable[SourceRow], prompts: PromptSet | None = None) -> pa.Table:
    rows = list(rows)
    return pa.table({
        "messages": [[{"role": "system", "content": (prompts or load_prompt_set()).system},
                      {"role": "user", "content": _user(prompts, r)}]
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
        "prompt": [[{"role": "user", "content": "<image>\n" + r.question}] for r in rows],
        "images": pa.array([[{"bytes": b, "path": None} for b in r.images] for r in rows], image_type),
        "ability": ["visual_reasoning"] * len(rows),
        "reward_model": [{"ground_truth": r.answer, "style": "model"} for r in rows],
        "extra_info": [{"index": i, "answer": r.answer, "question": r.question, "split": "train"}
                       for i, r in enumerate(rows)],
    })


WRITERS = {"thyme-sft": thyme_sft_table, "thyme-rl": thyme_rl_table, "deepeyes": deepeyes_table}


def write_parquet(table: pa.Table, path, row_group_size: int = 1000) -> None:
    pq.write_table(table, path, row_group_size=row_group_size)
