"""Helpers of the fault-injection tests: the processes below a pid, and what a crash can leave
behind on disk."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def survivors(pids: set[int], timeout: float = 30.0) -> dict[int, str]:
    """Those of `pids` still running after `timeout` seconds, with their command lines."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    left = {}
    for pid in pids:
        if alive(pid):
            try:
                left[pid] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
            except OSError:
                pass
    return left


def partial_files(root: Path) -> list[str]:
    """Temporaries (files or folders), folders set aside by an unfinished replace, parquet files
    that do not read whole, and store images whose bytes do not hash to their name (content
    addressing makes a half-written image visible)."""
    bad = []
    for path in root.rglob("*"):
        if path.name.endswith((".tmp", ".old")):
            bad.append(f"left over: {path}")
        elif not path.is_file() or path.name == "filler.bin" or any(
                p.name.endswith((".tmp", ".old")) for p in path.parents):
            continue
        elif path.suffix == ".parquet":
            try:
                pq.read_table(path)
            except Exception as exc:  # noqa: BLE001
                bad.append(f"unreadable {path}: {exc}")
        elif (path.parent.parent.name == "images" and path.parent.name != ".partial"
              and hashlib.sha256(path.read_bytes()).hexdigest() != path.stem):
            bad.append(f"partial image {path}")
    return bad


def checksum(path: Path) -> dict:
    """What must match between runs: parquet by content (rows, ids, a hash of the rows; not the
    file bytes, whose metadata holds timings), anything else by its bytes."""
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
        blob = json.dumps(rows, sort_keys=True, default=str).encode()
        ids = [r.get("id") for r in rows]
        return {"rows": len(rows), "ids": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
                "content": hashlib.sha256(blob).hexdigest()}
    return {"bytes": hashlib.sha256(path.read_bytes()).hexdigest()}


def outputs(data: Path, folders: list[str]) -> dict[str, dict]:
    """Finished files (temporaries left out) and their checksums."""
    return {p.relative_to(data).as_posix(): checksum(p)
            for folder in folders for p in sorted((data / folder).rglob("*"))
            if p.is_file() and ".partial" not in p.parts
            and not any(part.endswith(".tmp") for part in p.relative_to(data).parts)}
