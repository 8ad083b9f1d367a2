"""LLaMA-Factory: ShareGPT JSON lines whose sandbox outputs are `observation` turns.

    {"messages": [{"role": "user", "content": "<image>\\n..."},
                  {"role": "assistant", "content": "<think>...</code>"},
                  {"role": "observation", "content": "<sandbox_output><image></sandbox_output>"},
                  {"role": "assistant", "content": "...</answer>"}],
     "images": ["images/ab/<hash>.png", ...], "system": "..."}

LLaMA-Factory labels assistant turns and never observation turns: that is its mechanism for
"not the model's writing", and it has no per-span mask inside one turn. How the turns render is
the template's business:
- `thyme_qwen2_vl` (registered by the shipped `thyme_llamafactory.py`): assistant pieces and
  observations are written back to back inside ONE assistant turn and `<|im_end|>` closes it:
  the Thyme protocol, token for token.
- the built-in `qwen2_vl`: each observation becomes a user turn
  (`<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>`) and each assistant
  piece ends with `<|im_end|>`: a tool-call chat, not the Thyme protocol (see docs/exports.md).
With `train_last_round_only`, model text of earlier rounds moves into the observations (an
empty assistant piece keeps the roles alternating), so it is not labelled either.
"""

from __future__ import annotations

import json

from pipelines.datasets.exports.segments import response_segments

TEMPLATE = "thyme_qwen2_vl"
PLUGIN_FILE = "thyme_llamafactory.py"
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
        "assistant_tag": "assistant", "observation_tag": "observation"}


def llamafactory_messages(question: str, response: str, train_last_round_only: bool) -> list[dict]:
    messages = [{"role": "user", "content": question}]
    pending = ""  # untrained text waiting for the next observation turn
    for seg in response_segments(response, train_last_round_only):
        if seg.trained:
            messages.append({"role": "assistant", "content": seg.text})
        elif seg.sandbox:
            if messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            messages.append({"role": "observation", "content": pending + seg.text})
            pending = ""
        else:
            pending += seg.text
    return messages


def llamafactory_row(row: dict, system_prompt: str | None, train_last_round_only: bool) -> dict:
    out = {"messages": llamafactory_messages(row["question"], row["response"], train_last_round_only),
           "images": [im.path for im in row["images"]]}
    if system_prompt:
        out["system"] = system_prompt
    return out


def dataset_info(files: dict[str, int], system_prompt: str | None) -> str:
    """LLaMA-Factory's dataset_info.json: one dataset per written file."""
    columns = {"messages": "messages", "images": "images", **({"system": "system"} if system_prompt else {})}
    info = {f.rsplit(".", 1)[0].replace("-", "_"): {"file_name": f, "formatting": "sharegpt",
                                                    "columns": columns, "tags": TAGS}
            for f, n in files.items() if n}
    return json.dumps(info, indent=2)


def plugin_source() -> str:
    """The shipped `thyme_llamafactory.py`: registers the `thyme_qwen2_vl` template and trains."""
    from importlib import resources

    return resources.files(__package__).joinpath("files", PLUGIN_FILE).read_text()
