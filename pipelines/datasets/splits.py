"""Splits (issue 5): audited trajectory shards -> the training splits, as parquet.

    build_splits(audited_files, sample_files, store_root, out_dir, SplitConfig()) -> report

- `wo_thinking_thyme_single_round`: one code round or a direct answer;
- `2round`: two code rounds (further enhancement, error correction);
- `computation`: every computation trajectory, with `has_image` separating image and text-only;
- `rl`: prompts (system + user), image paths, solution, question, task and meta.

Each split has a `train` and a held-out `test` part, separated by input-image hash (text-only
rows by their normalised question): no image is in both. Exact duplicates (same sample) and near
duplicates (same input image, same numbers, question text Jaccard >= threshold over character
5-grams, found by MinHash LSH) are removed across all splits: one row per cluster, placed by the
split priority. A configurable task mix downsamples over-represented tasks per split.

Only an index (ids, task, kind, question, image hash) is collected, through lazy scans; rows are
rendered and written one audited shard at a time, so memory stays bounded by a shard. SFT rows
are `Trajectory.render()` of the trajectory with its paths rewritten (`pipelines.datasets.paths`) and
the configured prompt set's user message (`pipelines.core.prompts`) of the sample; image paths are dataset-relative
(`images/<hash[:2]>/<hash>.<ext>`, the store layout under `images/`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.images import store_path
from pipelines.core.prompts import DEFAULT_PROMPT_SET, PromptSet, load_prompt_set
from pipelines.core.schema import Sample, normalise_question
from pipelines.core.trajectory import Trajectory
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
from pipelines.datasets.paths import dataset_path, rewrite_trajectory, store_relpath

# The paper's component counts (THYME.md §3) for the single-round data: no-code ~100K,
# real-world code ~50K, crop ~28K, rotation ~14K, contrast ~10K.
PAPER_MIX = {"no_code": 100_000, "real_world": 50_000, "crop": 28_000, "rotate": 14_000,
             "contrast": 10_000}

SFT_SCHEMA = pa.schema([
    ("id", pa.string()),              # the trajectory's id
    ("sample_id", pa.string()),
    ("task", pa.string()),
    ("kind", pa.string()),            # direct | single | further_enhancement | error_correction
    ("has_image", pa.bool_()),
    ("question", pa.string()),        # the user message (render_user)
    ("response", pa.string()),        # the assistant message (Trajectory.render)
    ("images", pa.list_(pa.string())),  # dataset paths: the input, then each produced image
    ("image_key", pa.string()),       # input image hash, or q:<hash of the question> if text-only
    ("answer", pa.string()),          # the sample's ground truth
])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
RL_SCHEMA = pa.schema([
    ("id", pa.string()),              # the sample's id (a prompt, not a trajectory)
    ("task", pa.string()),
    ("has_image", pa.bool_()),
    ("messages", pa.list_(MESSAGE)),  # system + user
    ("images", pa.list_(pa.string())),  # dataset paths; the user message's User Image Path is images[0]
    ("solution", pa.string()),
    ("question", pa.string()),        # the bare question (for judges)
    ("meta", pa.string()),            # JSON: the sample's ground truth and options, for curricula
    ("image_key", pa.string()),
])
SCHEMAS = {SINGLE: SFT_SCHEMA, TWO_ROUND: SFT_SCHEMA, COMPUTATION: SFT_SCHEMA, RL: RL_SCHEMA}


@dataclass
class SplitConfig:
    """How audited trajectories become splits."""

    # Target task proportions per split (weights, renormalised over the tasks present); tasks
    # missing from a split's mix are left out of it. A split without an entry keeps everything.
    mix: dict[str, dict[str, float]] = field(default_factory=lambda: {SINGLE: dict(PAPER_MIX)})
    test_share: float = 0.05          # share of image keys held out as the test part
    rl_share: float = 0.2             # share of eligible samples that become RL prompts, not SFT rows
    rl_require_image: bool = True     # RL prompts need an input image (Thyme-RL has one per prompt)
    near_dup_threshold: float = 0.8   # question Jaccard (char 5-grams) at which same-image samples merge
    priority: tuple[str, ...] = (TWO_ROUND, COMPUTATION, SINGLE)  # which split keeps a duplicate
    max_code_rounds: int = 2          # trajectories with more code rounds are left out
    seed: int = 0                     # salts every hash-based draw (mix, RL share, test part)
    prompt_set: str = DEFAULT_PROMPT_SET  # the prompts rows are rendered with (name, path, from:<dataset>)
    batch_rows: int = 512             # rows buffered per output file before a row group is written
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


def unit_draw(*parts) -> float:
    """A deterministic number in [0, 1) from the parts (the same on every machine and run)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def image_key(image_hash: str | None, question: str) -> str:
    """What the test part is separated by: the input image, or a text-only question."""
    if image_hash:
        return image_hash
    return "q:" + hashlib.blake2b(normalise_question(question).encode(), digest_size=16).hexdigest()


