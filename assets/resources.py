"""Resources: every external system the assets use, configurable and swappable in tests.

    storage   where the data lives (pool, images, splits, checkpoints, reports)
    sandbox   the isolated executor
    teacher   who writes reasoning and code (template | openai | vllm)
    judge     the optional VLM judge of the audit (any OpenAI-compatible server)
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
    """The isolated executor, started once per run step and shared by its code."""

    workers: int | None = Field(None, description="worker processes; null: one per core")
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

    def open(self, context=None):
        """A started `sandbox.Sandbox`, or a client of the service at `url` (a context manager;
        the service's own workers and memory budget then apply). With the step's `context`, the
        mechanisms it runs with are logged and recorded on the run (tag `thyme/sandbox_isolation`)."""
        from sandbox.client import open_sandbox
        from sandbox.policy import summary

        sb = open_sandbox(self.url, self.token_file, timeout=self.timeout, isolation=self.isolation,
                          workers=self.workers, memory_mb=self.memory_mb)
        if context is not None:
            context.log.info(summary(sb.isolation_report))
            try:
                context.instance.add_run_tags(context.run.run_id, {
                    "thyme/sandbox_isolation": "+".join(sb.isolation_report["active"])})
            except Exception as exc:  # noqa: BLE001 - a tag is a convenience; the metadata remains
                context.log.warning(f"could not tag the run with the sandbox isolation: {exc}")
        return sb


class TeacherResource(ConfigurableResource):
    """Who writes reasoning and code for a sample: `template` (no model; the embedded default),
    `openai` (any OpenAI-compatible endpoint: a vLLM or SGLang server, a commercial API) or
    `vllm` (an offline vLLM engine in this process; needs the `gpu` extra)."""

    kind: str = Field("template", description="template | openai | vllm")
    seed: int = Field(0, description="sampling seed (template: the draw of phrasings and rounds)")
    multi_round_share: float = Field(0.25, description="template, and model teachers in the loop: "
                                     "share of (crop, rotate) samples given two rounds")
    model: str = Field("", description="openai: the served model name; vllm: a hub id or local dir")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's API root")
    api_key_env: str = Field("OPENAI_API_KEY", description="the variable holding the key (never "
                                                           "the key itself)")
    max_concurrency: int = Field(8, description="openai: requests in flight")
    timeout_s: float = Field(300.0, description="openai: seconds per request attempt, a stalled "
                                                "server included")
    max_retries: int = Field(6, description="openai: retries of a failed or stalled request")
    candidates: int = Field(1, description="completions per sample")
    temperature: float = Field(0.7, description="sampling temperature of model teachers")
    max_tokens: int = Field(2048, description="new tokens per completion")
    tensor_parallel_size: int = Field(1, description="vllm: GPUs per engine")
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

    @property
    def needs_sandbox(self) -> bool:
        return self.kind in ("openai", "vllm") and self.loop != "off"

    def build(self, image_root, cache_dir=None, sandbox=None, sandbox_timeout: float = 10.0,
              execution_cache=None):
        """A teacher whose images are read from `image_root` (the pool's store). In the loop it
        runs code in `sandbox` (started by the caller) and records results in `execution_cache`
        (the executions stage's, with its `sandbox_timeout`, so that stage reuses them)."""
        if self.kind == "template":
            from pipelines.samples.teachers.template import TemplateTeacher
            return TemplateTeacher(seed=self.seed, multi_round_share=self.multi_round_share)
        if self.kind not in ("openai", "vllm"):
            raise ValueError(f"teacher kind {self.kind!r}: expected template, openai or vllm")
        if not self.model:
            raise ValueError(f"teacher kind {self.kind!r} needs `model`")
        from pipelines.samples.teachers import TeacherConfig
        config = TeacherConfig(candidates=self.candidates, temperature=self.temperature,
                               max_tokens=self.max_tokens, seed=self.seed,
                               prompt_set=self.prompt_set)
        in_loop = self._in_loop(image_root, sandbox, sandbox_timeout, execution_cache)
        if self.kind == "openai":
            from pipelines.samples.teachers import OpenAITeacher
            teacher = OpenAITeacher(self._client(self.base_url, self.model, cache_dir), image_root,
                                    config, in_loop)
        else:
            from pipelines.core.vllm_config import VLLMConfig
            from pipelines.samples.teachers import VLLMTeacher
            engine = VLLMConfig(model=self.model, tensor_parallel_size=self.tensor_parallel_size,
                                seed=self.seed,
                                max_images=self.max_images if in_loop is not None else 1).build()
            teacher = VLLMTeacher(engine, image_root, config, in_loop=in_loop)
        if not self.reasoner_model:
            return teacher
        from dataclasses import replace

        from pipelines.samples.teachers import ChainConfig, ChainedTeacher, OpenAITeacher
        reasoner = OpenAITeacher(self._client(self.reasoner_base_url or self.base_url,
                                              self.reasoner_model, cache_dir), image_root,
                                 replace(config, max_tokens=self.reasoner_max_tokens))
        return ChainedTeacher(reasoner, teacher, ChainConfig(reasoner_sees_image=self.reasoner_sees_image))

    def _client(self, base_url: str, model: str, cache_dir):
        from pipelines.core.llm import LLMClient, LLMConfig
        return LLMClient(LLMConfig(base_url=base_url, model=model, api_key_env=self.api_key_env,
                                   max_concurrency=self.max_concurrency, timeout_s=self.timeout_s,
                                   max_retries=self.max_retries,
                                   cache_dir=str(cache_dir) if cache_dir else None))

    def _in_loop(self, image_root, sandbox, sandbox_timeout, execution_cache):
        if self.loop == "off":
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
                                               "are free; beyond it the judge check is skipped")
    timeout_s: float = Field(300.0, description="seconds per request attempt, a stalled server "
                                                "included")
    max_retries: int = Field(6, description="retries of a failed or stalled request")

    def build(self, cache_dir: Path):
        """A `Judge`, or None when disabled."""
        if not self.enabled:
            return None
        if not self.model:
            raise ValueError("judge: `model` is required when the judge is enabled")
        from pipelines.core.judge import Judge
        from pipelines.core.llm import LLMClient, LLMConfig
        client = LLMClient(LLMConfig(base_url=self.base_url, model=self.model,
                                     api_key_env=self.api_key_env, timeout_s=self.timeout_s,
                                     max_retries=self.max_retries, cache_dir=str(cache_dir)))
        return Judge(client, self.max_calls)
