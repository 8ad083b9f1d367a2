"""Ingest: source files (or the generated pool) -> sharded `Sample` parquet + quarantine +
images in the content-addressed store.

    out/samples/shard-00000.parquet     kept samples (the completion marker of a shard)
    out/quarantine/shard-00000.parquet  rejected rows: origin, reason code, detail
    out/images/ab/ab12....jpg           the image store
    out/report.json                     totals over all shards

A shard is a fixed range of input rows (or generated indices), so it can be re-run alone. Its
samples file carries a fingerprint of its inputs and configuration: re-running a finished shard
with the same fingerprint does nothing; a shard killed halfway left only temporary files
(everything is written under a temporary name and renamed) and simply runs again.
Rows are decoded in a process pool (images are the CPU-bound part); reading stays streaming.
The pool's workers die with the process that started them (a killed run leaves no orphans).

Faults: a bad row is quarantined with its reason. A file that does not open (truncated, not
parquet, empty) or a parquet row group that does not decode is quarantined as a unit (file, row
group, reason, the rows it held when known), its rows that were already decoded dropped with it;
the run goes on and the report lists the unit under `unreadable`. In a report, `quarantined` counts
input rows (a unit counts its rows; unknown: none) and `quarantined_by_reason` counts entries of
the quarantine files.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import remove_stale_temporaries, write_json, write_parquet
from pipelines.core.images import ImageLimits, ImageRejected, ImageStore
from pipelines.core.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA, quarantine_row
from pipelines.pool.readers import (
    FORMATS,
    Reader,
    RowRejected,
    Unit,
    UnitUnreadable,
    describe,
    list_units,
    read_unit,
)
from pipelines.pool.truth import resolve as resolve_truth

TASK_ROWS = 256        # rows per unit of parallel work
FINGERPRINT_KEY = b"thyme.fingerprint"
REPORT_KEY = b"thyme.report"


@dataclass
class IngestConfig:
    """What to ingest and how. `format` is one of readers.FORMATS or "generated"."""

    format: str
    out: str
    inputs: list[str] = field(default_factory=list)
    shard_size: int = 5000          # rows per shard: thousands, so each Dagster run amortises its cost
    workers: int | None = None      # processes decoding images; None = one per core
    image_root: str | None = None   # generic: folder that relative image paths start from
    mapping: dict[str, str] = field(default_factory=dict)  # our field -> their column: the
                                    # generic reader's columns, ground truth (pool.truth)
    max_pixels: int = ImageLimits.max_pixels
    min_side: int = ImageLimits.min_side
    max_aspect_ratio: float = ImageLimits.max_aspect_ratio
    count: int = 0                  # generated: number of samples
    seed: int = 0                   # generated: the seed

    def __post_init__(self):
        if self.format not in (*FORMATS, "generated"):
            raise ValueError(f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)} or generated")
        if self.shard_size < 1:
            raise ValueError("shard_size must be positive")
        resolve_truth(self.mapping)     # a wrong setting fails here, not on every row

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(self.max_pixels, self.min_side, self.max_aspect_ratio)


@dataclass(frozen=True)
class Shard:
    index: int
    pieces: tuple[tuple[Unit, int, int], ...] = ()   # (unit, lo, hi) row ranges in units
    generated: tuple[int, int] | None = None        # (start, count) for the generated pool

    @property
    def key(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def rows(self) -> int:
        if self.generated:
            return self.generated[1]
        return sum(hi - lo for _, lo, hi in self.pieces)


# ------------------------------------------------------------------ planning

def expand_inputs(inputs: list[str]) -> list[str]:
    """Files in a stable order; a directory means its parquet/jsonl files (or itself when it is
    a saved HF dataset)."""
    files = []
    for path in inputs:
        p = Path(path)
        if p.is_dir() and not (p / "state.json").exists():
            files += sorted(glob.glob(str(p / "**" / "*.parquet"), recursive=True)
                            + glob.glob(str(p / "**" / "*.jsonl"), recursive=True))
        elif p.exists():
            files.append(str(p))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def plan_shards(cfg: IngestConfig) -> list[Shard]:
    """Cut the inputs into shards of `shard_size` rows, reading only file metadata."""
    if cfg.format == "generated":
        return [Shard(i, generated=(start, min(cfg.shard_size, cfg.count - start)))
                for i, start in enumerate(range(0, cfg.count, cfg.shard_size))]
    shards, pieces, filled = [], [], 0
    for path in expand_inputs(cfg.inputs):
        for unit in list_units(path):
            if unit.kind == "unreadable":  # no rows to cut; the current shard quarantines it
                pieces.append((unit, 0, 0))
                continue
            lo = 0
            while lo < unit.count:
                take = min(unit.count - lo, cfg.shard_size - filled)
                pieces.append((unit, lo, lo + take))
                filled += take
                lo += take
                if filled == cfg.shard_size:
                    shards.append(Shard(len(shards), tuple(pieces)))
                    pieces, filled = [], 0
    if pieces:
        shards.append(Shard(len(shards), tuple(pieces)))
    return shards


def fingerprint(cfg: IngestConfig, shard: Shard) -> str:
    """Changes when the shard's input bytes (size, mtime) or the ingest configuration change."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "inputs", "workers")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(shard.generated).encode())
    for unit, lo, hi in shard.pieces:
        st = os.stat(unit.file)
        h.update(f"{os.path.basename(unit.file)}|{st.st_size}|{st.st_mtime_ns}|{unit.part}|"
                 f"{unit.first + lo}|{unit.first + hi}".encode())
    return h.hexdigest()[:32]


