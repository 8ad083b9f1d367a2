"""Adaptive temperature sampling inside vLLM (GRPO-ATS, THYME.md §4; the rule of
thyme_train.ats): an engine-level v1 logits processor that knows, per request, whether the
decoded text is inside `<code>…</code>` and makes code tokens greedy there, while text keeps the
request's own temperature / top-p / top-k / repetition penalty — within ONE request.

Register the class with the engine, then switch it on per request through `extra_args`:

    LLM(model, logits_processors=[ATSLogitsProcessor])           # offline
    python -m vllm.entrypoints.openai.api_server ... \\
        --logits-processors thyme_train.vllm_ats:ATSLogitsProcessor   # server
    SamplingParams(temperature=1.0, top_p=0.9, ..., extra_args=ats_extra_args(...))
                                          # thyme_train.vllm_engine.ats_extra_args

Requests without the `thyme_ats` key pass through untouched. Per request the processor:
- sets the `thyme_banned` token ids to -inf (vision tokens: only the sandbox writes images);
- forces `thyme_force[k]` as the k-th generated token (a scripted prefix: tests, steering);
- inside code with `thyme_temperature_code` 0 (and in text with `thyme_temperature_text` 0)
  leaves one finite logit, the argmax of the model's logits (before any penalty), so every
  later step of vLLM's sampler (penalties, temperature, top-k/top-p, the seeded draw) returns
  exactly that token;
- for a segment whose temperature differs from the request's (e.g. code at 0.5, text at 1.0)
  rescales the logits so vLLM's division by the request temperature yields the segment's.
It reads each new token of its request from vLLM's output list and decodes it with the model's
tokenizer (the same per-token decoding `thyme_train.ats.SegmentTracker` is fed by the
transformers engine), so tags split over several tokens are found.

This module imports vLLM at import time; `thyme_train.vllm_engine` (the request side: the
`extra_args` keys, `ats_extra_args`) does not import it, so a server's clients need no vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from thyme_train.ats import SegmentTracker

# The request side (keys, the request temperature) lives with the engines, which need no vLLM.
from thyme_train.vllm_engine import (
    KEY,
    KEY_BANNED,
    KEY_CODE,
    KEY_FORCE,
    KEY_TEXT,
    request_temperature,
)


@dataclass
class _Row:
    temperature_text: float
    temperature_code: float
    temperature_request: float
    banned: list[int]
    force: list[int]
    output: list[int]                     # vLLM's live list of this request's generated ids
    tracker: SegmentTracker = field(default_factory=SegmentTracker)
    seen: int = 0                         # generated tokens already fed to the tracker


class ATSLogitsProcessor(LogitsProcessor):
    """The ATS rule for requests that carry `extra_args["thyme_ats"]` (see the module doc)."""

    @classmethod
    def validate_params(cls, params: SamplingParams):
        extra = params.extra_args or {}
        if not extra.get(KEY):
            return
        try:
            text, code = float(extra[KEY_TEXT]), float(extra[KEY_CODE])
            banned = [int(t) for t in extra.get(KEY_BANNED) or []]
            force = [int(t) for t in extra.get(KEY_FORCE) or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{KEY}: need numeric {KEY_TEXT} and {KEY_CODE} and integer lists "
                             f"{KEY_BANNED}/{KEY_FORCE}: {exc}") from exc
        if text < 0 or code < 0:
            raise ValueError(f"{KEY}: temperatures must be >= 0, got text {text}, code {code}")
        want = request_temperature(text, code)
        if not math.isclose(params.temperature, want, abs_tol=1e-6):
            raise ValueError(f"{KEY}: the request's temperature must be {want} (text {text}, "
                             f"code {code}), got {params.temperature}")
        if set(banned) & set(force):
            raise ValueError(f"{KEY}: forced tokens {sorted(set(banned) & set(force))} are banned")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.model_config = vllm_config.model_config
        self.rows: dict[int, _Row] = {}
        self._tokenizer = None
        self._pieces: dict[int, str] = {}     # token id -> its decoded text (cache)

    def is_argmax_invariant(self) -> bool:
        return False                          # it decides greedy tokens and bans some

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    @staticmethod
    def _new_row(params: SamplingParams, prompt_ids, output_ids: list[int]) -> _Row | None:
        extra = params.extra_args or {}
        if not extra.get(KEY):
            return None
        return _Row(float(extra[KEY_TEXT]), float(extra[KEY_CODE]), float(params.temperature),
                    [int(t) for t in extra.get(KEY_BANNED) or []],
                    [int(t) for t in extra.get(KEY_FORCE) or []], output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self.rows.items():
            # Tokens are read here, not in update_state: with async scheduling the last one is
            # a -1 placeholder until just before the processors run.
            out = row.output
            while row.seen < len(out) and out[row.seen] >= 0:
                row.tracker.feed(self._piece(out[row.seen]))
                row.seen += 1
            scores = logits[index]
            if row.banned:
                scores[row.banned] = -math.inf
            position = len(out)
            if position < len(row.force):
                _one_hot(scores, row.force[position])
                continue
            temperature = row.temperature_code if row.tracker.inside_code else row.temperature_text
            if temperature == 0:
                _one_hot(scores, int(torch.argmax(scores)))
            elif temperature != row.temperature_request:
                scores.mul_(row.temperature_request / temperature)
        return logits

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                mc = self.model_config
                self._tokenizer = AutoTokenizer.from_pretrained(
                    mc.tokenizer, revision=mc.tokenizer_revision,
                    trust_remote_code=mc.trust_remote_code)
            piece = self._pieces[token] = self._tokenizer.decode([token])
        return piece


def _one_hot(scores: torch.Tensor, token: int) -> None:
    """One finite logit: penalties, temperature and top-k/top-p all keep it, the draw takes it."""
    scores.fill_(-math.inf)
    scores[token] = 0.0
