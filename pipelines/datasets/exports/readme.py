"""The README.md each export carries: what is inside and how to train it in that framework."""

from __future__ import annotations

_MASK = ("Only the model's own writing is labelled: reasoning, code, the answer and the turn's end "
         "token. System and user turns, every `<sandbox_output>…</sandbox_output>` (tags, printed "
         "text, error messages and the images inside) and all image tokens take no loss.")
_LAST_ROUND = {True: "This export trains the **last round only** of multi-round rows (Thyme's "
                     "stage-1 recipe): model text before the end of the second-to-last sandbox "
                     "output takes no loss either.",
               False: "Every round of multi-round rows is trained (Thyme's stage-1 recipe trains "
                      "the last round only: export with `--last-round-only` for that)."}
_PIXELS = ("Thyme trained with up to 4,096 visual tokens per image (3,211,264 pixels); set the "
           "framework's image budget accordingly (below).")


def _files(counts: dict[str, int], reasons: dict[str, int]) -> str:
    lines = ["| file | rows |", "|---|---:|"] + [f"| `{f}` | {n} |" for f, n in counts.items()]
    if reasons:
        lines.append("")
        lines.append("Rows left out (`quarantine.jsonl` names each with its origin and reason): "
                     + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ".")
    return "\n".join(lines)


def _trl(counts: dict[str, int]) -> str:
    first = next(iter(counts), "SPLIT.parquet")
    return f"""Rows are TRL's conversational vision format (`images`, `messages` with content parts);
the whole response is one assistant message, sandbox outputs inline (the Thyme protocol).
`chat_template.jinja` renders exactly the official Qwen2.5-VL text and marks the model's writing
with `{{% generation %}}`; TRL's `assistant_only_loss=True` then trains those spans only. (TRL's own
Qwen2.5-VL training template marks the whole assistant turn, sandbox outputs included.)

```python
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer

train = load_dataset("parquet", data_files="EXPORT_DIR/{first}", split="train")
args = SFTConfig(
    output_dir="thyme-sft",
    assistant_only_loss=True,                          # train what the template marks
    chat_template_path="EXPORT_DIR/chat_template.jinja",
    max_length=10240,                                  # TRL's default 1024 would cut most rows
    learning_rate=1e-5, num_train_epochs=3, warmup_ratio=0.05, lr_scheduler_type="cosine",
    bf16=True, gradient_checkpointing=True,
)
trainer = SFTTrainer(model="Qwen/Qwen2.5-VL-7B-Instruct", args=args, train_dataset=train)
trainer.train()
```
Image budget: load the processor with `max_pixels=3211264` and pass it as `processing_class`.
The saved processor keeps this template; it renders the same text as the official one, so
inference is unchanged. TRL tokenises the rendered text as a whole: with a tokenizer whose merges
can join the last character of `</code>` and the first of `<sandbox_output>` into one token, that
token straddles the boundary (see the Thyme docs, exports page)."""


def _swift(counts: dict[str, int]) -> str:
    files = " ".join(counts) or "SPLIT.jsonl"
    return f"""Rows are ms-swift's messages format. The assistant turn is cut at its sandbox outputs
into consecutive `assistant` messages, each with ms-swift's per-message `loss` flag (`false` on
sandbox outputs); ms-swift joins consecutive assistant messages into ONE turn, so the tokens are
the Thyme protocol (sandbox output inline) and only the `loss: true` pieces and the end token are
labelled. Image paths are relative to this directory: run from it.

```bash
cd EXPORT_DIR
MAX_PIXELS=3211264 swift sft \\
    --model Qwen/Qwen2.5-VL-7B-Instruct --template qwen2_5_vl \\
    --dataset {files} \\
    --loss_scale default \\
    --tuner_type full --freeze_vit true --max_length 10240 \\
    --learning_rate 1e-5 --num_train_epochs 3 --warmup_ratio 0.05 --torch_dtype bfloat16
```
Keep `--loss_scale default`: the `loss` flags decide within the turn (`--loss_scale all` would
label the system and user turns too). ms-swift also labels the newline after `<|im_end|>` (its
ChatML suffix, for every dataset); nothing else beyond the model's writing."""