# ------------------------------------------------------------------ the work of one task

_WORKER: dict = {}


def _init_worker(cfg: IngestConfig, base_dir: str, parent: int) -> None:
    from sandbox.confine import die_with_parent

    die_with_parent()  # SIGKILL when the process that started the pool dies (kill -9 included)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)
    _setup_worker(cfg, base_dir)


def _setup_worker(cfg: IngestConfig, base_dir: str) -> None:
    _WORKER["store"] = ImageStore(Path(cfg.out) / "images", cfg.limits)
    _WORKER["reader"] = Reader(cfg.format, cfg.image_root, cfg.mapping, base_dir)
    _WORKER["cfg"] = cfg


def _run_task(task) -> tuple[list[dict], list[dict], dict]:
    """Decode one range of rows: (sample rows, quarantine rows, counters)."""
    store, cfg = _WORKER["store"], _WORKER["cfg"]
    samples, quarantined = [], []
    stats = Counter()
    files0, bytes0 = store.files_written, store.bytes_written
    if task[0] == "generated":
        from pipelines.pool.generate import generate_samples
        _, start, count = task
        samples = [sample.to_row() for sample in generate_samples(start, count, cfg.seed, store)]
        stats["rows_read"] = count
    else:
        _read_rows(task, store, cfg, samples, quarantined, stats)
    stats["images_written"] = store.files_written - files0
    stats["image_bytes"] = store.bytes_written - bytes0
    return samples, quarantined, dict(stats)


def _read_rows(task, store: ImageStore, cfg: IngestConfig, samples: list, quarantined: list,
               stats: Counter) -> None:
    """Rows of one unit range; when the unit turns out unreadable, the range is quarantined
    whole and its rows decoded so far are dropped (they come from a damaged unit)."""
    reader = _WORKER["reader"]
    _, unit, lo, hi = task
    origin = reader.origin(unit.file)
    kept, bad, read = [], [], 0
    try:
        for number, row, error in read_unit(unit, lo, hi):
            read += 1
            if row is None:
                reason, detail = error.split(": ", 1)
                bad.append(quarantine_row(origin, number, reason, detail, cfg.format))
                continue
            try:
                kept.append(reader.to_sample(unit.file, number, row, store).to_row())
            except (RowRejected, ImageRejected) as exc:
                bad.append(quarantine_row(origin, number, exc.reason, exc.detail, cfg.format))
            except (OSError, MemoryError):
                raise  # the machine's trouble (a full disk, permissions), not the row's
            except Exception as exc:  # noqa: BLE001 - input we did not foresee: the row, not the run
                bad.append(quarantine_row(origin, number, "reader_error", describe(exc), cfg.format))
    except UnitUnreadable as exc:
        known = unit.kind != "unreadable"
        quarantined.append(quarantine_row(
            origin, unit.first + lo if known else None, exc.reason, exc.detail, cfg.format,
            rows=hi - lo if known else None, row_group=unit.part if unit.kind == "parquet" else None))
        stats["rows_read"] += hi - lo
        return
    samples += kept
    quarantined += bad
    stats["rows_read"] += read


