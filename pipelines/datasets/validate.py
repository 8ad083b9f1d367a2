"""Validation of split and published rows (issue 5, 14): the checks that must pass before anyone
spends GPU time. Each check is a named function over a batch of rows returning `Failure`s (row
id + reason); split-level checks take the split's counts or keys.

Building the splits runs the row checks on every rendered row and sets a failing row aside
(quarantined with its reasons, `pipelines.datasets.splits`); a `Report` then counts those rows
against the rate each check allows (`ValidationConfig.max_failure_rate`, per-check
`failure_rates`): one bad row in a hundred thousand does not block publishing, a broken batch
does. The pixel budget is the ingest's (`pipelines.core.images.ImageLimits`): what the pool kept,
validation accepts.

Row shapes (what `pipelines.datasets.splits` writes):
- SFT: `id`, `question` (the user message, one `<image>` per input image), `response` (the
  assistant message), `images` (dataset-relative paths: the inputs first, then each produced
  image in order), `has_image`;
- RL: `id`, `messages` (system + user), `images`, `solution`.
`resolve(path)` maps a row's image path to the file on this machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from pipelines.core.images import ImageLimits
from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, parse_user
from pipelines.core.trajectory import follows_format
from pipelines.datasets.paths import find_absolute_paths
from sandbox.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    CODE_CLOSE,
    CODE_OPEN,
    IMAGE_TOKEN,
    OUTPUT_CLOSE,
    OUTPUT_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    code_blocks,
)

Resolver = Callable[[str], Path]

PAIRS = {THINK_OPEN: THINK_CLOSE, CODE_OPEN: CODE_CLOSE, OUTPUT_OPEN: OUTPUT_CLOSE,
         ANSWER_OPEN: ANSWER_CLOSE}
_TAG = re.compile("|".join(re.escape(t) for pair in PAIRS.items() for t in pair))
_ANSWER_OPENS = re.compile(re.escape(ANSWER_OPEN))


@dataclass(frozen=True)
class Failure:
    check: str
    row_id: str | None       # None for split-level failures
    reason: str


@dataclass(frozen=True)
class ValidationConfig:
    """Limits the checks enforce."""

    max_pixels: int = ImageLimits.max_pixels  # per image: the ingest's limit (processors resize
                                           # far below it; a pool image never fails here)
    mix_tolerance: float = 0.05            # |actual share - target share| allowed per task
    min_rows: int = 1                      # every split built must have at least this many rows
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # the RL prompt's expected system message
    max_failures_kept: int = 200           # per check, for reports (all are counted)
    max_failure_rate: float = 0.01         # rows a row check may set aside (share of the split's
                                           # rendered rows) before it blocks publishing
    failure_rates: dict[str, float] = field(default_factory=dict)  # per-check overrides

    def __post_init__(self):
        for name, rate in {"max_failure_rate": self.max_failure_rate, **self.failure_rates}.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"failure rate of {name} must be in [0, 1] (got {rate})")

    def allowed_rate(self, check: str) -> float:
        return self.failure_rates.get(check, self.max_failure_rate)


# ------------------------------------------------------------------ SFT row checks

def check_balanced_tags(rows: Iterable[dict]) -> list[Failure]:
    """Every think/code/sandbox_output/answer tag closes, in order, without overlap."""
    out = []
    for row in rows:
        stack, problem = [], None
        for m in _TAG.finditer(row["response"] or ""):
            tag = m.group(0)
            if tag in PAIRS:
                if tag in stack:
                    problem = f"{tag} opened again inside itself at {m.start()}"
                    break
                stack.append(tag)
            elif not stack or PAIRS[stack[-1]] != tag:
                problem = f"{tag} at {m.start()} closes {stack[-1] if stack else 'nothing'}"
                break
            else:
                stack.pop()
        if problem is None and stack:
            problem = f"{', '.join(stack)} never closed"
        if problem:
            out.append(Failure("balanced_tags", row["id"], problem))
    return out


def check_one_answer(rows: Iterable[dict]) -> list[Failure]:
    out = []
    for row in rows:
        n = len(_ANSWER_OPENS.findall(row["response"] or ""))
        if n != 1:
            out.append(Failure("one_answer", row["id"], f"{n} {ANSWER_OPEN} tags (expected 1)"))
    return out


def check_think_answer_format(rows: Iterable[dict]) -> list[Failure]:
    """The response starts with `<think>` and follows the RL format reward's strict rule
    (`pipelines.core.trajectory.follows_format`), so SFT data already earns it; trailing
    whitespace is allowed (generation stops at `</answer>`). Rows with other than one
    `<answer>` are `one_answer`'s to report."""
    out = []
    for row in rows:
        response = row["response"] or ""
        if len(_ANSWER_OPENS.findall(response)) != 1:
            continue
        if not response.lstrip().startswith(THINK_OPEN):
            out.append(Failure("think_answer_format", row["id"], f"does not start with {THINK_OPEN}"))
        elif not follows_format(response.strip(), "strict"):
            tail = response[-80:].replace("\n", "\\n")
            out.append(Failure("think_answer_format", row["id"],
                               f"does not end with {THINK_CLOSE} + one space + {ANSWER_OPEN}...: "
                               f"...{tail!r}"))
    return out


