"""The shard stages in this process: one process pool for ingest, one teacher, one sandbox (a
worker per core) and one judge for all the shards of a run, shards one after another.

A vLLM teacher's engine is built once per process and kept for every later shard and run in it
(building a 72B engine takes minutes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pipelines.samples.stages import (
    JudgeSpec,
    Layout,
    SandboxSpec,
    TeacherSpec,
    audit_shard,
    built_teacher,
    code_samples_shard,
    executions_shard,
)

_VLLM_ENGINES: dict = {}   # repr(VLLMConfig) -> a built engine, for the life of this process


def vllm_engine(spec: TeacherSpec):
    """The process's engine for this teacher, built at first use (keyed by the config's repr:
    its `engine_kwargs` dict makes it unhashable)."""
    config = spec.vllm_config()
    key = repr(config)
    if key not in _VLLM_ENGINES:
        _VLLM_ENGINES[key] = config.build()
    return _VLLM_ENGINES[key]


class LocalEngine:
    name = "local"

    def ingest(self, cfg, shards: Iterable, progress=None) -> Iterator[dict]:
        """Each shard's report, in order (`ingest_shard` over one process pool)."""
        from pipelines.pool.ingest import ingest_shard, make_pool

        with make_pool(cfg) as pool:
            for shard in shards:
                yield ingest_shard(cfg, shard, pool, progress)

    def code_samples(self, layout: Layout, keys: Iterable[str], teacher: TeacherSpec,
                     sandbox: SandboxSpec | None = None) -> Iterator[tuple[str, dict]]:
        """A teacher in the loop (`teacher.needs_sandbox`) runs its code in a sandbox opened
        from `sandbox` here, for all the shards."""
        engine = vllm_engine(teacher) if teacher.kind == "vllm" else None
        with built_teacher(teacher, layout, sandbox, engine=engine) as built:
            for key in keys:
                yield key, code_samples_shard(layout, key, built)

    def executions(self, layout: Layout, keys: Iterable[str], sandbox: SandboxSpec,
                   progress=None) -> Iterator[tuple[str, dict]]:
        """`progress(key, total)`: a progress bar for a shard (a context manager), or None."""
        from contextlib import nullcontext

        import pyarrow.parquet as pq

        from pipelines.samples.execute import ExecutionCache

        cache = ExecutionCache(layout.cache("executions"))
        with sandbox.open() as sb:
            for key in keys:
                bar = progress(key, pq.read_metadata(layout.code_samples(key)).num_rows) \
                    if progress else nullcontext()
                with bar as b:
                    yield key, executions_shard(layout, key, sb, cache, sandbox.timeout, progress=b)

    def audit(self, layout: Layout, keys: Iterable[str], config,
              judge: JudgeSpec | None = None) -> Iterator[tuple[str, dict]]:
        built = judge.build(layout.cache("judge")) if judge is not None else None
        name = f"judge {judge.model}" if judge is not None else "judge"
        for key in keys:
            yield key, audit_shard(layout, key, config, built, name)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
