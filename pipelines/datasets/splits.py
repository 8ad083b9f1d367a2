"""Splits (issue 5, 14): audited trajectory shards and the pool -> the training splits, as parquet.

    build_splits(audited_files, sample_files, out_dir, SplitConfig(), store_root=None) -> report

- `wo_thinking_thyme_single_round`: one code round or a direct answer;
- `2round`: two code rounds (further enhancement, error correction);
- `computation`: every computation trajectory, with `has_image` separating image and text-only;
- `rl`: prompts (system + user), image paths, solution, question, task and meta. With
  `rl_source="audited"` (the default) they are drawn from samples that have an audit-passing
  trajectory; with `rl_source="pool"` every pool sample with a question, a checkable answer and
  its image(s) may become one, no teacher needed (`pipelines.datasets.rl_prompts`).

Each split has a `train` and a held-out `test` part, separated by input image: rows that share
any input image (or, text-only, the normalised question) fall in the same part. The prompt set the rows are
rendered with is recorded beside them (`prompt_set.yaml`, `pipelines.core.prompts`); publishing
carries it into the dataset. Exact duplicates
(same sample) and near duplicates (same first image, same numbers, question Jaccard >= threshold,
`pipelines.datasets.dedup`) are removed across all splits: one row per cluster, placed by the split
priority. A configurable task mix downsamples over-represented tasks per split; tasks the mix
does not list keep all their rows, a weight of 0 leaves a task out. Rows matching an evaluation
benchmark are dropped first (`pipelines.datasets.decontaminate`).

Every rendered row goes through the row validations (`pipelines.datasets.validate`) before it is
written: a row that fails is set aside in `quarantine.parquet` with its checks, reasons and the
sample's origin (file, row), and counted per check in the report; the Dagster checks block only
above the rate the user sets. A row without a task (null or blank) reaches no split: it is set
aside there too, before rendering, as split `unrouted`, check `missing_task` ("row <id>: task is
missing"), and the batch goes on.

Linear in rows and shards, each input file read a constant number of times: an index (ids,
task, kind, question, image hashes) from one streaming pass over the shards' small columns; the
assignment as table operations on it (`pipelines.datasets.assign`); then the kept rows' samples
from one pass over the pool, and each audited shard read once and joined with them by id. Rows
are rendered (`pipelines.datasets.rows`) and validated in units of `UNIT_ROWS`, here or in
worker processes (`workers`; a script calling it with workers > 1 needs the
`if __name__ == "__main__":` guard of Python's spawned processes), and written in order, so
the files are the same whatever the number of workers; memory holds the index, the kept rows'
samples and a few units.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter, defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import chain, islice
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.images import store_path
from pipelines.core.prompts import DEFAULT_PROMPT_SET, load_prompt_set, record_prompt_set
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory
from pipelines.datasets import validate as v
from pipelines.datasets.assign import assign, scan_index
from pipelines.datasets.decontaminate import DecontaminationConfig, find_contaminated
from pipelines.datasets.dedup import near_duplicate_clusters  # noqa: F401  re-exported
from pipelines.datasets.names import (
    COMPUTATION,
    MISSING_TASK,
    PARTS,
    RL,
    SFT_SPLITS,
    SINGLE,
    SPLITS,
    TWO_ROUND,
    UNROUTED,
    split_checks,
)
from pipelines.datasets.paths import store_relpath
from pipelines.datasets.rl_prompts import DEFAULT_ANSWER_KINDS, RLFilter, pool_index
from pipelines.datasets.rows import (  # noqa: F401  re-exported: the split rows' home
    RL_SCHEMA,
    SCHEMAS,
    SFT_SCHEMA,
    RowWriter,
    image_key,
    question_key,
    rl_row,
    sft_row,
    unit_draw,
)

# The paper's component counts (THYME.md §3) for the single-round data: no-code ~100K,
# real-world code ~50K, crop ~28K, rotation ~14K, contrast ~10K.
PAPER_MIX = {"no_code": 100_000, "real_world": 50_000, "crop": 28_000, "rotate": 14_000,
             "contrast": 10_000}
RL_SOURCES = ("audited", "pool")
QUARANTINE_FILE = "quarantine.parquet"
UNIT_ROWS = 2048     # rows rendered and validated as one unit (by a worker, with workers > 1)
SAMPLE_COLUMNS = ("id", "source", "images", "question", "answer", "task", "meta", "origin")  # what rows read
QUARANTINE_SCHEMA = pa.schema([
    ("split", pa.string()), ("part", pa.string()), ("id", pa.string()), ("sample_id", pa.string()),
    ("origin_file", pa.string()), ("origin_row", pa.int64()),
    ("checks", pa.list_(pa.string())), ("reason", pa.string()),
])


@dataclass
class SplitConfig:
    """How audited trajectories (and, for RL, the pool) become splits."""

    # Target task proportions per split (weights, renormalised over the listed tasks present);
    # tasks a split's mix does not list keep all their rows (a real pool's `unknown` included),
    # a weight of 0 leaves a task out. A split without an entry keeps everything.
    mix: dict[str, dict[str, float]] = field(default_factory=lambda: {SINGLE: dict(PAPER_MIX)})
    test_share: float = 0.05          # share of image keys held out as the test part
    rl_source: str = "audited"        # audited: samples with a passing trajectory; pool: any sample
    rl_share: float = 0.2             # share of eligible clusters that also have SFT rows and
                                      # become RL prompts instead (pool-only clusters always do)
    rl_require_image: bool = True     # RL prompts need an input image (Thyme-RL has one per prompt)
    rl_answer_kinds: tuple[str, ...] = DEFAULT_ANSWER_KINDS  # ground truths the reward can check
    rl_min_image_side: int = 0        # px: every input's shorter side at least this (0: any)
    rl_tasks: tuple[str, ...] = ()    # RL prompts only of these tasks (empty: all)
    rl_difficulties: tuple[str, ...] = ()  # only these known difficulties (empty: all)
    near_dup_threshold: float = 0.8   # question Jaccard (char 5-grams) at which same-image samples merge
    priority: tuple[str, ...] = (TWO_ROUND, COMPUTATION, SINGLE)  # which split keeps a duplicate
    max_code_rounds: int = 2          # trajectories with more code rounds are left out
    seed: int = 0                     # salts every hash-based draw (mix, RL share, test part)
    prompt_set: str = DEFAULT_PROMPT_SET  # the prompts rows are rendered with (name, path, from:<dataset>)
    batch_rows: int = 512             # rows buffered per output file before a row group is written
    decontaminate: DecontaminationConfig | None = None  # evaluation benchmarks to keep out
    exclude_ids_file: str | None = None  # parquet with an `id` column: trajectories left out
                                      # (a human review's rejections, pipelines.samples.review)

    def __post_init__(self):
        for name, value in (("test_share", self.test_share), ("rl_share", self.rl_share),
                            ("near_dup_threshold", self.near_dup_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (got {value})")
        unknown = (set(self.mix) | set(self.priority)) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; splits are {SPLITS}")
        if set(self.priority) != set(SFT_SPLITS):
            raise ValueError(f"priority must order exactly {SFT_SPLITS}")
        if self.rl_source not in RL_SOURCES:
            raise ValueError(f"rl_source must be one of {RL_SOURCES} (got {self.rl_source!r})")
        self.rl_filter  # noqa: B018  validates the RL filter settings now

    @property
    def rl_filter(self) -> RLFilter:
        return RLFilter(tuple(self.rl_answer_kinds), self.rl_require_image, self.rl_min_image_side,
                        tuple(self.rl_tasks), tuple(str(d) for d in self.rl_difficulties))


# ------------------------------------------------------------------ building

def default_store_root(sample_files: list[str]) -> Path:
    """The pool's image store: `images/` beside the `samples/` folder (the ingest layout)."""
    root = Path(sample_files[0]).parent.parent / "images"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no image store beside the pool's samples; pass store_root")
    return root


