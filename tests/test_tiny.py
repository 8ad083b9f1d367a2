"""The tiny Qwen2.5-VL builder: offline reload, the chat template, stable Thyme tags, the cache,
determinism, and the vLLM preset's head size."""

import hashlib
import subprocess
import sys

import pytest
import torch
from PIL import Image

from thyme_train.tiny import MARKER, THYME_TAGS, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_reloads_offline_and_runs_with_an_image(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    processor = AutoProcessor.from_pretrained(tiny)
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    # The exact official text: TRL swaps in its training variant only for an exact match.
    assert processor.chat_template == qwen2_5_vl_chat_template
    tok = processor.tokenizer
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= cfg.text_config.vocab_size

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (280, 280), "red")],
                      return_tensors="pt")
    # Small pixel budget: at most 16 merged vision tokens per image.
    assert int((batch["input_ids"] == cfg.image_token_id).sum()) == 16
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)


def test_thyme_tags_are_single_tokens_and_decode_back(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    for tag in THYME_TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    text = ("<think>look<code>\n```python\nprint(2+3)\n```\n</code><sandbox_output>5"
            "</sandbox_output>so</think> <answer>5</answer>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    # A tag never merges with its neighbours, whatever text surrounds it.
    for tag in THYME_TAGS:
        assert tag in pieces
    assert tok.decode(ids) == text


def test_second_build_is_a_noop_and_a_different_build_is_refused(tiny):
    before = {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()}
    assert build_tiny_model(tiny) == tiny
    assert {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()} == before
    with pytest.raises(FileExistsError, match="different tiny model build"):
        build_tiny_model(tiny, seed=1)


def test_refuses_a_directory_that_is_not_a_build(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a tiny model build"):
        build_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_deterministic_for_a_seed(tiny, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _digest(again) == _digest(tiny)
    assert (again / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
    assert _digest(other) != _digest(tiny)
    assert (again / MARKER).exists()


def test_vllm_preset_has_heads_vllm_cpu_accepts(tmp_path):
    from transformers import AutoConfig

    path = build_tiny_model(tmp_path / "v", preset="vllm")
    cfg = AutoConfig.from_pretrained(path)
    text, vision = cfg.text_config, cfg.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim >= 64
    assert vision.hidden_size // vision.num_heads >= 64
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert vision.out_hidden_size == text.hidden_size


@pytest.mark.slow
def test_cli_builds(tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "thyme_train.tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(out))
    assert (out / MARKER).is_file()


def _build_in_child(path):
    build_tiny_model(path)


@pytest.mark.slow
def test_ranks_building_the_same_model_at_once_all_succeed(tmp_path):
    # Every rank of a torchrun launch resolves `tiny:DIR` itself.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    target = tmp_path / "shared"
    children = [ctx.Process(target=_build_in_child, args=(target,)) for _ in range(3)]
    for c in children:
        c.start()
    for c in children:
        c.join(120)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert (target / MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]  # no temporary left behind