# ------------------------------------------------------------------ near duplicates

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NON_WORD = re.compile(r"[\W_]+")
NUM_PERM, BANDS = 32, 8     # 8 bands of 4 rows: a pair at Jaccard 0.8 is a candidate with p ~ 0.985
_rng = np.random.default_rng(0x7E4C)
_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def _canonical(question: str) -> str:
    return _NON_WORD.sub(" ", normalise_question(question)).strip()


def _grams(text: str, n: int = 5) -> set[str]:
    return {text[i:i + n] for i in range(max(len(text) - n + 1, 1))}


def _signature(grams: set[str]) -> np.ndarray:
    x = np.fromiter((zlib.crc32(g.encode()) for g in grams), np.uint64, len(grams))
    with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the hash family
        return (x[:, None] * _A + _B).min(axis=0)


def near_duplicate_clusters(items: list[tuple[str, str, str]], threshold: float) -> dict[str, str]:
    """items: (id, image key, question). Returns id -> the smallest id of its cluster: items with
    the same image key and the same numbers whose question texts' 5-gram Jaccard >= threshold."""
    parent = {i: i for i, _, _ in items}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    text = {}
    buckets: dict[tuple, list[str]] = defaultdict(list)
    rows = NUM_PERM // BANDS
    for ident, key, question in items:
        canon = _canonical(question)
        text[ident] = canon
        group = (key, tuple(_NUMBER.findall(canon)))
        sig = _signature(_grams(canon))
        for band in range(BANDS):
            buckets[(group, band, sig[band * rows:(band + 1) * rows].tobytes())].append(ident)
    checked = set()
    for members in buckets.values():
        for k, a in enumerate(members):
            for b in members[k + 1:]:
                pair = (a, b) if a < b else (b, a)
                if pair in checked or find(a) == find(b):
                    continue
                checked.add(pair)
                ga, gb = _grams(text[a]), _grams(text[b])
                if len(ga & gb) / len(ga | gb) >= threshold:
                    ra, rb = find(a), find(b)
                    parent[max(ra, rb)] = min(ra, rb)
    return {i: find(i) for i in parent}


# ------------------------------------------------------------------ the index and assignment

def scan_index(audited_files: list[str], sample_files: list[str]) -> tuple[pl.DataFrame, dict]:
    """Passed trajectories joined with their samples' small columns (lazy scans, streaming)."""
    audited = pl.scan_parquet(audited_files)
    samples = pl.scan_parquet(sample_files)
    code_rounds = (pl.col("turns").list.eval(pl.element().struct.field("code").is_not_null())
                   .list.sum().alias("code_rounds"))
    index = (audited.filter(pl.col("passed").fill_null(False))
             .select("id", "sample_id", "task", "kind", code_rounds)
             .join(samples.select(pl.col("id").alias("sample_id"), "question", "answer",
                                  pl.col("images").list.first().struct.field("hash").alias("image_hash"),
                                  # an augmented copy is held out with its source's image
                                  pl.col("meta").str.json_path_match("$.lineage.image")
                                  .alias("lineage_image")),
                   on="sample_id", how="inner", maintain_order="left")  # reruns: same order
             .with_columns(pl.col("lineage_image").fill_null(pl.col("image_hash")))
             .collect(engine="streaming"))
    totals = {
        "pool_samples": samples.select(pl.len()).collect().item(),
        "trajectories": audited.select(pl.len()).collect().item(),
        "passed": audited.filter(pl.col("passed").fill_null(False)).select(pl.len()).collect().item(),
    }
    totals["passed_with_sample"] = index.height
    return index, totals


def _route(row: dict, cfg: SplitConfig) -> str | None:
    if row["code_rounds"] > cfg.max_code_rounds:
        return None
    if row["task"] == "computation":
        return COMPUTATION
    return SINGLE if row["code_rounds"] <= 1 else TWO_ROUND


def _apply_mix(rows: list[dict], weights: dict[str, float] | None, seed: int) -> tuple[list[dict], Counter]:
    """Downsample over-represented tasks to the target proportions (renormalised over the tasks
    present); returns the kept rows and how many of each task were dropped."""
    if not weights:
        return rows, Counter()
    by_task: dict[str, list[dict]] = defaultdict(list)
    dropped = Counter()
    for r in rows:
        if weights.get(r["task"], 0) > 0:
            by_task[r["task"]].append(r)
        else:
            dropped[r["task"]] += 1
    if not by_task:
        return [], dropped
    scale = min(len(rs) / weights[t] for t, rs in by_task.items())
    kept = []
    for task, rs in by_task.items():
        n = min(len(rs), max(1, round(scale * weights[task])))
        rs.sort(key=lambda r: unit_draw("mix", seed, r["id"]))
        kept += rs[:n]
        dropped[task] += len(rs) - n
    return kept, dropped