def build_splits(audited_files: list[str], sample_files: list[str], out_dir: str | os.PathLike,
                 cfg: SplitConfig | None = None, store_root: str | os.PathLike | None = None,
                 vcfg: v.ValidationConfig | None = None, workers: int = 1) -> dict:
    """Write `out_dir/<split>/{train,test}.parquet`, `out_dir/quarantine.parquet` and
    `out_dir/report.json` (atomically, as a whole directory); returns the report. `store_root`:
    the pool's image store (default: beside the samples); `vcfg`: the row validations' limits;
    `workers`: processes rendering and validating rows (0: one per core; the files are the same
    whatever the number)."""
    workers = workers or os.cpu_count() or 1
    cfg = cfg or SplitConfig()
    if not sample_files:
        raise FileNotFoundError("no pool sample shards to build splits from")
    if not audited_files and cfg.rl_source != "pool":
        raise FileNotFoundError("no audited trajectory shards to build splits from (with "
                                "rl_source='pool' the RL split needs none)")
    store_root = Path(store_root) if store_root is not None else default_store_root(sample_files)
    prompts = load_prompt_set(cfg.prompt_set)
    vcfg = replace(vcfg or v.ValidationConfig(), system_prompt=prompts.system)
    pool = pool_index(sample_files)
    index, totals = scan_index(audited_files, pool)
    rejected = 0
    if cfg.exclude_ids_file and index.height:
        ids = pl.read_parquet(cfg.exclude_ids_file, columns=["id"])["id"]
        rejected = index.height - (index := index.filter(~pl.col("id").is_in(ids.implode()))).height
    excluded, decontamination = {}, None
    if cfg.decontaminate is not None:
        matches, decontamination = find_contaminated(pool, store_root, cfg.decontaminate)
        excluded = {sid: "unreadable_image" if all(m["by"] == "unreadable_image" for m in ms)
                    else "decontaminated" for sid, ms in matches.items()}
    assigned, rl, funnel, unroutable = assign(index, pool, cfg, excluded)
    if rejected:
        funnel["dropped"]["review_rejected"] = rejected
    with atomic_path(out_dir) as tmp:
        writers = {}
        for split in SPLITS:
            (tmp / split).mkdir(parents=True)
            for part in PARTS:
                writers[split, part] = RowWriter(tmp / split / f"{part}.parquet", SCHEMAS[split], cfg.batch_rows)
        quarantine = _Quarantine()
        for row_id, sample_id in unroutable.iter_rows():
            quarantine.add(UNROUTED, None, {"id": row_id, "sample_id": sample_id},
                           [v.Failure(MISSING_TASK, row_id, f"row {row_id}: task is missing")])
        try:
            units = _units(audited_files, sample_files, assigned, rl)
            for rendered in _in_order(_render, units, (prompts, store_root, vcfg), workers):
                for split, part, row, failures in rendered:
                    quarantine.rendered[split] += 1
                    if failures:
                        quarantine.add(split, part, row, failures)
                    else:
                        writers[split, part].add(row)
            for w in writers.values():
                w.close()
        finally:
            for w in writers.values():
                if w.writer.is_open:
                    w.writer.close()
        quarantine.write(tmp / QUARANTINE_FILE, pool)
        report = {**totals, **funnel, "config": _jsonable(asdict(cfg)),
                  "rows": {s: {p: writers[s, p].count for p in PARTS} for s in SPLITS},
                  "validated": {"rendered": dict(quarantine.rendered), "quarantined": quarantine.counts(),
                                "examples": quarantine.examples}}
        if decontamination is not None:
            report["decontamination"] = decontamination
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        record_prompt_set(prompts, tmp)          # what the rows were rendered with, for publish
    return report


