"""The engines' placement rules that need no cluster: the OpenAI teacher's concurrency shared over
the cluster, and the vLLM teacher's engine kept for every shard and run of a process; the
`samples` command on the local engine next to the `funnel` report of the same data root."""

import itertools

import pytest

from pipelines.__main__ import main
from pipelines.samples.stages import Layout, TeacherSpec
from pipelines.scale import local
from pipelines.scale.ray_engine import _share


@pytest.mark.parametrize("total,shards,cpus", itertools.product([1, 2, 7, 8, 64], [1, 3, 40],
                                                               [1, 2, 16]))
def test_requests_in_flight_over_the_cluster_never_exceed_the_limit(total, shards, cpus):
    in_flight, per_shard = _share(total, shards, cpus)
    assert 1 <= in_flight <= min(shards, cpus, total) and per_shard >= 1
    assert in_flight * per_shard <= total


def test_the_vllm_teacher_engine_is_built_once_per_process(monkeypatch):
    from pipelines.core.vllm_config import VLLMConfig
    built = []
    monkeypatch.setattr(VLLMConfig, "build", lambda self: built.append(self) or object())
    monkeypatch.setattr(local, "_VLLM_ENGINES", {})
    spec = TeacherSpec(kind="vllm", model="some/model-dir")
    first = local.vllm_engine(spec)
    assert local.vllm_engine(spec) is first                   # the next shard, or the next run
    assert local.vllm_engine(TeacherSpec(kind="vllm", model="some/model-dir", seed=0)) is first
    other = local.vllm_engine(TeacherSpec(kind="vllm", model="other/model"))
    assert other is not first and len(built) == 2


def test_the_samples_command_runs_the_stages_and_the_funnel_command_reports_them(tmp_path, capsys):
    import json

    root = tmp_path / "data"
    assert main(["generate", "--count", "6", "--shard-size", "3", "--workers", "1",
                 "--out", str(root / "pool"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["samples", "--data", str(root), "--sandbox-workers", "1", "--quiet"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["engine"] == "local" and run["shards"] == 2
    assert run["totals"]["audit"]["trajectories"] == 6
    assert sorted(p.name for p in (root / "audited").glob("*.parquet")) == \
        ["shard-00000.parquet", "shard-00001.parquet"]
    assert main(["funnel", "--data", str(root)]) == 0     # the report of what each stage kept
    report = capsys.readouterr().out
    assert "audited" in report and "code_samples" in report


def test_a_teacher_in_the_loop_needs_the_sandbox_settings(tmp_path):
    in_loop = TeacherSpec(kind="openai", model="m", loop="turns")
    assert in_loop.needs_sandbox and not TeacherSpec(kind="openai", model="m").needs_sandbox
    assert not TeacherSpec(loop="turns").needs_sandbox          # the template writes no model code
    with pytest.raises(ValueError, match="needs the sandbox"):
        next(local.LocalEngine().code_samples(Layout(tmp_path), ["shard-00000"], in_loop))
    with pytest.raises(ValueError, match="needs a started sandbox"):
        in_loop.build(tmp_path)


def test_the_sandbox_spec_a_worker_builds_opens_the_resources_service(tmp_path):
    """Stages (and Ray workers) open the sandbox from the spec: with the resource's URL they
    open the service's client (here its token file is missing: the client's error, no local
    sandbox started instead)."""
    from assets.resources import SandboxResource
    missing = tmp_path / "no-token"
    spec = SandboxResource(url="http://127.0.0.1:9", token_file=str(missing), timeout=3).spec()
    assert (spec.url, spec.token_file, spec.timeout) == ("http://127.0.0.1:9", str(missing), 3)
    with pytest.raises(FileNotFoundError, match="no-token"):
        spec.open()


def test_the_teacher_resource_spec_builds_the_chained_teacher_where_it_runs(tmp_path):
    """The spec a worker receives carries main's teacher settings: the chain's reasoner too."""
    from assets.resources import TeacherResource
    from pipelines.samples.teachers import ChainedTeacher, OpenAITeacher

    resource = TeacherResource(kind="openai", model="coder", reasoner_model="reasoner",
                               reasoner_base_url="http://127.0.0.1:9/v1", loop="turns")
    spec = resource.spec()
    assert (spec.reasoner_model, spec.loop, spec.max_turns) == ("reasoner", "turns", 5)
    assert resource.needs_sandbox
    chained = TeacherSpec(kind="openai", model="coder", reasoner_model="reasoner").build(tmp_path)
    assert isinstance(chained, ChainedTeacher)
    assert isinstance(TeacherSpec(kind="openai", model="coder").build(tmp_path), OpenAITeacher)
