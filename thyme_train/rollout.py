"""The Thyme rollout loop (GRPO-ATS, THYME.md §4; shared with inference and evaluation): each
sample alternates generation and sandbox execution until it answers.

    codec = ChatCodec(processor)
    engine = HFEngine(model, processor, config.sampling())        # or a vLLM engine
    runner = RolloutRunner(engine, codec, sandbox, config)
    rollouts = runner.run([codec.prompt(messages, image_path=...)], num_generations=4)

Per sample: one sandbox session (variables persist across its code blocks). A generation call
ends after `</code>` (the code then runs and its `<sandbox_output>` — image tokens for images,
the printed text, or the error — is appended as environment tokens), after `</answer>`, at EOS,
at its token budget, or when the repetition detector fires. Every sample ends with one of
END_REASONS; an engine or sandbox failure ends only the sample it hit.

The engine interface is small so a vLLM engine can plug in: `generate(requests)` takes
`GenerationRequest`s (the whole context as token ids plus its images, a token budget, a seed, a
`watch` callback to feed each new token to, an optional `force` callback) and returns, per
request, a `GenerationResult` or the exception that request raised. Engines must apply the ATS
rule (thyme_train.ats), never emit `ChatCodec.environment_only_ids` (vision tokens: only the
sandbox brings images), and call `watch` on every generated token, stopping when it returns True
(an engine that cannot stop mid-request may truncate its output at that token instead).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from pipelines.core.prompts import parse_user
from sandbox.protocol import IMAGE_TOKEN, extract_code, render_output
from sandbox.result import INTERNAL
from thyme_train.ats import ATSLogitsProcessor, ATSStoppingCriteria, RowState, SamplingConfig
from thyme_train.config import doc
from thyme_train.repetition import RepetitionDetector

END_REASONS = (
    "answer",         # wrote </answer>
    "eos",            # ended its turn without an answer
    "turn_cap",       # used its last generation call on code (max_turns)
    "length",         # the token budget (per call or in total) ran out
    "image_cap",      # a sandbox result would exceed the images one rollout may hold
    "repetition",     # the repetition detector fired
    "engine_error",   # the generation engine failed on this sample
    "sandbox_error",  # the sandbox itself failed (not the model's code: that is shown to it)
)
CODE_TOKEN_LOSS = ("train", "mask")
CODE_ERROR_POLICIES = ("show", "rollback")


@dataclass
class RolloutConfig:
    """The rollout loop. GPU defaults are the paper's (THYME.md §4)."""

    max_turns: int = doc("generation calls per rollout (the paper's ~5: two code executions "
                         "and an answer, with room for a retry)", default=5)
    max_new_tokens: int = doc("new tokens per generation call (paper: 3,196)", default=3196)
    max_total_tokens: int = doc("prompt + completion tokens, sandbox outputs included (paper: "
                                "10,240)", default=10240)
    max_images: int = doc("images one rollout may hold, the input image included; keep it <= "
                          "the engine's per-prompt image limit (vLLM limit_mm_per_prompt)",
                          default=8)
    max_output_chars: int = doc("printed sandbox text kept in the model's context (longer "
                                "output is cut and marked)", default=4000)
    sandbox_timeout: float = doc("seconds one code block may run (the original: 10)", default=10.0)
    temperature_text: float = doc("sampling temperature of reasoning text", default=1.0)
    top_p: float = doc("nucleus mass for text", default=0.9)
    top_k: int = doc("top-k for text (0 = off)", default=50)
    repetition_penalty: float = doc("repetition penalty for text (1 = off)", default=1.05)
    temperature_code: float = doc("sampling temperature inside <code>…</code> (0 = greedy)",
                                  default=0.0)
    repetition_threshold: float = doc("stop a rollout when one substring's repeats cover more "
                                      "than this share of its generated tokens", default=0.5)
    repetition_min_repeats: int = doc("occurrences a substring needs to count as a loop",
                                      default=3)
    repetition_max_len: int = doc("longest loop period detected, tokens", default=1024)
    code_token_loss: str = doc(
        "how the loss treats code tokens sampled greedily: `train` (the original: trained as "
        "if sampled at the text temperature — off-policy, the gradient of a token the policy "
        "did not sample, but code keeps improving from the reward) or `mask` (no loss on them: "
        "the policy-gradient estimate stays on-policy, but code is then only learned in SFT)",
        default="train")
    on_code_error: str = doc(
        "a code block that fails: `show` the error to the model (RL, as the paper) or "
        "`rollback` (the original evaluation): drop that round and generate it again with a "
        "new seed; the dropped round still counts toward max_turns", default="show")
    seed: int = doc("base seed; each sample of each call gets its own", default=0)

    def __post_init__(self):
        if self.on_code_error not in CODE_ERROR_POLICIES:
            raise ValueError(f"on_code_error must be one of {CODE_ERROR_POLICIES}, got "
                             f"{self.on_code_error!r}")
        if self.code_token_loss not in CODE_TOKEN_LOSS:
            raise ValueError(f"code_token_loss must be one of {CODE_TOKEN_LOSS}, got "
                             f"{self.code_token_loss!r}")
        if self.max_turns < 1 or self.max_new_tokens < 1 or self.max_images < 0:
            raise ValueError("max_turns and max_new_tokens must be >= 1, max_images >= 0")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature_text, self.top_p, self.top_k,
                              self.repetition_penalty, self.temperature_code)


