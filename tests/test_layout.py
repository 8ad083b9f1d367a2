"""The layout of docs/DESIGN.md holds: what may import what, and files a person reads at once."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sandbox", "pipelines", "assets", "thyme_train")
# who may import whom (ours), by package or pipelines stage; anything unlisted is forbidden
ALLOWED = {
    "sandbox": set(),
    "pipelines.core": {"sandbox"},
    "pipelines.pool": {"pipelines.core", "sandbox"},
    "pipelines.samples": {"pipelines.core", "sandbox"},
    "pipelines.datasets": {"pipelines.core", "sandbox"},
    # where the shard stages run (this process or a Ray cluster): places the stages' own code
    "pipelines.scale": {"pipelines.core", "pipelines.pool", "pipelines.samples", "sandbox"},
    "pipelines": {"pipelines.core", "pipelines.pool", "pipelines.samples", "pipelines.datasets",
                  "pipelines.scale"},
    "assets": {"pipelines.core", "pipelines.pool", "pipelines.samples", "pipelines.datasets",
               "pipelines.scale", "sandbox"},
    "thyme_train": {"pipelines.core", "sandbox"},
}
# libraries a layer must not load (the data pipeline runs without Dagster or a GPU stack)
FORBIDDEN_LIBRARIES = {"pipelines": {"dagster", "torch", "transformers", "trl"},
                       "sandbox": {"dagster", "torch", "transformers", "trl", "polars"}}
MAX_LINES = 650
STAGES = ("core", "pool", "samples", "datasets", "scale")


def _unit(parts: tuple[str, ...]) -> str:
    """The layer of a module (`pipelines.<stage>...` or a top package)."""
    if parts[0] == "pipelines" and len(parts) > 1 and parts[1] in STAGES:
        return f"pipelines.{parts[1]}"
    return parts[0]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    unit = _unit(path.relative_to(ROOT).with_suffix("").parts)
    for name in _imports(path):
        parts = tuple(name.split("."))
        if parts[0] in PACKAGES:
            target = _unit(parts)
            if target != unit and unit in ALLOWED:
                assert target in ALLOWED[unit], f"{unit} imports {name}"
        for layer, libraries in FORBIDDEN_LIBRARIES.items():
            if unit.split(".")[0] == layer:
                assert parts[0] not in libraries, f"{unit} imports {name}"


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_files_stay_readable_in_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
