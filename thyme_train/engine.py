"""What a generation engine of the rollout loop (thyme_train.rollout) takes and returns, and the
token-level rendering every engine shares (`ChatCodec`).

    codec = ChatCodec(processor)
    prompt = codec.prompt(messages, images=["photo.jpg"])     # ids, PIL images, sandbox files
    results = engine.generate([GenerationRequest(prompt.prompt_ids, prompt.images, 512, seed=0)])

`Engine.generate(requests)` takes `GenerationRequest`s (the whole context as token ids plus its
images, a token budget, a seed, a `watch` callback to feed each new token to, an optional `force`
callback) and returns, per request, a `GenerationResult` or the exception that request raised.
Engines apply the ATS rule (thyme_train.ats), never emit `ChatCodec.environment_only_ids`
(vision tokens: only the sandbox brings images), call `watch` on every generated token, and end
a call where `thyme_train.ats.stop_reason` says (an engine that cannot stop mid-request may
truncate its output at that token instead). Engines: thyme_train.hf_engine (transformers),
thyme_train.vllm_engine (vLLM, offline or a server).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from sandbox.protocol import IMAGE_TOKEN


@dataclass
class GenerationRequest:
    input_ids: list[int]                  # the whole context: prompt + completion so far
    images: list                          # PIL images of the context's image tokens, in order
    max_new_tokens: int
    seed: int
    watch: Callable[[int], bool] | None = None       # fed each new token; True = stop now
    force: Callable[[list[int]], int | None] | None = None   # tokens of this call so far ->
                                          # a token to force, or None (tests, scripted policies)


@dataclass
class GenerationResult:
    token_ids: list[int]
    logprobs: list[float]                 # the policy's log-prob of each token at T = 1
    behaviour_logprobs: list[float]       # under the distribution actually sampled (0: greedy)
    temperatures: list[float]             # the temperature each token was sampled at
    in_code: list[bool]                   # the token was generated inside <code>…</code>
    finish: str                           # thyme_train.ats.FINISHES: code | answer | eos | length | watch


class Engine(Protocol):
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        ...


@dataclass
class RolloutPrompt:
    prompt_ids: list[int]
    images: list                          # the prompt's images (PIL), in order
    image_files: list[str] = field(default_factory=list)   # the files the sandbox gets: the
                                          # first is `image_path` in the model's code


class ChatCodec:
    """Renders prompts and sandbox outputs into token ids for one processor (Qwen2.5-VL-style:
    each image becomes `<|vision_start|>` + one `<|image_pad|>` per vision token +
    `<|vision_end|>`, as the model's chat template writes it, expanded by the processor)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        vocab = self.tokenizer.get_vocab()
        self.placeholder = (f"<|vision_start|>{self.image_token}<|vision_end|>"
                            if "<|vision_start|>" in vocab else self.image_token)
        self.eos_ids = {i for i in (self.tokenizer.eos_token_id,) if i is not None}
        # Tokens only the environment writes: a policy that samples an image pad (a random
        # model does) would leave image tokens without an image. Engines must never emit them.
        vision = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|video_pad|>")
        self.environment_only_ids = sorted({self.image_token_id} | {vocab[t] for t in vision if t in vocab})

    def prompt(self, messages: list[dict], images: Sequence | None = None) -> RolloutPrompt:
        """A chat (system/user messages; image parts in order, with or without an `image`
        payload) as prompt ids ending in the assistant header. `images` default to the parts'
        payloads; each is a file path or a PIL image, and the files are what the sandbox gets
        (the prompt's text is never read for them)."""
        if images is None:
            images = [part["image"] for m in messages if isinstance(m.get("content"), list)
                      for part in m["content"] if part.get("type") == "image" and part.get("image")]
        files = [os.fspath(img) for img in images if isinstance(img, str | os.PathLike)]
        images = [load_rgb(img) for img in images]
        text = self.processor.apply_chat_template(_strip_payloads(messages), tokenize=False,
                                                  add_generation_prompt=True)
        return RolloutPrompt(self._encode(text, images), images, files)

    def block(self, text: str, images: Sequence = ()) -> list[int]:
        """Token ids of a `<sandbox_output>` block (its `<image>`s become vision tokens)."""
        return self._encode(text.replace(IMAGE_TOKEN, self.placeholder), list(images))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _encode(self, text: str, images: list) -> list[int]:
        if images:   # the processor expands each image's pad token to its vision tokens
            return list(self.processor(text=[text], images=images)["input_ids"][0])
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def load_rgb(img) -> Image.Image:
    """An RGB PIL image from a file path or a PIL image."""
    if isinstance(img, str | os.PathLike):
        with Image.open(img) as opened:
            return opened.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _strip_payloads(messages: list[dict]) -> list[dict]:
    """Messages with bare parts: `{"type": "image"}` and `{"type": "text", "text": …}` (rows
    from `datasets` carry every key of every part, None-filled, which templates misread)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if p.get("type") == "image" else
                       {"type": "text", "text": p.get("text") or ""} for p in content]
        out.append({"role": m["role"], "content": content})
    return out
