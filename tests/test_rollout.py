"""The rollout loop and adaptive temperature sampling on the tiny model with the real sandbox."""

import math
import os

import pytest
import torch
from PIL import Image

from pipelines.core.prompts import render_user
from thyme_train.ats import SamplingConfig, SegmentTracker, sample_token, stop_reason
from thyme_train.chat import thyme_messages
from thyme_train.engine import ChatCodec, GenerationRequest
from thyme_train.hf_engine import HFEngine
from thyme_train.rollout import END_REASONS, RolloutConfig, RolloutRunner
from thyme_train.tiny import build_tiny_model

CROP = ("<think>Zoom in.<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 160, 120)).save('/mnt/data/temp_processed_images/crop.png')\n"
        "print('/mnt/data/temp_processed_images/crop.png')\n```\n</code>")
ANSWER = "It is red.</think> <answer>red</answer>"


@pytest.fixture(scope="module")
def tiny(request):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def codec(tiny):
    return ChatCodec(tiny[1])


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rollout") / "input.png"
    Image.new("RGB", (320, 240), (200, 30, 30)).save(path)
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    return str(path)


def make_prompt(codec, image_file, question="What colour is it?"):
    messages = thyme_messages(render_user(question, image_file, (320, 240)))
    return codec.prompt(messages, images=[image_file])


def scripted(codec, turns, only=None):
    """A force callback that writes `turns[t]` in generation call t (then lets the model go on);
    `only`: the (prompt_index, sample_index) pairs it applies to (default: all)."""
    ids = [codec.tokenizer(t, add_special_tokens=False)["input_ids"] for t in turns]

    def force(rollout, tokens):
        if only is not None and (rollout.prompt_index, rollout.sample_index) not in only:
            return None
        if rollout.turns < len(ids) and len(tokens) < len(ids[rollout.turns]):
            return ids[rollout.turns][len(tokens)]
        return None
    return force


def runner(tiny, sandbox, **cfg):
    model, processor = tiny
    config = RolloutConfig(**{"max_new_tokens": 120, **cfg})
    return RolloutRunner(HFEngine(model, processor, config.sampling()), ChatCodec(processor),
                         sandbox, config)


# ---------------------------------------------------------------------------------------------
# Adaptive temperature
# ---------------------------------------------------------------------------------------------

def test_tracker_reads_tags_split_over_tokens():
    t = SegmentTracker()
    assert t.feed("look <co") == [] and not t.inside_code
    assert t.feed("de>x = 1") == ["<code>"] and t.inside_code
    assert t.feed("</CODE>") == ["</code>"] and not t.inside_code
    assert t.feed("</ans") == [] and t.feed("wer>") == ["</answer>"]


def test_stop_rule_shared_by_the_engines():
    never = lambda token: False  # noqa: E731
    assert stop_reason(7, ["</answer>"], {7}, never, 1, 10) == "eos"          # EOS first
    assert stop_reason(5, ["</code>", "</answer>"], {7}, never, 1, 10) == "answer"
    assert stop_reason(5, ["</code>"], {7}, lambda t: True, 10, 10) == "code"
    assert stop_reason(5, [], {7}, lambda t: True, 10, 10) == "watch"
    assert stop_reason(5, ["<code>"], {7}, never, 10, 10) == "length"
    assert stop_reason(5, ["<code>"], {7}, None, 9, 10) is None


def test_sampling_rules():
    logits = torch.tensor([0.0, 3.0, 2.9, 1.0, -1.0])
    none = torch.tensor([], dtype=torch.long)
    g = torch.Generator().manual_seed(0)

    def draws(cfg, context=none, in_code=False, n=300):
        return {sample_token(logits, context, in_code, cfg, g)[0] for _ in range(n)}

    # code: the argmax with probability 1, at any text temperature
    tok, lp, blp, t = sample_token(logits, none, True, SamplingConfig(temperature_text=5.0), g)
    assert (tok, blp, t) == (1, 0.0, 0.0) and math.isclose(lp, float(torch.log_softmax(logits, -1)[1]))
    assert draws(SamplingConfig(top_k=2, top_p=1.0, repetition_penalty=1.0)) == {1, 2}
    # nucleus 0.5: token 1 alone holds ~0.45 of the mass, 1 + 2 pass 0.5
    assert draws(SamplingConfig(top_k=0, top_p=0.5, repetition_penalty=1.0)) == {1, 2}
    # a strong penalty on what the context holds moves the mass elsewhere (text only)
    heavy = SamplingConfig(top_k=1, top_p=1.0, repetition_penalty=100.0)
    assert draws(heavy, context=torch.tensor([1, 2])) == {3}
    assert draws(heavy, context=torch.tensor([1, 2]), in_code=True) == {1}
    assert draws(SamplingConfig(temperature_text=0.0)) == {1}


