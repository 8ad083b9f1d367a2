"""Building splits reads each input file a constant number of times, whatever the shard count
(issue 18): with trajectories of every pool shard in every audited shard (the layout that made a
per-shard sample lookup quadratic), each pool and audited shard is opened as often with 8 shards
as with 2; and the same rows sharded differently give the same splits. Opens are counted by the
kernel (inotify), whoever opens the file: polars, Arrow or Python."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import split_shards
from file_opens import FileOpens, available

from pipelines.datasets.names import PARTS, SPLITS
from pipelines.datasets.splits import SplitConfig, build_splits

ROWS = 240

pytestmark = pytest.mark.skipif(not available(), reason="inotify (Linux) counts the opens")


CFG = SplitConfig(test_share=0.2, rl_share=0.2)


def _build(root, shards):
    files = split_shards.write(root, ROWS, shards, mixed=True)
    with FileOpens([root / "pool" / "samples", root / "audited"]) as opens:
        report = build_splits(files["audited"], files["samples"], root / "splits", CFG, files["store"])
    return files, opens.counts, report


def _ids(out):
    return {(s, p): sorted(pq.read_table(out / s / f"{p}.parquet", columns=["id"])["id"].to_pylist())
            for s in SPLITS for p in PARTS}


def test_each_input_file_is_read_a_constant_number_of_times(tmp_path):
    built = {n: _build(tmp_path / f"shards-{n}", n) for n in (2, 8)}
    for n, (files, counts, report) in built.items():
        # the fixture is the hard case: each audited shard holds samples of every pool shard
        homes = {sid: k for k, f in enumerate(files["samples"])
                 for sid in pq.read_table(f, columns=["id"])["id"].to_pylist()}
        for f in files["audited"]:
            assert {homes[s] for s in pq.read_table(f, columns=["sample_id"])["sample_id"].to_pylist()} \
                == set(range(n))
        assert set(counts) == {*files["samples"], *files["audited"]}, "every input is read"
        assert report["passed_with_sample"] > 0
    few, many = (built[n][1] for n in (2, 8))
    # as often with 8 shards as with 2: no file is read again per other shard
    assert set(few.values()) == set(many.values()), (few, many)
    assert max(many.values()) <= 6, many
    # and the same rows sharded 2 or 8 ways make the same splits
    assert _ids(tmp_path / "shards-2" / "splits") == _ids(tmp_path / "shards-8" / "splits")
    assert built[2][2]["rows"] == built[8][2]["rows"]
    assert sum(built[8][2]["rows"][s][p] for s in SPLITS for p in PARTS) > ROWS // 2


def test_worker_processes_write_the_same_files(tmp_path):
    """Rendering and validating in worker processes changes nothing in what is written."""
    files = split_shards.write(tmp_path / "data", ROWS, 4, mixed=True)
    (tmp_path / "data" / "pool" / "images" / split_shards.first_output(files)).unlink()  # one row set aside
    one = build_splits(files["audited"], files["samples"], tmp_path / "one", CFG, files["store"])
    two = build_splits(files["audited"], files["samples"], tmp_path / "two", CFG, files["store"], workers=2)
    assert sum(sum(c.values()) for c in one["validated"]["quarantined"].values()) == 1
    assert one == two
    written = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for f in written:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
