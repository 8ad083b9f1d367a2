"""Tolerant parsing of a model teacher's text into a trajectory's turns (THYME.md §1 protocol),
and the quarantine for text that cannot be read.

    parse_output(text, finish_reason=None) -> Parsed         # raises Unparseable(reason, detail)
    parse_trajectory(text, sample, teacher, ...) -> (Trajectory | None, quarantine row | None)

What is tolerated, because the meaning stays clear (each recorded in `Parsed.notes`):
- a missing `<think>` or `</think>`, text before `<think>` or between `</think>` and `<answer>`
  (chatter, dropped), text after `</answer>` (dropped), a second `<answer>` (the first counts,
  as in evaluation);
- code blocks without fences or without `python` (the protocol's own extraction), a
  `<code>` whose `</code>` is missing right after a closed fence, a ```` ```python ```` fence
  outside `<code>` (or an untagged fence whose body parses as Python);
- `<sandbox_output>` blocks the teacher invented (removed: results come from the sandbox);
- no `<answer>` tag but a `\\boxed{…}` or a final "Answer: …" line after the last code block.
What is quarantined (reason codes in REASONS): empty text, no answer (or an empty one), output
cut off by the length limit before the answer, a `<code>` block that never closes, an empty code
block, more code blocks than the turn cap, and reasoning that states the ground truth the
teacher was told to keep to itself (`reveals_ground_truth`).

Reasoning text is kept verbatim (whitespace included), so parsing a rendered trajectory and
rendering it again gives the same text.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory, Turn
from sandbox.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    CODE_CLOSE,
    CODE_OPEN,
    OUTPUT_CLOSE,
    OUTPUT_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    extract_code,
)

# The paper's turn cap: ~5 generation calls, i.e. a few code rounds at most.
MAX_CODE_BLOCKS = 4
MAX_KEPT_OUTPUT = 20_000          # characters of the raw text kept in a quarantine row

REASONS = {
    "empty_output": "the teacher returned no text",
    "no_answer": "no <answer>, \\boxed{} or final 'Answer:' line",
    "empty_answer": "the answer is empty",
    "truncated": "the output hit the length limit before a complete answer",
    "unclosed_code": "a <code> block or python fence never closes",
    "empty_code": "a code block holds no code",
    "too_many_code_blocks": "more code blocks than the turn cap",
    "reveals_ground_truth": "the reasoning states the box or angle the teacher was told to hide",
    "request_failed": "the model request failed (see detail)",
    "no_decision": "the decision prompt's reply names no operation",
    # teachers in the loop (loop.py)
    "blind_code": "a code block the loop did not run (generation did not stop after it, e.g. "
                  "a fence outside <code> tags): what follows it was written without its output",
    "turn_cap": "the teacher was still writing code when the loop's generation-call cap came",
    "image_cap": "a sandbox result would exceed the images one conversation may hold",
    "sandbox_failed": "the sandbox itself failed (not the code: that is shown to the teacher)",
    "reasoner_failed": "a chained teacher's first model gave no usable reasoning (see detail)",
}

TEACHER_QUARANTINE_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("teacher", pa.string()),
    ("reason", pa.string()),           # a key of REASONS
    ("detail", pa.string()),           # what exactly was wrong, for a person
    ("output", pa.string()),           # the raw teacher text (truncated), to inspect or re-parse
])


class Unparseable(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Parsed:
    turns: list[Turn]
    answer: str
    notes: list[str] = field(default_factory=list)   # the tolerances that were needed

    @property
    def code_blocks(self) -> int:
        return sum(t.code is not None for t in self.turns)


def _tag(tag: str) -> re.Pattern:
    return re.compile(re.escape(tag), re.IGNORECASE)


_THINK_OPEN, _THINK_CLOSE = _tag(THINK_OPEN), _tag(THINK_CLOSE)
_ANSWER_OPEN, _ANSWER_CLOSE = _tag(ANSWER_OPEN), _tag(ANSWER_CLOSE)
_CODE_OPEN, _CODE_CLOSE = _tag(CODE_OPEN), _tag(CODE_CLOSE)
_OUTPUT = re.compile(rf"{re.escape(OUTPUT_OPEN)}.*?(?:{re.escape(OUTPUT_CLOSE)}|(?=<code>|</think>|<answer>)|\Z)",
                     re.IGNORECASE | re.DOTALL)
# A fenced block: ``` + optional language on the opening line, the body, a closing ``` line.
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)\n?[ \t]*```", re.DOTALL)
_FENCE_START = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)")
_PY_LANGS = {"python", "py", "python3"}
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_LINE = re.compile(r"^[ \t]*(?:\*\*)?(?:final[ \t]+)?answer(?:\*\*)?[ \t]*[:：][ \t]*(.+?)[ \t]*$",
                          re.IGNORECASE | re.MULTILINE)


def parse_output(text: str, finish_reason: str | None = None,
                 max_code_blocks: int = MAX_CODE_BLOCKS) -> Parsed:
    """The turns and answer of a teacher's text, or `Unparseable` with a reason code."""
    if not text or not text.strip():
        raise Unparseable("empty_output", "no text")
    notes: list[str] = []
    text, removed = _OUTPUT.subn("", text)
    if removed:
        notes.append("removed_sandbox_output")
    body, answer = _split_answer(text, finish_reason, notes)
    body = _strip_think(body, notes)
    turns = _turns(body, notes, finish_reason)
    code_blocks = sum(t.code is not None for t in turns)
    if code_blocks > max_code_blocks:
        raise Unparseable("too_many_code_blocks", f"{code_blocks} code blocks (cap {max_code_blocks})")
    return Parsed(turns, answer, notes)


