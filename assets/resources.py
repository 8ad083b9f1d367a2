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
    """Who writes reasoning and code for a sample. `template` needs no model."""

    kind: str = "template"          # template (vllm and openai teachers arrive with their clients)
    seed: int = 0
    multi_round_share: float = 0.25

    def build(self):
        if self.kind != "template":
            raise ValueError(f"teacher kind {self.kind!r} is not available; use 'template'")
        from pipelines.teachers.template import TemplateTeacher
        return TemplateTeacher(seed=self.seed, multi_round_share=self.multi_round_share)
