"""The flows a user launches, each one run in the UI with its asset selection:

    pool_plan                plan the source pool into shards (registers the `shards` partitions)
    data_flow                shards (all, or a range) -> augmented copies -> teacher -> sandbox
                             -> audit -> splits -> published SFT and RL datasets; one run over a
                             partition range
    training_and_evaluation  SFT stage 1 -> stage 2 -> GRPO-ATS, and each checkpoint's evaluation

Launch from the UI (Jobs), or `dagster job launch -m assets.definitions -j data_flow --tags
'{"dagster/asset_partition_range_start": "shard-00000", "dagster/asset_partition_range_end":
"shard-00009"}'`.

Automation (the `thyme_automation` sensor, running by default under `dagster dev`'s daemon): a
shard that a new plan adds is ingested (`on_missing` on pool/source_pool), each new or updated
pool shard flows through teacher, sandbox and audit (eager, per partition), and a new checkpoint
is evaluated (eager). Corpus-level rebuilds and training stay deliberate: they cost minutes to
GPU-days and mix every shard. No schedule: data arrives when a user plans it, not on a clock.
"""

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    define_asset_job,
)

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

AUTOMATION = AutomationConditionSensorDefinition(
    "thyme_automation", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Acts on the assets' automation conditions: new shards are ingested and flow "
                "through the funnel, new checkpoints are evaluated.")