# ---------------------------------------------------------------------------------------------
# Engine interface
# ---------------------------------------------------------------------------------------------

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
    finish: str                           # code | answer | eos | length | watch


class Engine(Protocol):
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        ...


# ---------------------------------------------------------------------------------------------
# Token-level rendering shared by every engine
# ---------------------------------------------------------------------------------------------

@dataclass
class RolloutPrompt:
    prompt_ids: list[int]
    images: list                          # the prompt's images (PIL), in order
    image_path: str | None = None         # the input image file the sandbox gets (`image_path`)


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

    def prompt(self, messages: list[dict], images: Sequence | None = None,
               image_path: str | None = None) -> RolloutPrompt:
        """A chat (system/user messages; image parts in order, with or without an `image`
        payload) as prompt ids ending in the assistant header. `images` default to the parts'
        payloads; `image_path` to the prompt's "User Image Path" when that file exists."""
        if images is None:
            images = [part["image"] for m in messages if isinstance(m.get("content"), list)
                      for part in m["content"] if part.get("type") == "image" and part.get("image")]
        images = [_rgb(img) for img in images]
        text = self.processor.apply_chat_template(_strip_payloads(messages), tokenize=False,
                                                  add_generation_prompt=True)
        ids = self._encode(text, images)
        if image_path is None:
            user = next((m for m in messages if m["role"] == "user"), None)
            content = user["content"] if user else ""
            if isinstance(content, list):
                content = "".join(p.get("text") or "" for p in content)
            path = parse_user(content)[1].get("original_path")
            image_path = path if path and os.path.isfile(path) else None
        return RolloutPrompt(ids, images, image_path)

    def block(self, text: str, images: Sequence = ()) -> list[int]:
        """Token ids of a `<sandbox_output>` block (its `<image>`s become vision tokens)."""
        return self._encode(text.replace(IMAGE_TOKEN, self.placeholder), list(images))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _encode(self, text: str, images: list) -> list[int]:
        if images:   # the processor expands each image's pad token to its vision tokens
            return list(self.processor(text=[text], images=images)["input_ids"][0])
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


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


