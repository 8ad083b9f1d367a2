"""The sample stages (teacher -> sandbox -> audit) over pool shards with any engine, stage after
stage as the Dagster run does it: `python -m pipelines samples` and the benchmarks call it.
(`pipelines.funnel` is the other thing: the report of what each stage of a data root kept.)

    report = run_funnel(engine, Layout(data_root), keys, TeacherSpec(), SandboxSpec(), AuditConfig())
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pipelines.samples.stages import JudgeSpec, Layout, SandboxSpec, TeacherSpec

STAGES = ("code_samples", "executions", "audit")


def pool_keys(layout: Layout) -> list[str]:
    """The pool's shard keys, in order (the samples files `ingest` wrote)."""
    return sorted(p.stem for p in (layout.pool / "samples").glob("shard-*.parquet"))


def run_funnel(engine, layout: Layout, keys: list[str], teacher: TeacherSpec,
               sandbox: SandboxSpec, audit_config, judge: JudgeSpec | None = None,
               stages: tuple[str, ...] = STAGES, log=None) -> dict:
    """Each stage over every shard; returns per-stage seconds and totals, and per-shard stats
    (numbers, and the node that ran the shard on a cluster)."""
    missing = [k for k in keys if not layout.samples(k).exists()]
    if missing:
        raise FileNotFoundError(f"pool shards not found under {layout.pool / 'samples'}: {missing}")
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {STAGES}")
    report: dict = {"engine": engine.name, "shards": len(keys), "seconds": {}, "totals": {},
                    "per_shard": {}}
    calls = {"code_samples": lambda: engine.code_samples(layout, keys, teacher, sandbox),
             "executions": lambda: engine.executions(layout, keys, sandbox),
             "audit": lambda: engine.audit(layout, keys, audit_config, judge)}
    for stage in STAGES:
        if stage not in stages:
            continue
        t0 = time.perf_counter()
        totals: Counter = Counter()
        for key, stats in calls[stage]():
            numbers = {k: v for k, v in stats.items()
                       if isinstance(v, int | float) and not isinstance(v, bool) and k != "seconds"
                       and not k.endswith("_per_s")}
            totals.update(numbers)
            where = {"node": stats["node"]} if "node" in stats else {}
            report["per_shard"].setdefault(key, {})[stage] = {**numbers, **where}
            if log is not None:
                log(f"{stage} {key}: {numbers}")
        report["seconds"][stage] = round(time.perf_counter() - t0, 3)
        report["totals"][stage] = dict(totals)
    if "audit" in report["totals"]:
        audit = report["totals"]["audit"]
        audit.pop("pass_rate", None)
        audit["pass_rate"] = round(audit.get("passed", 0) / max(audit.get("trajectories", 0), 1), 3)
    return report


def layout_for(data_root: str | Path) -> Layout:
    return Layout(Path(data_root).resolve())
