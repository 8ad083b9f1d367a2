"""The Thyme rollout loop (GRPO-ATS, THYME.md §4; shared with inference and evaluation): each
sample alternates generation and sandbox execution until it answers.

    codec = ChatCodec(processor)                                  # thyme_train.engine
    engine = HFEngine(model, processor, config.sampling())        # or thyme_train.vllm_engine
    runner = RolloutRunner(engine, codec, sandbox, config)
    rollouts = runner.run([codec.prompt(messages, images=["photo.jpg"])], num_generations=4)

Per sample: one sandbox session (variables persist across its code blocks) given the prompt's
image files (`RolloutPrompt.image_files`; the first is `image_path` in the model's code, and the
sandbox points a literal `image_path = "..."` at it too). A generation call ends after `</code>`
(the code then runs and its `<sandbox_output>` — image tokens for images, the printed text, or
the error — is appended as environment tokens), after `</answer>`, at EOS, at its token budget,
or when the repetition detector fires. Every sample ends with one of END_REASONS; an engine or
sandbox failure ends only the sample it hit. Engines plug in through thyme_train.engine.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sandbox.protocol import extract_code, render_output
from sandbox.result import INTERNAL
from thyme_train.ats import SamplingConfig
from thyme_train.config import doc
from thyme_train.engine import ChatCodec, Engine, GenerationRequest, RolloutPrompt, load_rgb
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
CODE_TOKEN_LOSS = ("train", "mask", "correct")
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
    sandbox_isolation: str | None = doc(
        "sandbox isolation policy: `strict` (every mechanism) or the minimum to run with, e.g. "
        "`landlock+seccomp+rlimits` in a container that denies namespaces (docs/sandbox.md); "
        "null: $THYME_SANDBOX_ISOLATION, else strict", default=None)
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
        "how the loss treats code tokens sampled greedily (the policy did not sample them: the "
        "behaviour distribution put all its mass on the argmax): `train` (the original: trained "
        "as if sampled from the policy, importance ratio 1 — off-policy, but code keeps "
        "improving from the reward), `mask` (no loss on them: the estimate stays on-policy, but "
        "code is then only learned in SFT) or `correct` (importance-weighted as the greedy "
        "behaviour they came from: ratio = the policy's probability of the token, truncated "
        "like every ratio; needs importance_sampling on, token level)",
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
        if self.sandbox_isolation is not None:
            from sandbox.policy import normalize
            self.sandbox_isolation = normalize(self.sandbox_isolation)  # a bad one fails here

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature_text, self.top_p, self.top_k,
                              self.repetition_penalty, self.temperature_code)


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
        if code_token_loss != "mask":
            return list(self.env_mask)
        return [0 if (m and code and t == 0.0) else m
                for m, code, t in zip(self.env_mask, self.in_code, self.temperatures, strict=True)]

    def sampling_logprobs(self, code_token_loss: str = "train") -> list[float]:
        """Per completion token, the log-prob under the distribution it was sampled from, as
        TRL's importance-sampling correction reads it (the `logprobs` of rollout_func): the
        engine's behaviour log-prob for sampled tokens (NaN where the engine could not report
        it: TRL then leaves the token uncorrected, ratio 1); for greedy code tokens 0.0 (the
        greedy behaviour's probability 1) with `correct`, NaN with `train` (ratio 1: trained
        as if the policy had sampled them); 0.0 for sandbox tokens (no loss)."""
        out = []
        for m, code, t, lp in zip(self.env_mask, self.in_code, self.temperatures,
                                  self.behaviour_logprobs, strict=True):
            if m and code and t == 0.0 and code_token_loss == "train":
                out.append(math.nan)
            else:
                out.append(lp)
        return out

    def append_environment(self, ids: list[int]) -> None:
        """Tokens the model did not write (sandbox outputs, the closing end-of-turn): no loss."""
        self.completion_ids += ids
        self.env_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.behaviour_logprobs += [0.0] * len(ids)
        self.temperatures += [math.nan] * len(ids)
        self.in_code += [False] * len(ids)

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
            on_event: Callable[[Rollout, str, object], None] | None = None,
            keys: Sequence[int] | None = None) -> list[Rollout]:
        """`num_generations` rollouts per prompt, in prompt order. `force(rollout, tokens of
        this call)` may return a token to force (scripted policies in tests). `on_event(rollout,
        kind, payload)` follows the samples live (transcripts): kind `generation` (the call's
        `GenerationResult`), `sandbox` (the sandbox `Result`), `rollback` (the dropped ids),
        `end` (the end reason). `keys`: one integer per prompt (e.g. a hash of a benchmark
        item's id): sample g of a prompt is then seeded from (seed, key, g) alone, so a sample
        draws the same whatever else shares its batch (evaluation: batched, sharded, resumed
        runs agree); without keys, seeds count up over the runner's life."""
        cfg = self.config
        self._on_event = on_event or (lambda *a: None)
        samples = []
        for p_index, prompt in enumerate(prompts):
            for g in range(num_generations):
                seed = cfg.seed * 1_000_003 + (next(self._seeds) if keys is None
                                               else keys[p_index] % 2 ** 40 * 1_009 + g % 1_009)
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
                r.append_environment([self.codec.tokenizer.eos_token_id])
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
                s.session = self.sandbox.session(inputs=s.prompt.image_files,
                                                 timeout=self.config.sandbox_timeout)
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
                images = [load_rgb(p) for p in result.images]
            except OSError as exc:
                self._end(s, "sandbox_error", f"a produced image does not load: {exc}")
                return
            if not result.images:
                r.sandbox_texts.append(result.text or "")
        else:
            r.code_errors += 1
        if result.text and len(result.text) > cfg.max_output_chars:
            result = dataclasses.replace(result, text=result.text[:cfg.max_output_chars] + " …[cut]")
        r.append_environment(self.codec.block(render_output(result), images))
        r.images += images
        r.sandbox_image_paths += list(result.images) if result.ok else []
        if len(r.prompt_ids) + len(r.completion_ids) >= cfg.max_total_tokens:
            self._end(s, "length", "the sandbox output filled the token budget")
        elif r.turns >= cfg.max_turns:
            self._end(s, "turn_cap", f"{r.turns} generation calls")

    # -- helpers -------------------------------------------------------------------------------

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
