"""Resources: where the data lives (swappable in tests)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource


class ThymeStorage(ConfigurableResource):
    """The project's data directory: pool, images, splits, checkpoints.

    `root` is relative to the Dagster process's working directory unless absolute; every path
    written into tables and metadata is relative to it.
    """

    root: str = "data"

    def path(self, *parts: str) -> Path:
        return Path(self.root).resolve().joinpath(*parts)


class SandboxResource(ConfigurableResource):
    """The isolated executor, started once per run step and shared by its code."""

    workers: int | None = None      # None: one per core
    timeout: float = 10.0           # seconds per code block (THYME.md: 10 s)
    memory_mb: int = 1024

    def open(self):
        """A started `sandbox.Sandbox` (a context manager)."""
        from sandbox import Sandbox
        return Sandbox(workers=self.workers, timeout=self.timeout, memory_mb=self.memory_mb)


class TeacherResource(ConfigurableResource):
    """Who writes reasoning and code for a sample: `template` (no model; the embedded default),
    `openai` (any OpenAI-compatible endpoint: a vLLM or SGLang server, a commercial API) or
    `vllm` (an offline vLLM engine in this process; needs the `gpu` extra)."""

    kind: str = "template"          # template | openai | vllm
    seed: int = 0
    multi_round_share: float = 0.25  # template: share of two-round trajectories
    model: str = ""                 # openai: the served model name; vllm: a hub id or local dir
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key (never the key itself)
    max_concurrency: int = 8        # openai: requests in flight
    candidates: int = 1             # completions per sample
    temperature: float = 0.7
    max_tokens: int = 2048
    tensor_parallel_size: int = 1   # vllm: GPUs per engine

    def build(self, image_root, cache_dir=None):
        """A teacher whose images are read from `image_root` (the pool's store)."""
        if self.kind == "template":
            from pipelines.samples.teachers.template import TemplateTeacher
            return TemplateTeacher(seed=self.seed, multi_round_share=self.multi_round_share)
        if self.kind not in ("openai", "vllm"):
            raise ValueError(f"teacher kind {self.kind!r}: expected template, openai or vllm")
        if not self.model:
            raise ValueError(f"teacher kind {self.kind!r} needs `model`")
        from pipelines.samples.teachers import TeacherConfig
        config = TeacherConfig(candidates=self.candidates, temperature=self.temperature,
                               max_tokens=self.max_tokens, seed=self.seed)
        if self.kind == "openai":
            from pipelines.core.llm import LLMClient, LLMConfig
            from pipelines.samples.teachers import OpenAITeacher
            client = LLMClient(LLMConfig(base_url=self.base_url, model=self.model,
                                         api_key_env=self.api_key_env,
                                         max_concurrency=self.max_concurrency,
                                         cache_dir=str(cache_dir) if cache_dir else None))
            return OpenAITeacher(client, image_root, config)
        from pipelines.core.vllm_config import VLLMConfig
        from pipelines.samples.teachers import VLLMTeacher
        engine = VLLMConfig(model=self.model, tensor_parallel_size=self.tensor_parallel_size,
                            seed=self.seed).build()
        return VLLMTeacher(engine, image_root, config)
