"""Code samples: a teacher writes reasoning and code per pool sample, the sandbox runs every
block, the audit keeps what worked and helps answer. Partitioned by shard, like the pool.

A run may cover one shard or a range (a single-run backfill): each step then builds its teacher,
sandbox or judge once and works through the shards in turn, recording each shard's numbers on
that shard's materialization (`context.add_asset_metadata(..., partition_key=...)`), so every
partition's page shows its own counts. New pool shards are followed automatically (eager).
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

import time

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
from assets.augment import augmented, shard_samples
from assets.partitions import shards
from assets.pool import source_pool
from assets.resources import JudgeResource, SandboxResource, TeacherResource, ThymeStorage

AUDITED = ["samples", "audited"]
SHARD_STAGE = dict(key_prefix="samples", group_name="code_samples", kinds={"python", "parquet"},
                   partitions_def=shards, backfill_policy=BackfillPolicy.single_run(),
                   automation_condition=AutomationCondition.eager())


@asset(**SHARD_STAGE, deps=[source_pool, augmented], pool="teacher")
def code_samples(context: AssetExecutionContext, storage: ThymeStorage,
                 teacher: TeacherResource, sandbox: SandboxResource) -> MaterializeResult:
    """Candidate trajectories (reasoning + code + answer) the teacher wrote for every sample of
    the shard (its augmented copies included); output it could not parse is quarantined with
    the reason. A model teacher in the loop runs its code in the sandbox as it writes."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        running = stack.enter_context(sandbox.open(context)) if teacher.needs_sandbox else None
        built = teacher.build(storage.path("pool", "images"), cache_dir=storage.path("cache", "teacher"),
                              sandbox=running, sandbox_timeout=sandbox.timeout,
                              execution_cache=storage.path("cache", "executions"))
        return _write_code_samples(context, storage, built, running)


def _write_code_samples(context: AssetExecutionContext, storage: ThymeStorage, built,
                        running=None) -> MaterializeResult:
    from pipelines.samples.shards import (
        generate_code_samples,
        trajectories_markdown,
        write_trajectories,
    )

    images = storage.path("pool", "images")

    for key in context.partition_keys:
        samples = shard_samples(storage, key)
        trajectories, stats = generate_code_samples(
            samples, built, quarantine_path=storage.path("code_samples", "quarantine", f"{key}.parquet"))
        write_trajectories(trajectories, storage.path("code_samples", f"{key}.parquet"))
        context.add_asset_metadata({
            "dagster/row_count": len(trajectories), "samples": stats["samples"],
            "by_kind": ui.counts(stats["by_kind"], "kind"), "quarantined": stats["quarantined"],
            "quarantine_reasons": ui.counts(stats["quarantine_reasons"], "reason"),
            "seconds": stats["seconds"],
            "preview": MetadataValue.md(trajectories_markdown(trajectories, samples, images)),
            "teacher_stats": MetadataValue.json(stats.get("teacher", {})),  # loop ends, chain
            **({"sandbox_isolation": MetadataValue.json(running.isolation_report)} if running else {}),
        }, partition_key=key)
    return MaterializeResult(metadata={"teacher": built.name})


