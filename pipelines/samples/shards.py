"""Shard-level stages after the pool: plain functions over parquet files, called by the Dagster
assets (and usable without Dagster). Each reads its input shard, writes its output atomically,
and returns numbers for the asset's metadata."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path, write_parquet
from pipelines.core.schema import Sample
from pipelines.core.trajectory import (
    FAIL,
    PASS,
    SKIP,
    TRAJECTORY_SCHEMA,
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


def funnel(trajectories: list[Trajectory]) -> dict[str, dict[str, int]]:
    """Per check: how many trajectories passed, failed or skipped it."""
    counts: dict[str, Counter] = {}
    for t in trajectories:
        for check in t.audit:
            counts.setdefault(check.name, Counter())[check.verdict] += 1
    return {name: dict(c) for name, c in counts.items()}


def pass_rates_by_task(trajectories: list[Trajectory]) -> dict[str, float]:
    total, passed = Counter(), Counter()
    for t in trajectories:
        total[t.task] += 1
        passed[t.task] += bool(t.passed)
    return {task: round(passed[task] / total[task], 3) for task in sorted(total)}


def funnel_chart(counts: dict[str, dict[str, int]], path: Path) -> Path:
    """A horizontal bar chart of the funnel (pass / fail / skip per check), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(counts)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    left = [0] * len(names)
    for verdict, colour in ((PASS, "#3b9c5a"), (FAIL, "#d0463b"), (SKIP, "#b9b9b9")):
        values = [counts[n].get(verdict, 0) for n in names]
        ax.barh(names, values, left=left, color=colour, label=verdict)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("trajectories")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("audit funnel")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def examples_markdown(trajectories: list[Trajectory], samples: dict[str, Sample], store_root: Path,
                      passed: bool, n: int = 4) -> str:
    """A few trajectories that passed (or failed) the audit, with the input and the images the
    sandbox produced as thumbnails, and the failed checks' reasons, for the Dagster UI."""
    from pipelines.core.images import store_path, thumbnail_data_url

    chosen = [t for t in trajectories if bool(t.passed) == passed][:n]
    lines = ["| input | sandbox images | task / kind | answer | checks |", "|---|---|---|---|---|"]
    for t in chosen:
        sample = samples[t.sample_id]
        inputs = [store_root / im.relpath for im in sample.images[:1]]
        produced = [store_path(store_root, p) for turn in t.code_turns if turn.result
                    for p in turn.result.images][:3]
        thumbs = [" ".join(f"![]({thumbnail_data_url(p, 72)})" for p in group if p.is_file())
                  for group in (inputs, produced)]
        checks = "; ".join(f"{c.name}: {c.reason}" for c in t.audit if c.verdict == FAIL) or "all passed"
        cells = [*thumbs, f"{t.task} / {t.kind}", t.answer[:40], checks[:200]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) if chosen else "(none)"
