"""A row without a task (null or blank) reaches no split: building the splits quarantines it with
its id and "task is missing", counts it in the report, and goes on with the other rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import split_shards

from pipelines.core.schema import SAMPLE_SCHEMA
from pipelines.core.trajectory import TRAJECTORY_SCHEMA
from pipelines.datasets.names import PARTS, RL, SPLITS
from pipelines.datasets.previews import corpus_funnel
from pipelines.datasets.publish import PublishConfig, publish
from pipelines.datasets.splits import SplitConfig, build_splits, iter_split, validate_splits

ROWS = 60


def _without_task(files: dict, sample_ids: set[str], value) -> list[str]:
    """Set the task of these samples and of their trajectories (which copy it) to `value`;
    returns the ids of their passing trajectories."""
    for path in files["samples"]:
        rows = pq.read_table(path).to_pylist()
        for r in rows:
            if r["id"] in sample_ids:
                r["task"] = value
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), path)
    passed = []
    for path in files["audited"]:
        rows = pq.read_table(path).to_pylist()
        for r in rows:
            if r["sample_id"] in sample_ids:
                r["task"] = value
                passed += [r["id"]] if r["passed"] else []
        pq.write_table(pa.Table.from_pylist(rows, schema=TRAJECTORY_SCHEMA), path)
    return passed


@pytest.mark.parametrize(("value", "rl_source"), [(None, "audited"), ("  ", "pool")])
def test_rows_without_a_task_are_quarantined_and_the_batch_goes_on(tmp_path, value, rl_source):
    files = split_shards.write(tmp_path / "data", ROWS, 2)
    first = pq.read_table(files["samples"][0], columns=["id"])["id"].to_pylist()
    bad = set(first[1:4])
    bad_trajectories = _without_task(files, bad, value)
    assert bad_trajectories
    out = tmp_path / "splits"
    report = build_splits(files["audited"], files["samples"], out,
                          SplitConfig(test_share=0.2, rl_source=rl_source), files["store"])

    # no split holds a row without a task; the others are all there
    written = [r for s in SPLITS for p in PARTS for batch in iter_split(out, s, p) for r in batch]
    assert written and all(r["task"] and r["task"].strip() for r in written)
    assert not bad & {r.get("sample_id") or r["id"] for r in written}
    assert all(None not in by_task and "  " not in by_task
               for parts in report["splits"].values() for by_task in parts.values())

    # each is quarantined with its id and the reason, counted in the report and the funnel
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    set_aside = [q for q in quarantine if q["checks"] == ["missing_task"]]
    expected = set(bad_trajectories) | (bad if rl_source == "pool" else set())  # pool: RL candidates too
    assert {q["id"] for q in set_aside} == expected
    for q in set_aside:
        assert q["split"] == "unrouted" and f"row {q['id']}: task is missing" in q["reason"]
        assert q["sample_id"] in bad and q["origin_file"] and q["origin_row"] is not None
    assert report["validated"]["quarantined"]["unrouted"] == {"missing_task": len(expected)}
    funnel = {r["stage"]: r["count"] for r in corpus_funnel(report).rows}
    assert funnel["quarantined, no split: missing_task"] == len(expected)
    if rl_source == "pool":
        assert report["rl_prompts"]["filtered"]["missing_task"] == len(bad)

    # and the built splits validate
    reports = validate_splits(out, files["store"], {})
    assert all(r.ok for r in reports.values()), {s: r.failures for s, r in reports.items()}


def test_the_card_counts_them_and_publish_refuses_a_split_row_without_a_task(tmp_path):
    files = split_shards.write(tmp_path / "data", ROWS, 2)
    first = pq.read_table(files["samples"][0], columns=["id"])["id"].to_pylist()
    quarantined = len(_without_task(files, {first[1]}, None))
    out = tmp_path / "splits"
    report = build_splits(files["audited"], files["samples"], out, SplitConfig(test_share=0.0),
                          files["store"])
    cfg = PublishConfig(kind="rl", funnel=report)
    publish(out, files["store"], tmp_path / "rl", cfg)
    card = (tmp_path / "rl" / "README.md").read_text()
    (line,) = [x for x in card.splitlines() if x.startswith("| `unrouted` |")]
    assert "| missing_task |" in card and line.endswith(f"| {quarantined} |")

    # a split file written by something else, with a row without a task: a clear error naming it
    path = out / RL / "train.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["task"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    with pytest.raises(ValueError, match=f"train.parquet: row {rows[0]['id']}: task is missing"):
        publish(out, files["store"], tmp_path / "rl-again", cfg)
    assert not (tmp_path / "rl-again").exists()
