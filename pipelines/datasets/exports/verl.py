"""verl: RL parquet (`data_source`, `prompt`, `images`, `ability`, `reward_model`, `extra_info`),
written through `pipelines.core.formats.deepeyes_table` (DeepEyes data is verl parquet), with
Thyme's system + user prompt and the ground truth for a rule reward."""

from __future__ import annotations

import pyarrow as pa

from pipelines.core.formats import SourceRow, deepeyes_table


def verl_table(rows: list[dict], split: str, ability: str) -> pa.Table:
    table = deepeyes_table([SourceRow(question=r["question"], images=[im.data for im in r["images"]],
                                      answer=r["solution"], data_source="thyme") for r in rows])
    prompt = pa.array([r["messages"] for r in rows], pa.list_(pa.struct([("role", pa.string()),
                                                                          ("content", pa.string())])))
    reward = pa.array([{"ground_truth": r["solution"], "style": "rule"} for r in rows])
    extra = pa.array([{"index": i, "answer": r["solution"], "question": r["question"], "split": split,
                       "id": r["id"], "task": r["task"]} for i, r in enumerate(rows)])
    for name, column in (("prompt", prompt), ("reward_model", reward), ("extra_info", extra),
                         ("ability", pa.array([ability] * len(rows)))):
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table
