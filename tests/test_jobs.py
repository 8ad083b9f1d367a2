"""The flows as jobs (assets.jobs) and the automation a user relies on: a new pool shard flows
through the funnel by itself, a new checkpoint is evaluated, nothing expensive starts alone."""

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DefaultSensorStatus,
    evaluate_automation_conditions,
)

from assets.definitions import defs
from assets.partitions import shards


def _keys(job: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}


def test_each_flow_is_a_job_with_its_assets():
    assert _keys("pool_plan") == {"pool/source_manifest"}
    assert _keys("data_flow") == {
        "pool/source_pool", "pool/augmented", "samples/code_samples", "samples/executions", "samples/audited",
        "splits/wo_thinking_thyme_single_round", "splits/2round", "splits/computation",
        "splits/rl", "datasets/thyme_sft", "datasets/thyme_rl"}
    assert _keys("training_and_evaluation") == {
        "training/sft_stage1", "training/sft_stage2", "training/grpo_ats",
        "evaluation/sft_stage2_scores", "evaluation/grpo_ats_scores"}
    assert defs.resolve_job_def("data_flow").partitions_def == shards


def test_every_asset_says_what_it_is_and_names_are_distinct():
    graph = defs.resolve_asset_graph()
    names = [k.path[-1] for k in graph.get_all_asset_keys()]
    assert len(names) == len(set(names)), sorted(names)
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, key.to_user_string()


def test_a_new_shard_flows_and_a_new_checkpoint_is_evaluated():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, ["shard-00000", "shard-00001"])
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["datasets", "thyme_rl"])))
    first = evaluate_automation_conditions(defs, instance)
    assert first.total_requested == 0      # no checkpoint, no new shard yet

    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["pool", "source_pool"]),
                                                             partition="shard-00001"))
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["training", "grpo_ats"])))
    second = evaluate_automation_conditions(defs, instance, cursor=first.cursor)
    code = second.get_requested_partitions(AssetKey(["samples", "code_samples"]))
    assert code == {"shard-00001"}         # only the new shard, only the next stage
    assert second.get_requested_partitions(AssetKey(["pool", "augmented"])) == {"shard-00001"}
    assert second.get_num_requested(AssetKey(["evaluation", "grpo_ats_scores"])) == 1
    for expensive in (["training", "sft_stage1"], ["training", "grpo_ats"], ["splits", "rl"],
                      ["evaluation", "sft_stage2_scores"]):
        assert second.get_num_requested(AssetKey(expensive)) == 0, expensive


def test_a_newly_planned_shard_is_ingested_by_itself():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, ["shard-00000"])
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["pool", "source_manifest"])))
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["pool", "source_pool"]),
                                                             partition="shard-00000"))
    first = evaluate_automation_conditions(defs, instance)
    assert first.get_num_requested(AssetKey(["pool", "source_pool"])) == 0   # nothing new

    instance.add_dynamic_partitions(shards.name, ["shard-00001"])          # a new plan adds one
    second = evaluate_automation_conditions(defs, instance, cursor=first.cursor)
    assert second.get_requested_partitions(AssetKey(["pool", "source_pool"])) == {"shard-00001"}


def test_automation_runs_by_default_and_no_asset_is_left_out():
    (sensor,) = defs.sensors
    assert sensor.name == "thyme_automation"
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys()
                 if graph.get(k).automation_condition is not None}
    assert automated == {"pool/source_pool", "pool/augmented", "samples/code_samples", "samples/executions",
                         "samples/audited", "evaluation/sft_stage2_scores",
                         "evaluation/grpo_ats_scores"}
