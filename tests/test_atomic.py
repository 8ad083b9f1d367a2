"""Atomic writes (pipelines.core.atomic): the target is the old version or the whole new one."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.core.atomic import (
    atomic_path,
    remove_stale_temporaries,
    temporary_name,
    write_json,
    write_parquet,
    write_text,
)


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_folder_replaced_whole(tmp_path):
    out = tmp_path / "split"
    for content in ("first", "second"):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text(content)
    assert (out / "f.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_parquet_and_json(tmp_path):
    path = write_parquet(pa.table({"x": [1, 2]}), tmp_path / "sub" / "t.parquet")
    import pyarrow.parquet as pq
    assert pq.read_table(path).column("x").to_pylist() == [1, 2]
    assert write_json(tmp_path / "r.json", {"a": 1}).read_text().startswith("{")


def test_stale_temporaries_of_dead_writers_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"x.parquet.{dead}-1.tmp"
    stale.write_text("left by a killed run")
    live = temporary_name(tmp_path / "y.parquet")
    live.write_text("being written")
    assert str(os.getpid()) in live.name
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists()


def test_a_killed_writer_left_as_a_zombie_counts_as_dead(tmp_path):
    """In a container without an init, a killed writer nobody reaps stays a zombie (CI)."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "the child never exited"
        time.sleep(0.05)
    stale = tmp_path / f"splits.{zombie.pid}-1.tmp"
    stale.mkdir()
    try:
        assert remove_stale_temporaries(tmp_path) == 1
        assert not stale.exists()
    finally:
        zombie.wait()


def test_a_write_clears_its_targets_leftovers_from_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    mine = tmp_path / f"splits.{dead}-7.tmp"          # a killed folder write of the same target
    mine.mkdir()
    (mine / "train.parquet").write_text("half")
    other = tmp_path / f"other.json.{dead}-7.tmp"     # another target's: left to its own writer
    other.write_text("half")
    with atomic_path(tmp_path / "splits") as tmp:
        tmp.mkdir()
    assert not mine.exists() and other.exists()
