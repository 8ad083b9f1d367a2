"""The audit (THYME.md §3): a funnel of named, rule-based checks that keeps only trajectories whose
code ran AND whose result actually helps answer (the rule-based stand-in for the paper's 72B
VLM audit), optionally followed by a VLM judge. docs/audit.md is the spec: the funnel, each
check's rule, geometry conventions, speed and limitations.

    audit(trajectory, sample, store_root, config=AuditConfig()) -> Trajectory
    audit_many(trajectories, samples_by_id, store_root, config, judge=None) -> [Trajectory]
    CHECKS   the rule checks' names, in the order every audit lists them (for funnel counts)
    JUDGE    the optional judge check's name, listed after them when a judge is given

The package: `rules` (the checks), `context` (what they share), `locate` (finding one image in
another), `rotation` and `contrast` (their measures), `hints` and `rotation_hints` (the boxes and
the rotation a trajectory's code names, tried first), `judge_prompt` (what the judge is shown),
`config` (every threshold).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from PIL import Image

from pipelines.core.judge import Judge
from pipelines.core.schema import Sample
from pipelines.core.trajectory import FAIL, PASS, SKIP, UNVERIFIED, Check, Trajectory
from pipelines.samples.audit.config import AuditConfig
from pipelines.samples.audit.context import Context
from pipelines.samples.audit.judge_prompt import judge_question
from pipelines.samples.audit.rules import (
    check_answer,
    check_computation,
    check_consistency,
    check_contrast_semantics,
    check_crop_semantics,
    check_executed,
    check_image_sanity,
    check_result_kind,
    check_rotation_semantics,
)

__all__ = ["CHECKS", "JUDGE", "AuditConfig", "audit", "audit_many"]

# The rule checks, in the order every audit runs and lists them.
RULE_CHECKS: dict[str, Callable[[Context], Check]] = {
    "executed": check_executed,
    "result_kind": check_result_kind,
    "image_sanity": check_image_sanity,
    "crop_semantics": check_crop_semantics,
    "rotation_semantics": check_rotation_semantics,
    "contrast_semantics": check_contrast_semantics,
    "computation": check_computation,
    "answer": check_answer,
    "consistency": check_consistency,
}
CHECKS: tuple[str, ...] = tuple(RULE_CHECKS)
JUDGE = "judge"
DEFAULTS = AuditConfig()      # frozen: safe to share as the default argument


def audit(trajectory: Trajectory, sample: Sample, store_root: str | Path,
          config: AuditConfig = DEFAULTS, judge: Judge | None = None) -> Trajectory:
    """Run every check (in CHECKS order, then JUDGE when a judge is given) and return a copy of
    `trajectory` with `audit` and `passed` set; the input trajectory is not modified. Many
    trajectories with a judge: `audit_many` (one batch of judge requests)."""
    if judge is not None:
        return audit_many([trajectory], {trajectory.sample_id: sample}, store_root, config, judge)[0]
    ctx = Context(trajectory, sample, Path(store_root), config)
    checks = []
    for name, check in RULE_CHECKS.items():
        try:
            checks.append(check(ctx))
        except Exception as exc:  # noqa: BLE001  one odd row must not stop a shard's audit
            checks.append(Check(name, FAIL, f"the check crashed: {type(exc).__name__}: {exc}"))
    # a real pool's `unknown` becomes the task the code performed (routing and the mix read it)
    return replace(trajectory, audit=checks, passed=all(c.verdict != FAIL for c in checks),
                   task=ctx.task)


def audit_many(trajectories: Sequence[Trajectory], samples: Mapping[str, Sample],
               store_root: str | Path, config: AuditConfig = DEFAULTS,
               judge: Judge | None = None) -> list[Trajectory]:
    """`audit` for each trajectory (`samples` by id); with a judge, the trajectories that failed
    no rule check are then put to it in one batch and every audit ends with a JUDGE check."""
    root = Path(store_root)
    for t in trajectories:
        if t.sample_id not in samples:
            raise KeyError(f"trajectory {t.id}: its sample {t.sample_id!r} is not among the "
                           f"{len(samples)} samples given")
    if config.workers is not None and config.workers < 1:
        raise ValueError(f"AuditConfig.workers must be >= 1 or None (got {config.workers})")
    with ThreadPoolExecutor(config.workers or os.cpu_count() or 1) as pool:
        done = list(pool.map(lambda t: audit(t, samples[t.sample_id], root, config), trajectories))
    if judge is None:
        return done
    if config.judge_batch < 1:
        raise ValueError(f"AuditConfig.judge_batch must be >= 1 (got {config.judge_batch})")
    verdicts: dict[int, Check] = {}
    eligible = []
    for i, t in enumerate(done):
        failed = [c.name for c in t.audit if c.verdict == FAIL]
        if failed:
            verdicts[i] = Check(JUDGE, SKIP, f"not asked: rule check(s) {', '.join(failed)} failed")
        elif not t.code_turns:
            verdicts[i] = Check(JUDGE, SKIP, "not asked: a direct answer has no sandbox result to judge")
        else:
            eligible.append(i)
    model = getattr(getattr(judge.client, "config", None), "model", "the judge")
    # In chunks: a question carries its images, and a real shard has thousands of trajectories.
    for start in range(0, len(eligible), config.judge_batch):
        asked, questions = [], []
        for i in eligible[start:start + config.judge_batch]:
            try:
                questions.append(judge_question(done[i], samples[done[i].sample_id], root, config))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                verdicts[i] = Check(JUDGE, UNVERIFIED, f"not asked: an image could not be shown ({exc})")
                continue
            asked.append(i)
        for i, v in zip(asked, judge.verdicts(questions), strict=True):
            if v.value is None:
                verdicts[i] = Check(JUDGE, UNVERIFIED, f"no verdict: {v.reason}")
            else:
                says = "supports the reasoning and helps answer" if v.value else \
                    "does not support the reasoning or help answer"
                verdicts[i] = Check(JUDGE, PASS if v.value else FAIL,
                                    f"{model}: the result {says} (reply {v.reason[:40]!r})")
    return [replace(t, audit=[*t.audit, verdicts[i]], passed=t.passed and _judge_passes(verdicts[i], config))
            for i, t in enumerate(done)]


def _judge_passes(check: Check, config: AuditConfig) -> bool:
    """A judge verdict lets a trajectory pass: yes, not asked for a reason that is no doubt
    (a rule failed, a direct answer), or unverified when the setting allows it."""
    if check.verdict == UNVERIFIED:
        return config.judge_unverified_passes
    return check.verdict != FAIL
