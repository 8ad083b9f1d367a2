"""`python -m assets demo`: materialize the embedded default flow into the project's Dagster
instance (DAGSTER_HOME), so the runs, metadata and checks show in the UI (`make ui`).

Today the flow is the source pool (a generated pool with ground truth, planned into shards and
ingested), then per shard: the template teacher's trajectories, their execution in the sandbox,
and the audit; then the training splits (with their blocking checks) and the published SFT and RL
datasets. Later stages join here as they land.
"""

from __future__ import annotations

import argparse
import os
import sys

from dagster import AssetKey, DagsterInstance, materialize

from assets.code_samples import audited, code_samples, executions
from assets.datasets import DATASET_ASSETS
from assets.definitions import defs
from assets.evaluation import EVALUATION_ASSETS
from assets.partitions import shards
from assets.pool import source_manifest, source_pool
from assets.training import TRAINING_ASSETS

MANIFEST = AssetKey(["pool", "source_manifest"])
POOL = AssetKey(["pool", "source_pool"])
FUNNEL = [AssetKey(["samples", name]) for name in ("code_samples", "executions", "audited")]
DATASETS = [AssetKey(["splits", name]) for name in
            ("wo_thinking_thyme_single_round", "2round", "computation", "rl")] + \
           [AssetKey(["datasets", name]) for name in ("thyme_sft", "thyme_rl")]
TRAINING = [AssetKey(["training", name]) for name in ("sft_stage1", "sft_stage2", "grpo_ats")]
SHOWN = ("steps", "final_loss", "best_loss", "samples_trained", "samples_dropped",
         "reward_first_quarter", "reward_last_quarter", "items", "accuracy_tools",
         "accuracy_direct", "used_code", "checkpoint")
EVALUATION = [AssetKey(["evaluation", name]) for name in ("sft_stage2", "grpo_ats")]


def demo(count: int, shard_size: int) -> int:
    if not os.environ.get("DAGSTER_HOME"):
        print("DAGSTER_HOME is not set: run `make demo`, which sets it to .dagster_home/", file=sys.stderr)
        return 2
    instance = DagsterInstance.get()
    graph_assets = [source_manifest, source_pool, code_samples, executions, audited]
    resources = defs.resources  # the same resources the UI's runs use
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the UI has the full logs
    manifest_config = {**quiet, "ops": {"pool__source_manifest": {"config": {"count": count,
                                                                             "shard_size": shard_size}}}}
    result = materialize(graph_assets, selection=[MANIFEST], instance=instance, resources=resources,
                         run_config=manifest_config, tags={"thyme/demo": "true"})
    keys = instance.get_dynamic_partitions(shards.name)
    print(f"pool/source_manifest: {len(keys)} shards planned ({keys[0]} ... {keys[-1]})")
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1], "thyme/demo": "true"}
    result = materialize(graph_assets, selection=[POOL], instance=instance, resources=resources,
                         run_config=quiet, tags=tags)
    (mat,) = list(result.asset_materializations_for_node("pool__source_pool"))[:1]
    meta = {k: v.value for k, v in mat.metadata.items()}
    print(f"pool/source_pool: {meta['rows_out']} samples kept of {meta['rows_in']} "
          f"({meta['quarantined']} quarantined, {meta['skipped_shards']} shards already done), "
          f"{meta['images_written']} images written")
    for check in result.get_asset_check_evaluations():
        print(f"  check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    if not result.success:
        return 1
    for key in keys:  # teacher -> sandbox -> audit, one run per shard
        result = materialize(graph_assets, selection=FUNNEL, instance=instance, resources=resources,
                             run_config=quiet, partition_key=key, tags={"thyme/demo": "true"})
        (mat,) = list(result.asset_materializations_for_node("samples__audited"))[:1]
        meta = {k: v.value for k, v in mat.metadata.items()}
        print(f"samples/audited {key}: {meta['passed']} of {meta['dagster/row_count']} trajectories "
              f"passed the audit; by task {meta['pass_rate_by_task']}")
        if not result.success:
            return 1
    # corpus level: the splits (blocking checks) and the published SFT and RL datasets. A fifth of
    # the images held out (5% by default): the small demo pool then leaves a test split worth
    # evaluating on (6 RL prompts and 42 SFT rows held out of 400 samples, instead of 1 and 14)
    held_out = {**quiet, "ops": {"splits": {"config": {"test_share": 0.2}}}}
    result = materialize(graph_assets + DATASET_ASSETS, selection=DATASETS, instance=instance,
                         resources=resources, run_config=held_out, tags={"thyme/demo": "true"},
                         raise_on_error=False)
    for check in result.get_asset_check_evaluations():
        if not check.passed:
            print(f"  check {check.asset_key.to_user_string()} {check.check_name}: FAILED")
    for node in ("datasets__thyme_sft", "datasets__thyme_rl"):
        for mat in result.asset_materializations_for_node(node):
            meta = {k: v.value for k, v in mat.metadata.items()}
            print(f"{mat.asset_key.to_user_string()}: {meta['rows']} at {meta['path']}")
    if not result.success:
        print("the datasets run failed: see it with `make ui`", file=sys.stderr)
        return 1
    # training, each stage its own process (Dagster Pipes), on the tiny model; then evaluation
    # of each checkpoint on the held-out split (the tiny model's numbers mean nothing)
    for key in TRAINING + EVALUATION:
        # run config may name only the ops that run
        evaluation = {"ops": {key.to_python_identifier(): {"config": {"max_new_tokens": 48}}}}
        result = materialize(graph_assets + DATASET_ASSETS + TRAINING_ASSETS + EVALUATION_ASSETS,
                             selection=[key], instance=instance, resources=resources,
                             run_config={**quiet, **(evaluation if key in EVALUATION else {})},
                             tags={"thyme/demo": "true"}, raise_on_error=False)
        if not result.success:
            print(f"{key.to_user_string()} failed: see the run with `make ui`", file=sys.stderr)
            return 1
        for mat in result.asset_materializations_for_node(key.to_python_identifier()):
            meta = {k: v.value for k, v in mat.metadata.items()}
            shown = {k: meta[k] for k in SHOWN if k in meta}
            print(f"{key.to_user_string()}: {shown}")
    print("data: data/pool/, data/code_samples/, data/executions/, data/audited/, data/splits/, "
          "data/published/, data/checkpoints/, data/evaluation/; see the runs, funnel charts and checks with `make ui`")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="materialize the default flow")
    d.add_argument("--count", type=int, default=400, help="generated samples")
    d.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args(argv)
    return demo(args.count, args.shard_size)


if __name__ == "__main__":
    sys.exit(main())