@asset(**SHARD_STAGE, deps=[code_samples], pool="sandbox")
def executions(context: AssetExecutionContext, storage: ThymeStorage,
               sandbox: SandboxResource) -> MaterializeResult:
    """Every code block run in the sandbox (one session per trajectory); results attached,
    produced images in the store. Cached by code, inputs and sandbox version."""
    from collections import Counter

    from tqdm import tqdm

    from pipelines.core.images import ImageStore
    from pipelines.samples.execute import ExecutionCache, execute
    from pipelines.samples.shards import (
        read_trajectories,
        trajectories_markdown,
        write_trajectories,
    )

    store = ImageStore(storage.path("pool", "images"))
    cache = ExecutionCache(storage.path("cache", "executions"))
    with sandbox.open(context) as sb:
        for key in context.partition_keys:
            samples = shard_samples(storage, key)
            trajectories = read_trajectories(storage.path("code_samples", f"{key}.parquet"))
            hits, misses = cache.hits, cache.misses
            t0 = time.perf_counter()
            with tqdm(total=len(trajectories), unit="traj", desc=f"executions {key}") as bar:
                execute(trajectories, samples, store, sb, cache, sandbox.timeout, progress=bar)
            seconds = time.perf_counter() - t0
            write_trajectories(trajectories, storage.path("executions", f"{key}.parquet"))
            results = [t.result for tr in trajectories for t in tr.code_turns]
            context.add_asset_metadata({
                "dagster/row_count": len(trajectories), "code_blocks": len(results),
                "results_by_kind": ui.counts(Counter(r.kind for r in results), "result"),
                "errors_by_kind": ui.counts(Counter(
                    r.error_kind for r in results if r.kind == "error"), "error"),
                "cache_hits": cache.hits - hits, "cache_misses": cache.misses - misses,
                "blocks_per_s": round(len(results) / seconds, 1) if seconds else 0.0,
                "preview": MetadataValue.md(trajectories_markdown(
                    [t for t in trajectories if t.code_turns], samples, store.root)),
                "sandbox_isolation": MetadataValue.json(sb.isolation_report),
            }, partition_key=key)
        isolation = sb.isolation_report
    return MaterializeResult(metadata={"sandbox_timeout_s": sandbox.timeout,
                                       "sandbox_isolation": MetadataValue.json(isolation)})


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
            judge: JudgeResource):
    """Each trajectory with every audit check's verdict and reason; `passed` when none failed.
    Each shard records its funnel (trajectories in, left after each check, passed), pass rates
    by task, and examples that passed and failed."""
    from pipelines.samples.audit import AuditConfig, audit_many
    from pipelines.samples.shards import (
        audit_funnel,
        check_endpoint,
        examples_markdown,
        funnel_chart,
        pass_rates_by_task,
        read_trajectories,
        write_trajectories,
    )

    store_root = storage.path("pool", "images")
    built = judge.build(storage.path("cache", "judge"))
    checks = {"pass_rate": {}, "every_trajectory_answers": {}}
    for key in context.partition_keys:
        samples = shard_samples(storage, key)
        trajectories = read_trajectories(storage.path("executions", f"{key}.parquet"))
        t0 = time.perf_counter()
        asked, failed = (built.stats.calls, built.stats.failures) if built else (0, 0)
        trajectories = audit_many(trajectories, samples, store_root,
                                  AuditConfig(workers=config.workers,
                                              judge_unverified_passes=config.judge_unverified_passes),
                                  judge=built)
        if built is not None:  # a judge that is down fails the step: no unjudged shard passes
            check_endpoint(f"judge {judge.model}", built.stats.failures - failed,
                           built.stats.calls - asked, (built.stats.errors or [""])[-1])
        seconds = time.perf_counter() - t0
        write_trajectories(trajectories, storage.path("audited", f"{key}.parquet"))
        funnel = audit_funnel(trajectories)
        chart = funnel_chart(funnel, storage.path("reports", f"funnel-{key}.png"),
                             f"audit funnel, {key}")
        passed = sum(1 for t in trajectories if t.passed)
        rate = round(passed / max(len(trajectories), 1), 3)
        no_answer = [t.id for t in trajectories if not t.answer.strip()]
        context.add_asset_metadata({
            "dagster/row_count": len(trajectories), "passed": passed, "pass_rate": rate,
            "funnel": ui.table(funnel),
            "funnel_chart": ui.chart(chart, "audit funnel"),
            "pass_rate_by_task": ui.table(pass_rates_by_task(trajectories)),
            "trajectories_per_s": round(len(trajectories) / seconds, 1) if seconds else 0.0,
            "passed_examples": MetadataValue.md(examples_markdown(trajectories, samples, store_root, True)),
            "failed_examples": MetadataValue.md(examples_markdown(trajectories, samples, store_root, False)),
        }, partition_key=key)
        checks["pass_rate"][key] = (rate >= config.min_pass_rate, {
            "pass_rate": rate, "floor": config.min_pass_rate, "passed": passed,
            "trajectories": len(trajectories)})
        checks["every_trajectory_answers"][key] = (not no_answer, {
            "without_answer": len(no_answer), "examples": MetadataValue.json(no_answer[:20])})
    judged = {} if built is None else {
        **{f"judge_{k}": v for k, v in built.stats.as_dict().items()},
        "judge_errors": MetadataValue.json(built.stats.errors)}
    yield MaterializeResult(metadata=judged)
    yield from ui.partition_check_results(context, checks)
