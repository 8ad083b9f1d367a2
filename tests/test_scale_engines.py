"""The engines' placement rules that need no cluster: the OpenAI teacher's concurrency shared over
the cluster, and the vLLM teacher's engine kept for every shard and run of a process; the
`samples` command on the local engine next to the `funnel` report of the same data root."""

import itertools
import types

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


def test_a_teacher_actor_in_the_loop_sizes_its_sandbox_from_the_spec_or_its_node_share():
    from pipelines.samples.stages import SandboxSpec
    from pipelines.scale.ray_engine import teacher_sandbox_workers

    vllm = TeacherSpec(kind="vllm", model="m", loop="prefill", tensor_parallel_size=4)
    gpu_nodes = [{"NodeID": "a", "Resources": {"CPU": 96, "GPU": 8}},
                 {"NodeID": "b", "Resources": {"CPU": 32, "GPU": 4}}]
    engines = {"a": 2, "b": 1}
    # by default the node's cores over its engines, the smallest such share
    assert teacher_sandbox_workers(vllm, SandboxSpec(), gpu_nodes, engines) == 32
    assert teacher_sandbox_workers(vllm, SandboxSpec(workers=6), gpu_nodes, engines) == 6
    assert teacher_sandbox_workers(vllm, SandboxSpec(workers=64), gpu_nodes, engines) == 32
    # the service's client runs nothing on the node; out of the loop there is no sandbox
    assert teacher_sandbox_workers(vllm, SandboxSpec(url="http://sandbox:8080"), gpu_nodes,
                                   engines) == 0
    assert teacher_sandbox_workers(TeacherSpec(kind="vllm", model="m"), SandboxSpec(),
                                   gpu_nodes, engines) == 0


def test_a_teacher_actor_keeps_its_sandbox_through_a_dead_worker_and_closes_it(monkeypatch,
                                                                                tmp_path):
    """The actor's class, run in this process: the sandbox opens before the engine is built (a
    refusal costs no engine), survives a killed worker with the engine untouched, and `close`
    stops its workers; an engine that fails to build closes the sandbox it opened."""
    import os
    import signal

    from faults import survivors

    from pipelines.core.vllm_config import VLLMConfig
    from pipelines.samples.stages import SandboxSpec
    from pipelines.scale.ray_engine import TeacherWorker

    engine = object()
    built = []
    monkeypatch.setattr(VLLMConfig, "build", lambda self: built.append(self) or engine)
    spec = TeacherSpec(kind="vllm", model="m", loop="prefill")
    with pytest.raises(FileNotFoundError, match="no-token"):
        TeacherWorker(spec, SandboxSpec(url="http://127.0.0.1:9",
                                        token_file=str(tmp_path / "no-token")), 0)
    assert built == []

    actor = TeacherWorker(spec, SandboxSpec(workers=2), 2)
    try:
        assert actor.engine is engine and actor.sandbox.workers == 2
        workers = {h.pid for h in actor.sandbox._handles}
        os.kill(next(iter(workers)), signal.SIGKILL)
        # the call that finds the dead worker says so; the worker is replaced, all serve again
        results = [actor.sandbox.run("print(6 * 7)") for _ in range(4)]
        assert [r.error.kind for r in results if not r.ok] == ["internal"], results
        assert all(r.ok and r.stdout.strip() == "42"
                   for r in [actor.sandbox.run("print(6 * 7)") for _ in range(4)])
        assert actor.engine is engine and len(built) == 1
    finally:
        actor.close()
    assert not survivors(workers | {h.pid for h in actor.sandbox._handles}, timeout=10)

    def broken(self):
        raise RuntimeError("out of GPU memory")
    monkeypatch.setattr(VLLMConfig, "build", broken)
    opened = []
    real_open = SandboxSpec.open
    monkeypatch.setattr(SandboxSpec, "open", lambda self, w=None: opened.append(
        real_open(self, w)) or opened[-1])
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        TeacherWorker(spec, SandboxSpec(workers=1), 1)
    assert opened and opened[0].workers == 0         # closed: no worker left


def _recorded_engine(keep: bool, nodes: list[dict]):
    """A RayEngine over `nodes` (as `ray.nodes()` lists them) that records the teacher actors it
    would start, as (options, args), instead of starting them: placement without Ray."""
    from pipelines.scale.ray_engine import RayEngine

    started = []

    class Recorded:
        def options(self, **options):
            return types.SimpleNamespace(remote=lambda *args: started.append((options, args)))

    engine = object.__new__(RayEngine)
    engine.keep_teachers, engine._actors = keep, []
    engine.nodes = lambda: nodes
    engine._remote_class = lambda cls: Recorded()
    return engine, started


@pytest.mark.parametrize("loop,keep,url,cpus", [("prefill", False, None, 32),
                                                ("off", False, None, 0),
                                                ("prefill", True, None, 0),
                                                ("prefill", False, "http://sandbox:8080", 0)])
def test_vllm_engine_actors_in_the_loop_reserve_their_sandbox_cpus(loop, keep, url, cpus):
    """The placement a GPU cluster gets (no Ray needed: the actor class is recorded): an engine
    per `tensor_parallel_size` GPUs of one node, each reserving its sandbox's CPUs, except
    kept-alive actors (held for good) and a service's client (its workers run elsewhere)."""
    from pipelines.samples.stages import SandboxSpec

    engine, started = _recorded_engine(keep, [
        {"NodeID": "a", "Resources": {"CPU": 96, "GPU": 8}},
        {"NodeID": "b", "Resources": {"CPU": 32, "GPU": 4}},
        {"NodeID": "c", "Resources": {"CPU": 16, "GPU": 2}},   # < one engine
        {"NodeID": "d", "Resources": {"CPU": 64}}])
    spec = TeacherSpec(kind="vllm", model="m", tensor_parallel_size=4, loop=loop)
    engine.teacher_workers(spec, SandboxSpec(url=url))
    assert len(started) == 3
    assert all(o["num_gpus"] == 4 and o["num_cpus"] == cpus for o, _ in started), started
    workers = 0 if loop == "off" or url else 32       # a sandbox worker per reserved CPU
    assert all(args == (spec, SandboxSpec(url=url), workers or None, None) for _, args in started)
    assert all(("name" in o) == keep for o, _ in started)


