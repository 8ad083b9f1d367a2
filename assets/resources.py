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
