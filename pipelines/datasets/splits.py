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
any input image (or, text-only, the normalised question) fall in the same part. Exact duplicates
(same sample) and near duplicates (same first image, same numbers, question Jaccard >= threshold,
`pipelines.datasets.dedup`) are removed across all splits: one row per cluster, placed by the split
priority. A configurable task mix downsamples over-represented tasks per split; tasks the mix
does not list keep all their rows, a weight of 0 leaves a task out. Rows matching an evaluation
benchmark are dropped first (`pipelines.datasets.decontaminate`).

Every rendered row goes through the row validations (`pipelines.datasets.validate`) before it is
written: a row that fails is set aside in `quarantine.parquet` with its checks, reasons and the
sample's origin (file, row), and counted per check in the report; the Dagster checks block only
above the rate the user sets.

Only an index (ids, task, kind, question, image hashes) is collected, through lazy scans; rows
are rendered and written one shard at a time, so memory stays bounded by a shard
(`pipelines.datasets.rows`).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.images import store_path
from pipelines.core.prompts import DEFAULT_PROMPT_SET, load_prompt_set
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory
from pipelines.datasets import validate as v
from pipelines.datasets.decontaminate import DecontaminationConfig, find_contaminated
from pipelines.datasets.dedup import near_duplicate_clusters  # noqa: F401  re-exported
from pipelines.datasets.names import (
    COMPUTATION,
    PARTS,
    RL,
    SFT_SPLITS,
    SINGLE,
    SPLITS,
    TWO_ROUND,
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


# ------------------------------------------------------------------ the index and assignment

def scan_index(audited_files: list[str], pool: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Passed trajectories joined with their samples' small columns (lazy scans, streaming)."""
    totals = {"pool_samples": pool.height, "trajectories": 0, "passed": 0}
    if not audited_files:
        return pl.DataFrame(), {**totals, "passed_with_sample": 0}
    audited = pl.scan_parquet(audited_files)
    code_rounds = (pl.col("turns").list.eval(pl.element().struct.field("code").is_not_null())
                   .list.sum().alias("code_rounds"))
    index = (audited.filter(pl.col("passed").fill_null(False))
             .select("id", "sample_id", "task", "kind", code_rounds)
             .join(pool.lazy(), on="sample_id", how="inner", maintain_order="left")  # reruns: same order
             .collect(engine="streaming"))
    totals["trajectories"] = audited.select(pl.len()).collect().item()
    totals["passed"] = audited.filter(pl.col("passed").fill_null(False)).select(pl.len()).collect().item()
    totals["passed_with_sample"] = index.height
    return index, totals


def _routed(index: pl.DataFrame, cfg: SplitConfig, excluded: dict[str, str],
            funnel: dict) -> list[dict]:
    """The index's trajectories that go to an SFT split, with it (`split`), in index order; the
    exclusions and the routing are column operations (counted into `funnel`); only the routed
    rows become Python rows (the RL filter and the duplicate clustering read them)."""
    if not index.height:
        return []
    reasons = pl.DataFrame({"sample_id": list(excluded), "excluded": list(excluded.values())},
                           schema={"sample_id": pl.String, "excluded": pl.String})
    rounds = pl.col("code_rounds")
    split = (pl.when(rounds > cfg.max_code_rounds).then(None)
             .when(pl.col("task") == "computation").then(pl.lit(COMPUTATION))
             .when(rounds <= 1).then(pl.lit(SINGLE)).otherwise(pl.lit(TWO_ROUND)))
    frame = (index.lazy().join(reasons.lazy(), on="sample_id", how="left", maintain_order="left")
             .with_columns(split.alias("split")).collect())
    for reason, n in frame["excluded"].drop_nulls().value_counts(sort=True).iter_rows():
        funnel["dropped"][reason] += n
    kept = frame.filter(pl.col("excluded").is_null())
    funnel["dropped"]["too_many_code_rounds"] += kept["split"].null_count()
    kept = kept.filter(pl.col("split").is_not_null())
    for name, n in kept["split"].value_counts(sort=True).iter_rows():
        funnel["routed"][name] += n
    return kept.drop("excluded").to_dicts()


def _key(row: dict) -> str:
    return image_key(row["image_hashes"][0] if row["image_hashes"] else None, row["question"])


def _apply_mix(rows: list[dict], weights: dict[str, float] | None, seed: int) -> tuple[list[dict], Counter]:
    """Downsample over-represented tasks to the target proportions (renormalised over the listed
    tasks present); tasks the mix does not list are kept whole, weight 0 drops a task. Returns
    the kept rows and how many of each task were dropped."""
    if not weights:
        return rows, Counter()
    by_task: dict[str, list[dict]] = defaultdict(list)
    kept, dropped = [], Counter()
    for r in rows:
        weight = weights.get(r["task"])
        if weight is None:
            kept.append(r)
        elif weight > 0:
            by_task[r["task"]].append(r)
        else:
            dropped[r["task"]] += 1
    if not by_task:
        return kept, dropped
    scale = min(len(rs) / weights[t] for t, rs in by_task.items())
    for task, rs in by_task.items():
        n = min(len(rs), max(1, round(scale * weights[task])))
        rs.sort(key=lambda r: unit_draw("mix", seed, r["id"]))
        kept += rs[:n]
        dropped[task] += len(rs) - n
    return kept, dropped


def _components(rows: list[dict]) -> dict[str, str]:
    """Image key -> the smallest key of its component: rows that share any input image (or a
    text-only question, or an augmented copy's source image) are joined, so the test part can
    take whole components."""
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        keys = list(r["image_hashes"]) or [question_key(r["question"])]
        if r.get("lineage_image"):     # an augmented copy: held out with its source's image
            keys.append(r["lineage_image"])
        roots = {find(k) for k in keys}
        top = min(roots)
        for root in roots:
            parent[root] = top
    return {k: find(k) for k in parent}


def assign(index: pl.DataFrame, pool: pl.DataFrame, cfg: SplitConfig,
           excluded: dict[str, str] | None = None) -> tuple[dict, dict, dict]:
    """(trajectory id -> (split, part), RL sample id -> (part, task), funnel counts of each step).
    `excluded`: sample id -> why decontamination keeps it out (`decontaminated`, or
    `unreadable_image`: it could not be checked)."""
    excluded = excluded or {}
    funnel: dict = {"routed": Counter(), "dropped": Counter()}
    routed = _routed(index, cfg, excluded, funnel)

    # RL candidates: the routed rows' samples (audited) or every pool sample (pool), filtered.
    task_of = {}
    for r in routed:
        task_of.setdefault(r["sample_id"], r["task"])
    rl_filter, filtered = cfg.rl_filter, Counter()
    if cfg.rl_source == "pool":     # streamed: only the eligible rows are kept
        pool_rows = (s for s in pool.iter_rows(named=True))
    else:
        seen: set[str] = set()
        pool_rows = (r for r in routed if not (r["sample_id"] in seen or seen.add(r["sample_id"])))
    candidates, eligible = 0, {}
    for s in pool_rows:
        sid = s["sample_id"]
        if sid in excluded:
            filtered[excluded[sid]] += 1
            continue
        candidates += 1
        reason = rl_filter.reject({**s, "task": task_of.get(sid, s["sample_task"])})
        if reason is None:
            eligible[sid] = s
        else:
            filtered[reason] += 1

    # Near-duplicate clusters over distinct samples (exact duplicates share a sample id).
    first = {}
    for r in routed:
        first.setdefault(r["sample_id"], r)
    for sid, s in eligible.items():
        first.setdefault(sid, s)
    clusters = near_duplicate_clusters(
        [(s, _key(r), r["question"]) for s, r in first.items()], cfg.near_dup_threshold)

    # RL takes whole clusters: a deterministic share of those with SFT rows, every pool-only one.
    members: dict[str, list[dict]] = defaultdict(list)
    for r in routed:
        members[clusters[r["sample_id"]]].append(r)
    pool_only: dict[str, list[str]] = defaultdict(list)
    for sid in eligible:
        if sid not in task_of:
            pool_only[clusters[sid]].append(sid)
    in_cluster: dict[str, list[str]] = defaultdict(list)
    for sid in eligible:
        in_cluster[clusters[sid]].append(sid)
    rank = {s: k for k, s in enumerate(cfg.priority)}
    chosen: dict[str, list[dict]] = defaultdict(list)
    rl_counts = Counter()
    for cluster in sorted(set(members) | set(pool_only)):
        rs = sorted(members.get(cluster, []),
                    key=lambda r: (rank[r["split"]], r["sample_id"] != cluster, r["id"]))
        chances = sorted(in_cluster.get(cluster, []))
        to_rl = bool(chances) and (not rs or unit_draw("rl", cfg.seed, cluster) < cfg.rl_share)
        if to_rl:
            source = chances[0]
            rl_counts["taken"] += 1
            rl_counts["duplicates"] += len(chances) - 1
            row = first[source]
            chosen[RL].append({**row, "id": source, "sample_id": source,
                               "task": task_of.get(source, row.get("sample_task"))})
            own = [r for r in rs if r["sample_id"] == source]
            spared = min(own, key=lambda r: r["id"]) if own else None
        else:
            if not rs:
                continue
            rl_counts["left_to_sft"] += len(chances)
            source = rs[0]["sample_id"]
            spared = rs[0]
            chosen[rs[0]["split"]].append(rs[0])
        for r in rs:
            if r is not spared:
                funnel["dropped"]["exact_duplicate" if r["sample_id"] == source else "near_duplicate"] += 1

    components = _components([r for split in chosen.values() for r in split])
    assignment: dict[str, tuple[str, str]] = {}
    rl_assignment: dict[str, tuple[str, str]] = {}
    counts: dict[str, dict[str, Counter]] = {s: {p: Counter() for p in PARTS} for s in SPLITS}
    for split in SPLITS:
        kept, dropped = _apply_mix(chosen.get(split, []), cfg.mix.get(split), cfg.seed)
        for task, n in dropped.items():
            funnel["dropped"][f"mix:{split}:{task}"] += n
        for r in kept:
            key = r["image_hashes"][0] if r["image_hashes"] else question_key(r["question"])
            part = "test" if unit_draw("test", cfg.seed, components[key]) < cfg.test_share else "train"
            if split == RL:
                rl_assignment[r["sample_id"]] = (part, r["task"])
            else:
                assignment[r["id"]] = (split, part)
            counts[split][part][r["task"]] += 1
    funnel["routed"] = dict(funnel["routed"])
    funnel["dropped"] = {k: v for k, v in funnel["dropped"].items() if v}
    funnel["splits"] = {s: {p: dict(c) for p, c in parts.items()} for s, parts in counts.items()}
    funnel["rl_prompts"] = {"source": cfg.rl_source, "candidates": candidates,
                            "eligible": len(eligible), "filtered": dict(filtered), **rl_counts}
    return assignment, rl_assignment, funnel


# ------------------------------------------------------------------ building

def default_store_root(sample_files: list[str]) -> Path:
    """The pool's image store: `images/` beside the `samples/` folder (the ingest layout)."""
    root = Path(sample_files[0]).parent.parent / "images"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no image store beside the pool's samples; pass store_root")
    return root


def build_splits(audited_files: list[str], sample_files: list[str], out_dir: str | os.PathLike,
                 cfg: SplitConfig | None = None, store_root: str | os.PathLike | None = None,
                 vcfg: v.ValidationConfig | None = None) -> dict:
    """Write `out_dir/<split>/{train,test}.parquet`, `out_dir/quarantine.parquet` and
    `out_dir/report.json` (atomically, as a whole directory); returns the report. `store_root`:
    the pool's image store (default: beside the samples); `vcfg`: the row validations' limits."""
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
        rejected = index.height - (index := index.filter(~pl.col("id").is_in(ids))).height
    excluded, decontamination = {}, None
    if cfg.decontaminate is not None:
        matches, decontamination = find_contaminated(pool, store_root, cfg.decontaminate)
        excluded = {sid: "unreadable_image" if all(m["by"] == "unreadable_image" for m in ms)
                    else "decontaminated" for sid, ms in matches.items()}
    assignment, rl_assignment, funnel = assign(index, pool, cfg, excluded)
    if rejected:
        funnel["dropped"]["review_rejected"] = rejected
    resolve = store_resolver(store_root)
    with atomic_path(out_dir) as tmp:
        writers = {}
        for split in SPLITS:
            (tmp / split).mkdir(parents=True)
            for part in PARTS:
                writers[split, part] = RowWriter(tmp / split / f"{part}.parquet", SCHEMAS[split], cfg.batch_rows)
        quarantine = _Quarantine()
        try:
            for split, part, row in _rendered(audited_files, sample_files, assignment, rl_assignment, prompts):
                failures = (v.validate_rl_rows if split == RL else v.validate_sft_rows)([row], resolve, vcfg)
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
    return report


def _rendered(audited_files, sample_files, assignment, rl_assignment, prompts):
    """(split, part, row) for every assigned trajectory and RL prompt, one shard at a time."""
    assigned = pl.DataFrame({"id": list(assignment), "split": [a[0] for a in assignment.values()],
                             "part": [a[1] for a in assignment.values()]},
                            schema={"id": pl.String, "split": pl.String, "part": pl.String})
    home = _sample_homes(sample_files) if assignment else None
    for file in audited_files if assignment else []:
        shard = pl.scan_parquet(file).join(assigned.lazy(), on="id", how="inner", maintain_order="left").collect()
        if shard.height == 0:
            continue
        needed = home.join(shard.select(pl.col("sample_id").unique().alias("id")), on="id", how="semi")
        samples = {}
        for (k,), ids in needed.group_by("file", maintain_order=True):   # mostly the shard's own
            rows = pl.scan_parquet(sample_files[k]).filter(pl.col("id").is_in(ids["id"].implode()))
            for r in rows.unique("id", keep="first", maintain_order=True).collect().to_dicts():
                samples[r["id"]] = Sample.from_row(r)
        for row in shard.to_dicts():
            yield row["split"], row["part"], sft_row(Trajectory.from_row(row), samples[row["sample_id"]], prompts)
    if not rl_assignment:
        return
    wanted = list(rl_assignment)
    done: set[str] = set()
    for file in sample_files:  # RL prompts in pool order, one sample shard at a time
        for r in pl.scan_parquet(file).filter(pl.col("id").is_in(wanted)).collect().to_dicts():
            if r["id"] in done:
                continue
            done.add(r["id"])
            part, task = rl_assignment[r["id"]]
            yield RL, part, rl_row(Sample.from_row(r), prompts, task)


def _sample_homes(sample_files: list[str]) -> pl.DataFrame:
    """Sample id -> the index of the first sample file that holds it (the row `pool_index` keeps),
    from one pass over the id columns: each audited shard then reads only the sample files its
    trajectories come from, instead of every pool shard (which made building splits quadratic in
    the shard count)."""
    ids = [pl.scan_parquet(f).select("id", pl.lit(k, pl.Int32).alias("file"))
           for k, f in enumerate(sample_files)]
    return pl.concat(ids).unique("id", keep="first", maintain_order=True).collect(engine="streaming")


class _Quarantine:
    """Rows the validations set aside: counted per split and check, written with their reasons
    and the sample's origin (file, row)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.rendered: Counter = Counter()
        self.by_check: dict[str, Counter] = defaultdict(Counter)

    def add(self, split: str, part: str, row: dict, failures: list) -> None:
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
