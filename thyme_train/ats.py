"""Adaptive temperature sampling (GRPO-ATS, THYME.md §4): reasoning text is sampled at
`temperature_text` (with top-p, top-k and a repetition penalty) for exploration, code inside
`<code>…</code>` at `temperature_code` (0 = greedy) for executable precision, switched token by
token inside ONE generation request — not, as the original did, by stopping at `<code>` and
re-requesting.

Engine-agnostic pieces (torch only):
    SamplingConfig        the knobs
    SegmentTracker        reads the decoded stream; knows whether the next token is inside code
                          and which tags (`<code>`, `</code>`, `</answer>`) just completed
    sample_token(...)     one token from one row's logits, with its policy log-prob (the model
                          at T = 1), its behaviour log-prob (the distribution actually sampled
                          from: 0 for a greedy token) and the temperature used
and the transformers integration: `ATSLogitsProcessor` (does the sampling itself, per row, with
a per-row seeded generator, and hands `generate` a one-hot row so greedy decoding picks it) with
`ATSStoppingCriteria` (records each token, stops a row after `</code>`, `</answer>`, EOS, its
token budget, or when the row's `watch` — the repetition detector — says so). A vLLM engine
implements the same rule as an engine-level logits processor (STACK.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria

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


# ---------------------------------------------------------------------------------------------
# transformers `generate` integration
# ---------------------------------------------------------------------------------------------

@dataclass
class RowState:
    """One generation row: its budget, its stream state and what was recorded."""

    max_new_tokens: int
    generator: torch.Generator | None = None
    tracker: SegmentTracker = field(default_factory=SegmentTracker)
    watch: Callable[[int], bool] | None = None        # True = stop now (repetition)
    force: Callable[[list[int]], int | None] | None = None   # a token to force (tests, steering)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    behaviour_logprobs: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    in_code: list[bool] = field(default_factory=list)
    finish: str | None = None                          # code | answer | eos | length | watch
    _pending: tuple | None = None


class ATSLogitsProcessor(LogitsProcessor):
    """Samples each row itself (ATS rule, per-row generator) and returns a one-hot row, so
    `generate` (greedy) emits exactly that token. Must be the only processor: call `generate`
    with `do_sample=False` and no temperature/top-k/top-p/repetition-penalty of its own."""

    def __init__(self, rows: list[RowState], cfg: SamplingConfig, banned: Sequence[int] = ()):
        self.rows, self.cfg = rows, cfg
        self.banned = list(banned)       # tokens only the environment may write (vision tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.banned:
            scores = scores.clone()
            scores[:, self.banned] = -math.inf
        out = torch.full_like(scores, -math.inf)
        for i, row in enumerate(self.rows):
            if row.finish is not None:
                out[i, 0] = 0.0                         # ignored: generate pads finished rows
                continue
            forced = row.force(row.tokens) if row.force is not None else None
            if forced is not None:
                logp = float(torch.log_softmax(scores[i].float(), dim=-1)[forced])
                temp = self.cfg.temperature_code if row.tracker.inside_code else self.cfg.temperature_text
                row._pending = (forced, logp, 0.0, temp, row.tracker.inside_code)   # probability 1
                out[i, forced] = 0.0
                continue
            inside = row.tracker.inside_code
            row._pending = (*sample_token(scores[i], input_ids[i], inside, self.cfg, row.generator),
                            inside)
            out[i, row._pending[0]] = 0.0
        return out


class ATSStoppingCriteria(StoppingCriteria):
    """Records each row's new token and decides when the row is done."""

    def __init__(self, rows: list[RowState], decode: Callable[[list[int]], str], eos_ids: set[int]):
        self.rows, self.decode, self.eos_ids = rows, decode, eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(len(self.rows), dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(self.rows):
            if row.finish is not None:
                done[i] = True
                continue
            token, logp, blogp, temp, in_code = row._pending
            if int(input_ids[i, -1]) != token:
                raise RuntimeError(f"generate emitted {int(input_ids[i, -1])}, ATS chose {token}: "
                                   "another logits processor or sampler interfered")
            row.tokens.append(token)
            row.logprobs.append(logp)
            row.behaviour_logprobs.append(blogp)
            row.temperatures.append(temp)
            row.in_code.append(in_code)
            tags = row.tracker.feed(self.decode([token]))
            if token in self.eos_ids:
                row.finish = "eos"
            elif ANSWER_CLOSE in tags:
                row.finish = "answer"
            elif CODE_CLOSE in tags:
                row.finish = "code"
            elif row.watch is not None and row.watch(token):
                row.finish = "watch"
            elif len(row.tokens) >= row.max_new_tokens:
                row.finish = "length"
            done[i] = row.finish is not None
        return done