def _tasks(shard: Shard) -> Iterator[tuple]:
    if shard.generated:
        start, count = shard.generated
        step = 32
        for s in range(start, start + count, step):
            yield ("generated", s, min(step, start + count - s))
        return
    for unit, lo, hi in shard.pieces:
        if unit.kind == "unreadable":
            yield ("rows", unit, 0, 0)
            continue
        # Parquet pieces stay whole: a row group is read front to back, so splitting one would
        # read its first rows again. JSONL and Arrow pieces split freely.
        step = hi - lo if unit.kind == "parquet" else TASK_ROWS
        for s in range(lo, hi, step):
            yield ("rows", unit, s, min(s + step, hi))


# ------------------------------------------------------------------ shards

def shard_paths(out: str, shard: Shard) -> tuple[Path, Path]:
    return (Path(out) / "samples" / f"{shard.key}.parquet",
            Path(out) / "quarantine" / f"{shard.key}.parquet")


def finished_report(out: str, shard: Shard, fp: str) -> dict | None:
    """The stored report of a finished shard with this fingerprint, else None."""
    samples_path, _ = shard_paths(out, shard)
    if not samples_path.exists():
        return None
    meta = pq.read_schema(samples_path).metadata or {}
    if meta.get(FINGERPRINT_KEY, b"").decode() != fp:
        return None
    return json.loads(meta[REPORT_KEY])


def ingest_shard(cfg: IngestConfig, shard: Shard, pool: ProcessPoolExecutor | None = None,
                 progress=None) -> dict:
    """Ingest one shard (idempotent); returns its report (`skipped` when already done)."""
    fp = fingerprint(cfg, shard)
    done = finished_report(cfg.out, shard, fp)
    if done is not None:
        if progress is not None:
            progress.update(shard.rows)
        # the shard's contents as recorded; nothing was written this time
        return {**done, "skipped": True, "images_written": 0, "image_bytes": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    out = Path(cfg.out)
    remove_stale_temporaries(out / "samples", out / "quarantine", out / "images" / ".partial")
    own_pool = pool is None
    pool = pool or make_pool(cfg)
    samples, quarantined, stats = [], [], Counter()
    try:
        for rows, bad, counts in pool.map(_run_task, _tasks(shard)):
            samples += rows
            quarantined += bad
            stats.update(counts)
            if progress is not None:
                progress.update(counts.get("rows_read", 0))
    finally:
        if own_pool:
            pool.shutdown(cancel_futures=True)
    kept, seen = [], set()
    for row in samples:  # exact dedup: the id is the hash of image hashes + normalised question
        if row["id"] not in seen:
            seen.add(row["id"])
            kept.append(row)
    report = {
        "shard": shard.key, "rows_read": stats["rows_read"], "kept": len(kept),
        "deduplicated": len(samples) - len(kept),
        "quarantined": sum(q["rows"] or 0 for q in quarantined),
        "quarantined_by_reason": dict(Counter(q["reason"] for q in quarantined)),
        "unreadable": [unreadable_entry(q) for q in quarantined if q["reason"] in UNIT_REASONS],
        "images_written": stats["images_written"], "image_bytes": stats["image_bytes"],
        "seconds": round(time.perf_counter() - t0, 3), "skipped": False,
    }
    samples_path, quarantine_path = shard_paths(cfg.out, shard)
    # (an empty list through from_pylist imports pandas: 0.4 s)
    write_parquet(pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA) if quarantined
                  else QUARANTINE_SCHEMA.empty_table(), quarantine_path)
    table = pa.Table.from_pylist(kept, schema=SAMPLE_SCHEMA).replace_schema_metadata(
        {FINGERPRINT_KEY: fp.encode(), REPORT_KEY: json.dumps(report).encode()})
    write_parquet(table, samples_path)  # last: its presence marks the shard done
    return report


