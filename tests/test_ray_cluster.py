"""The shard stages on a real Ray cluster (issue 18): a head and a second node started with
`ray start` as separate processes on this machine (one CPU each, no dashboard). The funnel
(template teacher -> sandbox -> audit) runs over several shards on both nodes; the worker node is
killed (kill -9 of every process of it) while the sandbox stage is mid-run; the run goes on, and
its files are the local run's: same ids, rows, verdicts and counts, no partial file. A teacher
in the loop (the fake VLM, an OpenAI teacher) writes two one-photo shards on engine actors
(`teacher_actors`, the vLLM teacher's path: vLLM itself is not installed with Ray here), one per
node, each running the code in a sandbox of its own; one actor is killed mid-shard, its shard is
redone on the other, and the funnel's files are the local run's; actors whose sandbox cannot
start fail the call with the reason; kept-alive actors keep their sandboxes after the run and
`stop_teachers` closes them. The same teacher also runs as Ray tasks, each with its own sandbox.

One cluster and one run keep the CI cost near 60 s on two cores (starting the nodes is most of it).
"""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faults import descendants, outputs, partial_files, survivors

from pipelines.__main__ import main
from pipelines.samples.audit import AuditConfig
from pipelines.samples.stages import SandboxSpec, TeacherSpec
from pipelines.scale import open_engine
from pipelines.scale.funnel import layout_for, pool_keys, run_funnel

ray = pytest.importorskip("ray")
from ray_cluster import LocalRayCluster  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COUNT, SHARD_SIZE = 24, 4            # six shards: both nodes get several
FOLDERS = ["code_samples", "executions", "audited"]


def funnel(engine, root: Path, log=None) -> dict:
    layout = layout_for(root)
    return run_funnel(engine, layout, pool_keys(layout), TeacherSpec(), SandboxSpec(workers=1),
                      AuditConfig(workers=1), log=log)


