"""The generate -> execute -> audit funnel as Dagster assets, on a small generated shard."""

import pyarrow.parquet as pq
from dagster import AssetKey, DagsterInstance, materialize

from assets.code_samples import audited, code_samples, executions
from assets.pool import source_manifest, source_pool
from assets.resources import (
    ClusterResource,
    JudgeResource,
    SandboxResource,
    TeacherResource,
    ThymeStorage,
)
from sandbox import deflate

ASSETS = [source_manifest, source_pool, code_samples, executions, audited]


def test_funnel_on_a_generated_shard(tmp_path):
    instance = DagsterInstance.ephemeral()
    resources = {"storage": ThymeStorage(root=str(tmp_path / "data")),
                 "sandbox": SandboxResource(workers=2), "teacher": TeacherResource(),
                 "judge": JudgeResource(), "cluster": ClusterResource()}
    manifest = {"ops": {"pool__source_manifest": {"config": {"count": 40, "shard_size": 40,
                                                             "workers": 1}}}}
    assert materialize([source_manifest], instance=instance, resources=resources,
                       run_config=manifest).success
    result = materialize(ASSETS, instance=instance, resources=resources, partition_key="shard-00000",
                         selection=[AssetKey(["pool", "source_pool"]), AssetKey(["samples", "code_samples"]),
                                    AssetKey(["samples", "executions"]), AssetKey(["samples", "audited"])])
    assert result.success
    checks = {(c.check_name, c.partition): c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {(name, "shard-00000"): True for name in (
        "schema", "images_exist", "quarantine_rate", "pass_rate", "every_trajectory_answers")}
    (mat,) = list(result.asset_materializations_for_node("samples__audited"))
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["pass_rate"] >= 0.8, meta
    by_task = {r.data["task"]: r.data for r in meta["pass_rate_by_task"].records}
    assert set(by_task) >= {"crop", "rotate", "contrast", "computation", "no_code"}
    assert sum(r["passed"] for r in by_task.values()) == meta["passed"]
    funnel = [r.data for r in meta["funnel"].records]
    assert funnel[0] == {"stage": "trajectories in", "remaining": meta["dagster/row_count"],
                         "dropped_here": 0, "failed": 0, "unverified": 0, "skipped": 0}
    assert funnel[-1]["stage"] == "passed" and funnel[-1]["remaining"] == meta["passed"]
    remaining = [r["remaining"] for r in funnel]
    assert remaining == sorted(remaining, reverse=True)      # a funnel only narrows
    assert "data:image/png;base64," in meta["funnel_chart"]
    # passed examples show the input and the sandbox's images as thumbnails
    assert meta["passed_examples"].count("data:image/jpeg;base64,") >= 2
    assert meta["trajectories_per_s"] > 0
    rows = pq.read_table(tmp_path / "data" / "audited" / "shard-00000.parquet").to_pylist()
    assert len(rows) >= 40 and all(r["audit"] for r in rows)
    (ex,) = list(result.asset_materializations_for_node("samples__executions"))
    assert ex.metadata["code_blocks"].value > 20
    # the mechanisms that confined the code, on the materialization and the run
    isolation = ex.metadata["sandbox_isolation"].value
    assert isolation["policy"] == "strict" and isolation["missing"] == {}
    # and the zlib its PNGs were deflated with (sandbox.deflate: the built zlib-ng, if any)
    assert ex.metadata["sandbox_zlib"].value.endswith("zlib-ng") == (deflate.resolve(None) is not None)
    assert instance.get_run_by_id(result.run_id).tags["thyme/sandbox_isolation"] == \
        "namespaces+landlock+seccomp+rlimits"

    # Re-running the executions is served by the cache; the resource's isolation policy reaches
    # the sandbox (a named minimum: this host has more, so everything is still active).
    resources["sandbox"] = SandboxResource(workers=1, isolation="seccomp+landlock+rlimits")
    again = materialize(ASSETS, instance=instance, resources=resources, partition_key="shard-00000",
                        selection=[AssetKey(["samples", "executions"])])
    (ex2,) = list(again.asset_materializations_for_node("samples__executions"))
    assert ex2.metadata["cache_misses"].value == 0
    assert ex2.metadata["cache_hits"].value == ex.metadata["code_blocks"].value
    assert ex2.metadata["sandbox_isolation"].value["policy"] == "landlock+seccomp+rlimits"
    assert ex2.metadata["sandbox_isolation"].value["active"] == isolation["active"]


def test_openai_teacher_through_the_resource(tmp_path):
    """The teacher resource builds the OpenAI teacher from configuration; unparseable output is
    quarantined with its reason and counted in the asset's metadata."""
    from fake_openai import FakeOpenAI, guided_reply

    server = FakeOpenAI(reply=guided_reply)
    try:
        instance = DagsterInstance.ephemeral()
        storage = ThymeStorage(root=str(tmp_path / "data"))
        teacher = TeacherResource(kind="openai", model="fake-vlm", base_url=server.url,
                                  api_key_env="THYME_TEST_NO_KEY", max_concurrency=2)
        resources = {"storage": storage, "sandbox": SandboxResource(workers=2), "teacher": teacher,
                     "judge": JudgeResource(), "cluster": ClusterResource()}
        manifest = {"ops": {"pool__source_manifest": {"config": {"count": 20, "shard_size": 20,
                                                                 "workers": 1}}}}
        assert materialize([source_manifest], instance=instance, resources=resources,
                           run_config=manifest).success
        result = materialize(ASSETS, instance=instance, resources=resources, partition_key="shard-00000",
                             selection=[AssetKey(["pool", "source_pool"]),
                                        AssetKey(["samples", "code_samples"])])
        assert result.success
        (mat,) = list(result.asset_materializations_for_node("samples__code_samples"))
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert meta["teacher"] == "openai:fake-vlm"
        reasons = {r.data["reason"]: r.data["count"] for r in meta["quarantine_reasons"].records}
        assert meta["quarantined"] == sum(reasons.values()) > 0 and set(reasons) == {"no_answer"}
        quarantine = pq.read_table(storage.path("code_samples", "quarantine", "shard-00000.parquet"))
        assert quarantine.num_rows == meta["quarantined"]
        assert meta["dagster/row_count"] + meta["quarantined"] == meta["samples"]
        assert (storage.path("cache", "teacher")).is_dir()
    finally:
        server.close()


def test_unknown_teacher_kind_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="expected template, openai or vllm"):
        TeacherResource(kind="gpt").build(tmp_path)
    with pytest.raises(ValueError, match="needs `model`"):
        TeacherResource(kind="openai").build(tmp_path)
