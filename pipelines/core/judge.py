"""A yes/no judge over an OpenAI-compatible model (`pipelines.core.llm.LLMClient`): the core shared by
the audit's `judge` check and the RL rewards' judge (`thyme_train.rewards.Judge`).

    judge = Judge(LLMClient(LLMConfig(model="Qwen2.5-VL-72B", cache_dir="data/cache/judge")),
                  max_calls=10_000)
    judge.ask(["Is 2 + 2 = 4? Reply yes or no."])                 # -> [True]
    judge.verdicts([["Is this image upright?", "page.png"]])      # -> [Verdict(True, "yes")]

A question is a prompt string, or a sequence of parts shown to the model in order: text (str),
images (file paths, encoded bytes) and ready content parts (dicts, see `llm.image_part`).
Verdicts are asked for in one batch per call (`chat_many`: the client's concurrency, retries and
disk cache apply) at temperature 0. `max_calls` is a budget over the judge's life counting the
requests that cost something: answers already in the client's cache are free and always served.
A verdict is True, False or None; None (no verdict) always carries its reason (the request
failed, the reply was not yes/no, the budget was spent), and `stats` counts every kind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.core.llm import image_part, request_key

Question = str | Sequence[str | bytes | os.PathLike | dict]

_YES_NO = re.compile(r"\W*(yes|no)\b")


@dataclass
class JudgeStats:
    calls: int = 0                       # verdicts asked of the client (cache hits included)
    cache_hits: int = 0                  # ... of which the client's cache answered (free)
    failures: int = 0                    # requests that failed or gave no yes/no
    over_budget: int = 0                 # verdicts refused because the budget was spent
    errors: list[str] = field(default_factory=list)   # the last few failure messages

    @property
    def paid(self) -> int:
        """Requests that counted against the budget."""
        return self.calls - self.cache_hits

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "cache_hits": self.cache_hits, "failures": self.failures,
                "over_budget": self.over_budget}


@dataclass(frozen=True)
class Verdict:
    value: bool | None                   # None: no verdict, `reason` says why
    reason: str                          # the reply's text, or why there is no verdict


def question_message(question: Question) -> dict:
    """The user message for a question: a plain string stays a string; parts become content
    parts in order (str: text; path or bytes: an image; dict: a ready part)."""
    if isinstance(question, str):
        return {"role": "user", "content": question}
    parts = []
    for part in question:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif isinstance(part, dict):
            parts.append(part)
        elif isinstance(part, bytes | os.PathLike):
            parts.append(image_part(part))
        else:
            raise TypeError(f"a question part must be text, an image or a content part, "
                            f"not {type(part).__name__}")
    return {"role": "user", "content": parts}


class Judge:
    """See the module docstring. `client` is an `LLMClient` (or anything with its `chat_many`);
    `max_tokens` bounds the reply (one word is asked for)."""

    def __init__(self, client, max_calls: int | None = None, max_tokens: int = 4):
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"max_calls must be >= 0 or None (got {max_calls})")
        self.client, self.max_calls, self.max_tokens = client, max_calls, max_tokens
        self.stats = JudgeStats()

    def ask(self, questions: Sequence[Question]) -> list[bool | None]:
        """Verdicts as True / False / None (no verdict; the reason is in `stats.errors`)."""
        return [v.value for v in self.verdicts(questions)]

    def verdicts(self, questions: Sequence[Question]) -> list[Verdict]:
        """One `Verdict` per question, in order; one batch of requests for all of them."""
        conversations = [[question_message(q)] for q in questions]
        params = {"temperature": 0.0, "max_tokens": self.max_tokens}
        out: list[Verdict | None] = [None] * len(conversations)
        left = None if self.max_calls is None else self.max_calls - self.stats.paid
        asked = []
        for i, conversation in enumerate(conversations):
            if left is None or self._cached(conversation, params):
                asked.append(i)
            elif left > 0:
                left -= 1
                asked.append(i)
            else:
                self.stats.over_budget += 1
                out[i] = Verdict(None, f"over budget: the judge's {self.max_calls} calls are spent")
        replies = self.client.chat_many([conversations[i] for i in asked], **params) if asked else []
        for i, reply in zip(asked, replies, strict=True):
            self.stats.calls += 1
            if isinstance(reply, Exception):     # LLMError, as chat_many returns it
                out[i] = self._failed(f"request failed: {reply}")
                continue
            self.stats.cache_hits += bool(getattr(reply, "cached", False))
            word = _YES_NO.match(reply.text.strip().lower())
            if word is None:
                out[i] = self._failed(f"not a yes/no reply: {reply.text[:80]!r}")
            else:
                out[i] = Verdict(word.group(1) == "yes", reply.text.strip()[:200])
        return out

    def _cached(self, conversation: list[dict], params: dict) -> bool:
        """Whether the client's cache already holds this answer (so asking is free)."""
        cache = getattr(self.client, "cache", None)
        if cache is None:
            return False
        return cache.get(request_key(self.client.config.model, conversation, params)) is not None

    def _failed(self, message: str) -> Verdict:
        self.stats.failures += 1
        self.stats.errors = (self.stats.errors + [message])[-5:]
        return Verdict(None, message)