def _rgb(img) -> Image.Image:
    if isinstance(img, str | os.PathLike):
        with Image.open(img) as opened:
            return opened.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    """One sample: the completion (model and sandbox tokens), per-token records, how it ended."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)       # 1: written by the model; 0: sandbox
    logprobs: list[float] = field(default_factory=list)     # policy log-prob (0.0 on sandbox tokens)
    behaviour_logprobs: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)  # NaN on sandbox tokens
    in_code: list[bool] = field(default_factory=list)
    images: list = field(default_factory=list)               # the prompt's, then the sandbox's
    sandbox_texts: list[str] = field(default_factory=list)   # printed text of each successful run
    sandbox_image_paths: list[str] = field(default_factory=list)
    code_calls: int = 0
    code_errors: int = 0
    rollbacks: int = 0                                        # failed rounds dropped (rollback)
    turns: int = 0                                            # generation calls made
    end_reason: str = ""
    error: str = ""                                           # what failed, for engine/sandbox errors
    seed: int = 0

    def loss_mask(self, code_token_loss: str = "train") -> list[int]:
        """`env_mask`, plus (with `mask`) greedily sampled code tokens excluded."""
        if code_token_loss == "train":
            return list(self.env_mask)
        return [0 if (m and code and t == 0.0) else m
                for m, code, t in zip(self.env_mask, self.in_code, self.temperatures, strict=True)]

    @property
    def sandbox_image_count(self) -> int:
        return len(self.sandbox_image_paths)


@dataclass
class _Sample:
    rollout: Rollout
    prompt: RolloutPrompt
    detector: RepetitionDetector
    session: object = None
    done: bool = False


class RolloutRunner:
    """Runs rollouts of an `Engine` with a `Sandbox` (one session per sample)."""

    def __init__(self, engine: Engine, codec: ChatCodec, sandbox, config: RolloutConfig | None = None):
        self.engine, self.codec, self.sandbox = engine, codec, sandbox
        self.config = config or RolloutConfig()
        self._seeds = itertools.count()
        self._on_event: Callable = lambda *a: None
        limit = getattr(engine, "max_images_per_prompt", None)
        self.max_images = min(self.config.max_images, limit) if limit else self.config.max_images

    def run(self, prompts: Sequence[RolloutPrompt], num_generations: int = 1,
            force: Callable[[Rollout, list[int]], int | None] | None = None,
            on_event: Callable[[Rollout, str, object], None] | None = None) -> list[Rollout]:
        """`num_generations` rollouts per prompt, in prompt order. `force(rollout, tokens of
        this call)` may return a token to force (scripted policies in tests). `on_event(rollout,
        kind, payload)` follows the samples live (transcripts): kind `generation` (the call's
        `GenerationResult`), `sandbox` (the sandbox `Result`), `rollback` (the dropped ids),
        `end` (the end reason)."""
        cfg = self.config
        self._on_event = on_event or (lambda *a: None)
        samples = []
        for p_index, prompt in enumerate(prompts):
            for g in range(num_generations):
                seed = cfg.seed * 1_000_003 + next(self._seeds)
                r = Rollout(p_index, g, list(prompt.prompt_ids), images=list(prompt.images), seed=seed)
                det = RepetitionDetector(threshold=cfg.repetition_threshold,
                                         min_repeats=cfg.repetition_min_repeats,
                                         max_len=cfg.repetition_max_len)
                samples.append(_Sample(r, prompt, det))
        try:
            for s in samples:
                if len(s.rollout.images) > self.max_images:
                    self._end(s, "image_cap", f"the prompt has {len(s.rollout.images)} images "
                                              f"> {self.max_images}")
            while active := [s for s in samples if not s.done]:
                self._generate(active, force)
                runnable = [s for s in active if not s.done]
                if runnable:
                    self._execute(runnable)
        finally:
            for s in samples:
                self._close(s)
        return [s.rollout for s in samples]

    # -- one generation call for every active sample -------------------------------------------

    def _generate(self, active: list[_Sample], force) -> None:
        cfg, requests, asking = self.config, [], []
        for s in active:
            r = s.rollout
            budget = min(cfg.max_new_tokens, cfg.max_total_tokens - len(r.prompt_ids) - len(r.completion_ids))
            if budget <= 0:
                self._end(s, "length", "no token budget left")
                continue
            requests.append(GenerationRequest(
                r.prompt_ids + r.completion_ids, list(r.images), budget, seed=r.seed * 31 + r.turns,
                watch=s.detector.feed,
                force=(lambda tokens, r=r: force(r, tokens)) if force is not None else None))
            asking.append(s)
        if not requests:
            return
        try:
            results = self.engine.generate(requests)
            if len(results) != len(requests):
                raise RuntimeError(f"the engine returned {len(results)} results for {len(requests)} requests")
        except Exception as exc:  # noqa: BLE001  the whole call failed: every sample in it ends
            results = [exc] * len(requests)
        for s, req, res in zip(asking, requests, results, strict=True):
            r = s.rollout
            if isinstance(res, BaseException):
                self._end(s, "engine_error", f"{type(res).__name__}: {res}")
                continue
            r.turns += 1
            self._on_event(r, "generation", res)
            n = len(res.token_ids)
            r.completion_ids += res.token_ids
            r.env_mask += [1] * n
            r.logprobs += res.logprobs
            r.behaviour_logprobs += res.behaviour_logprobs
            r.temperatures += res.temperatures
            r.in_code += res.in_code
            if res.finish == "answer" and self.codec.tokenizer.eos_token_id is not None:
                # The call stops at </answer>; the turn still ends with the end-of-turn token, so
                # the completion reads as finished (TRL counts one without it as truncated). It
                # was not sampled: added like an environment token (no loss, no log-prob).
                self._append_environment(r, [self.codec.tokenizer.eos_token_id])
            if res.finish in ("answer", "eos"):
                self._end(s, res.finish)
            elif res.finish == "watch":
                f = s.detector.finding
                self._end(s, "repetition", f"a {f.length}-token substring repeated {f.occurrences} "
                                           f"times covers {f.coverage:.0%} of the output" if f else "")
            elif res.finish == "length":
                self._end(s, "length", f"the generation call used its {req.max_new_tokens} tokens")
            elif res.finish != "code":
                self._end(s, "engine_error", f"unknown finish {res.finish!r}")

    # -- run the code blocks that just closed --------------------------------------------------

    def _execute(self, runnable: list[_Sample]) -> None:
        def run(s: _Sample):
            code = extract_code(self.codec.decode(self._last_call_tokens(s.rollout)))
            if s.session is None:
                inputs = [s.prompt.image_path] if s.prompt.image_path else []
                s.session = self.sandbox.session(inputs=inputs, timeout=self.config.sandbox_timeout)
            return s.session.run(code if code is not None else "")

        workers = max(1, min(len(runnable), getattr(self.sandbox, "workers", 1) * 2))
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(run, s) for s in runnable]
            outcomes = []
            for fut in futures:
                try:
                    outcomes.append(fut.result())
                except Exception as exc:  # noqa: BLE001  the sandbox failed for this sample only
                    outcomes.append(exc)
        for s, result in zip(runnable, outcomes, strict=True):
            self._append_result(s, result)

    def _append_result(self, s: _Sample, result) -> None:
        cfg, r = self.config, s.rollout
        r.code_calls += 1
        if isinstance(result, BaseException):
            self._end(s, "sandbox_error", f"{type(result).__name__}: {result}")
            return
        if result.error is not None and result.error.kind == INTERNAL:
            self._end(s, "sandbox_error", result.error.message)
            return
        self._on_event(r, "sandbox", result)
        if not result.ok and cfg.on_code_error == "rollback":
            r.code_errors += 1
            r.rollbacks += 1
            cut = len(r.completion_ids) - len(self._last_call_tokens(r))
            self._on_event(r, "rollback", r.completion_ids[cut:])
            for name in ("completion_ids", "env_mask", "logprobs", "behaviour_logprobs",
                         "temperatures", "in_code"):
                del getattr(r, name)[cut:]
            # the repetition detector keeps the dropped tokens: failing the same way again
            # and again is still a loop
            if r.turns >= cfg.max_turns:
                self._end(s, "turn_cap", f"{r.turns} generation calls ({r.rollbacks} rolled back)")
            return
        images = []
        if result.ok:
            if len(r.images) + len(result.images) > self.max_images:
                self._end(s, "image_cap", f"{len(r.images)} + {len(result.images)} images > "
                                          f"{self.max_images}")
                return
            try:
                images = [_rgb(p) for p in result.images]
            except OSError as exc:
                self._end(s, "sandbox_error", f"a produced image does not load: {exc}")
                return
            if not result.images:
                r.sandbox_texts.append(result.text or "")
        else:
            r.code_errors += 1
        if result.text and len(result.text) > cfg.max_output_chars:
            result = dataclasses.replace(result, text=result.text[:cfg.max_output_chars] + " …[cut]")
        self._append_environment(r, self.codec.block(render_output(result), images))
        r.images += images
        r.sandbox_image_paths += list(result.images) if result.ok else []
        if len(r.prompt_ids) + len(r.completion_ids) >= cfg.max_total_tokens:
            self._end(s, "length", "the sandbox output filled the token budget")
        elif r.turns >= cfg.max_turns:
            self._end(s, "turn_cap", f"{r.turns} generation calls")

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _append_environment(r: Rollout, ids: list[int]) -> None:
        """Tokens the model did not write (sandbox outputs, the closing end-of-turn): no loss."""
        r.completion_ids += ids
        r.env_mask += [0] * len(ids)
        r.logprobs += [0.0] * len(ids)
        r.behaviour_logprobs += [0.0] * len(ids)
        r.temperatures += [math.nan] * len(ids)
        r.in_code += [False] * len(ids)

    @staticmethod
    def _last_call_tokens(r: Rollout) -> list[int]:
        """The model tokens since the last sandbox output (the call that wrote this code)."""
        i = len(r.env_mask)
        while i > 0 and r.env_mask[i - 1] == 1:
            i -= 1
        return r.completion_ids[i:]

    def _end(self, s: _Sample, reason: str, error: str = "") -> None:
        s.done = True
        s.rollout.end_reason = reason
        if reason in ("engine_error", "sandbox_error") or error:
            s.rollout.error = error
        self._close(s)
        self._on_event(s.rollout, "end", reason)

    @staticmethod
    def _close(s: _Sample) -> None:
        if s.session is not None:
            try:
                s.session.close()
            except Exception:  # noqa: BLE001, S110  closing a dead session must not fail a batch
                pass
            s.session = None


# ---------------------------------------------------------------------------------------------
# The transformers engine (CPU tests, the demo, small GPUs)
# ---------------------------------------------------------------------------------------------

class HFEngine:
    """`model.generate` with the ATS processor; requests are batched (left-padded) and a batch
    that fails is retried one request at a time, so one bad request fails alone."""

    def __init__(self, model, processor, sampling: SamplingConfig | None = None, batch_size: int = 8):
        self.model, self.processor = model, processor
        self.sampling = sampling or SamplingConfig()
        self.batch_size = batch_size
        self.codec = ChatCodec(processor)
        self.tokenizer = self.codec.tokenizer
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | self.codec.eos_ids
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.last_inputs: dict[str, tuple] = {}       # shapes of the last batch's model inputs

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        out: list[GenerationResult | BaseException] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            try:
                out += self._batch(chunk)
            except Exception:  # noqa: BLE001  find the request that fails; the others go on
                for req in chunk:
                    try:
                        out += self._batch([req])
                    except Exception as exc:  # noqa: BLE001
                        out.append(exc)
        return out

    def _batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        ip = self.processor.image_processor
        merge = getattr(ip, "merge_size", 1) ** 2
        flat, grids = [], []
        for k, req in enumerate(requests):
            want = 0
            if req.images:
                vision = ip(images=req.images, return_tensors="pt")
                flat.append(vision["pixel_values"])
                grids.append(vision["image_grid_thw"])
                want = int(vision["image_grid_thw"].prod(-1).sum()) // merge
            have = sum(1 for t in req.input_ids if t == self.codec.image_token_id)
            if have != want:
                raise ValueError(f"request {k}: {have} image tokens in the context but its "
                                 f"{len(req.images)} image(s) make {want}")
        width = max(len(r.input_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.input_ids):] = torch.tensor(r.input_ids)
            mask[i, width - len(r.input_ids):] = 1
        kwargs = {"input_ids": ids, "attention_mask": mask,
                  "mm_token_type_ids": (ids == self.codec.image_token_id).long() * mask}
        if flat:
            kwargs["pixel_values"] = torch.cat(flat)
            kwargs["image_grid_thw"] = torch.cat(grids)
        device = next(self.model.parameters()).device
        rows = [RowState(max_new_tokens=r.max_new_tokens,
                         generator=torch.Generator(device=device).manual_seed(r.seed),
                         watch=r.watch, force=r.force) for r in requests]
        processor = ATSLogitsProcessor(rows, self.sampling, self.codec.environment_only_ids)
        stopper = ATSStoppingCriteria(rows, lambda t: self.tokenizer.decode(t), self.eos_ids)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        self.last_inputs = {k: tuple(v.shape) for k, v in kwargs.items()}   # for inspection
        with torch.no_grad():
            self.model.generate(
                **kwargs, max_new_tokens=max(r.max_new_tokens for r in requests), do_sample=False,
                logits_processor=[processor], stopping_criteria=[stopper],
                pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids), temperature=None,
                top_k=None, top_p=None, repetition_penalty=None, use_cache=True)
        return [GenerationResult(row.tokens, row.logprobs, row.behaviour_logprobs, row.temperatures,
                                 row.in_code, row.finish or "length") for row in rows]


def save_prompt_image(image: Image.Image, directory: str | None = None) -> str:
    """Write a prompt image to a file the sandbox can read (prompts without a usable
    "User Image Path"); returns the path."""
    fd, path = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(fd)
    image.save(path)
    os.chmod(path, 0o644)
    return path
