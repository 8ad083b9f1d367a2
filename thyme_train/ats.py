"""Adaptive temperature sampling (GRPO-ATS, THYME.md §4): reasoning text is sampled at
`temperature_text` (with top-p, top-k and a repetition penalty) for exploration, code inside
`<code>…</code>` at `temperature_code` (0 = greedy) for executable precision, switched token by
token inside ONE generation request — not, as the original did, by stopping at `<code>` and
re-requesting.

Engine-agnostic pieces (torch only), shared by every engine:
    SamplingConfig        the knobs
    SegmentTracker        reads the decoded stream; knows whether the next token is inside code
                          and which tags (`<code>`, `</code>`, `</answer>`) just completed
    sample_token(...)     one token from one row's logits, with its policy log-prob (the model
                          at T = 1), its behaviour log-prob (the distribution actually sampled
                          from: 0 for a greedy token) and the temperature used
    stop_reason(...)      whether a generation call ends at a token, and why
The transformers engine samples with them in its own logits processor (thyme_train.hf_engine);
the vLLM engines run the same rule as an engine-level logits processor (thyme_train.vllm_ats).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sandbox.protocol import ANSWER_CLOSE, CODE_CLOSE, CODE_OPEN
from thyme_train.config import doc

_TAGS = (CODE_OPEN, CODE_CLOSE, ANSWER_CLOSE)
_TAG_RE = re.compile("|".join(re.escape(t) for t in _TAGS), re.IGNORECASE)
_KEEP = max(len(t) for t in _TAGS) - 1      # tail kept to see tags split across tokens


@dataclass
class SamplingConfig:
    """Per-segment sampling (paper: text T = 1, top-p 0.9, top-k 50, penalty 1.05; code T = 0)."""

    temperature_text: float = doc("temperature of reasoning text (0 = greedy)", default=1.0)
    top_p: float = doc("nucleus mass kept when sampling (1 = off)", default=0.9)
    top_k: int = doc("most likely tokens kept when sampling (0 = off)", default=50)
    repetition_penalty: float = doc("penalty on tokens already in the context, text only "
                                    "(1 = off; code repeats names legitimately)", default=1.05)
    temperature_code: float = doc("temperature inside <code>…</code> (0 = greedy: the argmax "
                                  "of the model's logits)", default=0.0)

    def __post_init__(self):
        if self.temperature_text < 0 or self.temperature_code < 0:
            raise ValueError("temperatures must be >= 0")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("need 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0")


class SegmentTracker:
    """Follows the decoded text of a generation and says whether the next token is inside a
    code block. Tags are matched case-insensitively (as `sandbox.protocol.extract_code` reads
    them) even when a tokenizer splits them over several tokens."""

    def __init__(self, inside_code: bool = False):
        self.inside_code = inside_code
        self._tail = ""

    def feed(self, piece: str) -> list[str]:
        """Add decoded text; returns the tags it completed, in order (lower case)."""
        text = self._tail + piece
        found, end = [], 0
        for m in _TAG_RE.finditer(text):
            if m.end() <= len(self._tail):
                continue                        # seen in an earlier piece
            tag = m.group().lower()
            found.append(tag)
            if tag == CODE_OPEN:
                self.inside_code = True
            elif tag == CODE_CLOSE:
                self.inside_code = False
            end = m.end()
        self._tail = text[max(end, len(text) - _KEEP):]
        return found


def sample_token(logits: torch.Tensor, context: torch.Tensor, in_code: bool, cfg: SamplingConfig,
                 generator: torch.Generator | None) -> tuple[int, float, float, float]:
    """(token, policy log-prob at T = 1, behaviour log-prob, temperature) for one row.

    `logits` are the model's raw logits (V,), `context` the ids the repetition penalty looks at.
    A temperature of 0 takes the argmax of the raw logits (no penalty: the policy's own mode);
    its behaviour log-prob is 0 (probability 1)."""
    logits = logits.float()
    policy = torch.log_softmax(logits, dim=-1)
    temperature = cfg.temperature_code if in_code else cfg.temperature_text
    if temperature == 0:
        token = int(torch.argmax(logits))
        return token, float(policy[token]), 0.0, 0.0
    scores = logits.clone()
    if not in_code and cfg.repetition_penalty != 1.0 and context.numel():
        seen = torch.unique(context)
        picked = scores[seen]
        scores[seen] = torch.where(picked < 0, picked * cfg.repetition_penalty,
                                   picked / cfg.repetition_penalty)
    scores = scores / temperature
    if 0 < cfg.top_k < scores.numel():
        kth = torch.topk(scores, cfg.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, dim=-1) >= cfg.top_p   # keeps >= 1 token
        scores[order[drop]] = -math.inf
    behaviour = torch.log_softmax(scores, dim=-1)
    token = int(torch.multinomial(behaviour.exp(), 1, generator=generator))
    return token, float(policy[token]), float(behaviour[token]), float(temperature)


FINISHES = ("code", "answer", "eos", "length", "watch")   # why a generation call ended


def stop_reason(token: int, tags: list[str], eos_ids, watch: Callable[[int], bool] | None,
                generated: int, budget: int) -> str | None:
    """Why a generation call ends at `token` (one of FINISHES), or None when it goes on: an
    end-of-sequence token, then a completed `</answer>`, then `</code>` (the sandbox runs it),
    then `watch` (the repetition detector, fed every token), then the call's token budget.
    `tags`: what `SegmentTracker.feed` returned for this token; `generated`: tokens so far,
    this one included."""
    if token in eos_ids:
        return "eos"
    if ANSWER_CLOSE in tags:
        return "answer"
    if CODE_CLOSE in tags:
        return "code"
    if watch is not None and watch(token):
        return "watch"
    if generated >= budget:
        return "length"
    return None
