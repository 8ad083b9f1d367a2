"""GRPO-ATS end to end on the tiny model with the real sandbox: a few TRL steps whose rollouts
run code (a scripted policy writes a real crop snippet for half of each group) and get the
cropped image back into the training forward pass."""

import json
import math
import os

import pytest
from PIL import Image

from sandbox.policy import MECHANISMS
from thyme_train.collapse import ToolUseMonitor
from thyme_train.config import load_config
from thyme_train.grpo import GRPOATSConfig, isolation_metrics, rollout_statistics
from thyme_train.rollout import END_REASONS, Rollout

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
    cfg = load_config(GRPOATSConfig, None, ["sandbox_isolation=seccomp+landlock"])
    assert cfg.rollout().sandbox_isolation == "landlock+seccomp"
    with pytest.raises(ValueError, match="unknown isolation policy"):
        load_config(GRPOATSConfig, None, ["sandbox_isolation=containers"])


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


def test_isolation_metrics_record_missing_mechanisms():
    class Degraded:  # what a Sandbox in a container without namespaces reports
        isolation_report = {"policy": "landlock+seccomp+rlimits", "active": ["landlock", "seccomp", "rlimits"],
                            "missing": {"namespaces": "unshare failed"}, "landlock_abi": 6}

    assert isolation_metrics(Degraded()) == {"thyme/sandbox/namespaces": 0.0, "thyme/sandbox/landlock": 1.0,
                                             "thyme/sandbox/seccomp": 1.0, "thyme/sandbox/rlimits": 1.0}


@pytest.mark.slow
def test_grpo_steps_end_to_end(tmp_path, request):
    import io

    from pipelines.core.formats import SourceRow, thyme_rl_table, write_parquet
    from thyme_train.grpo import train
    from thyme_train.tiny import build_tiny_model

    model_dir = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")
    rows = []
    for i, colour in enumerate(["red", "blue"]):           # a released Thyme-RL parquet (base64)
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (200 if colour == "red" else 0, 0, 200 * i)).save(buf, "PNG")
        rows.append(SourceRow("What colour is the image?", [buf.getvalue()], answer=colour,
                              image_path=f"/mnt/data/images/{i}.png", image_size=(320, 240)))
    os.chmod(tmp_path, 0o755)
    write_parquet(thyme_rl_table(rows), tmp_path / "thyme-rl.parquet")
    cfg = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl_tiny.yaml"), [
        f"model={model_dir}", f"data={tmp_path / 'thyme-rl.parquet'}", f"output_dir={tmp_path / 'out'}",
        "max_steps=2", "save_steps=2", "max_new_tokens=120", "sandbox_workers=1", "rollout_samples=3",
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
        # the mechanisms that confined the batch's code (all of them: the strict default)
        assert [r[f"thyme/sandbox/{m}"] for m in MECHANISMS] == [1.0] * len(MECHANISMS)
    # the sandbox's crop reached the training forward pass (prompt image + crop)
    assert 2 in trainer.last_image_counts
    out = tmp_path / "out"
    assert (out / "checkpoint-2").is_dir() and (out / "model.safetensors").is_file()
    assert (out / "curves_rewards.png").stat().st_size > 0 and (out / "curves_tool_use.png").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 2 and summary["tool_call_rate_last"] >= 0.5
    assert summary["data"] == {"prompts": 2, "with_images": 2, "text_only": 0, "images": 2,
                               "quarantined": {}}
    assert summary["sandbox_isolation"]["policy"] == "strict"
    assert summary["sandbox_isolation"]["active"] == list(MECHANISMS)
    # rollouts.jsonl: 3 sampled rollouts of each logged step, every line whole and readable
    samples = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [1, 1, 1, 2, 2, 2]
    for r in samples:
        assert r["origin"] in ("thyme-rl.parquet row 0", "thyme-rl.parquet row 1")
        assert r["solution"] in ("red", "blue") and r["user"].startswith("<image>")
        assert '"/mnt/data/images/' in r["user"] and r["system"]
        assert len(r["images"]) == 1 and not os.path.isabs(r["images"][0])
        assert set(r["rewards"]) == {"accuracy_reward", "format_reward", "consistency_reward"}
        assert r["end_reason"] in END_REASONS and r["turns"] >= 1 and r["completion"]
    # the model folder and its checkpoint carry the prompts the rows were rendered with
    from pipelines.core.prompts import recorded_prompt_set
    recorded = recorded_prompt_set(out)
    assert recorded == recorded_prompt_set(out / "checkpoint-2")
    assert summary["prompt_set"] == recorded.name == "from:thyme-rl.parquet"
    for r in samples:
        i = int(r["origin"].rsplit(" ", 1)[1])
        assert recorded.system == r["system"]
        assert recorded.render_user("What colour is the image?", f"/mnt/data/images/{i}.png",
                                    (320, 240)) == r["user"]
    crops = [c for r in samples for c in r["calls"] if "crop((0, 0, 160, 120))" in c["code"]]
    assert crops, "the scripted crop appears among the sampled rollouts"
    for call in crops:           # the code as the model wrote it, its output: a kept image
        assert call["ok"] and (out / call["images"][0]).is_file()
        assert Image.open(out / call["images"][0]).size == (160, 120)
    scripted = [r for r in samples if any("crop((0, 0, 160, 120))" in c["code"] for c in r["calls"])]
    assert all("<sandbox_output><image></sandbox_output>" in r["completion"] for r in scripted)
    assert all(r["rewards"]["format_reward"] == 1.0 and r["end_reason"] == "answer" for r in scripted)
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
    steps = [json.loads(line)["step"] for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert steps == [1, 1, 1, 2, 2, 2, 3, 3, 3]       # kept up to the checkpoint, then step 3
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == "checkpoint-2"
    # ... with checkpoint-2's policy, not the initial one (transformers' own resume keeps it)
    assert all(torch.equal(start.state[k], saved[k]) for k in saved)