def test_code_is_greedy_text_is_sampled(tiny, codec, image_file):
    model, processor = tiny
    engine = HFEngine(model, processor, RolloutConfig().sampling())
    prompt = make_prompt(codec, image_file)
    code_open = codec.tokenizer.convert_tokens_to_ids("<code>")
    free = [engine.generate([GenerationRequest(prompt.prompt_ids, prompt.images, 8, seed=s)])[0]
            for s in range(3)]
    assert len({tuple(r.token_ids) for r in free}) > 1          # text varies across seeds
    assert all(t == 1.0 for r in free for t in r.temperatures)
    assert all(b < 0 for r in free for b in r.behaviour_logprobs)   # sampled, not certain
    assert not set(codec.environment_only_ids) & {t for r in free for t in r.token_ids}

    force_code = lambda tokens: code_open if not tokens else None   # noqa: E731
    coded = [engine.generate([GenerationRequest(prompt.prompt_ids, prompt.images, 14, seed=s,
                                                force=force_code)])[0] for s in range(3)]
    assert len({tuple(r.token_ids) for r in coded}) == 1        # inside code: same for any seed
    r = coded[0]
    assert r.in_code[1:] == [True] * (len(r.token_ids) - 1) and r.temperatures[1:] == [0.0] * (len(r.token_ids) - 1)
    assert r.behaviour_logprobs[1:] == [0.0] * (len(r.token_ids) - 1)
    # each code token is the argmax of the model's logits at its position (a fresh forward pass)
    ids = torch.tensor([prompt.prompt_ids + r.token_ids])
    vision = processor.image_processor(images=prompt.images, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=vision["pixel_values"],
                       image_grid_thw=vision["image_grid_thw"],
                       mm_token_type_ids=(ids == codec.image_token_id).long()).logits[0]
    n = len(prompt.prompt_ids)
    logits[:, codec.environment_only_ids] = -math.inf               # never the model's to write
    for k in range(1, len(r.token_ids)):
        step = logits[n + k - 1]
        assert step[r.token_ids[k]] >= step.max() - 1e-4, k
        assert math.isclose(r.logprobs[k], float(torch.log_softmax(step, -1)[r.token_ids[k]]), abs_tol=1e-3)


# ---------------------------------------------------------------------------------------------
# The loop with the sandbox
# ---------------------------------------------------------------------------------------------

def test_forced_crop_runs_and_its_image_comes_back(tiny, codec, image_file, sandbox):
    run = runner(tiny, sandbox, max_new_tokens=120)
    requests = []
    generate = run.engine.generate
    run.engine.generate = lambda reqs: (requests.append(reqs), generate(reqs))[1]
    r, = run.run([make_prompt(codec, image_file)], force=scripted(codec, [CROP, ANSWER]))
    assert (r.end_reason, r.turns, r.code_calls, r.code_errors) == ("answer", 2, 1, 0), r.error
    assert len(r.images) == 2 and len(r.sandbox_image_paths) == 1
    assert r.images[1].size == (160, 120)                        # the crop, back as an image
    second = requests[1][0]
    assert len(second.images) == 2                               # the next input carries it
    grids = tiny[1].image_processor(images=second.images, return_tensors="pt")["image_grid_thw"]
    assert run.engine.last_inputs["pixel_values"][0] == int(grids.prod(-1).sum())
    # the loss mask excludes exactly the sandbox output
    env = [t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if m == 0]
    model_text = codec.decode([t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if m])
    assert codec.decode(env).startswith("<sandbox_output><|vision_start|><|image_pad|>")
    # ... and the end-of-turn token closing the answered turn (not sampled: no loss either)
    assert codec.decode(env).endswith("<|vision_end|></sandbox_output><|im_end|>")
    assert r.completion_ids[-1] == codec.tokenizer.eos_token_id and r.env_mask[-1] == 0
    assert model_text == CROP + ANSWER
    assert sum(t == codec.image_token_id for t in env) == len(env) - 5
    assert all(math.isnan(t) for t, m in zip(r.temperatures, r.env_mask, strict=True) if m == 0)
    # with code_token_loss=mask, the greedy code tokens leave the loss too
    assert sum(r.loss_mask("mask")) < sum(r.loss_mask("train")) == sum(r.env_mask)


