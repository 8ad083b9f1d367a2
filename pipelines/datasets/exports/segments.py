"""A Thyme response cut at its sandbox outputs: which text is the model's own writing.

Every framework export labels the same text: the model's writing (reasoning, code, the answer and
its end of turn) trains; every `<sandbox_output>…</sandbox_output>` span (tags, printed text, error
messages, images) does not; with `train_last_round_only`, neither does anything before the end of
the second-to-last sandbox output (the rule of `thyme_train.chat.ThymeChat`, which the tests
compare against token by token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandbox.protocol import OUTPUT_CLOSE, OUTPUT_OPEN

_OUTPUT_TAG = re.compile(f"{re.escape(OUTPUT_OPEN)}|{re.escape(OUTPUT_CLOSE)}")


class BadRow(ValueError):
    """A row an export cannot write; `reason` is a short code for the quarantine counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool       # the model's own writing, labelled
    sandbox: bool       # a sandbox output (tags included); never labelled


def output_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sandbox output, tags included. Unbalanced or nested tags raise BadRow."""
    spans, opened = [], None
    for m in _OUTPUT_TAG.finditer(text):
        if m.group() == OUTPUT_OPEN:
            if opened is not None:
                raise BadRow("unbalanced_tags", f"{OUTPUT_OPEN} at char {m.start()} opens inside "
                                                f"another sandbox output")
            opened = m.start()
        else:
            if opened is None:
                raise BadRow("unbalanced_tags", f"{OUTPUT_CLOSE} at char {m.start()} closes nothing")
            spans.append((opened, m.end()))
            opened = None
    if opened is not None:
        raise BadRow("unbalanced_tags", f"{OUTPUT_OPEN} at char {opened} is never closed")
    return spans


def response_segments(response: str, train_last_round_only: bool = False) -> list[Segment]:
    """The response as alternating model and sandbox segments, in order (empty model text between
    two outputs is kept as an empty segment so the alternation holds). With
    `train_last_round_only` and two or more outputs, model text before the end of the
    second-to-last output is not trained."""
    spans = output_spans(response)
    last_round_start = spans[-2][1] if train_last_round_only and len(spans) >= 2 else 0
    segments, pos = [], 0
    for a, b in spans:
        segments.append(Segment(response[pos:a], trained=pos >= last_round_start, sandbox=False))
        segments.append(Segment(response[a:b], trained=False, sandbox=True))
        pos = b
    segments.append(Segment(response[pos:], trained=True, sandbox=False))
    return segments
