"""GRPO-ATS end to end on the tiny model with the real sandbox: a few TRL steps whose rollouts
run code (a scripted policy writes a real crop snippet for half of each group) and get the
cropped image back into the training forward pass."""

import json
import math
import os

import pytest
from PIL import Image

from thyme_train.config import load_config
from thyme_train.grpo import GRPOATSConfig, ToolUseMonitor, rollout_statistics
from thyme_train.rl_data import load_rl_rows
from thyme_train.rollout import Rollout

CROP = ("<think>Zoom in.<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 160, 120)).save('/mnt/data/temp_processed_images/crop.png')\n"
        "print('/mnt/data/temp_processed_images/crop.png')\n```\n</code>")
ANSWER = "It is red.</think> <answer>red</answer>"


def test_config_files_load_and_document_every_field():
    import dataclasses

    for name in ("rl.yaml", "rl_tiny.yaml"):
        cfg = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", name))
        assert cfg.num_generations == 4
    cfg = load_config(GRPOATSConfig, None, ["max_turns=3", "code_token_loss=mask"])
    assert (cfg.rollout().max_turns, cfg.rollout().code_token_loss) == (3, "mask")
    assert cfg.rewards().format_weight == 0.5 and cfg.beta == 0.001 and cfg.learning_rate == 5e-7
    assert all(f.metadata.get("help") for f in dataclasses.fields(GRPOATSConfig))
    with pytest.raises(ValueError, match="code_token_loss"):
        load_config(GRPOATSConfig, None, ["code_token_loss=skip"])


def test_config_reaches_trl(tmp_path):
    from thyme_train.grpo import trl_args
    from thyme_train.rewards import ThymeRewards

    cfg = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl.yaml"), [
        f"output_dir={tmp_path}", "shuffle_dataset=false", "beta=0.04", "learning_rate=2e-6",
        "report_to=none", "deepspeed=null", "bf16=false", "gradient_checkpointing=false"])
    args = trl_args(cfg, ThymeRewards(cfg.rewards()))
    assert args.shuffle_dataset is False and args.beta == 0.04 and args.learning_rate == 2e-6
    assert args.num_generations == 4 and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.reward_weights == [1.0, 0.5, 0.5]       # accuracy + 0.5 format + 0.5 consistency
    assert trl_args(load_config(GRPOATSConfig, None, [f"output_dir={tmp_path}", "bf16=false",
                                                      "gradient_checkpointing=false"]),
                    ThymeRewards(cfg.rewards())).shuffle_dataset is True


def test_bad_rows_name_the_row(tmp_path):
    data = tmp_path / "rl.jsonl"
    data.write_text(json.dumps({"question": "q", "solution": "1"}) + "\n"
                    + json.dumps({"question": "q", "solution": "1", "image": "missing.png"}) + "\n")
    with pytest.raises(ValueError, match="row 1: image 'missing.png'"):
        load_rl_rows(data)


def test_published_rl_dataset_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.core.prompts import render_user

    (tmp_path / "images" / "ab").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "ab" / "ab12.png")
    (tmp_path / "data" / "hf").mkdir(parents=True)
    user = render_user("Which?\nA. x\nB. y", "images/ab/ab12.png", (40, 30))
    pq.write_table(pa.table({
        "messages": [[{"role": "system", "content": "s"}, {"role": "user", "content": user}]],
        "images": [[{"bytes": b"", "path": "images/ab/ab12.png"}]],
        "solution": ["B"], "question": ["Which?\nA. x\nB. y"],
        "meta": [json.dumps({"options": ["A. x", "B. y"]})]}), tmp_path / "data/hf/train-00000.parquet")
    row, = load_rl_rows(tmp_path)
    assert row["images"] == [str(tmp_path / "images" / "ab" / "ab12.png")]   # the sandbox's file
    assert (row["solution"], row["options"]) == ("B", ["A. x", "B. y"])
    # the prompt is the dataset's own user message: its image named as the dataset names it
    text = "".join(p["text"] for p in row["prompt"][-1]["content"] if p["type"] == "text")
    assert '"images/ab/ab12.png"' in text and str(tmp_path) not in text
    assert [p["type"] for p in row["prompt"][-1]["content"]][0] == "image"
    with pytest.raises(FileNotFoundError, match="test"):
        load_rl_rows(tmp_path, split="test")


def test_simple_rows_name_their_image_as_written(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "0.png")
    (tmp_path / "rl.jsonl").write_text(json.dumps({"question": "Colour?", "solution": "red",
                                                   "image": "0.png"}) + "\n")
    row, = load_rl_rows(tmp_path / "rl.jsonl")
    assert row["images"] == [str(tmp_path / "0.png")]
    text = "".join(p["text"] for p in row["prompt"][-1]["content"] if p["type"] == "text")
    assert 'User Image Path:** "0.png"' in text and 'Size:** "40x30"' in text


def test_a_published_row_whose_images_do_not_match_its_prompt_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.core.prompts import render_user

    (tmp_path / "data" / "hf").mkdir(parents=True)
    pq.write_table(pa.table({
        "messages": [[{"role": "user", "content": render_user("Which?", "images/a.png", (40, 30))}]],
        "images": [[]], "solution": ["B"], "question": ["Which?"], "meta": ["{}"]}),
        tmp_path / "data/hf/train-00000.parquet")
    with pytest.raises(ValueError, match=r"train-00000.parquet row 0: .*1 <image> .* 0 image"):
        load_rl_rows(tmp_path)


