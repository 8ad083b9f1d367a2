"""TRL: conversational vision rows plus the chat template that masks sandbox outputs.

Rows: `{"images": [...], "messages": [system, user, assistant], "id", "task"}` as parquet with
`Sequence(Image)` features; each message's content is TRL's parts (`{"type": "text", "text"}` |
`{"type": "image"}`), one image part per `<image>`, in order, so sandbox images sit inside the
assistant turn where they arrived. The assistant message is the whole response: the Thyme
protocol, sandbox outputs inline.

TRL's `assistant_only_loss=True` trains what the chat template marks with `{% generation %}`.
Its own Qwen2.5-VL training template marks the whole assistant turn, sandbox outputs and their
image tokens included; the shipped `chat_template.jinja` marks only the model's writing and
renders the same text as the official template (inference is unchanged).
"""

from __future__ import annotations

from importlib import resources

import pyarrow as pa

from pipelines.core.prompts import content_parts as prompt_parts

TEMPLATE_FILE = "chat_template.jinja"
_LAST_ROUND_SWITCH = "{%- set last_round_only = false %}"


def chat_template(train_last_round_only: bool = False) -> str:
    """The training chat template (Qwen2.5-VL family) shipped with the TRL export."""
    text = resources.files(__package__).joinpath("files", "qwen2_5_vl_thyme.jinja").read_text()
    if _LAST_ROUND_SWITCH not in text:
        raise RuntimeError("qwen2_5_vl_thyme.jinja lost its last_round_only switch")
    return text.replace(_LAST_ROUND_SWITCH, _LAST_ROUND_SWITCH.replace("false", "true")) \
        if train_last_round_only else text


def content_parts(text: str) -> list[dict]:
    """`pipelines.core.prompts.content_parts`, with every part carrying `text` (None for images)
    so that all rows share one parquet struct."""
    return [{"type": p["type"], "text": p.get("text")} for p in prompt_parts(text)]


def trl_row(row: dict, system_prompt: str | None) -> dict:
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] \
        if system_prompt else []
    messages += [{"role": "user", "content": content_parts(row["question"])},
                 {"role": "assistant", "content": content_parts(row["response"])}]
    return {"images": [{"bytes": im.data, "path": im.path} for im in row["images"]],
            "messages": messages, "id": row["id"], "task": row["task"]}


def trl_features():
    from datasets import Features, Image, List, Value

    text = Value("string")
    return Features({"images": List(Image()),
                     "messages": List({"role": text, "content": List({"type": text, "text": text})}),
                     "id": text, "task": text})


def trl_table(rows: list[dict], system_prompt: str | None) -> pa.Table:
    return pa.Table.from_pylist([trl_row(r, system_prompt) for r in rows],
                                schema=trl_features().arrow_schema)
