"""The flows a user launches, each one run in the UI with its asset selection:

    pool_plan                plan the source pool into shards (registers the `shards` partitions)
    data_flow                shards (all, or a range) -> augmented copies -> teacher -> sandbox
                             -> audit -> splits -> published SFT and RL datasets; one run over a
                             partition range
    training_and_evaluation  SFT stage 1 -> stage 2 -> GRPO-ATS, and each checkpoint's evaluation

Launch from the UI (Jobs), or `dagster job launch -m assets.definitions -j data_flow --tags
'{"dagster/asset_partition_range_start": "shard-00000", "dagster/asset_partition_range_end":
"shard-00009"}'`. Automation: new pool shards flow through the funnel by themselves and a new
checkpoint is evaluated (eager conditions on those assets, acted on by the daemon that `dagster
dev` starts); corpus-level rebuilds and training stay deliberate (they cost minutes to GPU-days).
"""

from dagster import AssetSelection, define_asset_job

POOL_PLAN = define_asset_job(
    "pool_plan", selection=AssetSelection.assets(["pool", "source_manifest"]),
    description="Plan the source pool into shards; registers one `shards` partition per shard.")

DATA_FLOW = define_asset_job(
    "data_flow",
    selection=AssetSelection.assets(["pool", "source_pool"], ["pool", "augmented"])
    | AssetSelection.groups("code_samples", "datasets"),
    description="Pool shards -> augmented copies -> code samples -> executions -> audit -> "
                "splits -> published datasets. Run it over a partition range (all shards, or "
                "the new ones).")

TRAINING_AND_EVALUATION = define_asset_job(
    "training_and_evaluation", selection=AssetSelection.groups("training", "evaluation"),
    description="SFT stage 1 and 2, GRPO-ATS, and the evaluation of each checkpoint.")

JOBS = [POOL_PLAN, DATA_FLOW, TRAINING_AND_EVALUATION]