def _units(audited_files, sample_files, assigned: pl.DataFrame, rl: pl.DataFrame):
    """The rows to render, as frames of at most `UNIT_ROWS`: (RL or None, frame); the assigned
    trajectories in shard order, each with its sample (`sample`), then the RL prompts' samples in
    pool order. The samples are read in one pass over the pool's shards (the rows `pool_index`
    keeps, without the reference trajectories no row reads); each audited shard is read once and
    joined with them by id: no shard is read again per other shard."""
    needed = pl.concat([assigned["sample_id"], rl["sample_id"]]).unique()
    if needed.is_empty():
        return
    samples = (pl.scan_parquet(sample_files).filter(pl.col("id").is_in(needed.implode()))
               .unique("id", keep="first", maintain_order=True)
               .select(*SAMPLE_COLUMNS, pl.lit(None, pl.String).alias("reference"))
               .collect(engine="streaming"))
    by_id = samples.select(pl.col("id").alias("sample_id"), pl.struct(pl.all()).alias("sample"))
    for file in audited_files if assigned.height else []:
        shard = (pl.scan_parquet(file).join(assigned.lazy().drop("sample_id"), on="id", how="inner",
                                            maintain_order="left")
                 .collect().join(by_id, on="sample_id", how="left", maintain_order="left"))
        for chunk in shard.iter_slices(UNIT_ROWS):
            yield None, chunk
    prompts_of = samples.join(rl.select(pl.col("sample_id").alias("id"), "part", pl.col("task").alias("rl_task")),
                              on="id", how="inner", maintain_order="left")
    for chunk in prompts_of.iter_slices(UNIT_ROWS):
        yield RL, chunk


def _render(rl: str | None, frame: pl.DataFrame, prompts, store_root, vcfg) -> list[tuple]:
    """(split, part, row, failures) of each row of a unit: rendered (`rows.sft_row`, `rows.rl_row`)
    and run through the row validations. Runs in this process or a worker's."""
    resolve = store_resolver(store_root)
    out = []
    for r in frame.iter_rows(named=True):
        if rl:
            split, row = RL, rl_row(Sample.from_row(r), prompts, r["rl_task"])
            failures = v.validate_rl_rows([row], resolve, vcfg)
        else:
            split, row = r["split"], sft_row(Trajectory.from_row(r), Sample.from_row(r["sample"]), prompts)
            failures = v.validate_sft_rows([row], resolve, vcfg)
        out.append((split, r["part"], row, failures))
    return out


