"""Ingest faults (issue 20): unreadable files and row groups are quarantined whole and the run
goes on; empty inputs give an empty report; the pool's workers die with a killed ingest."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults import descendants, survivors
from PIL import Image

from pipelines.core.formats import SourceRow, thyme_rl_table, write_parquet
from pipelines.core.schema import QUARANTINE_SCHEMA
from pipelines.pool.ingest import IngestConfig, ingest
from pipelines.pool.readers import UnitUnreadable, list_units, read_unit

REPO = str(Path(__file__).resolve().parent.parent)


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def rl_rows(start: int, count: int) -> list[SourceRow]:
    return [SourceRow(f"Question {i}?", [jpeg(i)], answer=str(i), image_path=f"/d/{i}.jpg",
                      image_size=(80, 60)) for i in range(start, start + count)]


def column_chunk(path: Path, row_group: int, column: int = 0) -> tuple[int, int]:
    """Byte offset and size of one column chunk (dictionary page included)."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    return start, chunk.total_compressed_size


def overwrite(path: Path, offset: int, size: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = b"\xff" * size
    path.write_bytes(bytes(data))


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True,
                          text=True, env=env, check=check, timeout=300)


def quarantine(out: Path) -> list[dict]:
    return [r for f in sorted((out / "quarantine").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def kept_rows(out: Path) -> list[tuple[str, int]]:
    return [(r["origin"]["file"], r["origin"]["row"])
            for f in sorted((out / "samples").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_unreadable_files_and_row_groups_are_quarantined_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_parquet(thyme_rl_table(rl_rows(0, 10)), src / "a_good.parquet", row_group_size=4)
    write_parquet(thyme_rl_table(rl_rows(100, 10)), src / "b_corrupt_group.parquet", row_group_size=4)
    offset, _ = column_chunk(src / "b_corrupt_group.parquet", 1)
    overwrite(src / "b_corrupt_group.parquet", offset, 40)      # row group 1's first page header
    whole = (src / "a_good.parquet").read_bytes()
    (src / "c_truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (src / "d_not_parquet.parquet").write_text("id,question\n1,what?\n")
    (src / "e_empty.parquet").write_bytes(b"")
    write_parquet(thyme_rl_table(rl_rows(200, 3)), src / "f_good.parquet")

    out = tmp_path / "out"
    proc = cli("ingest", "--format", "thyme-rl", "--input", str(src), "--out", str(out),
               "--shard-size", "8", "--workers", "2", "--quiet")
    report = json.loads(proc.stdout)

    # every good row is there: both good files, and row groups 0 and 2 of the damaged one
    expected = ([("a_good.parquet", i) for i in range(10)]
                + [("b_corrupt_group.parquet", i) for i in (0, 1, 2, 3, 8, 9)]
                + [("f_good.parquet", i) for i in range(3)])
    assert sorted(kept_rows(out)) == expected
    entries = quarantine(out)
    units = {q["origin"]["file"]: q for q in entries}
    assert set(units) == {"b_corrupt_group.parquet", "c_truncated.parquet", "d_not_parquet.parquet",
                          "e_empty.parquet"}
    # row group 1 (rows 4-7) straddles shards 1 and 2 (8 rows each): each quarantines its part
    group = sorted((q["reason"], q["row_group"], q["origin"]["row"], q["rows"], q["detail"].split(":")[0])
                   for q in entries if q["origin"]["file"] == "b_corrupt_group.parquet")
    assert group == [("unreadable_row_group", 1, 4, 2, "row group 1 (rows 4-5)"),
                     ("unreadable_row_group", 1, 6, 2, "row group 1 (rows 6-7)")]
    for name in ("c_truncated.parquet", "d_not_parquet.parquet", "e_empty.parquet"):
        unit = units[name]
        assert unit["reason"] == "unreadable_file" and unit["rows"] is None and unit["origin"]["row"] is None
        assert unit["detail"]   # pyarrow's reason, e.g. "Parquet magic bytes not found in footer"
    assert "0 bytes" in units["e_empty.parquet"]["detail"]
    for f in (out / "quarantine").glob("*.parquet"):
        assert pq.read_schema(f).equals(QUARANTINE_SCHEMA)

    # the report lists each unit, counts the known rows, and the totals add up
    listed = {(u["file"], u["row_group"], u["rows"], u["reason"]) for u in report["unreadable"]}
    assert listed == {("b_corrupt_group.parquet", 1, 2, "unreadable_row_group"),
                      ("c_truncated.parquet", None, None, "unreadable_file"),
                      ("d_not_parquet.parquet", None, None, "unreadable_file"),
                      ("e_empty.parquet", None, None, "unreadable_file")}
    assert report["kept"] == 19 and report["quarantined"] == 4 and report["rows_read"] == 23
    assert report["quarantined_by_reason"] == {"unreadable_row_group": 2, "unreadable_file": 3}
    assert json.loads((out / "report.json").read_text())["unreadable"] == report["unreadable"]
    # and a warning on stderr names each file
    for name in units:
        assert name in proc.stderr
    # a re-run finds every shard done (the quarantine is part of the shard's result)
    again = json.loads(cli("ingest", "--format", "thyme-rl", "--input", str(src), "--out", str(out),
                           "--shard-size", "8", "--quiet").stdout)
    assert again["skipped_shards"] == again["shards"] and again["unreadable"] == report["unreadable"]


def test_a_row_group_that_fails_midway_is_dropped_whole(tmp_path):
    """Rows decoded before the damage come from a damaged unit: none of them is kept."""
    n = 200
    table = pa.table({"question": [f"question {i} " + "x" * 50 for i in range(n)],
                      "answer": [str(i) for i in range(n)]})
    path = tmp_path / "mid.parquet"
    pq.write_table(table, path, row_group_size=n, data_page_size=512, compression="none",
                   use_dictionary=False)
    offset, size = column_chunk(path, 0)
    overwrite(path, offset + int(size * 0.75), 64)        # a page three quarters in
    (unit,) = list_units(str(path))
    read = 0
    with pytest.raises(UnitUnreadable) as err:
        for _ in read_unit(unit):
            read += 1
    assert read >= 64 and err.value.reason == "unreadable_row_group"   # rows came before the failure

    report = ingest(IngestConfig("generic", str(tmp_path / "out"), [str(path)], workers=1), progress=False)
    assert report["kept"] == 0 and report["quarantined"] == n and report["rows_read"] == n
    (entry,) = quarantine(tmp_path / "out")
    assert (entry["reason"], entry["rows"], entry["row_group"]) == ("unreadable_row_group", n, 0)


def test_a_string_that_is_not_utf8_rejects_only_its_row(tmp_path):
    """Arrow does not validate UTF-8 when it reads: one bad value must not fail its batch."""
    questions = pa.array([b"What is it?", b"\xff\xfe broken", b"And this?"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"question": questions, "answer": ["a", "b", "c"]}), tmp_path / "t.parquet")
    report = ingest(IngestConfig("generic", str(tmp_path / "out"), [str(tmp_path / "t.parquet")], workers=1),
                    progress=False)
    assert report["kept"] == 2 and report["quarantined_by_reason"] == {"bad_text": 1}
    assert [q["origin"]["row"] for q in quarantine(tmp_path / "out")] == [1]


@pytest.mark.parametrize("make", ["empty_jsonl", "blank_lines_jsonl", "empty_dir", "zero_row_parquet"])
def test_empty_inputs_give_an_empty_report(tmp_path, make):
    target = tmp_path / "input"
    if make == "empty_jsonl":
        target = tmp_path / "input.jsonl"
        target.write_bytes(b"")
    elif make == "blank_lines_jsonl":
        target = tmp_path / "input.jsonl"
        target.write_text("\n  \n\n")
    elif make == "empty_dir":
        target.mkdir()
    else:
        target = tmp_path / "input.parquet"
        write_parquet(thyme_rl_table([]), target)
    out = tmp_path / "out" / "nested"   # not there yet
    report = json.loads(cli("ingest", "--format", "thyme-rl", "--input", str(target), "--out", str(out),
                            "--quiet").stdout)
    assert report["kept"] == report["rows_read"] == report["quarantined"] == 0
    assert report["quarantined_by_reason"] == {} and report["unreadable"] == []
    assert json.loads((out / "report.json").read_text())["kept"] == 0
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.slow
def test_a_killed_ingest_leaves_no_workers(tmp_path):
    rows = rl_rows(0, 400)
    write_parquet(thyme_rl_table(rows), tmp_path / "big.parquet", row_group_size=5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines", "ingest", "--format", "thyme-rl", "--input",
           str(tmp_path / "big.parquet"), "--out", str(out), "--shard-size", "5", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "samples" / "shard-00001.parquet").exists() and time.time() < deadline:
        time.sleep(0.01)
    workers = descendants(proc.pid)
    assert len(workers) >= 2, "the pool had not started"
    proc.send_signal(signal.SIGKILL)      # the parent alone, as the OOM killer or `kill -9` does
    proc.wait()
    assert not survivors(workers), "pool workers outlived the killed ingest"


def test_the_pool_asset_names_an_unreadable_file(tmp_path):
    """Through Dagster: planning reads every footer, so a truncated file used to fail the plan;
    now the shard that holds it quarantines it and its page names the file."""
    from dagster import AssetKey, DagsterInstance, materialize

    from assets.pool import source_manifest, source_pool
    from assets.resources import ClusterResource, ThymeStorage

    src = tmp_path / "src"
    src.mkdir()
    write_parquet(thyme_rl_table(rl_rows(0, 4)), src / "a.parquet")
    whole = (src / "a.parquet").read_bytes()
    (src / "b.parquet").write_bytes(whole[: len(whole) // 3])
    instance = DagsterInstance.ephemeral()
    resources = {"storage": ThymeStorage(root=str(tmp_path / "data")), "cluster": ClusterResource()}
    config = {"format": "thyme-rl", "inputs": [str(src)], "shard_size": 10, "workers": 1}
    assert materialize([source_manifest], instance=instance, resources=resources,
                       run_config={"ops": {"pool__source_manifest": {"config": config}}}).success
    result = materialize([source_manifest, source_pool], selection=[AssetKey(["pool", "source_pool"])],
                         instance=instance, resources=resources, partition_key="shard-00000")
    assert result.success
    (mat,) = result.asset_materializations_for_node("pool__source_pool")
    meta = {k: v.value for k, v in mat.metadata.items()}
    reasons = {r.data["reason"]: r.data["count"] for r in meta["quarantined_by_reason"].records}
    assert meta["rows_out"] == 4 and reasons == {"unreadable_file": 1}
    assert [(u["file"], u["reason"]) for u in meta["unreadable"]] == [("b.parquet", "unreadable_file")]