def _llamafactory(counts: dict[str, int]) -> str:
    names = ",".join(f.rsplit(".", 1)[0].replace("-", "_") for f in counts) or "SPLIT"
    return f"""Rows are LLaMA-Factory's ShareGPT format (`dataset_info.json` names each file). Sandbox
outputs are `observation` turns: LLaMA-Factory labels assistant turns only, never observations.
`thyme_llamafactory.py` registers the `thyme_qwen2_vl` template, which writes assistant pieces and
observations back to back inside one assistant turn and ends it with `<|im_end|>`: the tokens are
the Thyme protocol. Run training through that file (it calls LLaMA-Factory's `run_exp`;
`llamafactory-cli` runs in a process that cannot see the registered template):

```yaml
# train.yaml
model_name_or_path: Qwen/Qwen2.5-VL-7B-Instruct
stage: sft
do_train: true
finetuning_type: full
freeze_vision_tower: true
dataset_dir: EXPORT_DIR
media_dir: EXPORT_DIR          # image paths are relative to the export
dataset: {names}
template: thyme_qwen2_vl
cutoff_len: 10240
image_max_pixels: 3211264
learning_rate: 1.0e-5
num_train_epochs: 3
warmup_ratio: 0.05
lr_scheduler_type: cosine
bf16: true
output_dir: thyme-sft
```
```bash
python EXPORT_DIR/thyme_llamafactory.py train.yaml
torchrun --nproc_per_node 8 EXPORT_DIR/thyme_llamafactory.py train.yaml
```
With the built-in `template: qwen2_vl` instead (plain `llamafactory-cli train`), the same rows
still label only the model's writing, but each observation renders as a user turn
(`<|im_start|>user\\n<tool_response>\\n…\\n</tool_response><|im_end|>`) and each assistant piece ends
with `<|im_end|>`: the model learns a tool-call chat, and inference must then stop at
`<|im_end|>` after `</code>` and send the sandbox output as a user turn, not inline. Do not use
`mask_history` (it would unlabel the last round's code)."""


def _verl(counts: dict[str, int]) -> str:
    files = list(counts) or ["train.parquet"]
    return f"""Rows are verl's RL parquet (`data_source`, `prompt`, `images`, `ability`,
`reward_model`, `extra_info`): Thyme's system + user prompt, the image bytes, and the ground truth
(`reward_model.ground_truth`, style `rule`). Prompts carry no model writing, so nothing is masked
here; multi-turn rollouts with the sandbox need verl's multi-turn/tool settings and a reward
function for `data_source == "thyme"` (`custom_reward_function.path=...`).

```bash
python -m verl.trainer.main_ppo \\
    data.train_files=EXPORT_DIR/{files[0]} data.image_key=images \\
    actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct ...
```"""


_BODIES = {"trl": _trl, "swift": _swift, "llamafactory": _llamafactory, "verl": _verl}
_TITLES = {"trl": "TRL", "swift": "ms-swift", "llamafactory": "LLaMA-Factory", "verl": "verl"}


def export_readme(cfg, counts: dict[str, int], reasons: dict[str, int]) -> str:
    parts = [f"# Thyme data for {_TITLES[cfg.format]}", "",
             "Exported by the Thyme toolkit (`python -m pipelines export`) from a Thyme dataset.", "",
             _files(counts, reasons), ""]
    if cfg.format != "verl":
        parts += ["## What is labelled", "", _MASK, "", _LAST_ROUND[cfg.train_last_round_only], "", _PIXELS, ""]
    parts += ["## How to train", "", _BODIES[cfg.format](counts), ""]
    return "\n".join(parts)