def check_image_count(rows: Iterable[dict]) -> list[Failure]:
    """One `<image>` in the question per input image (none for a text-only row), one in the
    response per produced image, matching the image list in order."""
    out = []
    for row in rows:
        in_question = (row["question"] or "").count(IMAGE_TOKEN)
        in_response = (row.get("response") or "").count(IMAGE_TOKEN)
        images = len(row["images"] or [])
        if bool(in_question) != bool(row["has_image"]):
            expected = "at least 1" if row["has_image"] else "0 (a text-only row)"
            out.append(Failure("image_count", row["id"],
                               f"{in_question} {IMAGE_TOKEN} in the question, expected {expected}"))
        elif in_question + in_response != images:
            out.append(Failure("image_count", row["id"],
                               f"{in_question}+{in_response} {IMAGE_TOKEN} tokens but {images} images"))
    return out


def check_images_exist(rows: Iterable[dict], resolve: Resolver, max_pixels: int) -> list[Failure]:
    """Every image file exists, opens, and is within the pixel budget."""
    out = []
    for row in rows:
        for path in row["images"] or []:
            file = resolve(path)
            if not file.is_file():
                out.append(Failure("images_exist", row["id"], f"{path}: no such file"))
                continue
            try:
                with Image.open(file) as img:
                    w, h = img.size
            except Exception as exc:  # noqa: BLE001 - any unreadable header
                out.append(Failure("images_exist", row["id"], f"{path}: unreadable ({exc})"))
                continue
            if w * h > max_pixels:
                out.append(Failure("images_exist", row["id"],
                                   f"{path}: {w}x{h} over the pixel budget {max_pixels}"))
    return out


def check_no_absolute_paths(rows: Iterable[dict]) -> list[Failure]:
    """No absolute or author path in the text; the User Image Path names the first image."""
    out = []
    for row in rows:
        texts = [row.get("question") or "", row.get("response") or ""]
        texts += [m["content"] or "" for m in row.get("messages") or []]
        found = [p for t in texts for p in find_absolute_paths(t)]
        if found:
            out.append(Failure("no_absolute_paths", row["id"], f"absolute paths: {found[:3]}"))
            continue
        named = parse_user(row.get("question") or "")[1].get("original_path")
        images = row["images"] or []
        if row["has_image"] and named != (images[0] if images else None):
            out.append(Failure("no_absolute_paths", row["id"],
                               f"User Image Path {named!r} is not the first image {images[:1]}"))
    return out


def check_no_empty_code(rows: Iterable[dict]) -> list[Failure]:
    out = []
    for row in rows:
        for k, code in enumerate(code_blocks(row["response"] or "")):
            if not [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]:
                out.append(Failure("no_empty_code", row["id"], f"code block {k + 1} has no statement"))
                break
    return out


# ------------------------------------------------------------------ RL row checks

def _user(row: dict) -> str:
    return next((m["content"] for m in row.get("messages") or [] if m["role"] == "user"), "")


def check_rl_prompt(rows: Iterable[dict], system_prompt: str) -> list[Failure]:
    """System + user messages, the configured system prompt, a solution to reward against."""
    out = []
    for row in rows:
        roles = [m["role"] for m in row["messages"] or []]
        if roles != ["system", "user"]:
            out.append(Failure("rl_prompt", row["id"], f"roles {roles}, expected system, user"))
        elif row["messages"][0]["content"] != system_prompt:
            out.append(Failure("rl_prompt", row["id"], "system prompt differs from the configured one"))
        elif not (row.get("solution") or "").strip():
            out.append(Failure("rl_prompt", row["id"], "empty solution"))
    return out


def rl_as_checked(row: dict) -> dict:
    """An RL row in the fields the shared checks read (its user message is the question)."""
    return {**row, "question": _user(row)}


# ------------------------------------------------------------------ split-level checks