def assign(index: pl.DataFrame, cfg: SplitConfig) -> tuple[dict[str, tuple[str, str]], dict]:
    """Trajectory id -> (split, part), and the funnel counts of each step."""
    rows = index.to_dicts()
    funnel: dict = {"routed": Counter(), "dropped": Counter()}
    routed = []
    for r in rows:
        r["split"] = _route(r, cfg)
        if r["split"] is None:
            funnel["dropped"]["too_many_code_rounds"] += 1
            continue
        r["key"] = image_key(r["image_hash"], r["question"])
        r["holdout"] = image_key(r["lineage_image"], r["question"])
        funnel["routed"][r["split"]] += 1
        routed.append(r)

    # Near-duplicate clusters over distinct samples (exact duplicates share a sample id).
    first = {}
    for r in routed:
        first.setdefault(r["sample_id"], r)
    clusters = near_duplicate_clusters(
        [(s, r["key"], r["question"]) for s, r in first.items()], cfg.near_dup_threshold)

    # RL takes whole clusters (a deterministic share of the eligible ones), SFT the rest.
    members: dict[str, list[dict]] = defaultdict(list)
    for r in routed:
        members[clusters[r["sample_id"]]].append(r)
    rank = {s: k for k, s in enumerate(cfg.priority)}
    chosen: dict[str, list[dict]] = defaultdict(list)
    for cluster, rs in members.items():
        rs.sort(key=lambda r: (rank[r["split"]], r["sample_id"] != cluster, r["id"]))
        source = keep = rs[0]
        eligible = [r for r in rs if r["answer"] and (r["image_hash"] or not cfg.rl_require_image)]
        if eligible and unit_draw("rl", cfg.seed, cluster) < cfg.rl_share:
            source = min(eligible, key=lambda r: (r["sample_id"], r["id"]))
            keep = dict(source, split=RL)
        for r in rs:
            if r is not source:
                same = r["sample_id"] == source["sample_id"]
                funnel["dropped"]["exact_duplicate" if same else "near_duplicate"] += 1
        chosen[keep["split"]].append(keep)

    assignment: dict[str, tuple[str, str]] = {}
    counts: dict[str, dict[str, Counter]] = {s: {p: Counter() for p in PARTS} for s in SPLITS}
    for split in SPLITS:
        kept, dropped = _apply_mix(chosen.get(split, []), cfg.mix.get(split), cfg.seed)
        for task, n in dropped.items():
            funnel["dropped"][f"mix:{split}:{task}"] += n
        for r in kept:
            part = "test" if unit_draw("test", cfg.seed, r["holdout"]) < cfg.test_share else "train"
            assignment[r["id"]] = (split, part)
            counts[split][part][r["task"]] += 1
    funnel["routed"] = dict(funnel["routed"])
    funnel["dropped"] = {k: v for k, v in funnel["dropped"].items() if v}
    funnel["splits"] = {s: {p: dict(c) for p, c in parts.items()} for s, parts in counts.items()}
    return assignment, funnel


# ------------------------------------------------------------------ rendering rows

def _input(sample: Sample) -> tuple[str | None, tuple[int, int] | None]:
    if not sample.images:
        return None, None
    ref = sample.images[0]
    return dataset_path(ref.relpath), (ref.width, ref.height)


def sft_row(trajectory: Trajectory, sample: Sample, prompts: PromptSet) -> dict:
    """One SFT row: the user message and the assistant message of a trajectory, paths rewritten."""
    input_path, size = _input(sample)
    originals = [sample.meta.get("original_path")] if sample.meta.get("original_path") else []
    rewritten = rewrite_trajectory(trajectory, input_path, originals)
    produced = [dataset_path(p) for t in rewritten.code_turns if t.result is not None
                for p in t.result.images]
    return {"id": trajectory.id, "sample_id": sample.id, "task": trajectory.task,
            "kind": trajectory.kind, "has_image": input_path is not None,
            "question": prompts.render_user(sample.question, input_path, size),
            "response": rewritten.render(),
            "images": ([input_path] if input_path else []) + produced,
            "image_key": image_key(sample.images[0].hash if sample.images else None, sample.question),
            "answer": sample.answer}


