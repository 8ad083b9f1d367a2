"""Code samples: a teacher writes reasoning and code per pool sample, the sandbox runs every
block, the audit keeps what worked and helps answer. One shard per partition, like the pool.

(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

import base64
import time
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets.partitions import shards
from assets.pool import source_pool
from assets.resources import SandboxResource, TeacherResource, ThymeStorage


def _shard_file(storage: ThymeStorage, stage: str, key: str) -> Path:
    return storage.path(stage, f"{key}.parquet")


@asset(key_prefix="samples", group_name="code_samples", kinds={"python", "parquet"},
       partitions_def=shards, deps=[source_pool], pool="teacher")
def code_samples(context: AssetExecutionContext, storage: ThymeStorage,
                 teacher: TeacherResource) -> MaterializeResult:
    """Candidate trajectories (reasoning + code + answer) for every sample of the shard."""
    from pipelines.samples.shards import generate_code_samples, read_samples, write_trajectories

    key = context.partition_key
    samples = read_samples(storage.path("pool", "samples", f"{key}.parquet"))
    built = teacher.build(storage.path("pool", "images"), cache_dir=storage.path("cache", "teacher"))
    trajectories, stats = generate_code_samples(
        samples, built, quarantine_path=storage.path("code_samples", "quarantine", f"{key}.parquet"))
    write_trajectories(trajectories, _shard_file(storage, "code_samples", key))
    preview = "\n\n---\n\n".join(f"**{t.task} / {t.kind}**\n\n```\n{t.render()[:1500]}\n```"
                                 for t in trajectories[:3])
    return MaterializeResult(metadata={
        "dagster/row_count": len(trajectories), "samples": stats["samples"],
        "teacher": built.name, "by_kind": MetadataValue.json(stats["by_kind"]),
        "quarantined": stats["quarantined"],
        "quarantine_reasons": MetadataValue.json(stats["quarantine_reasons"]),
        "seconds": stats["seconds"],
        "preview": MetadataValue.md(preview),
    })


@asset(key_prefix="samples", group_name="code_samples", kinds={"python", "parquet"},
       partitions_def=shards, deps=[code_samples], pool="sandbox")
def executions(context: AssetExecutionContext, storage: ThymeStorage,
               sandbox: SandboxResource) -> MaterializeResult:
    """Every code block run in the sandbox (one session per trajectory); results attached,
    produced images in the store. Cached by code, inputs and sandbox version."""
    from collections import Counter

    from tqdm import tqdm

    from pipelines.core.images import ImageStore
    from pipelines.samples.execute import ExecutionCache, execute
    from pipelines.samples.shards import read_samples, read_trajectories, write_trajectories

    key = context.partition_key
    samples = read_samples(storage.path("pool", "samples", f"{key}.parquet"))
    trajectories = read_trajectories(_shard_file(storage, "code_samples", key))
    store = ImageStore(storage.path("pool", "images"))
    cache = ExecutionCache(storage.path("cache", "executions"))
    t0 = time.perf_counter()
    with sandbox.open() as sb, tqdm(total=len(trajectories), unit="traj", desc="executions") as bar:
        execute(trajectories, samples, store, sb, cache, sandbox.timeout, progress=bar)
    seconds = time.perf_counter() - t0
    write_trajectories(trajectories, _shard_file(storage, "executions", key))
    results = [t.result for tr in trajectories for t in tr.code_turns]
    kinds = Counter(r.kind for r in results)
    errors = Counter(r.error_kind for r in results if r.kind == "error")
    return MaterializeResult(metadata={
        "dagster/row_count": len(trajectories), "code_blocks": len(results),
        "results_by_kind": MetadataValue.json(dict(kinds)),
        "errors_by_kind": MetadataValue.json(dict(errors)),
        "cache_hits": cache.hits, "cache_misses": cache.misses,
        "blocks_per_s": round(len(results) / seconds, 1) if seconds else 0.0,
    })


class AuditJudge(Config):
    enabled: bool = Field(False, description="ask a VLM whether each result supports the reasoning "
                          "and helps answer (only trajectories that pass the rule checks)")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="the judge server's OpenAI root")
    model: str = Field("", description="the served judge model (required when enabled)")
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the API key (unset: "
                             "no auth header, as local vLLM/SGLang servers need)")
    max_calls: int = Field(10_000, description="budget of judge requests per run; answers in the "
                           "cache are free; beyond it the judge check is skipped with the reason")


class AuditChecks(Config):
    min_pass_rate: float = Field(0.5, description="blocking: share of trajectories that pass")
    judge: AuditJudge = Field(default_factory=AuditJudge, description="the optional VLM judge")
    workers: int | None = Field(None, description="trajectories audited at once, in threads "
                                                  "(OpenCV releases the GIL); null = one per core")


@asset(key_prefix="samples", group_name="code_samples", kinds={"python", "parquet"},
       partitions_def=shards, deps=[executions],
       check_specs=[
           AssetCheckSpec("pass_rate", asset=["samples", "audited"], blocking=True,
                          description="share of trajectories passing the audit is above the floor"),
           AssetCheckSpec("every_trajectory_answers", asset=["samples", "audited"], blocking=True,
                          description="no trajectory without a final answer"),
       ])
def audited(context: AssetExecutionContext, config: AuditChecks,
            storage: ThymeStorage) -> MaterializeResult:
    """Each trajectory with every audit check's verdict and reason; `passed` when none failed."""
    from pipelines.samples.audit import AuditConfig, audit_many
    from pipelines.samples.shards import (
        examples_markdown,
        funnel,
        funnel_chart,
        pass_rates_by_task,
        read_samples,
        read_trajectories,
        write_trajectories,
    )

    key = context.partition_key
    samples = read_samples(storage.path("pool", "samples", f"{key}.parquet"))
    trajectories = read_trajectories(_shard_file(storage, "executions", key))
    store_root = storage.path("pool", "images")
    judge = None
    if config.judge.enabled:
        from pipelines.core.judge import Judge
        from pipelines.core.llm import LLMClient, LLMConfig
        j = config.judge
        judge = Judge(LLMClient(LLMConfig(base_url=j.base_url, model=j.model, api_key_env=j.api_key_env,
                                          cache_dir=str(storage.path("cache", "judge")))), j.max_calls)
    t0 = time.perf_counter()
    trajectories = audit_many(trajectories, samples, store_root, AuditConfig(workers=config.workers),
                              judge=judge)
    seconds = time.perf_counter() - t0
    write_trajectories(trajectories, _shard_file(storage, "audited", key))
    counts = funnel(trajectories)
    chart = funnel_chart(counts, storage.path("reports", f"funnel-{key}.png"))
    chart_md = f"![funnel](data:image/png;base64,{base64.b64encode(chart.read_bytes()).decode()})"
    passed = [t for t in trajectories if t.passed]
    rate = len(passed) / max(len(trajectories), 1)
    no_answer = [t.id for t in trajectories if not t.answer.strip()]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(trajectories), "passed": len(passed),
            "pass_rate": round(rate, 3),
            "pass_rate_by_task": MetadataValue.json(pass_rates_by_task(trajectories)),
            "funnel": MetadataValue.json(counts), "funnel_chart": MetadataValue.md(chart_md),
            "trajectories_per_s": round(len(trajectories) / seconds, 1) if seconds else 0.0,
            "passed_examples": MetadataValue.md(examples_markdown(trajectories, samples, store_root, True)),
            "failed_examples": MetadataValue.md(examples_markdown(trajectories, samples, store_root, False)),
            **({} if judge is None else {
                **{f"judge_{k}": v for k, v in judge.stats.as_dict().items()},
                "judge_errors": MetadataValue.json(judge.stats.errors)}),
        },
        check_results=[
            AssetCheckResult(check_name="pass_rate", passed=rate >= config.min_pass_rate,
                             metadata={"rate": round(rate, 3), "floor": config.min_pass_rate}),
            AssetCheckResult(check_name="every_trajectory_answers", passed=not no_answer,
                             metadata={"without_answer": MetadataValue.json(no_answer[:20])}),
        ],
    )