UNIT_REASONS = ("unreadable_file", "unreadable_row_group")


def unreadable_entry(q: dict) -> dict:
    """A unit quarantined whole, as the report lists it."""
    return {"file": q["origin"]["file"], "row_group": q["row_group"], "first_row": q["origin"]["row"],
            "rows": q["rows"], "reason": q["reason"], "detail": q["detail"]}


class DecodingPool(ProcessPoolExecutor):
    """A process pool that, leaving its `with` block on an error, drops the tasks not started
    (a full disk fails them all anyway) instead of waiting for them."""

    def __exit__(self, *exc_info):
        self.shutdown(wait=True, cancel_futures=True)
        return False


class InlinePool:
    """`make_pool`'s interface, decoding in this process: for a worker that is itself one of many
    (a Ray task per shard), where a pool of its own would oversubscribe the node."""

    def __init__(self, cfg: IngestConfig):
        _setup_worker(cfg, _base_dir(cfg))

    def map(self, fn, iterable):
        return map(fn, iterable)

    def shutdown(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc_info) -> bool:
        return False


def _base_dir(cfg: IngestConfig) -> str:
    """Where relative inputs start: the inputs' common folder."""
    base_dir = os.path.commonpath([os.path.abspath(p) for p in cfg.inputs]) if cfg.inputs else ""
    if base_dir and os.path.isfile(base_dir):
        base_dir = os.path.dirname(base_dir)
    return base_dir


def make_pool(cfg: IngestConfig) -> ProcessPoolExecutor | InlinePool:
    workers = cfg.workers or len(os.sched_getaffinity(0))
    if workers == 1:  # one decoder: no second process to start and feed
        return InlinePool(cfg)
    # spawn, not fork: callers (Dagster, tests) may have threads
    return DecodingPool(workers, mp_context=get_context("spawn"),
                        initializer=_init_worker, initargs=(cfg, _base_dir(cfg), os.getpid()))


def ingest(cfg: IngestConfig, shards: list[int] | None = None, progress: bool = True,
           engine=None) -> dict:
    """Ingest all shards (or the given indices) and write out/report.json. `engine`: where the
    shards run (`pipelines.scale`; default: a process pool here)."""
    plan = plan_shards(cfg)
    todo = [s for s in plan if shards is None or s.index in shards]
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(s.rows for s in todo), unit="row", desc=f"ingest {cfg.format}")
    if engine is None:
        with make_pool(cfg) as pool:
            reports = [ingest_shard(cfg, shard, pool, bar) for shard in todo]
    else:
        order = {s.key: s.index for s in todo}
        reports = sorted(engine.ingest(cfg, todo, bar), key=lambda r: order[r["shard"]])
    if bar is not None:
        bar.close()
    total = summarise(reports)
    total["seconds"] = round(time.perf_counter() - t0, 3)
    total["shards"] = len(reports)
    total["format"] = cfg.format
    write_json(Path(cfg.out) / "report.json", total)
    return total


COUNTS = ("rows_read", "kept", "deduplicated", "quarantined", "images_written", "image_bytes")


def summarise(reports: list[dict]) -> dict:
    """Totals over shard reports (all zero, nothing listed, for none)."""
    total = dict.fromkeys(COUNTS, 0)
    reasons = Counter()
    for r in reports:
        for key in COUNTS:
            total[key] += r[key]
        reasons.update(r["quarantined_by_reason"])
    return {**total, "quarantined_by_reason": dict(reasons),
            "unreadable": [u for r in reports for u in r.get("unreadable", [])],
            "skipped_shards": sum(1 for r in reports if r.get("skipped"))}


def scan_pool(out: str):
    """The whole pool as a polars LazyFrame, duplicates across shards dropped (same id)."""
    import polars as pl
    return pl.scan_parquet(str(Path(out) / "samples" / "*.parquet")).unique("id", keep="first",
                                                                          maintain_order=True)