def rl_row(sample: Sample, prompts: PromptSet) -> dict:
    """One RL prompt: the system prompt and the user message naming the image file."""
    input_path, size = _input(sample)
    return {"id": sample.id, "task": sample.task, "has_image": input_path is not None,
            "messages": [{"role": "system", "content": prompts.system},
                         {"role": "user", "content": prompts.render_user(sample.question, input_path, size)}],
            "images": [input_path] if input_path else [], "solution": sample.answer,
            "question": sample.question,
            "meta": json.dumps(sample.meta, ensure_ascii=False, sort_keys=True),
            "image_key": image_key(sample.images[0].hash if sample.images else None, sample.question)}


class _Writer:
    """Rows buffered and written as row groups of one parquet file."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int):
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        self.rows: list[dict] = []
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.count = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def build_splits(audited_files: list[str], sample_files: list[str], out_dir: str | os.PathLike,
                 cfg: SplitConfig | None = None) -> dict:
    """Write `out_dir/<split>/{train,test}.parquet` and `out_dir/report.json` (atomically, as a
    whole directory); returns the report."""
    cfg = cfg or SplitConfig()
    if not audited_files:
        raise FileNotFoundError("no audited trajectory shards to build splits from")
    if not sample_files:
        raise FileNotFoundError("no pool sample shards to join the trajectories with")
    index, totals = scan_index(audited_files, sample_files)
    excluded = 0
    if cfg.exclude_ids_file:
        ids = pl.read_parquet(cfg.exclude_ids_file, columns=["id"])["id"].to_list()
        excluded = index.height - (index := index.filter(~pl.col("id").is_in(ids))).height
    assignment, funnel = assign(index, cfg)
    if excluded:
        funnel["dropped"]["review_rejected"] = excluded
    prompts = load_prompt_set(cfg.prompt_set)
    with atomic_path(out_dir) as tmp:
        writers = {}
        for split in SPLITS:
            (tmp / split).mkdir(parents=True)
            for part in PARTS:
                writers[split, part] = _Writer(tmp / split / f"{part}.parquet", SCHEMAS[split], cfg.batch_rows)
        assigned = pl.DataFrame({"id": list(assignment), "split": [v[0] for v in assignment.values()],
                                 "part": [v[1] for v in assignment.values()]},
                                schema={"id": pl.String, "split": pl.String, "part": pl.String})
        samples_lf = pl.scan_parquet(sample_files)
        try:
            for file in audited_files:  # one shard's rows in memory at a time
                shard = (pl.scan_parquet(file)  # the shard's row order: a rerun writes the same file
                         .join(assigned.lazy(), on="id", how="inner", maintain_order="left").collect())
                if shard.height == 0:
                    continue
                ids = shard["sample_id"].unique().to_list()
                samples = {r["id"]: Sample.from_row(r) for r in
                           samples_lf.filter(pl.col("id").is_in(ids)).collect().to_dicts()}
                for row in shard.to_dicts():
                    sample = samples[row["sample_id"]]
                    split, part = row["split"], row["part"]
                    if split == RL:
                        writers[split, part].add(rl_row(sample, prompts))
                    else:
                        writers[split, part].add(sft_row(Trajectory.from_row(row), sample, prompts))
            for w in writers.values():
                w.close()
        finally:
            for w in writers.values():
                if w.writer.is_open:
                    w.writer.close()
        report = {**totals, **funnel, "config": _jsonable(asdict(cfg)),
                  "rows": {s: {p: writers[s, p].count for p in PARTS} for s in SPLITS}}
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


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
    """Every validation of `pipelines.datasets.validate` over the built splits.
    Returns {split: validate.Report} (split-level checks included in each split's report)."""
    from pipelines.datasets import validate as v

    vcfg = vcfg or v.ValidationConfig()
    resolve = store_resolver(store_root)
    reports, counts, keys = {}, {}, {p: {} for p in PARTS}
    for split in SPLITS:
        is_rl = split == RL
        report = v.Report(split_checks(split), keep=vcfg.max_failures_kept)
        by_task = Counter()
        for part in PARTS:
            for rows in iter_split(split_dir, split, part):
                report.add(v.validate_rl_rows(rows, resolve, vcfg) if is_rl
                           else v.validate_sft_rows(rows, resolve, vcfg))
                for r in rows:
                    by_task[r["task"]] += 1
                    keys[part][f"{split}/{r['id']}"] = r["image_key"]
        counts[split] = dict(by_task)
        reports[split] = report
    targets = mix if mix is not None else SplitConfig().mix
    for split in SPLITS:
        reports[split].add(v.check_split_sizes_and_mix({split: counts[split]}, targets, vcfg))
    for f in v.check_no_train_test_overlap(keys["train"], keys["test"]):
        reports[f.row_id.split("/", 1)[0]].add([f])
    return reports
