"""Shard-level stages after the pool: plain functions over parquet files, called by the Dagster
assets (and usable without Dagster). Each reads its input shard, writes its output atomically,
and returns numbers for the asset's metadata."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import write_parquet
from pipelines.core.images import store_path
from pipelines.core.previews import Table
from pipelines.core.schema import Sample
from pipelines.core.trajectory import (
    FAIL,
    SKIP,
    TRAJECTORY_SCHEMA,
    UNVERIFIED,
    Trajectory,
    trajectories_table,
)

MAX_FAILED_SHARE = 0.5   # of a shard's requests to a model endpoint, beyond which it is down


class EndpointDown(RuntimeError):
    """A model endpoint (the teacher's, the judge's) failed most of a shard's requests: the step
    fails and writes nothing for the shard, so the partition is not marked done and a re-run
    (once the endpoint serves again) redoes it; the answers it did give are in the response
    cache. A few failures are not this: those samples are quarantined (teacher) or their check
    skipped with the reason (judge), and a re-run asks again."""


def check_endpoint(what: str, failed: int, asked: int, last_error: str,
                   max_failed_share: float = MAX_FAILED_SHARE) -> None:
    if asked and failed > max_failed_share * asked:
        raise EndpointDown(f"{what}: {failed} of {asked} requests failed (over "
                           f"{max_failed_share:.0%}); nothing written for this shard. "
                           f"Last error: {last_error}")


def read_samples(path: Path) -> dict[str, Sample]:
    return {row["id"]: Sample.from_row(row) for row in pq.read_table(path).to_pylist()}


def read_trajectories(path: Path) -> list[Trajectory]:
    return [Trajectory.from_row(row) for row in pq.read_table(path).to_pylist()]


def write_trajectories(trajectories: list[Trajectory], path: Path) -> None:
    table = trajectories_table(trajectories) if trajectories else pa.table(
        {f.name: pa.array([], f.type) for f in TRAJECTORY_SCHEMA}, schema=TRAJECTORY_SCHEMA)
    write_parquet(table, path)


def generate_code_samples(samples: dict[str, Sample], teacher,
                          quarantine_path: Path | None = None) -> tuple[list[Trajectory], dict]:
    """The teacher's candidates for every sample. Model teachers batch their requests
    (`generate`) and quarantine output they cannot parse; the quarantine is written (atomically,
    possibly empty) to `quarantine_path` and its reason counts returned in the stats. A teacher
    endpoint that failed most requests raises `EndpointDown` before anything is written."""
    t0 = time.perf_counter()
    quarantine: list[dict] = []
    teacher_stats: dict = {}
    if hasattr(teacher, "generate"):
        out = teacher.generate(list(samples.values()))
        trajectories, quarantine, teacher_stats = out.trajectories, out.quarantine, out.stats
        failed = [row for row in quarantine if row["reason"] == "request_failed"]
        check_endpoint(f"teacher {teacher.name}", len({row["sample_id"] for row in failed}),
                       len(samples), failed[-1]["detail"] if failed else "")
    else:
        trajectories = [t for s in samples.values() for t in teacher.candidates(s)]
    if quarantine_path is not None:
        from pipelines.samples.teachers.parse import quarantine_table
        write_parquet(quarantine_table(quarantine), quarantine_path)
    kinds = Counter(t.kind for t in trajectories)
    reasons = Counter(row["reason"] for row in quarantine)
    return trajectories, {"samples": len(samples), "trajectories": len(trajectories),
                          "by_kind": dict(kinds), "quarantined": len(quarantine),
                          "quarantine_reasons": dict(reasons), "teacher": teacher_stats,
                          "seconds": round(time.perf_counter() - t0, 3)}


def audit_funnel(trajectories: list[Trajectory]) -> Table:
    """The audit as a funnel: the trajectories in, how many are left after each check (in the
    order the audit runs them: a trajectory leaves at the first check it fails), and how many
    passed. Each row also counts every failure, unverified verdict and skip of its check, first
    or not. A trajectory that failed nothing but did not pass (an unverified judge verdict, when
    unverified rows do not pass) leaves at its first unverified check."""
    order: list[str] = []
    failed, unverified, skipped, first_fail = Counter(), Counter(), Counter(), Counter()
    for t in trajectories:
        first = None
        for c in t.audit:
            if c.name not in order:
                order.append(c.name)
            failed[c.name] += c.verdict == FAIL
            unverified[c.name] += c.verdict == UNVERIFIED
            skipped[c.name] += c.verdict == SKIP
            if c.verdict == FAIL and first is None:
                first = c.name
        if first is None and not t.passed:
            first = next((c.name for c in t.audit if c.verdict == UNVERIFIED), None)
        if first is not None:
            first_fail[first] += 1
    table = Table(FUNNEL_COLUMNS)
    left = len(trajectories)
    table.rows.append({"stage": "trajectories in", "remaining": left, "dropped_here": 0,
                       "failed": 0, "unverified": 0, "skipped": 0})
    for name in order:
        left -= first_fail[name]
        table.rows.append({"stage": f"after {name}", "remaining": left,
                           "dropped_here": first_fail[name], "failed": failed[name],
                           "unverified": unverified[name], "skipped": skipped[name]})
    passed = sum(1 for t in trajectories if t.passed)
    table.rows.append({"stage": "passed", "remaining": passed, "dropped_here": left - passed,
                       "failed": 0, "unverified": 0, "skipped": 0})
    return table


FUNNEL_COLUMNS = [("stage", "string"), ("remaining", "int"), ("dropped_here", "int"),
                  ("failed", "int"), ("unverified", "int"), ("skipped", "int")]


def funnel_chart(funnel: Table, path: Path, title: str = "audit funnel") -> Path:
    """`audit_funnel` drawn as a funnel (PNG): one bar per stage, labelled with its count."""
    from pipelines.core.previews import funnel_chart as draw
    return draw([(r["stage"], r["remaining"]) for r in funnel.rows], path, title)


def pass_rates_by_task(trajectories: list[Trajectory]) -> Table:
    """Per task: trajectories, passed, pass rate, and the check that failed most often."""
    total, passed, fails = Counter(), Counter(), {}
    for t in trajectories:
        total[t.task] += 1
        passed[t.task] += bool(t.passed)
        fails.setdefault(t.task, Counter()).update(c.name for c in t.audit if c.verdict == FAIL)
    table = Table([("task", "string"), ("trajectories", "int"), ("passed", "int"),
                   ("pass_rate", "float"), ("most_failed_check", "string")])
    for task in sorted(total):
        worst = fails[task].most_common(1)
        table.rows.append({"task": task, "trajectories": total[task], "passed": passed[task],
                           "pass_rate": round(passed[task] / total[task], 3),
                           "most_failed_check": f"{worst[0][0]} ({worst[0][1]})" if worst else ""})
    return table


def _inputs(sample: Sample | None, store_root: Path) -> list[Path]:
    return [store_path(store_root, im.relpath) for im in sample.images] if sample else []


def _produced(t: Trajectory, store_root: Path) -> list[Path]:
    return [store_path(store_root, p) for turn in t.code_turns if turn.result
            for p in turn.result.images]


def trajectories_markdown(trajectories: list[Trajectory], samples: dict[str, Sample],
                          store_root: Path, n: int = 3, limit: int = 2500) -> str:
    """A few trajectories as the model will read them: the input image(s) as thumbnails, the
    question, and the assistant text (tags, code fences and comments kept literal), plus any
    images the sandbox produced."""
    from pipelines.core.previews import example, examples

    parts = []
    for t in trajectories[:n]:
        sample = samples.get(t.sample_id)
        texts = [("question", sample.question if sample else "(sample not in this shard)"),
                 ("assistant", t.render())]
        title = f"{t.task} / {t.kind} · {len(t.code_turns)} code block(s) · sample {t.sample_id}"
        parts.append(example(title, _inputs(sample, store_root) + _produced(t, store_root),
                             texts, limit))
    return examples(parts, "(no trajectories)")


def examples_markdown(trajectories: list[Trajectory], samples: dict[str, Sample], store_root: Path,
                      passed: bool, n: int = 4) -> str:
    """A few trajectories that passed (or failed) the audit, with the input and the images the
    sandbox produced as thumbnails, and the failed checks' reasons, for the Dagster UI."""
    from pipelines.core.previews import cell, markdown_table, thumbnails

    chosen = [t for t in trajectories if bool(t.passed) == passed][:n]
    if not chosen:
        return "(none)"
    rows = []
    for t in chosen:
        failed = "; ".join(f"{c.name}: {c.reason}" for c in t.audit if c.verdict == FAIL)
        rows.append([thumbnails(_inputs(samples.get(t.sample_id), store_root)[:1], 72),
                     thumbnails(_produced(t, store_root)[:3], 72) or "(none)",
                     cell(f"{t.task} / {t.kind}"), cell(t.answer, 40),
                     cell(failed or "all passed", 200)])
    return markdown_table(["input", "sandbox images", "task / kind", "answer", "checks"], rows)
