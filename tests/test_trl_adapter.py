"""The private TRL / transformers methods thyme_train.trl_adapter overrides, run through the
pinned libraries on the tiny model: if TRL or transformers change what we rely on, these fail."""

import inspect
import math
import os

import pytest
import torch
from PIL import Image

from pipelines.core.prompts import render_user
from thyme_train.chat import thyme_messages
from thyme_train.engine import ChatCodec
from thyme_train.tiny import build_tiny_model
from thyme_train.trl_adapter import GENERATE_FIELDS, StrictResume, grpo_trainer_class

CODE = ("<think>Zoom in.<code>\n```python\nprint('crop.png')\n```\n</code>"
        "<sandbox_output><image></sandbox_output>It is red.</think> <answer>red</answer>")
ANSWER = "It is red.</think> <answer>red</answer>"


@pytest.fixture(scope="module")
def tiny(request):
    return build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")


def _model(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path)


# ------------------------------------------------------------------ Trainer._load_from_checkpoint

def test_load_from_checkpoint_is_still_the_resume_hook():
    from transformers import Trainer

    params = list(inspect.signature(Trainer._load_from_checkpoint).parameters)
    assert params == ["self", "resume_from_checkpoint", "model"]
    assert "self._load_from_checkpoint(resume_from_checkpoint" in inspect.getsource(Trainer.train)


def test_transformers_resume_keeps_the_initial_weights_and_strict_resume_loads_them(tiny, tmp_path):
    """transformers issue #43701 at the pinned version: its own resume loads nothing of a
    Qwen2.5-VL checkpoint. When this starts failing, transformers resumes correctly and
    StrictResume can go."""
    from transformers import Trainer, TrainingArguments

    checkpoint = tmp_path / "checkpoint-1"
    _model(tiny).save_pretrained(checkpoint)
    saved = _model(checkpoint).state_dict()

    def perturbed():
        model = _model(tiny)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return model

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    plain = Trainer(model=perturbed(), args=args)
    plain._load_from_checkpoint(str(checkpoint))
    kept = plain.model.state_dict()
    assert not any(torch.equal(kept[k], saved[k]) for k in saved if "layers.0.mlp" in k)

    class Strict(StrictResume, Trainer):
        pass

    strict = Strict(model=perturbed(), args=args)
    strict._load_from_checkpoint(str(checkpoint))
    loaded = strict.model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_strict_resume_refuses_a_checkpoint_that_does_not_cover_the_model(tiny, tmp_path):
    import safetensors.torch

    from thyme_train.trl_adapter import load_checkpoint_weights

    _model(tiny).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    safetensors.torch.save_file({k: v for k, v in state.items() if "layers.1." not in k}, weights)
    with pytest.raises(ValueError, match=r"does not match the model \(missing \[.*layers\.1\."):
        load_checkpoint_weights(_model(tiny), str(tmp_path))


# ------------------------------------------------------------------ GRPOTrainer._generate

@pytest.fixture(scope="module")
def grpo(tiny, tmp_path_factory):
    """A ThymeGRPOTrainer on the tiny model whose rollout_func returns, for a group of two, a
    completion holding a sandbox image and one without."""
    from datasets import Dataset
    from transformers import AutoProcessor
    from trl import GRPOConfig

    folder = tmp_path_factory.mktemp("adapter")
    image = folder / "input.png"
    Image.new("RGB", (320, 240), (200, 30, 30)).save(image)
    processor = AutoProcessor.from_pretrained(tiny)
    codec = ChatCodec(processor)
    crop = Image.new("RGB", (160, 120), (10, 200, 10))
    calls = []

    def rollout_func(prompts, trainer):
        encoded = [codec.prompt(messages) for messages in prompts]
        calls.append(encoded)
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "rollout_images": [],
               "prompt_image_count": []}
        for k, p in enumerate(encoded):
            text, extra = (CODE, [crop]) if k == 0 else (ANSWER, [])
            ids = codec.block(text, extra) + [codec.tokenizer.eos_token_id]
            out["prompt_ids"].append(p.prompt_ids)
            out["completion_ids"].append(ids)
            out["logprobs"].append([0.0] * len(ids))
            out["rollout_images"].append(p.images + extra)
            out["prompt_image_count"].append(len(p.images))
        return out

    def zero_reward(completions, **kwargs):
        return [0.0] * len(completions)

    row = {"prompt": thyme_messages(render_user("Colour?", "images/input.png", (320, 240))),
           "images": [str(image)], "solution": "red"}
    args = GRPOConfig(output_dir=str(folder / "out"), per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=256, report_to="none",
                      use_cpu=True, bf16=False, beta=0.0, remove_unused_columns=False,
                      vllm_importance_sampling_mode="token_truncate",
                      vllm_importance_sampling_clip_max=2.0)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = grpo_trainer_class()(model=_model(tiny), processing_class=processor, args=args,
                                   reward_funcs=[zero_reward], rollout_func=rollout_func,
                                   train_dataset=Dataset.from_list([row, row]))
    return trainer, [row, row], codec, calls