def test_code_errors_are_shown_to_the_model(tiny, codec, image_file, sandbox):
    bad = "<think><code>\n```python\nprint(undefined_name)\n```\n</code>"
    r, = runner(tiny, sandbox).run([make_prompt(codec, image_file)],
                                   force=scripted(codec, [bad, ANSWER]))
    assert (r.end_reason, r.code_calls, r.code_errors) == ("answer", 1, 1)
    assert "NameError" in codec.decode([t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if not m])


@pytest.mark.parametrize("reason, turns, cfg", [
    ("answer", [ANSWER], {}),
    ("eos", ["<think>x<|im_end|>"], {}),
    ("turn_cap", [CROP], {"max_turns": 1}),
    ("length", [], {"max_new_tokens": 5}),
    ("image_cap", [CROP], {"max_images": 1}),
    ("repetition", ["ab" * 200], {"max_new_tokens": 400}),
])
def test_end_reasons(tiny, codec, image_file, sandbox, reason, turns, cfg):
    rollouts = runner(tiny, sandbox, **cfg).run([make_prompt(codec, image_file)], num_generations=2,
                                               force=scripted(codec, turns))
    assert [r.end_reason for r in rollouts] == [reason, reason], [r.error for r in rollouts]


def test_failures_end_only_their_sample(tiny, codec, image_file, sandbox, tmp_path):
    good = make_prompt(codec, image_file)
    broken_engine = make_prompt(codec, image_file)
    broken_engine.images = broken_engine.images * 2             # more images than image tokens
    gone = tmp_path / "gone.png"
    Image.new("RGB", (64, 64)).save(gone)
    broken_sandbox = make_prompt(codec, image_file)
    broken_sandbox.image_files = [str(gone)]
    gone.unlink()                                               # the sandbox input vanished
    rollouts = runner(tiny, sandbox, max_new_tokens=120).run(
        [good, broken_engine, broken_sandbox], force=scripted(codec, [CROP, ANSWER]))
    assert [r.end_reason for r in rollouts] == ["answer", "engine_error", "sandbox_error"]
    assert "image tokens" in rollouts[1].error and "not found" in rollouts[2].error
    assert set(END_REASONS) >= {r.end_reason for r in rollouts}


def test_rollback_policy_drops_failed_rounds(tiny, codec, image_file, sandbox):
    bad = "<think><code>\n```python\nprint(undefined_name)\n```\n</code>"
    events = []
    r, = runner(tiny, sandbox, on_code_error="rollback").run(
        [make_prompt(codec, image_file)], force=scripted(codec, [bad, ANSWER]),
        on_event=lambda rollout, kind, payload: events.append(kind))
    assert (r.end_reason, r.code_errors, r.rollbacks, r.turns) == ("answer", 1, 1, 2)
    # the failed round is gone; the turn ends with the end-of-turn token (not model-written)
    assert codec.decode(r.completion_ids) == ANSWER + "<|im_end|>" and r.env_mask[-1] == 0
    assert all(r.env_mask[:-1]) and len(r.env_mask) == len(r.logprobs) == len(r.completion_ids)
    assert events == ["generation", "sandbox", "rollback", "generation", "end"]


def test_the_sandbox_gets_the_prompts_image_files_not_its_text(tiny, codec, image_file, sandbox):
    """The prompt's text names the image as the dataset does (a relative path no file answers
    to); the sandbox gets the row's file, and the model's literal `image_path` points at it."""
    messages = thyme_messages(render_user("What colour is it?", "images/ab/ab12.png", (320, 240)))
    prompt = codec.prompt(messages, images=[image_file])
    assert prompt.image_files == [image_file] and prompt.images[0].size == (320, 240)
    literal = CROP.replace("img = Image.open(image_path)",
                           'image_path = "images/ab/ab12.png"\nimg = Image.open(image_path)')
    r, = runner(tiny, sandbox, max_new_tokens=160).run([prompt], force=scripted(codec, [literal, ANSWER]))
    assert (r.end_reason, r.code_calls, r.code_errors) == ("answer", 1, 0), r.error
    assert len(r.sandbox_image_paths) == 1 and r.images[1].size == (160, 120)
