"""Decontamination (issue 14): pool samples that match an evaluation benchmark item never reach a
training split. V* images are a known source of crop data; a model that saw them, or their
questions, in training cannot be scored on them.

    find_contaminated(pool, store_root, DecontaminationConfig(benchmarks=(...))) -> (matches, report)

A sample matches a benchmark item when
- an input image is the same file (SHA-256 of the bytes: the store keeps JPEG/PNG/WebP as they
  came), or the same picture re-encoded, resized or recoloured (`perceptual_hash` within
  `phash_distance` bits of 64), or
- its question is a near duplicate of the item's, with or without the item's options listed
  (character 5-gram Jaccard >= `question_threshold`, same numbers: the splits' MinHash,
  `pipelines.datasets.dedup.near_duplicates_of`, each pair confirmed directly). Questions shorter than
  `min_question_chars` match by text only when that is allowed (`short_questions`): "What is the
  color of the bag?" is asked of thousands of unrelated pictures.

At pool scale (4M rows, the same question asked of thousands of pictures) the work is linear
in the pool: images are matched once per distinct image and questions once per distinct text,
against the benchmark's (never pool question against pool question), as polars joins over the
pool index; only the matched samples become Python objects (benchmarks/decontamination_bench.py).

Benchmarks are read by `pipelines.core.benchmarks` (VLMEvalKit TSV, JSONL), the reader the
evaluation's items are built on, so the questions, options and images checked here are the ones
it scores (a multi-image row, which the evaluation refuses, is checked here all the same). A
question is matched bare and as the model reads it (hint, question, options). A broken row stops
the run naming file and row, unless `on_error="skip"` (the skipped rows are counted). Perceptual
hashes of the store's images are cached in `cache_dir` (store images never change).
The report counts, per benchmark: items, distinct images, matched samples by image (exact,
perceptual) and by question, and keeps the first matches as examples (sample origin and item).
A pool image that cannot be hashed (missing, corrupt) cannot be shown clean: its samples are
kept out too (`by: unreadable_image`), counted and named with their origin.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import write_parquet
from pipelines.core.benchmarks import BenchmarkError, read_benchmark
from pipelines.core.images import ImageRejected, perceptual_hash, store_path
from pipelines.datasets.dedup import canonical_question, near_duplicates_of

PHASH_CACHE = "phash.parquet"


@dataclass(frozen=True)
class DecontaminationConfig:
    benchmarks: tuple[str, ...]          # benchmark files (.tsv VLMEvalKit, .jsonl)
    phash_distance: int = 6              # bits of 64: the same picture re-encoded or resized is
                                         # <= 6 apart, different photos ~32 (tests/test_perceptual_hash.py)
    question_threshold: float = 0.8      # 5-gram Jaccard at which a question is the benchmark's
    min_question_chars: int = 40         # shorter (canonical) questions are too generic to match alone
    short_questions: bool = False        # match short questions by text too
    match_images: bool = True
    match_questions: bool = True
    on_error: str = "raise"              # raise | skip: a broken benchmark row
    cache_dir: str | None = None         # where the store's perceptual hashes are kept
    workers: int | None = None           # threads hashing images (None: one per core)

    def __post_init__(self):
        if not self.benchmarks:
            raise ValueError("decontamination needs at least one benchmark file")
        if not 0 <= self.phash_distance <= 64:
            raise ValueError(f"phash_distance must be in [0, 64] (got {self.phash_distance})")
        if not 0.0 < self.question_threshold <= 1.0:
            raise ValueError(f"question_threshold must be in (0, 1] (got {self.question_threshold})")


@dataclass
class _Bench:
    name: str
    sha: dict[str, str]                  # sha256 -> item id
    phash: list[tuple[int, str]]         # (hash as int, item id)
    questions: list[tuple[str, str]]     # (text, item id)
    items: int = 0
    short: int = 0
    errors: int = 0


def _load(path: str, cfg: DecontaminationConfig) -> _Bench:
    errors: list[BenchmarkError] = []
    bench = _Bench(Path(path).stem, {}, [], [])
    for item in read_benchmark(path, cfg.on_error, errors):
        bench.items += 1
        for data in item.images:
            sha = hashlib.sha256(data).hexdigest()
            if sha in bench.sha:
                continue
            bench.sha[sha] = item.id
            try:
                bench.phash.append((int(perceptual_hash(io.BytesIO(data)), 16), item.id))
            except ImageRejected as exc:
                error = BenchmarkError(path, item.where, f"image: {exc.detail}")
                if cfg.on_error == "raise":
                    raise error from None
                errors.append(error)
        texts = {item.question, item.text()}
        if all(len(canonical_question(t)) < cfg.min_question_chars for t in texts) and not cfg.short_questions:
            bench.short += 1
        else:
            bench.questions += [(t, item.id) for t in texts]
    bench.errors = len(errors)
    return bench


def find_contaminated(pool: pl.DataFrame, store_root: str | os.PathLike,
                      cfg: DecontaminationConfig) -> tuple[dict[str, list[dict]], dict]:
    """Pool samples (`rl_prompts.pool_index` rows) that match a benchmark item: {sample_id:
    [{benchmark, item, by}]}, and the report. Columnar over the pool (a 4M-row pool never
    becomes Python rows): images are matched per distinct image, questions per distinct text,
    and only the matched samples come back as Python objects."""
    benches = [_load(p, cfg) for p in cfg.benchmarks]
    index = pool.select("sample_id", "question", "image_hashes", "image_paths", "origin_file",
                        "origin_row").with_row_index("_order")
    images = (index.select("_order", "sample_id", "image_hashes", "image_paths")
              .explode("image_hashes", "image_paths").drop_nulls("image_hashes")
              .rename({"image_hashes": "sha", "image_paths": "path"}))
    found: list[pl.DataFrame] = []             # _order, sample_id, benchmark, item, by
    failed: dict[str, str] = {}
    if cfg.match_images:
        failed = _match_images(images, benches, Path(store_root), cfg, found)
    if cfg.match_questions:
        _match_questions(index, benches, cfg, found)
    matches: dict[str, list[dict]] = defaultdict(list)
    if found:
        for sid, benchmark, item, by in (pl.concat(found).sort("_order", maintain_order=True)
                                         .select("sample_id", "benchmark", "item", "by").iter_rows()):
            matches[sid].append({"benchmark": benchmark, "item": item, "by": by})
    report = {}
    for b in benches:
        by: dict[str, set] = defaultdict(set)      # how each sample matched this benchmark
        for sid, ms in matches.items():
            for m in ms:
                if m["benchmark"] == b.name:
                    by[m["by"]].add(sid)
                    by["any"].add(sid)
        report[b.name] = {"items": b.items, "images": len(b.sha), "matched_samples": len(by["any"]),
                          "by_image_exact": len(by["image_exact"]),
                          "by_image_perceptual": len(by["image_perceptual"]),
                          "by_question": len(by["question"]), "questions_too_short": b.short,
                          "errors": b.errors}
    unreadable: dict[str, str] = {}
    if failed:
        bad = (images.filter(pl.col("sha").is_in(list(failed))).sort("_order")
               .unique("sample_id", keep="first", maintain_order=True))
        unreadable = {sid: failed[sha] for sid, sha in bad.select("sample_id", "sha").iter_rows()}
    origin = {sid: f"{f} row {r}" for sid, f, r in
              index.filter(pl.col("sample_id").is_in(list(matches) + list(unreadable)))
              .select("sample_id", "origin_file", "origin_row").iter_rows()}
    examples = [{"sample": sid, "origin": origin[sid], **m} for sid, ms in list(matches.items())[:50]
                for m in ms[:1]]
    for sid in unreadable:     # not shown clean: kept out too, and said so
        matches.setdefault(sid, []).append({"benchmark": None, "item": None, "by": "unreadable_image"})
    return dict(matches), {"benchmarks": report, "matched_samples": len(matches) - len(unreadable),
                           "unreadable_images": {"samples": len(unreadable),
                                                 "examples": [{"sample": sid, "origin": origin[sid], "reason": why[:300]}
                                                              for sid, why in list(unreadable.items())[:20]]},
                           "settings": {"phash_distance": cfg.phash_distance,
                                        "question_threshold": cfg.question_threshold,
                                        "min_question_chars": cfg.min_question_chars},
                           "examples": examples}


def _matched(rows: pl.DataFrame, on: str, pairs: pl.DataFrame, benchmark: str, by: str) -> pl.DataFrame:
    """`rows` (_order, sample_id, `on`) joined to `pairs` (`on`, item): one match each."""
    return (rows.join(pairs, on=on).select("_order", "sample_id", "item")
            .with_columns(benchmark=pl.lit(benchmark), by=pl.lit(by)))


def _match_images(images: pl.DataFrame, benches, root: Path, cfg, found: list) -> dict[str, str]:
    """Matches by image into `found`; returns the pool images that could not be hashed (sha:
    why): their samples cannot be shown clean."""
    distinct = images.unique("sha", keep="first", maintain_order=True)
    hashes, failed = _store_phashes(dict(distinct.select("sha", "path").iter_rows()), root, cfg)
    keys = list(hashes)
    values = np.array([hashes[k] for k in keys], dtype=np.uint64)
    for b in benches:
        exact = _matched(images, "sha", pl.DataFrame({"sha": list(b.sha), "item": list(b.sha.values())},
                                                     schema={"sha": pl.String, "item": pl.String}),
                         b.name, "image_exact")
        found.append(exact)
        if not b.phash or not len(values):
            continue
        bench = np.array([h for h, _ in b.phash], dtype=np.uint64)
        near_sha, near_item = [], []
        for start in range(0, len(values), 4096):  # bounded memory: 4096 x benchmark images
            block = values[start:start + 4096]
            distance = np.bitwise_count(block[:, None] ^ bench[None, :])
            for i, j in zip(*np.nonzero(distance <= cfg.phash_distance), strict=True):
                near_sha.append(keys[start + i])
                near_item.append(b.phash[j][1])
        near = _matched(images, "sha", pl.DataFrame({"sha": near_sha, "item": near_item},
                                                    schema={"sha": pl.String, "item": pl.String}),
                        b.name, "image_perceptual")
        found.append(near.join(exact.select("sample_id"), on="sample_id", how="anti"))  # exact wins
    return failed


def _store_phashes(paths: dict[str, str], root: Path, cfg) -> dict[str, int]:
    """Perceptual hash of each store image (sha -> int), from the cache where known."""
    cache_file = Path(cfg.cache_dir) / PHASH_CACHE if cfg.cache_dir else None
    known: dict[str, int] = {}
    if cache_file is not None and cache_file.is_file():
        table = pq.read_table(cache_file).to_pydict()
        known = {h: int(p, 16) for h, p in zip(table["sha256"], table["phash"], strict=True)}
    todo = [h for h in paths if h not in known]

    def one(h: str) -> tuple[str, int | str]:
        try:
            return h, int(perceptual_hash(store_path(root, paths[h])), 16)
        except (OSError, ValueError) as exc:   # ImageRejected is a ValueError
            return h, f"{paths[h]}: {exc}"

    failed: dict[str, str] = {}
    with ThreadPoolExecutor(cfg.workers or os.cpu_count() or 1) as pool:
        for h, value in pool.map(one, todo):
            if isinstance(value, str):
                failed[h] = value
            else:
                known[h] = value
    if cache_file is not None and len(todo) > len(failed):
        write_parquet(pa.table({"sha256": list(known), "phash": [f"{v:016x}" for v in known.values()]}),
                      cache_file)
    return {h: known[h] for h in paths if h in known}, failed


def _match_questions(index: pl.DataFrame, benches, cfg, found: list) -> None:
    """Matches by question into `found`: each distinct pool question against every benchmark's
    questions (`near_duplicates_of`), at most one item per benchmark and sample, none for a
    sample this benchmark's images already matched."""
    texts = index.select("question").drop_nulls().filter(pl.col("question") != "").unique(maintain_order=True)
    queries = texts["question"].to_list()
    for b in benches:
        hits = near_duplicates_of(queries, [q for q, _ in b.questions], cfg.question_threshold)
        pairs = pl.DataFrame({"question": [queries[i] for i in hits],
                              "item": [b.questions[js[0]][1] for js in hits.values()]},
                             schema={"question": pl.String, "item": pl.String})
        by_question = _matched(index.select("_order", "sample_id", "question"), "question", pairs,
                               b.name, "question")
        by_image = [f.select("sample_id") for f in found if f["benchmark"].eq(b.name).any()]
        if by_image:      # a sample already out by this benchmark's image is counted there
            by_question = by_question.join(pl.concat(by_image), on="sample_id", how="anti")
        found.append(by_question)