def audit_from_dagster(local: Path, root: Path, address: str) -> dict:
    """The `audited` asset over the shard range with the cluster resource set to this cluster
    (on the local run's executions): each shard's materialization with its metadata."""
    from dagster import DagsterInstance, materialize

    from assets.code_samples import audited, code_samples, executions
    from assets.partitions import shards
    from assets.resources import (
        ClusterResource,
        JudgeResource,
        SandboxResource,
        TeacherResource,
        ThymeStorage,
    )
    for folder in ("pool", "code_samples", "executions"):
        shutil.copytree(local / folder, root / folder)
    keys = pool_keys(layout_for(root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, keys)
    result = materialize(
        [code_samples, executions, audited], selection=[audited.key],
        resources={"storage": ThymeStorage(root=str(root)), "sandbox": SandboxResource(),
                   "teacher": TeacherResource(), "judge": JudgeResource(),
                   "cluster": ClusterResource(engine="ray", address=address)},
        instance=instance, tags={"dagster/asset_partition_range_start": keys[0],
              "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    return {e.partition: e.materialization.metadata
            for e in result.get_asset_materialization_events() if e.partition}


def photo_pool(root: Path):
    """Two one-photo shards (real photos, each with its target's box) under `root`."""
    from real_photos import PHOTOS, photo_bytes

    from pipelines.core.images import ImageStore
    from pipelines.core.schema import Sample, samples_table

    layout = layout_for(root)
    store = ImageStore(layout.images)
    (layout.pool / "samples").mkdir(parents=True)
    for i, name in enumerate(("astronaut", "coffee")):
        question, answer, box, category, _ = PHOTOS[name]
        ref, _ = store.put(photo_bytes(name))
        sample = Sample(question=question, images=[ref], source="photos", origin_file="p",
                        origin_row=i, answer=answer, task="crop",
                        meta={"box": box, "category": category})
        pq.write_table(samples_table([sample]), layout.samples(f"shard-{i:05d}"))
    return layout


class LoopTeacher:
    """The fake VLM writing in the loop (prefill), served for a `with` block; `on_request(body)`
    is called before each reply."""

    def __init__(self, on_request=None):
        from fake_openai import FakeOpenAI, loop_reply
        reply = loop_reply()
        self.server = FakeOpenAI(lambda body: (on_request and on_request(body)) or reply(body),
                                 honour_stop=True)
        self.spec = TeacherSpec(kind="openai", model="fake-vlm", base_url=self.server.url,
                                api_key_env="THYME_TEST_NO_KEY", loop="prefill", max_retries=0)

    def __enter__(self) -> TeacherSpec:
        return self.spec

    def __exit__(self, *exc) -> None:
        self.server.close()


def teacher_in_the_loop(engine, root: Path) -> dict:
    """An OpenAI teacher in the loop (the fake VLM) over two one-photo shards on the cluster."""
    layout = photo_pool(root)
    with LoopTeacher() as teacher:
        return dict(engine.code_samples(layout, pool_keys(layout), teacher, SandboxSpec(workers=1)))


def funnel_in_the_loop(engine, root: Path, sandbox: SandboxSpec, on_request=None) -> dict:
    """The funnel over the two photo shards with the teacher in the loop."""
    layout = photo_pool(root)
    with LoopTeacher(on_request) as teacher:
        return run_funnel(engine, layout, pool_keys(layout), teacher, sandbox,
                          AuditConfig(workers=1))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def cluster_processes(cluster) -> dict[int, str]:
    """pid -> command line of every process of the cluster's nodes (Ray titles its workers
    `ray::<actor class>.<method>`)."""
    return {p: cmdline(p) for p in set().union(*(cluster.processes(n) for n in cluster.nodes))}


def teacher_sandboxes(processes: dict[int, str]) -> dict[int, dict[int, str]]:
    """Teacher actor pid -> {pid: sandbox temp dir} of the sandbox workers it started itself."""
    found = {}
    for actor, line in processes.items():
        if line.startswith("ray::TeacherWorker"):
            found[actor] = {w: os.path.dirname(os.readlink(f"/proc/{w}/cwd"))
                            for w in descendants(actor)
                            if parent(w) == actor and "sandbox.worker" in cmdline(w)}
    return found


class KillATeacherActorMidShard:
    """At the first request that shows the teacher a sandbox output (a teacher actor's sandbox
    has run a block of its shard): note the cluster's teacher actors with their sandboxes, and
    kill -9 one that is running a shard (with its engine, as when its node's GPU fails)."""

    def __init__(self, cluster):
        from fake_openai import sandbox_outputs
        self.cluster, self.shown = cluster, sandbox_outputs
        self.actors: dict[int, dict[int, str]] = {}
        self.titles: set[str] = set()
        self.killed: int | None = None
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> None:
        if self.killed is not None or not self.shown(body):
            return
        with self.lock:
            if self.killed is not None:
                return
            processes = cluster_processes(self.cluster)
            self.titles = {line.split(" ")[0] for line in processes.values()
                           if line.startswith("ray::")}
            self.actors = teacher_sandboxes(processes)
            busy = sorted(p for p in self.actors if "TeacherWorker.run" in processes[p])
            if busy:
                self.killed = busy[0]
                os.kill(self.killed, signal.SIGKILL)


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def kept_teachers_in_the_loop(cluster, root: Path) -> tuple[dict, dict, list[str]]:
    """The teacher in the loop on kept-alive actors: (their sandboxes after the run, after
    `stop_teachers`, the names it stopped)."""
    from pipelines.scale.ray_engine import stop_teachers

    layout = photo_pool(root)
    with open_engine("ray", root, cluster.address, teacher_actors=True,
                     keep_teachers=True) as engine, LoopTeacher() as teacher:
        stats = dict(engine.code_samples(layout, pool_keys(layout), teacher, SandboxSpec()))
    assert [s["trajectories"] for s in stats.values()] == [1, 1]
    kept = teacher_sandboxes(cluster_processes(cluster))
    stopped = stop_teachers(cluster.address)
    deadline = time.time() + 30           # the kill takes a moment to reach the processes
    while (left := teacher_sandboxes(cluster_processes(cluster))) and time.time() < deadline:
        time.sleep(0.2)
    return kept, left, stopped


def generate(root: Path, *engine: str) -> None:
    assert main(["generate", "--count", str(COUNT), "--shard-size", str(SHARD_SIZE),
                 "--workers", "1", "--out", str(root / "pool"), "--quiet", *engine]) == 0


@pytest.mark.slow
def test_funnel_on_two_nodes_survives_a_killed_node_and_matches_a_local_run(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "cluster"
    loop_local, loop_actors = tmp_path / "loop-local", tmp_path / "loop-actors"
    cluster = LocalRayCluster(env={"PYTHONPATH": str(REPO)}, wait=False)
    try:
        worker = cluster.add_node(wait=False)      # both start while the local run goes on
        generate(local)
        pool = outputs(local, ["pool"])    # (the sandbox adds the images code made to the store)
        assert pool.pop("pool/report.json") and len(pool) > COUNT      # (its timings differ)
        with open_engine("local", local) as engine:
            expected = funnel(engine, local)
            loop_expected = funnel_in_the_loop(engine, loop_local, SandboxSpec(workers=1))
        assert expected["totals"]["audit"]["trajectories"] == COUNT
        cluster.started()
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(2)

        # a teacher in the loop on engine actors, one per node, each with its own sandbox (sized
        # by default: the node's one core); one actor is killed mid-shard
        killer = KillATeacherActorMidShard(cluster)
        with open_engine("ray", loop_actors, cluster.address, teacher_actors=True) as engine:
            loop_got = funnel_in_the_loop(engine, loop_actors, SandboxSpec(), on_request=killer)
            loop_redone = list(engine.redone)
            # an actor whose sandbox cannot start (here: a policy no node knows) fails the call
            # with the reason, and new actors are not tried in a loop
            with pytest.raises(RuntimeError, match="no actor could start.*unknown isolation"):
                funnel_in_the_loop(engine, tmp_path / "loop-refused",
                                   SandboxSpec(isolation="no-such-mechanism"))
        assert killer.killed, f"no teacher actor was running a shard: {killer.titles}"
        assert not survivors(set(killer.actors[killer.killed]), timeout=30), \
            "the killed actor's sandbox workers outlived it"
        # the run's end closed the other actor's sandbox (its temp dir is gone); a kill -9 leaves
        # the dead one's behind, removed here
        closed = {d for p, w in killer.actors.items() if p != killer.killed for d in w.values()}
        assert closed and not any(os.path.exists(d) for d in closed), closed
        for folder in set(killer.actors[killer.killed].values()):
            shutil.rmtree(folder, ignore_errors=True)
        kept, after_stop, stopped = kept_teachers_in_the_loop(cluster, tmp_path / "loop-kept")

        # ingest from the command line, a task per shard over both nodes: the local pool
        generate(remote, "--ray-address", cluster.address)
        assert {k: v for k, v in outputs(remote, ["pool"]).items() if k != "pool/report.json"} \
            == pool
        node_processes = cluster.processes(worker)
        assert node_processes, "the worker node runs no process"
        head_id = ray.get_runtime_context().get_node_id()
        killed = []

        def kill_the_worker_mid_stage(line: str) -> None:
            # the first sandbox shard is back: the other node's sandbox actor is mid-shard (or
            # about to be given the next one)
            if line.startswith("executions") and not killed:
                cluster.kill(worker)
                killed.append(line)

        with open_engine("ray", remote, cluster.address) as engine:
            got = funnel(engine, remote, log=kill_the_worker_mid_stage)
            loop_stats = teacher_in_the_loop(engine, tmp_path / "loop")
        assert killed, "the worker node was never killed"
        dagster_audit = audit_from_dagster(local, tmp_path / "dagster", cluster.address)
        assert not survivors(node_processes, timeout=30), "processes of the killed node survive"
    finally:
        everything = set().union(*(cluster.processes(n) for n in cluster.nodes))
        ray.shutdown()
        cluster.stop()
    assert not survivors(everything, timeout=30), "the cluster's teardown left processes running"

    # the teacher in the loop on engine actors: each actor ran its shard's code in a sandbox of
    # its own (one worker, its child process), no shard task ran; the shard of the killed actor
    # was redone on the other, and every stage's files are the local run's
    assert len(killer.actors) == 2 and all(len(w) == 1 for w in killer.actors.values()), \
        killer.actors
    # kept-alive actors keep their sandboxes after the run; `stop_teachers` closes them
    assert len(stopped) == 2 and all(n.startswith("thyme-teacher-") for n in stopped), stopped
    assert len(kept) == 2 and all(len(w) == 1 for w in kept.values()), kept
    assert after_stop == {}, after_stop
    kept_dirs = {d for w in kept.values() for d in w.values()}
    assert not any(os.path.exists(d) for d in kept_dirs), kept_dirs
    assert not any(t.startswith("ray::_code_samples_task") for t in killer.titles), killer.titles
    assert len(loop_redone) == 1, loop_redone
    assert outputs(loop_actors, FOLDERS) == outputs(loop_local, FOLDERS)
    assert partial_files(loop_actors) == []
    blocks = loop_expected["totals"]["executions"]["code_blocks"]
    assert blocks >= 2 and loop_expected["totals"]["executions"]["cache_hits"] == blocks
    assert loop_got["totals"] == loop_expected["totals"]   # every block the loop's (cached)

    # an OpenAI teacher in the loop on Ray: each shard's task opened its own sandbox, ran the
    # code as the teacher wrote, and filled the executions stage's cache
    assert [s["trajectories"] for s in loop_stats.values()] == [1, 1]
    assert all(s["teacher_stats"]["mode"] == "loop:prefill" for s in loop_stats.values())
    ran = sum(s["teacher_stats"]["loop"].get("code_run", 0) for s in loop_stats.values())
    assert ran >= 2 and len(list((tmp_path / "loop" / "cache" / "executions").rglob("*.json"))) >= 2

    # both nodes ran shards before the kill; after it, the head redid the lost one
    ran_on = {stages["code_samples"]["node"] for stages in got["per_shard"].values()}
    assert len(ran_on) == 2 and head_id in ran_on, ran_on
    assert all(s["audit"]["node"] == head_id for s in got["per_shard"].values())
    assert engine.redone, "no shard was redone after the kill"

    # from Dagster (the cluster resource): every shard's materialization, its metadata with the
    # node that ran it, and the local run's files
    assert sorted(dagster_audit) == sorted(got["per_shard"])
    assert {m["node"].value for m in dagster_audit.values()} == {head_id}
    assert all(m["dagster/row_count"].value == SHARD_SIZE for m in dagster_audit.values())
    assert outputs(tmp_path / "dagster", ["audited"]) == outputs(local, ["audited"])

    # the cluster's files are the local run's, and nothing partial is left
    assert outputs(remote, FOLDERS) == outputs(local, FOLDERS)
    assert partial_files(remote) == []
    # the same totals, except how the sandbox's blocks split between the cache and fresh runs: the
    # killed node may have cached some blocks of its shard before it died, and the head's redo
    # then finds them (a race, so only the sum is the local run's)
    def cache_split(totals: dict) -> tuple:
        runs = totals["executions"]
        return runs.pop("cache_hits"), runs.pop("cache_misses")
    assert sum(cache_split(got["totals"])) == sum(cache_split(expected["totals"]))
    assert got["totals"] == expected["totals"]
    ids = [r["id"] for f in sorted((remote / "audited").glob("*.parquet"))
           for r in pq.read_table(f, columns=["id"]).to_pylist()]
    assert len(ids) == len(set(ids)) == COUNT

