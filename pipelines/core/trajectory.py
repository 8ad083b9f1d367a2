"""Trajectories (DESIGN.md §3): what a teacher wrote for a sample, what the sandbox returned, and
what the audit decided. SFT rows, RL prompts and evaluation transcripts are renderings of these.

A trajectory is a list of turns inside one assistant message (THYME.md §1): each turn is some
reasoning, optionally followed by one code block and its sandbox result. The last turn carries
the closing reasoning; `answer` is the final answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from sandbox.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    CODE_CLOSE,
    CODE_OPEN,
    OUTPUT_CLOSE,
    OUTPUT_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    output_block,
)

# What a trajectory's rounds are meant to do (the paper's data kinds, THYME.md §3).
KINDS = ("direct", "single", "further_enhancement", "error_correction")

RESULT = pa.struct([
    ("kind", pa.string()),                 # image | text | error (none: not executed yet)
    ("text", pa.string()),                 # printed text or the error message
    ("images", pa.list_(pa.string())),     # produced images, store-relative paths
    ("error_kind", pa.string()),           # the sandbox's error kind, when kind == error
])
TURN = pa.struct([
    ("reasoning", pa.string()),
    ("code", pa.string()),                 # null when the turn has no code
    ("result", RESULT),                    # null until executed
])
CHECK = pa.struct([("name", pa.string()), ("verdict", pa.string()), ("reason", pa.string())])

TRAJECTORY_SCHEMA = pa.schema([
    ("id", pa.string()),                   # stable: hash of sample id, teacher and content
    ("sample_id", pa.string()),
    ("teacher", pa.string()),              # e.g. template/1, vllm:Qwen2.5-VL-72B-Instruct
    ("kind", pa.string()),                 # one of KINDS
    ("task", pa.string()),                 # copied from the sample
    ("turns", pa.list_(TURN)),
    ("answer", pa.string()),
    ("audit", pa.list_(CHECK)),            # empty until audited
    ("passed", pa.bool_()),                # null until audited
    ("lineage", pa.string()),              # JSON, or null: how it was made (in-the-loop calls,
                                           # chained teachers' handed-over reasoning, the plan)
])

# Verdicts of an audit check. UNVERIFIED: a check that should have decided could not (the judge
# was over budget, its request failed, its reply was no yes/no); whether that passes is a setting.
PASS, FAIL, SKIP, UNVERIFIED = "pass", "fail", "skip", "unverified"


@dataclass
class Result:
    kind: str                              # image | text | error
    text: str = ""
    images: list[str] = field(default_factory=list)
    error_kind: str | None = None


@dataclass
class Turn:
    reasoning: str
    code: str | None = None
    result: Result | None = None


@dataclass
class Check:
    name: str
    verdict: str                           # pass | fail | skip | unverified
    reason: str = ""


@dataclass
class Trajectory:
    sample_id: str
    teacher: str
    kind: str
    task: str
    turns: list[Turn]
    answer: str
    audit: list[Check] = field(default_factory=list)
    passed: bool | None = None
    id: str = ""
    lineage: dict | None = None            # not part of the id: the same text is the same row

    def __post_init__(self):
        if not self.id:
            content = json.dumps([[t.reasoning, t.code] for t in self.turns] + [self.answer])
            h = hashlib.blake2b(f"{self.sample_id}|{self.teacher}|{content}".encode(), digest_size=8)
            self.id = h.hexdigest()

    @property
    def code_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.code is not None]

    def to_row(self) -> dict:
        row = asdict(self)
        row["lineage"] = None if self.lineage is None else json.dumps(self.lineage, ensure_ascii=False,
                                                                        sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict) -> Trajectory:
        turns = [Turn(t["reasoning"], t["code"], Result(**t["result"]) if t["result"] else None)
                 for t in row["turns"]]
        return cls(sample_id=row["sample_id"], teacher=row["teacher"], kind=row["kind"],
                   task=row["task"], turns=turns, answer=row["answer"],
                   audit=[Check(**c) for c in row["audit"] or []], passed=row["passed"], id=row["id"],
                   lineage=json.loads(row["lineage"]) if row.get("lineage") else None)

    def render(self, include_outputs: bool = True) -> str:
        """The assistant message in Thyme's tag protocol: `<think>` reasoning, code blocks with
        their `<sandbox_output>`, `</think>`, one space, `<answer>`."""
        parts = [THINK_OPEN]
        for turn in self.turns:
            parts.append(turn.reasoning)
            if turn.code is not None:
                parts.append(f"{CODE_OPEN}\n```python\n{turn.code}\n```\n{CODE_CLOSE}")
                if include_outputs and turn.result is not None:
                    parts.append(render_result(turn.result))
        parts.append(f"{THINK_CLOSE} {ANSWER_OPEN}{self.answer}{ANSWER_CLOSE}")
        return "".join(parts)


def render_result(result: Result) -> str:
    """A stored result's `<sandbox_output>` block, as the model reads it."""
    error = (result.error_kind, result.text) if result.kind == "error" else None
    return output_block(len(result.images), result.text, error)


def trajectories_table(trajectories: list[Trajectory]) -> pa.Table:
    return pa.Table.from_pylist([t.to_row() for t in trajectories], schema=TRAJECTORY_SCHEMA)


# ---------------------------------------------------------------------------------------------
# The answer format: what `render` produces, what SFT data must follow and the RL format reward
# scores (one rule, used by `pipelines.datasets.validate` and `thyme_train.rewards`).
# ---------------------------------------------------------------------------------------------

FORMAT_RULES = ("strict", "lenient")
_OUTPUT_SPAN = re.compile(f"{re.escape(OUTPUT_OPEN)}.*?(?:{re.escape(OUTPUT_CLOSE)}|$)", re.DOTALL)


def model_text(text: str) -> str:
    """The text without its sandbox outputs: what the model itself wrote (code may print
    anything, tags included)."""
    return _OUTPUT_SPAN.sub("", text or "")


def follows_format(text: str, rule: str = "strict") -> bool:
    """Whether the model's writing follows the tag format.

    `strict` (the original's rule): exactly one `<think>`, `</think>`, `<answer>`, `</answer>`,
    in that order, exactly one whitespace character between `</think>` and `<answer>`, nothing
    after `</answer>`. `lenient`: tags in any case, any whitespace (or none) between `</think>`
    and `<answer>`, trailing whitespace allowed, `<think>` may be missing (templates that
    pre-fill it), but still exactly one answer after the reasoning."""
    text = model_text(text)
    if rule == "strict":
        tags = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
        if any(text.count(t) != 1 for t in tags):
            return False
        positions = [text.index(t) for t in tags]
        if positions != sorted(positions) or not text.endswith(ANSWER_CLOSE):
            return False
        between = text[positions[1] + len(THINK_CLOSE):positions[2]]
        return len(between) == 1 and between.isspace()
    if rule == "lenient":
        low = text.lower()
        if low.count(ANSWER_OPEN) != 1 or low.count(ANSWER_CLOSE) != 1:
            return False
        if low.count(THINK_OPEN) > 1 or low.count(THINK_CLOSE) != 1:
            return False
        think_open = low.find(THINK_OPEN)
        think_close, a_open, a_close = (low.index(t) for t in (THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))
        if not (think_open <= think_close < a_open < a_close):
            return False
        between = low[think_close + len(THINK_CLOSE):a_open]
        after = low[a_close + len(ANSWER_CLOSE):]
        return not between.strip() and not after.strip()
    raise ValueError(f"unknown format rule {rule!r}; choose one of {FORMAT_RULES}")
