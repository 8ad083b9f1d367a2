"""The evaluation assets' partitions: one per benchmark, from the benchmarks file; a broken
file names itself and the entry."""

import pytest
from dagster import TableMetadataValue

from assets.evaluation import (
    BENCHMARKS_ENV,
    EVALUATION_ASSETS,
    HELDOUT,
    configured_benchmarks,
    metrics_table,
)


def test_partitions_come_from_the_benchmarks_file(tmp_path, monkeypatch):
    (tmp_path / "benchmarks.yaml").write_text(
        "vstar: VStarBench.tsv\nhrbench4k: {path: sub/hr_bench_4k.tsv, kind: hrbench}\n")
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path / "benchmarks.yaml"))
    got = configured_benchmarks()
    assert got == {"vstar": {"path": str(tmp_path / "VStarBench.tsv"), "kind": ""},
                   "hrbench4k": {"path": str(tmp_path / "sub" / "hr_bench_4k.tsv"), "kind": "hrbench"}}
    for bad, reason in (("heldout: x.tsv\n", "not 'heldout'"), ("v s: x.tsv\n", "letters, digits"),
                        ("vstar: {kind: vstar}\n", "give a file"), ("- a\n", "a mapping")):
        (tmp_path / "benchmarks.yaml").write_text(bad)
        with pytest.raises(ValueError, match=reason):
            configured_benchmarks()


def test_every_evaluation_asset_is_partitioned_by_benchmark():
    for a in EVALUATION_ASSETS:
        assert HELDOUT in a.partitions_def.get_partition_keys()


def test_the_metrics_table(tmp_path):
    import json

    (tmp_path / "results.json").write_text(json.dumps({"summaries": {"tools": {
        "items": 3, "samples": 1, "metrics": {"overall": {"avg": 0.5, "ci": [0.25, None], "pass": 0.5}}}}}))
    table = metrics_table(tmp_path / "results.json")
    assert isinstance(table, TableMetadataValue)
    (row,) = table.records
    assert row.data == {"mode": "tools", "metric": "overall", "score": 50.0, "ci_low": 25.0,
                        "ci_high": None, "pass_at_k": 50.0, "items": 3, "samples": 1}