def _split_answer(text: str, finish_reason: str | None, notes: list[str]) -> tuple[str, str]:
    """(the text before the answer, the answer)."""
    truncated = finish_reason == "length"
    opened = _ANSWER_OPEN.search(text)
    if opened:
        closed = _ANSWER_CLOSE.search(text, opened.end())
        if closed is None:
            if truncated:
                raise Unparseable("truncated", "the length limit cut the <answer> off")
            notes.append("unclosed_answer")
            answer = text[opened.end():]
        else:
            answer = text[opened.end():closed.start()]
            rest = text[closed.end():]
            if _ANSWER_OPEN.search(rest):
                notes.append("extra_answer")
            elif rest.strip():
                notes.append("text_after_answer")
        answer = answer.strip()
        if not answer:
            raise Unparseable("empty_answer", "<answer></answer> holds nothing")
        return text[:opened.start()], answer
    # No tag: a boxed answer or a final "Answer:" line after the last code block is still clear.
    last_code = max([m.end() for m in _CODE_CLOSE.finditer(text)] + [0])
    tail = text[last_code:]
    boxed = list(_BOXED.finditer(tail))
    if boxed and boxed[-1].group(1).strip():
        notes.append("boxed_answer")
        return text[:last_code + boxed[-1].start()], boxed[-1].group(1).strip()
    lines = list(_ANSWER_LINE.finditer(tail))
    if lines:
        notes.append("answer_line")
        return text[:last_code + lines[-1].start()], lines[-1].group(1).strip()
    if truncated:
        raise Unparseable("truncated", "the length limit came before any answer")
    raise Unparseable("no_answer", "no <answer> tag, \\boxed{} or 'Answer:' line")


def _strip_think(body: str, notes: list[str]) -> str:
    """The reasoning between <think> and </think> (either may be missing)."""
    opened = _THINK_OPEN.search(body)
    if opened is None:
        notes.append("missing_think")
    else:
        if body[:opened.start()].strip():
            notes.append("text_before_think")
        body = body[opened.end():]
    closes = list(_THINK_CLOSE.finditer(body))
    if not closes:
        notes.append("missing_think_close")
    else:
        if body[closes[-1].end():].strip():
            notes.append("text_between_think_and_answer")
        body = body[:closes[-1].start()]
    stray = len(_THINK_OPEN.findall(body)) + len(_THINK_CLOSE.findall(body))
    if stray:
        notes.append("stray_think_tags")
        body = _THINK_CLOSE.sub("", _THINK_OPEN.sub("", body))
    return body


def _turns(body: str, notes: list[str], finish_reason: str | None) -> list[Turn]:
    turns: list[Turn] = []
    pos = 0
    while True:
        block = _next_code(body, pos, notes, finish_reason)
        if block is None:
            break
        start, end, code = block
        if not code.strip():
            raise Unparseable("empty_code", f"the code block at character {start} is empty")
        turns.append(Turn(body[pos:start], code))
        pos = end
    turns.append(Turn(body[pos:]))
    return turns


def _next_code(body: str, pos: int, notes: list[str],
               finish_reason: str | None) -> tuple[int, int, str] | None:
    """(start, end, code) of the next code block at or after `pos`, or None."""
    tag = _CODE_OPEN.search(body, pos)
    fence = _next_python_fence(body, pos, tag.start() if tag else len(body))
    if fence is not None:
        notes.append("code_outside_tags")
        return fence
    if tag is None:
        return None
    closed = _CODE_CLOSE.search(body, tag.end())
    nxt = _CODE_OPEN.search(body, tag.end())
    if closed is not None and (nxt is None or closed.start() < nxt.start()):
        return tag.start(), closed.end(), extract_code(body[tag.start():closed.end()]) or ""
    # No </code> before the next block: accept it when a closed fence follows the tag directly.
    after = body[tag.end():]
    fenced = _FENCE.match(after.lstrip())
    if fenced:
        notes.append("unclosed_code_tag")
        end = tag.end() + (len(after) - len(after.lstrip())) + fenced.end()
        return tag.start(), end, _code_of(fenced.group(0))
    if finish_reason == "length":
        raise Unparseable("truncated", "the length limit cut a code block off")
    raise Unparseable("unclosed_code", f"<code> at character {tag.start()} never closes")


