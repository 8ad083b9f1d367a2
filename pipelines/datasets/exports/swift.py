"""ms-swift: messages JSONL whose assistant turn is cut at its sandbox outputs, each piece with a
`loss` flag.

    {"messages": [{"role": "system", ...}, {"role": "user", "content": "<image>\\n..."},
                  {"role": "assistant", "content": "<think>...</code>", "loss": true},
                  {"role": "assistant", "content": "<sandbox_output><image></sandbox_output>", "loss": false},
                  {"role": "assistant", "content": "...</answer>", "loss": true}],
     "images": ["images/ab/<hash>.png", ...], "id": ..., "task": ...}

ms-swift merges consecutive assistant messages into one assistant turn and keeps each piece's
`loss` (its per-message loss mechanism), so the rendered tokens are the Thyme protocol (sandbox
output inline, one turn) while only the `loss: true` pieces and the turn's end token are
labelled. Image tokens always take no loss in ms-swift. Each `<image>` in the text is the next
path of `images`, relative to the export directory.
"""

from __future__ import annotations

from pipelines.datasets.exports.segments import response_segments


def swift_row(row: dict, system_prompt: str | None, train_last_round_only: bool) -> dict:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": row["question"]})
    for seg in response_segments(row["response"], train_last_round_only):
        if seg.text or seg.trained:  # an empty untrained piece adds nothing
            messages.append({"role": "assistant", "content": seg.text, "loss": seg.trained})
    return {"messages": messages, "images": [im.path for im in row["images"]], "id": row["id"],
            "task": row["task"]}