def test_tool_collapse_warning_and_statistics():
    monitor = ToolUseMonitor(fraction=0.5, early_steps=2)
    assert [monitor.record(r) for r in (0.8, 0.6, 0.5)] == [None, None, None]
    assert "collapsed" in monitor.record(0.3)
    a = Rollout(0, 0, [1], completion_ids=[5, 6, 7], env_mask=[1, 0, 1], code_calls=2, code_errors=1,
                turns=3, end_reason="answer", sandbox_image_paths=["x.png"])
    b = Rollout(0, 1, [1], completion_ids=[5], env_mask=[1], turns=1, end_reason="length")
    s = rollout_statistics([a, b])
    assert (s["thyme/tool_call_rate"], s["thyme/exec_success"], s["thyme/images_per_rollout"]) == (0.5, 0.5, 0.5)
    assert (s["thyme/end/answer"], s["thyme/end/length"], s["thyme/sandbox_tokens"]) == (0.5, 0.5, 0.5)


@pytest.mark.slow
def test_grpo_steps_end_to_end(tmp_path, request):
    from thyme_train.grpo import train
    from thyme_train.tiny import build_tiny_model

    model_dir = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")
    rows = []
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (320, 240), (200 if colour == "red" else 0, 0, 200 * i)).save(tmp_path / f"{i}.png")
        os.chmod(tmp_path / f"{i}.png", 0o644)
        rows.append({"question": "What colour is the image?", "solution": colour, "image": f"{i}.png"})
    os.chmod(tmp_path, 0o755)
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl_tiny.yaml"), [
        f"model={model_dir}", f"data={tmp_path / 'rl.jsonl'}", f"output_dir={tmp_path / 'out'}",
        "max_steps=2", "save_steps=2", "max_new_tokens=120", "sandbox_workers=1",
        # options that act in this run too (tests/test_grpo_options.py tests them in detail):
        # the correction on greedy code tokens, a frozen vision tower, our prompt sampler
        "code_token_loss=correct", "freeze_vision_tower=true", "prioritized_sampling=true"])

    tokenizer_ids = {}

    def force(rollout, tokens):            # half of each group runs the crop, then answers
        if rollout.prompt_index % 2:
            return None
        from transformers import AutoTokenizer
        if not tokenizer_ids:
            tok = AutoTokenizer.from_pretrained(model_dir)
            tokenizer_ids.update({t: tok(s, add_special_tokens=False)["input_ids"]
                                  for t, s in ((0, CROP), (1, ANSWER))})
        script = tokenizer_ids.get(rollout.turns, [])
        return script[len(tokens)] if len(tokens) < len(script) else None

    import torch
    from transformers import TrainerCallback

    class WeightsAtStart(TrainerCallback):       # the policy the run starts training from
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    trainer = train(cfg, force=force)
    assert trainer.state.global_step == 2
    logs = [r for r in trainer.state.log_history if "thyme/tool_call_rate" in r]
    assert len(logs) == 2
    for r in logs:   # the scripted half always crops; the random half may write code too
        assert r["thyme/tool_call_rate"] >= 0.5 and r["thyme/images_per_rollout"] >= 0.5
        assert r["thyme/exec_success"] > 0
        assert r["rewards/format_reward/mean"] >= 0.5            # the scripted half is well formed
        assert math.isfinite(r["loss"])
        # TRL's truncated importance sampling on the HF engine's behaviour log-probs: top-k/top-p
        # text has ratio pi/mu < 1 (mu renormalised), greedy code tokens pi(token) <= 1
        assert 0 < r["sampling/importance_sampling_ratio/min"] <= r["sampling/importance_sampling_ratio/mean"] <= 2.0
        assert r["thyme/tokens/greedy_code_share"] > 0 and r["thyme/tokens/no_behaviour_logprob_share"] == 0
        assert r["thyme/sampling/prompts_seen"] > 0
    # the sandbox's crop reached the training forward pass (prompt image + crop)
    assert 2 in trainer.last_image_counts
    out = tmp_path / "out"
    assert (out / "checkpoint-2").is_dir() and (out / "model.safetensors").is_file()
    assert (out / "curves_rewards.png").stat().st_size > 0 and (out / "curves_tool_use.png").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 2 and summary["tool_call_rate_last"] >= 0.5
    # the policy moved
    from transformers import AutoModelForImageTextToText
    before = AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # ... but not its frozen vision blocks; the merger (not frozen) trained
    blocks = [k for k in before if ".visual." in f".{k}" and ".merger." not in k]
    assert blocks and all(torch.equal(before[k], after[k]) for k in blocks)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".merger." in k)
    # the prompt sampler's success rates went into the checkpoint
    assert (out / "checkpoint-2" / "thyme_prompt_sampling.json").is_file()
    # a longer run over the same output_dir resumes from checkpoint-2
    cfg.max_steps = 3
    saved = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-2").state_dict()
    start = WeightsAtStart()
    again = train(cfg, force=force, callbacks=[start])
    assert again.state.global_step == 3
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == "checkpoint-2"
    # ... with checkpoint-2's policy, not the initial one (transformers' own resume keeps it)
    assert all(torch.equal(start.state[k], saved[k]) for k in saved)