def test_generate_still_returns_the_fields_we_read(grpo):
    from trl import GRPOTrainer

    assert "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, " \
           "images, tool_images" in inspect.getsource(GRPOTrainer._generate)
    assert len(GENERATE_FIELDS) == 8


def test_sandbox_images_reach_the_training_forward_pass(grpo):
    trainer, rows, codec, calls = grpo
    out = trainer._generate_and_score_completions(rows)
    # the rollout got the row's image file (TRL put it into the prompt's image part)
    assert calls[-1][0].image_files == rows[0]["images"]
    # the crop completion holds the prompt image and the crop, the other the prompt image only
    assert trainer.last_image_counts == [2, 1] and out["num_images"] == [2, 1]
    assert out["image_grid_thw"].shape[0] == 3
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    assert int(out["mm_token_type_ids"].sum()) == int((ids == codec.image_token_id).sum())
    vision = codec.processor.image_processor(images=[Image.open(rows[0]["images"][0]).convert("RGB")],
                                             return_tensors="pt")
    assert torch.equal(out["image_grid_thw"][0], vision["image_grid_thw"][0])


def test_a_completion_whose_images_do_not_match_its_tokens_fails_loudly(grpo):
    trainer, rows, codec, _ = grpo
    rollout_func = trainer.rollout_func

    def one_image_short(prompts, t):
        out = rollout_func(prompts, t)
        out["rollout_images"][0] = out["rollout_images"][0][:1]       # the crop lost
        out["prompt_image_count"][0] = 0
        return out

    trainer.rollout_func = one_image_short
    try:
        with pytest.raises(RuntimeError, match="completion 0: .* image tokens but its 1 image"):
            trainer._generate_and_score_completions(rows)
    finally:
        trainer.rollout_func = rollout_func


# ------------------------------------------------------------------ use_vllm: TRL's IS correction

def test_what_reads_use_vllm_in_trl_is_what_we_reviewed():
    """Setting `use_vllm` after construction turns on TRL's importance-sampling correction; the
    other readers are TRL's own generation and tool loop, which the rollout_func path never
    runs (`_generate` takes the rollout_func branch first; ThymeGRPOTrainer empties `tools`).
    A new reader in a TRL upgrade fails here and must be reviewed."""
    from trl import GRPOTrainer

    readers = sorted(name for name, fn in inspect.getmembers(GRPOTrainer, inspect.isfunction)
                     if any(k in inspect.getsource(fn) for k in
                            ("self.use_vllm", "self.vllm_generation", "_last_loaded_step")))
    assert readers == ["__init__", "_compute_loss", "_generate", "_generate_and_score_completions",
                       "_generate_single_turn", "_tool_call_loop"]
    source = inspect.getsource(GRPOTrainer._generate)
    assert source.index("if self.rollout_func is not None:") < source.index("_generate_single_turn(")


def test_importance_sampling_ratio_is_trls_on_our_behaviour_logprobs(grpo):
    trainer, rows, codec, _ = grpo
    assert trainer.use_vllm and trainer.args.use_vllm is False       # TRL started no vLLM
    trainer.vllm_generation.sync_weights()                           # TRL's sync call: ours is elsewhere
    with pytest.raises(RuntimeError, match="owns the engine"):
        trainer.vllm_generation.generate()
    rollout_func = trainer.rollout_func

    def behaviour(prompts, t):      # first completion: behaviour log-prob 0 (greedy); second: NaN
        out = rollout_func(prompts, t)
        out["logprobs"][1] = [math.nan] * len(out["logprobs"][1])
        return out

    trainer.rollout_func = behaviour
    try:
        out = trainer._generate_and_score_completions(rows)
    finally:
        trainer.rollout_func = rollout_func
    mask = out["completion_mask"].bool()
    ratio = out["importance_sampling_ratio"]
    policy = out["old_per_token_logps"].exp()
    # token_truncate: min(pi / mu, cap) per token; mu = 1 gives pi itself
    assert torch.allclose(ratio[0][mask[0]], policy[0][mask[0]].clamp(max=2.0))
    assert torch.all(ratio[1][mask[1]] == 1.0)                       # NaN: left uncorrected
    assert any("sampling/importance_sampling_ratio/mean" in logged     # the ratio's statistics
               for logged in trainer._metrics.values())