@pytest.mark.parametrize("loop,keep,cpus", [("off", False, 2), ("prefill", False, 8),
                                            ("prefill", True, 0)])
def test_vllm_cpu_engine_actors_reserve_cpus_one_per_node(loop, keep, cpus):
    """vLLM's CPU build (`device: cpu`) on a cluster without GPUs: one engine actor per node
    that has the engine's CPUs (`tensor_parallel_size` of them), reserving those (or its
    sandbox's, in the loop) and no GPU; the GPU build there fails, naming the setting."""
    from pipelines.samples.stages import SandboxSpec

    engine, started = _recorded_engine(keep, [
        {"NodeID": "a", "Resources": {"CPU": 8}},
        {"NodeID": "b", "Resources": {"CPU": 8}},
        {"NodeID": "c", "Resources": {"CPU": 1}}])     # < one engine
    on_gpus = TeacherSpec(kind="vllm", model="m", tensor_parallel_size=2, loop=loop)
    with pytest.raises(RuntimeError, match="has 0 in all.*device to cpu"):
        engine.teacher_workers(on_gpus, SandboxSpec())
    spec = TeacherSpec(kind="vllm", model="m", tensor_parallel_size=2, loop=loop, device="cpu")
    engine.teacher_workers(spec, SandboxSpec())
    assert len(started) == 2, started
    assert all(o["num_gpus"] == 0 and o["num_cpus"] == cpus for o, _ in started), started
    with pytest.raises(ValueError, match="device 'tpu'"):
        TeacherSpec(kind="vllm", model="m", device="tpu").check()
    with pytest.raises(ValueError, match="engine_kwargs must be a mapping.*not list"):
        TeacherSpec(kind="vllm", model="m", engine_kwargs=["max_model_len"]).check()


def test_openai_teacher_actors_share_the_clusters_requests_in_flight():
    """`max_concurrency` of an OpenAI teacher is the cluster's: on engine actors (one per node)
    each gets its share, as shard tasks do, never the whole limit each."""
    engine, started = _recorded_engine(False, [{"NodeID": n, "Resources": {"CPU": 8}} for n in "abcd"])
    spec = TeacherSpec(kind="openai", model="m", base_url="http://teacher:8000/v1", max_concurrency=10)
    engine.teacher_workers(spec, None)
    assert [args[3] for _, args in started] == [2, 2, 2, 2]      # 4 actors x 2 <= 10


def test_a_teacher_kept_across_shards_reports_each_shards_own_usage(tmp_path):
    """The local engine keeps one teacher (and its client or engine) for every shard: each
    shard's stats count that shard's requests and tokens, not all since the teacher was built
    (the Ray engine builds a teacher per shard, and the two must agree)."""
    from fake_openai import FakeOpenAI, guided_reply

    from pipelines.scale.funnel import layout_for, pool_keys

    root = tmp_path / "data"
    assert main(["generate", "--count", "6", "--shard-size", "2", "--workers", "1",
                 "--out", str(root / "pool"), "--quiet"]) == 0
    layout = layout_for(root)
    server = FakeOpenAI(reply=guided_reply)
    try:
        spec = TeacherSpec(kind="openai", model="fake-vlm", base_url=server.url,
                           api_key_env="THYME_TEST_NO_KEY", max_retries=0)
        stats = dict(local.LocalEngine().code_samples(layout, pool_keys(layout), spec))
    finally:
        server.close()
    usage = [s["teacher_stats"]["usage"] for s in stats.values()]
    assert len(usage) == 3 and all(u["requests"] >= 2 for u in usage), usage
    assert sum(u["requests"] for u in usage) == len(server.bodies), usage
    assert sum(u["prompt_tokens"] for u in usage) == 11 * len(server.bodies), usage


def test_the_vllm_teachers_engine_kwargs_reach_the_engine_config():
    """Other `vllm.LLM` arguments: VLLMConfig's own fields set there, the rest passed as is; the
    ones the teacher's own settings decide are refused."""
    spec = TeacherSpec(kind="vllm", model="m", loop="prefill", max_images=3,
                       engine_kwargs={"max_model_len": 2048, "enforce_eager": True,
                                      "logits_processors": ["pkg.mod:Processor"]})
    spec.check()
    config = spec.vllm_config()
    assert (config.max_model_len, config.enforce_eager, config.max_images) == (2048, True, 3)
    assert config.engine_kwargs == {"logits_processors": ["pkg.mod:Processor"]}
    with pytest.raises(ValueError, match=r"engine_kwargs \['seed'\]"):
        TeacherSpec(kind="vllm", model="m", engine_kwargs={"seed": 1}).check()


@pytest.mark.parametrize("text,why", [("{bad", "not JSON"), ("[1]", "expected a JSON object")])
def test_engine_kwargs_on_the_command_line_must_be_a_json_object(tmp_path, capsys, text, why):
    with pytest.raises(SystemExit) as exit_:
        main(["samples", "--data", str(tmp_path), "--teacher-engine-kwargs", text])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--teacher-engine-kwargs" in err and why in err, err
