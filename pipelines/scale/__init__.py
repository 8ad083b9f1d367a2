"""Where the shard stages run: here (`local`, the default) or on a Ray cluster (`ray`). Both run
the same per-shard functions (`pipelines.pool.ingest.ingest_shard`, `pipelines.samples.stages`)
and write the same files; only the placement differs.

    engine = open_engine("ray", data_root, address="head:6379")    # or open_engine("local", ...)
    for report in engine.ingest(cfg, shards): ...                   # as shards finish
    for key, stats in engine.code_samples(layout, keys, TeacherSpec(), SandboxSpec()): ...
    for key, stats in engine.executions(layout, keys, SandboxSpec()): ...
    for key, stats in engine.audit(layout, keys, AuditConfig(), judge_spec_or_None): ...

On Ray (`pipelines.scale.ray_engine`): a task per shard for ingest, template/OpenAI teachers and
the audit; the sandbox as one actor per node (its workers one per core); vLLM teachers as engine
actors on GPU nodes, kept alive across shards (and across runs with `keep_teachers`), in the loop
each with a sandbox of its own for as long as it lives; an OpenAI
teacher's or judge's `max_concurrency` holds for the whole cluster. A task whose node dies is
retried elsewhere; every write is atomic, so a retried shard leaves no partial file. Ray is
imported only when a Ray engine is opened.
"""

from __future__ import annotations

from pipelines.scale.local import LocalEngine

ENGINES = ("local", "ray")


def open_engine(kind: str, data_root, address: str = "", **options):
    """A `LocalEngine` or a connected `RayEngine` (options: see `RayEngine`)."""
    if kind == "local":
        return LocalEngine()         # (a local run has nothing to place: options are the cluster's)
    if kind == "ray":
        from pipelines.scale.ray_engine import RayEngine
        return RayEngine(data_root, address=address, **options)
    raise ValueError(f"engine {kind!r}: expected one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "LocalEngine", "open_engine"]