def _in_order(fn, units, args: tuple, workers: int):
    """fn(*unit, *args) of each unit, in order: here (`workers` 1), or in worker processes with
    at most two units per worker in flight (memory stays bounded by a few units)."""
    units = iter(units)
    first = list(islice(units, 2))
    if workers <= 1 or len(first) < 2:       # one unit: not worth starting processes
        for unit in chain(first, units):
            yield fn(*unit, *args)
        return
    units = chain(first, units)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        for unit in units:
            pending.append(pool.submit(fn, *unit, *args))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Quarantine:
    """Rows the validations set aside: counted per split and check, written with their reasons
    and the sample's origin (file, row)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.rendered: Counter = Counter()
        self.by_check: dict[str, Counter] = defaultdict(Counter)

    def add(self, split: str, part: str | None, row: dict, failures: list) -> None:
        checks = sorted({f.check for f in failures})
        for check in checks:
            self.by_check[split][check] += 1
        reason = "; ".join(f"{f.check}: {f.reason}" for f in failures)
        self.rows.append({"split": split, "part": part, "id": row["id"],
                          "sample_id": row.get("sample_id") or row["id"], "checks": checks,
                          "reason": reason[:1000]})

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(c) for s, c in self.by_check.items()}

    def write(self, path: Path, pool: pl.DataFrame) -> None:
        """The quarantine file, each row with its sample's origin (file, row) from the pool."""
        ids = list({r["sample_id"] for r in self.rows})
        origins = {r["sample_id"]: (r["origin_file"], r["origin_row"]) for r in
                   pool.filter(pl.col("sample_id").is_in(ids)).select(
                       "sample_id", "origin_file", "origin_row").to_dicts()} if ids else {}
        for r in self.rows:
            r["origin_file"], r["origin_row"] = origins.get(r["sample_id"], (None, None))
        pq.write_table(pa.Table.from_pylist(self.rows, schema=QUARANTINE_SCHEMA), path)

    @property
    def examples(self) -> list[dict]:
        """The first rows set aside, for reports (after `write` filled in their origins)."""
        return [{"split": r["split"], "id": r["id"], "origin": f"{r['origin_file']} row {r['origin_row']}",
                 "reason": r["reason"][:300]} for r in self.rows[:50]]


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))


# ------------------------------------------------------------------ reading and validating

def split_file(split_dir: str | os.PathLike, split: str, part: str) -> Path:
    return Path(split_dir) / split / f"{part}.parquet"


def iter_split(split_dir: str | os.PathLike, split: str, part: str, batch_rows: int = 256):
    """A split part's rows, in batches of dicts."""
    pf = pq.ParquetFile(split_file(split_dir, split, part))
    for batch in pf.iter_batches(batch_size=batch_rows):
        yield batch.to_pylist()


def store_resolver(store_root: str | os.PathLike):
    """Dataset image path (`images/...`) -> the file in the image store."""
    return lambda path: store_path(store_root, store_relpath(path))


def validate_splits(split_dir: str | os.PathLike, store_root: str | os.PathLike,
                    mix: dict[str, dict[str, float]] | None = None, vcfg=None) -> dict:
    """Every validation of `pipelines.datasets.validate` over the built splits, with the rows
    the build set aside (its report's `validated`) counted against each check's allowed rate.
    Returns {split: validate.Report} (split-level checks included in each split's report)."""
    vcfg = vcfg or v.ValidationConfig()
    resolve = store_resolver(store_root)
    built = json.loads((Path(split_dir) / "report.json").read_text()).get("validated", {})
    reports, counts, keys = {}, {}, {p: {} for p in PARTS}
    for split in SPLITS:
        is_rl = split == RL
        report = v.Report(split_checks(split), keep=vcfg.max_failures_kept, cfg=vcfg,
                          rendered=built.get("rendered", {}).get(split, 0),
                          quarantined=built.get("quarantined", {}).get(split, {}))
        by_task = Counter()
        for part in PARTS:
            for rows in iter_split(split_dir, split, part):
                report.add(v.validate_rl_rows(rows, resolve, vcfg) if is_rl
                           else v.validate_sft_rows(rows, resolve, vcfg))
                for r in rows:
                    by_task[r["task"]] += 1
                    keys[part][f"{split}/{r['id']}"] = v.input_keys(r, is_rl)
        counts[split] = dict(by_task)
        reports[split] = report
    targets = mix if mix is not None else SplitConfig().mix
    for split in SPLITS:
        reports[split].add(v.check_split_sizes_and_mix({split: counts[split]}, targets, vcfg))
    for f in v.check_no_train_test_overlap(keys["train"], keys["test"]):
        reports[f.row_id.split("/", 1)[0]].add([f])
    return reports