def check_split_sizes_and_mix(counts: dict[str, dict[str, int]], targets: dict[str, dict[str, float]],
                              cfg: ValidationConfig) -> list[Failure]:
    """Each split has at least `min_rows`; where a task mix is configured, each listed task's
    share among the listed tasks is within the tolerance of its target (renormalised over the
    listed tasks present), and no task the mix excludes (weight 0) is present."""
    out = []
    for split, by_task in counts.items():
        total = sum(by_task.values())
        if total < cfg.min_rows:
            out.append(Failure("split_sizes_and_mix", split, f"{total} rows < {cfg.min_rows}"))
            continue
        weights = targets.get(split) or {}
        excluded = sorted(t for t, w in weights.items() if w == 0 and by_task.get(t))
        if excluded:
            out.append(Failure("split_sizes_and_mix", split, f"tasks the mix excludes (weight 0): {excluded}"))
        target = {t: w for t, w in weights.items() if w > 0 and by_task.get(t)}
        if not target:
            continue
        # shares among the mixed tasks: tasks the mix does not list are kept whole, outside it
        mixed = sum(by_task[t] for t in target)
        weight = sum(target.values())
        for task, w in target.items():
            share, want = by_task[task] / mixed, w / weight
            if abs(share - want) > cfg.mix_tolerance:
                out.append(Failure("split_sizes_and_mix", split,
                                   f"{task}: share {share:.3f}, target {want:.3f} "
                                   f"(tolerance {cfg.mix_tolerance})"))
    return out


def input_keys(row: dict, rl: bool = False) -> list[str]:
    """What keeps a row's part apart: the hash of each input image (a dataset path's file name;
    an SFT row's inputs are as many as its question's `<image>` tokens, an RL row's are all its
    images), or its `image_key` (the normalised question) when it has none."""
    images = row["images"] or []
    inputs = images if rl else images[:(row.get("question") or "").count(IMAGE_TOKEN)]
    return [PurePosixPath(p).stem for p in inputs] or [row["image_key"]]


def check_no_train_test_overlap(train: dict, test: dict) -> list[Failure]:
    """`train`/`test` map row id -> its keys (`input_keys`; a single key may be given as text):
    no key may be on both sides."""
    def keys(value):
        return [value] if isinstance(value, str) else value

    train_keys = {k for value in train.values() for k in keys(value)}
    out = []
    for rid, value in test.items():
        shared = [k for k in keys(value) if k in train_keys]
        if shared:
            out.append(Failure("no_train_test_overlap", rid,
                               f"image/question key {shared[0][:16]} is also in train"))
    return out


# ------------------------------------------------------------------ batches

def validate_sft_rows(rows: list[dict], resolve: Resolver, cfg: ValidationConfig) -> list[Failure]:
    return (check_balanced_tags(rows) + check_one_answer(rows) + check_think_answer_format(rows)
            + check_image_count(rows) + check_images_exist(rows, resolve, cfg.max_pixels)
            + check_no_absolute_paths(rows) + check_no_empty_code(rows))


def validate_rl_rows(rows: list[dict], resolve: Resolver, cfg: ValidationConfig) -> list[Failure]:
    checked = [rl_as_checked(r) for r in rows]
    return (check_rl_prompt(rows, cfg.system_prompt) + check_image_count(checked)
            + check_images_exist(checked, resolve, cfg.max_pixels) + check_no_absolute_paths(checked))


@dataclass
class Report:
    """Failures per check: counted in full, the first `keep` kept with their rows and reasons;
    with the rows the build set aside (`quarantined` per check, of `rendered` rows) held
    against each check's allowed rate. A check passes when the written rows have no failure
    and its quarantine rate is within the allowed rate."""

    checks: tuple[str, ...]
    keep: int = 200
    counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    cfg: ValidationConfig = field(default_factory=ValidationConfig)
    rendered: int = 0                                    # rows built (written + set aside)
    quarantined: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for name in self.checks:
            self.counts.setdefault(name, 0)
            self.failures.setdefault(name, [])

    def add(self, failures: Iterable[Failure]) -> None:
        for f in failures:
            self.counts[f.check] = self.counts.get(f.check, 0) + 1
            kept = self.failures.setdefault(f.check, [])
            if len(kept) < self.keep:
                kept.append(f)

    def rate(self, name: str) -> float:
        """The share of the split's rendered rows this check set aside."""
        return self.quarantined.get(name, 0) / self.rendered if self.rendered else 0.0

    def passed(self, name: str) -> bool:
        return self.counts.get(name, 0) == 0 and self.rate(name) <= self.cfg.allowed_rate(name)

    @property
    def ok(self) -> bool:
        return all(self.passed(name) for name in {*self.checks, *self.counts, *self.quarantined})
