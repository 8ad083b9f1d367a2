"""Where an evaluation keeps what it finished, so a killed run continues from there.

    store = RecordStore(out / "vstar", settings, shard="0-of-1")
    store.done("tools")                      # {(item id, sample), ...} already scored
    store.append([record, ...])              # one JSON line each, flushed and fsynced

Each benchmark folder holds `settings.json` (everything that decides the scores) and one
`records.<shard>.jsonl` per shard (a process or server of a data-parallel run appends to its own
file). A record is one (mode, item, sample). On a restart the records of every shard are read
back; a last line cut off by the kill is dropped (and said), and the run goes on with what is
missing (engine errors included: they are asked again). Records written under other settings are never mixed in: a folder whose settings
differ in anything that changes scores is refused, naming the differences.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from pipelines.core.atomic import write_json

# Settings that do not change the scores: a run may resume with other values of these.
NEUTRAL = ("batch_items", "batch_size", "workers", "servers", "devices", "limit", "shard",
           "started", "toolkit", "versions", "judge_max_calls", "sandbox_isolation", "sandbox",
           "prompt_set_source")   # the set itself is prompt_set_sha256


def read_records(folder: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """The records of every shard in `folder` (later lines win for the same (mode, item,
    sample)), and the half-written lines skipped (file: line number)."""
    latest: dict[tuple, dict] = {}
    dropped: list[str] = []
    for file in sorted(Path(folder).glob("records.*.jsonl")):
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    dropped.append(f"{file.name}:{n}")
                    continue
                latest[(record["mode"], record["id"], record["sample"])] = record
    return list(latest.values()), dropped


class SettingsMismatch(ValueError):
    """The folder holds records made with other settings."""


class RecordStore:
    def __init__(self, folder: str | os.PathLike, settings: dict, shard: str = "0-of-1",
                 restart: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"records.{shard}.jsonl"
        self.dropped: list[str] = []         # half-written lines found (file: line number)
        self._lock = threading.Lock()
        if restart:
            self.clear()
        self._check_settings(settings)

    def _check_settings(self, settings: dict) -> None:
        path = self.folder / "settings.json"
        if path.is_file():
            before = json.loads(path.read_text())
            differ = sorted(k for k in set(before) | set(settings) if k not in NEUTRAL
                            and before.get(k) != settings.get(k))
            if differ and self.records():
                changes = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in differ)
                raise SettingsMismatch(
                    f"{self.folder} holds results made with other settings ({changes}): use "
                    "another --out, or --restart to discard them")
        write_json(path, settings, indent=1)

    def records(self) -> list[dict]:
        """Every shard's records (later lines win for the same key)."""
        records, self.dropped = read_records(self.folder)
        return records

    def done(self, mode: str) -> set[tuple[str, int]]:
        """(item id, sample) pairs finished in `mode`; one that ended in an engine error is not
        finished: the next run asks again (its record is then replaced)."""
        return {(r["id"], r["sample"]) for r in self.records()
                if r["mode"] == mode and r.get("error") is None}

    def append(self, records: list[dict]) -> None:
        """Whole lines, flushed to disk before returning (a kill loses at most the line being
        written, which the reader drops)."""
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            self._seal()
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def _seal(self) -> None:
        """A file that ends mid-line (a kill during a write) gets its newline first, so the cut
        line stays one bad line instead of swallowing the next record."""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def clear(self) -> None:
        for file in self.folder.glob("records.*.jsonl"):
            file.unlink()
