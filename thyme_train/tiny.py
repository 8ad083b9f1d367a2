"""A tiny Qwen2.5-VL built offline: the default model for tests and the demo.

The architecture is the real one (`Qwen2_5_VLForConditionalGeneration`) with random weights and
a byte-level BPE tokenizer trained here on a small built-in corpus, the Qwen special tokens first
(STACK.md). It carries the official Qwen2.5-VL chat template (TRL's copy, so TRL recognises it)
and a small pixel budget, and reloads offline with `AutoProcessor` /
`AutoModelForImageTextToText`.

    python -m thyme_train.tiny --out DIR [--preset default|vllm|deep] [--seed 0]

Building is deterministic for a (preset, seed) pair, and building into a directory that already
holds the same build is a no-op. Preset `vllm` uses head_dim 64, which vLLM's CPU attention needs; `deep` is `vllm` with four text
layers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

# Qwen2.5's special tokens, in the real model's order (ids differ: ours start at 0).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# The Thyme tags become single (non-special) tokens, so they never merge with neighbouring text
# and every tag boundary is a token boundary; decoding keeps them.
THYME_TAGS = ["<think>", "</think>", "<code>", "</code>", "<sandbox_output>", "</sandbox_output>",
              "<answer>", "</answer>"]

MARKER = "thyme_tiny.json"  # written last: its presence means the build is complete
TINY_PREFIX = "tiny:"       # a config's `model: tiny:DIR` means this model, built into DIR

PRESETS = {
    # ~0.3M parameters: fast forward/backward on CPU for tests (STACK.md).
    "default": dict(
        vocab_size=1024,
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3]),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2),
    ),
    # head_dim 64 (text and vision): vLLM's CPU attention rejects smaller heads.
    "vllm": dict(
        vocab_size=1024,
        text=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, mrope_section=[8, 12, 12]),
        vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2),
    ),
    # `vllm` with four text layers: the tool-use learning check's model, where copying numbers
    # (an induction-style circuit) formed within fewer steps than with two (docs/benchmarks.md).
    "deep": dict(
        vocab_size=1024,
        text=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, mrope_section=[8, 12, 12]),
        vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2),
    ),
}
# Small pixel budget: 4 to 16 vision tokens per image (28x28 pixels per merged token).
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16 * 28 * 28


def resolve_model(name: str) -> str:
    """A config's `model`: `tiny:DIR` is the tiny model built into DIR (built if missing);
    anything else (a checkpoint directory, a hub id) is itself."""
    if name.startswith(TINY_PREFIX):
        return str(build_tiny_model(name[len(TINY_PREFIX):]))
    return name


def build_tiny_model(out_dir: str | os.PathLike, preset: str = "default", seed: int = 0) -> Path:
    """Build (or reuse) a tiny Qwen2.5-VL in `out_dir`; returns the directory."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = Path(out_dir)
    wanted = {"preset": preset, "seed": seed, "version": 1}
    marker = out / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found == wanted:
            return out
        raise FileExistsError(f"{out} holds a different tiny model build ({found}); wanted "
                              f"{wanted}: choose another directory or delete it")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a tiny model build: refusing to overwrite")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory is meant to be shared
    try:
        _build(tmp, PRESETS[preset], seed)
        (tmp / MARKER).write_text(json.dumps(wanted, indent=1) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        try:
            if out.exists():
                out.rmdir()  # empty (checked above), unless another process just built it
            os.replace(tmp, out)
        except OSError:
            # Another process finished the same build first: keep theirs.
            if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build(out: Path, spec: dict, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tokenizer(spec["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text, vision = spec["text"], spec["vision"]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text["num_key_value_heads"],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": text["mrope_section"]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision["depth"], hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"], num_heads=vision["num_heads"],
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            out_hidden_size=text["hidden_size"], fullatt_block_indexes=[vision["depth"] - 1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    # The generator is seeded locally so building never disturbs (or depends on) global RNG use.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out)

    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        chat_template=official_chat_template(),
    )
    processor.save_pretrained(out)


def official_chat_template() -> str:
    """The official Qwen2.5-VL chat template, from TRL's copy (read as a file: importing TRL
    costs seconds); TRL recognises this exact text and swaps in its training variant."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        raise ImportError("trl is not installed: it ships the Qwen2.5-VL chat template")
    return (Path(spec.origin).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text(
        encoding="utf-8")


def build_tokenizer(vocab_size: int):
    """A byte-level BPE `Qwen2Tokenizer` trained on the built-in corpus (deterministic)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Train with Qwen2's own pre-tokenization so the merges fit the tokenizer that uses them.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]

    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, unk_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               model_max_length=32768)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS]})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THYME_TAGS])
    return tokenizer


def _corpus() -> list[str]:
    """Text like what the tiny model will see: prompts, the tag protocol, Python, numbers."""
    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, OUTPUT_FORMAT, render_user

    examples = Path(__file__).resolve().parent.parent / "sandbox" / "examples"
    code = [p.read_text() for p in sorted(examples.glob("*.py"))]
    words = ["crop", "zoom", "rotate", "contrast", "region", "image", "answer", "question", "the", "a", "of", "to", "in", "is", "what", "color", "text", "number", "left", "right", "top", "bottom", "object", "sign", "chart", "value", "total"]
    lines = [DEFAULT_SYSTEM_PROMPT, OUTPUT_FORMAT]
    for i in range(200):
        question = f"What is the {words[i % len(words)]} of the {words[(i * 7) % len(words)]}?"
        lines.append(render_user(question, f"/data/images/{i:05d}.jpg", (100 + i, 80 + 3 * i)))
        lines.append(
            f"<think>I will {words[i % 9]} the image.<code>\n```python\nfrom PIL import Image\n"
            f"img = Image.open(image_path)\nbox = ({i}, {2 * i}, {i + 64}, {2 * i + 64})\n"
            f"img.crop(box).save('/mnt/data/temp_processed_images/crop_{i}.jpg')\n"
            f"print({i} * {i + 3})\n```\n</code><sandbox_output>{i * (i + 3)}</sandbox_output>"
            f"The result is {i * (i + 3)}.</think> <answer>{words[(i * 3) % len(words)]}</answer>")
    return lines + code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to build into (reused if built)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, args.preset, args.seed)
    print(path)


if __name__ == "__main__":
    main()