def _next_python_fence(body: str, pos: int, limit: int) -> tuple[int, int, str] | None:
    """A fenced block outside <code> tags, starting before `limit`, that is Python: tagged
    python/py, or untagged and parsing as Python (not an example of output text)."""
    search = pos
    while True:
        start = _FENCE_START.search(body, search, limit)
        if start is None:
            return None
        fenced = _FENCE.match(body, start.start())
        lang = start.group(1).lower()
        if fenced is None:
            if lang in _PY_LANGS:
                raise Unparseable("unclosed_code", f"a python fence at character {start.start()} never closes")
            return None
        code = _code_of(fenced.group(0))
        if lang in _PY_LANGS or (not lang and _is_python(code)):
            return start.start(), fenced.end(), code
        search = fenced.end()


def _code_of(fenced: str) -> str:
    # the protocol's extraction, so fences and a leading `python` line are handled in one place
    return extract_code(f"{CODE_OPEN}{fenced}{CODE_CLOSE}") or ""


def _is_python(code: str) -> bool:
    """Statements that parse as Python and do something (a call or an assignment)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Call | ast.Assign | ast.Import | ast.ImportFrom)
               for n in ast.walk(tree))


# ---------------------------------------------------------------------------------------------
# Ground truth the teacher was told to keep to itself
# ---------------------------------------------------------------------------------------------

def reveals_ground_truth(turns: list[Turn], meta: dict) -> str | None:
    """Why the reasoning (not the code) gives away the hint, or None. The paper's generators saw
    the box or angle and were told not to reveal it: stating the exact box corners or the
    exact angle in words reads as knowledge the model could not have had."""
    reasoning = " ".join(t.reasoning for t in turns)
    box = meta.get("box")
    if box and len(box) == 4:
        numbers = set(re.findall(r"(?<![\d.])\d+(?![\d.])", reasoning))
        shown = [int(v) for v in box if str(int(v)) in numbers]
        if len(shown) >= 3:
            return f"the reasoning states the box coordinates {shown}"
    angle = meta.get("angle")
    if angle is not None:
        value = re.escape(f"{float(angle):g}")
        if re.search(rf"(?<![\d.]){value}(?:\.0+)?\s*(?:°|degrees?|deg\b)", reasoning, re.IGNORECASE):
            return f"the reasoning states the exact angle ({float(angle):g} degrees)"
    return None


# ---------------------------------------------------------------------------------------------
# Trajectories and quarantine rows
# ---------------------------------------------------------------------------------------------

def infer_kind(code_blocks: int) -> str:
    """direct (no code), single, or further_enhancement (several rounds, each meant to run; an
    error-correction kind needs the sandbox's answer between rounds, which one pass lacks)."""
    return "direct" if code_blocks == 0 else "single" if code_blocks == 1 else "further_enhancement"


def quarantine_row(sample_id: str, teacher: str, reason: str, detail: str, output: str) -> dict:
    assert reason in REASONS, reason
    return {"sample_id": sample_id, "teacher": teacher, "reason": reason,
            "detail": detail[:500], "output": (output or "")[:MAX_KEPT_OUTPUT]}


def parse_trajectory(text: str, sample: Sample, teacher: str, kind: str | None = None,
                     finish_reason: str | None = None, hidden: dict | None = None,
                     max_code_blocks: int = MAX_CODE_BLOCKS) -> tuple[Trajectory | None, dict | None]:
    """A trajectory for `sample` from the teacher's text, or a quarantine row saying why not.
    `hidden`: the ground truth the teacher saw but must not state (keys `box`, `angle`)."""
    try:
        parsed = parse_output(text, finish_reason, max_code_blocks)
        leak = reveals_ground_truth(parsed.turns, hidden or {})
        if leak:
            raise Unparseable("reveals_ground_truth", leak)
    except Unparseable as exc:
        return None, quarantine_row(sample.id, teacher, exc.reason, exc.detail, text)
    trajectory = Trajectory(sample_id=sample.id, teacher=teacher,
                            kind=kind or infer_kind(parsed.code_blocks), task=sample.task,
                            turns=parsed.turns, answer=parsed.answer)
    return trajectory, None


def quarantine_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TEACHER_QUARANTINE_SCHEMA)
