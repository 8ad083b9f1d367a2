"""Code samples: a teacher writes reasoning and code per pool sample, the sandbox runs every
block, the audit keeps what worked and helps answer. Partitioned by shard, like the pool.

A run may cover one shard or a range (a single-run backfill): each step then builds its teacher,
sandbox or judge once and works through the shards in turn, recording each shard's numbers on
that shard's materialization (`context.add_asset_metadata(..., partition_key=...)`), so every
partition's page shows its own counts. New pool shards are followed automatically (eager).
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets import ui
from assets.augment import augmented
from assets.partitions import shards
from assets.pool import source_pool
from assets.resources import (
    ClusterResource,
    JudgeResource,
    SandboxResource,
    TeacherResource,
    ThymeStorage,
    record_isolation,
)

AUDITED = ["samples", "audited"]
SHARD_STAGE = dict(key_prefix="samples", group_name="code_samples", kinds={"python", "parquet"},
                   partitions_def=shards, backfill_policy=BackfillPolicy.single_run(),
                   automation_condition=AutomationCondition.eager())


@asset(**SHARD_STAGE, deps=[source_pool, augmented], pool="teacher")
def code_samples(context: AssetExecutionContext, storage: ThymeStorage, teacher: TeacherResource,
                 sandbox: SandboxResource, cluster: ClusterResource) -> MaterializeResult:
    """Candidate trajectories (reasoning + code + answer) the teacher wrote for every sample of
    the shard (its augmented copies included); output it could not parse is quarantined with
    the reason. A model teacher in the loop runs its code in the sandbox as it writes."""
    from pipelines.samples.stages import Layout

    spec = teacher.spec()
    with cluster.open(storage.base) as engine:
        for key, stats in engine.code_samples(Layout(storage.base), context.partition_keys, spec,
                                              sandbox.spec()):
            context.add_asset_metadata({
                "dagster/row_count": stats["trajectories"], "samples": stats["samples"],
                "by_kind": ui.counts(stats["by_kind"], "kind"), "quarantined": stats["quarantined"],
                "quarantine_reasons": ui.counts(stats["quarantine_reasons"], "reason"),
                "seconds": stats["seconds"], "preview": MetadataValue.md(stats["preview"]),
                "teacher_stats": MetadataValue.json(stats["teacher_stats"]),  # loop ends, chain
                **ui.placement(stats),
            }, partition_key=key)
    return MaterializeResult(metadata={"teacher": spec.name, "engine": cluster.engine})


@asset(**SHARD_STAGE, deps=[code_samples], pool="sandbox")
def executions(context: AssetExecutionContext, storage: ThymeStorage, sandbox: SandboxResource,
               cluster: ClusterResource) -> MaterializeResult:
    """Every code block run in the sandbox (one session per trajectory); results attached,
    produced images in the store. Cached by code, inputs and sandbox version."""
    from tqdm import tqdm

    from pipelines.samples.stages import Layout

    def bar(key, total):
        return tqdm(total=total, unit="traj", desc=f"executions {key}")

    isolation = None
    with cluster.open(storage.base) as engine:
        for key, stats in engine.executions(Layout(storage.base), context.partition_keys,
                                            sandbox.spec(), progress=bar):
            if isolation is None:
                isolation = stats["sandbox_isolation"]
                record_isolation(context, isolation)
            context.add_asset_metadata({
                "dagster/row_count": stats["trajectories"], "code_blocks": stats["code_blocks"],
                "results_by_kind": ui.counts(stats["results_by_kind"], "result"),
                "errors_by_kind": ui.counts(stats["errors_by_kind"], "error"),
                "cache_hits": stats["cache_hits"], "cache_misses": stats["cache_misses"],
                "blocks_per_s": stats["blocks_per_s"], "preview": MetadataValue.md(stats["preview"]),
                "sandbox_isolation": MetadataValue.json(stats["sandbox_isolation"]),
                "sandbox_zlib": stats["sandbox_zlib"],      # what deflated its PNGs (sandbox.deflate)
                **ui.placement(stats),
            }, partition_key=key)
    return MaterializeResult(metadata={"sandbox_timeout_s": sandbox.timeout,
                                       "sandbox_isolation": MetadataValue.json(isolation or {}),
                                       "engine": cluster.engine})


class AuditChecks(Config):
    min_pass_rate: float = Field(0.5, description="blocking: share of trajectories that pass")
    workers: int | None = Field(None, description="trajectories audited at once, in threads "
                                                  "(OpenCV releases the GIL); null = one per core")
    judge_unverified_passes: bool = Field(False, description="with a judge: a trajectory it could "
                                          "not verify (over budget, request failed, no yes/no) "
                                          "passes; false keeps only verified ones")


@asset(**SHARD_STAGE, deps=[executions],
       check_specs=[
           ui.partitioned_check_spec("pass_rate", AUDITED, shards, blocking=True,
                                     description="the shard's share of trajectories passing the "
                                                 "audit is at least the floor"),
           ui.partitioned_check_spec("every_trajectory_answers", AUDITED, shards, blocking=True,
                                     description="no trajectory of the shard without a final answer"),
       ])
def audited(context: AssetExecutionContext, config: AuditChecks, storage: ThymeStorage,
            judge: JudgeResource, cluster: ClusterResource):
    """Each trajectory with every audit check's verdict and reason; `passed` when none failed.
    Each shard records its funnel (trajectories in, left after each check, passed), pass rates
    by task, and examples that passed and failed."""
    from collections import Counter

    from pipelines.samples.audit import AuditConfig
    from pipelines.samples.stages import Layout

    audit_config = AuditConfig(workers=config.workers,
                               judge_unverified_passes=config.judge_unverified_passes)
    checks = {"pass_rate": {}, "every_trajectory_answers": {}}
    judged, errors = Counter(), []
    with cluster.open(storage.base) as engine:
        for key, stats in engine.audit(Layout(storage.base), context.partition_keys,
                                       audit_config, judge.spec()):
            context.add_asset_metadata({
                "dagster/row_count": stats["trajectories"], "passed": stats["passed"],
                "pass_rate": stats["pass_rate"], "funnel": ui.table(stats["funnel"]),
                "funnel_chart": ui.chart(Path(stats["funnel_chart"]), "audit funnel"),
                "pass_rate_by_task": ui.table(stats["pass_rate_by_task"]),
                "trajectories_per_s": stats["trajectories_per_s"],
                "passed_examples": MetadataValue.md(stats["passed_examples"]),
                "failed_examples": MetadataValue.md(stats["failed_examples"]),
                **ui.placement(stats),
            }, partition_key=key)
            rate, no_answer = stats["pass_rate"], stats["without_answer"]
            checks["pass_rate"][key] = (rate >= config.min_pass_rate, {
                "pass_rate": rate, "floor": config.min_pass_rate, "passed": stats["passed"],
                "trajectories": stats["trajectories"]})
            checks["every_trajectory_answers"][key] = (not no_answer, {
                "without_answer": len(no_answer), "examples": MetadataValue.json(no_answer[:20])})
            judged.update(stats.get("judge", {}))
            errors = (errors + stats.get("judge_errors", []))[-10:]
    metadata = {} if not judge.enabled else {
        **{f"judge_{k}": judged[k] for k in ("calls", "cache_hits", "failures", "over_budget")},
        "judge_errors": MetadataValue.json(errors)}
    yield MaterializeResult(metadata={**metadata, "engine": cluster.engine})
    yield from ui.partition_check_results(context, checks)
