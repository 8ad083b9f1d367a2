"""`python -m assets demo`: run the embedded default flow as the project's jobs, in its Dagster
instance (DAGSTER_HOME), so the UI (`make ui`) shows one run per flow with its assets, metadata
and checks:

    pool_plan                 a generated pool with ground truth, planned into shards
    data_flow                 every shard: template teacher -> sandbox -> audit; then the splits
                              (blocking checks) and the published SFT and RL datasets
    training_and_evaluation   SFT stage 1 and 2 and GRPO-ATS on the tiny Qwen2.5-VL (each its own
                              process, through Dagster Pipes), then each checkpoint's evaluation
"""

from __future__ import annotations

import argparse
import os
import sys

from dagster import DagsterInstance

from assets.definitions import defs
from assets.partitions import shards

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the UI has the full logs
SHOWN = ("steps", "final_loss", "best_loss", "samples_trained", "samples_dropped",
         "reward_first_quarter", "reward_last_quarter", "items", "score_tools", "ci_tools",
         "score_direct", "used_code", "checkpoint")
TAGS = {"thyme/demo": "true"}


def _run(instance, job: str, run_config: dict, tags: dict | None = None,
         partition: str | None = None):
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, run_config={**QUIET, **run_config}, tags={**TAGS, **(tags or {})},
        raise_on_error=False, partition_key=partition)
    for check in result.get_asset_check_evaluations():
        if not check.passed:
            print(f"  check {check.asset_key.to_user_string()} {check.check_name}: FAILED")
    if not result.success:
        print(f"{job} failed: see run {result.run_id} with `make ui`", file=sys.stderr)
    return result


def _metadata(result, node: str) -> list[tuple[str | None, dict]]:
    return [(m.partition, {k: v.value for k, v in m.metadata.items()})
            for m in result.asset_materializations_for_node(node)]


def demo(count: int, shard_size: int) -> int:
    if not os.environ.get("DAGSTER_HOME"):
        print("DAGSTER_HOME is not set: run `make demo`, which sets it to .dagster_home/", file=sys.stderr)
        return 2
    instance = DagsterInstance.get()

    plan = {"ops": {"pool__source_manifest": {"config": {"count": count, "shard_size": shard_size}}}}
    if not _run(instance, "pool_plan", plan).success:
        return 1
    keys = instance.get_dynamic_partitions(shards.name)
    print(f"pool_plan: {len(keys)} shards planned ({keys[0]} ... {keys[-1]})")

    # A fifth of the images held out (5% by default): the small demo pool then leaves a test
    # split worth evaluating on (6 RL prompts and 42 SFT rows held out of 400 samples).
    flow = {"ops": {"splits": {"config": {"test_share": 0.2}}}}
    result = _run(instance, "data_flow", flow, {"dagster/asset_partition_range_start": keys[0],
                                                "dagster/asset_partition_range_end": keys[-1]})
    for key, meta in _metadata(result, "pool__source_pool"):
        print(f"pool/source_pool {key}: {meta['rows_out']} samples kept of {meta['rows_in']} "
              f"({meta['quarantined']} quarantined), {meta['images_written']} images written")
    for key, meta in _metadata(result, "samples__audited"):
        by_task = {r.data["task"]: r.data["pass_rate"] for r in meta["pass_rate_by_task"].records}
        print(f"samples/audited {key}: {meta['passed']} of {meta['dagster/row_count']} trajectories "
              f"passed the audit; by task {by_task}")
    for node in ("datasets__thyme_sft", "datasets__thyme_rl"):
        for _, meta in _metadata(result, node):
            rows = {r.data["split"]: r.data["rows"] for r in meta["rows"].records}
            print(f"{node.replace('__', '/')}: {rows} at {meta['path']}")
    if not result.success:
        return 1

    # evaluation on the tiny model: short answers (its numbers mean nothing; the flow is real),
    # on the held-out split (the evaluation's partition `heldout`)
    short = {"config": {"max_new_tokens": 48}}
    training = {"ops": {"evaluation__sft_stage2_scores": short, "evaluation__grpo_ats_scores": short}}
    result = _run(instance, "training_and_evaluation", training, partition="heldout")
    for node in ("training__sft_stage1", "training__sft_stage2", "training__grpo_ats",
                 "evaluation__sft_stage2_scores", "evaluation__grpo_ats_scores"):
        for _, meta in _metadata(result, node):
            print(f"{node.replace('__', '/')}: { {k: meta[k] for k in SHOWN if k in meta} }")
    if not result.success:
        return 1
    print(f"data: {os.path.relpath(defs.resources['storage'].base)}/ (pool, code_samples, executions, "
          "audited, splits, published, checkpoints, evaluation); see the runs with `make ui`")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the default flow's jobs")
    d.add_argument("--count", type=int, default=400, help="generated samples")
    d.add_argument("--shard-size", type=int, default=200)
    d.add_argument("--sandbox-isolation", default=None, metavar="POLICY",
                   help="sandbox isolation policy for every stage (the data flow, training, "
                        "evaluation): strict (default) or the minimum to run with, e.g. "
                        "landlock+seccomp+rlimits (docs/sandbox.md); sets $THYME_SANDBOX_ISOLATION")
    args = parser.parse_args(argv)
    if args.sandbox_isolation is not None:
        from sandbox.policy import ENV_VAR, normalize
        try:  # the environment reaches the in-process resources and the launched processes alike
            os.environ[ENV_VAR] = normalize(args.sandbox_isolation)
        except ValueError as exc:
            parser.error(str(exc))
    return demo(args.count, args.shard_size)


if __name__ == "__main__":
    sys.exit(main())
