"""Decontamination (issue 14): pool samples that match an evaluation benchmark item never reach a
training split. V* images are a known source of crop data; a model that saw them, or their
questions, in training cannot be scored on them.

    find_contaminated(pool, store_root, DecontaminationConfig(benchmarks=(...))) -> (matches, report)

A sample matches a benchmark item when
- an input image is the same file (SHA-256 of the bytes: the store keeps JPEG/PNG/WebP as they
  came), or the same picture re-encoded, resized or recoloured (`perceptual_hash` within
  `phash_distance` bits of 64), or
- its question is a near duplicate of the item's, with or without the item's options listed
  (character 5-gram Jaccard >= `question_threshold`, same numbers: the splits' MinHash LSH,
  `pipelines.datasets.dedup`, each pair confirmed directly). Questions shorter than
  `min_question_chars` match by text only when that is allowed (`short_questions`): "What is the
  color of the bag?" is asked of thousands of unrelated pictures.

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
from pipelines.datasets.dedup import (
    canonical_question,
    near_duplicate_clusters,
    question_similarity,
)

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
    [{benchmark, item, by}]}, and the report."""
    benches = [_load(p, cfg) for p in cfg.benchmarks]
    rows = pool.select("sample_id", "question", "image_hashes", "image_paths", "origin_file",
                       "origin_row").to_dicts()
    matches: dict[str, list[dict]] = defaultdict(list)
    failed: dict[str, str] = {}
    if cfg.match_images:
        failed = _match_images(rows, benches, Path(store_root), cfg, matches)
    if cfg.match_questions:
        _match_questions(rows, benches, cfg, matches)
    matches = {sid: ms for sid, ms in matches.items() if ms}
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
    unreadable = {r["sample_id"]: next(failed[h] for h in r["image_hashes"] if h in failed)
                  for r in rows if any(h in failed for h in r["image_hashes"])}
    origin = {r["sample_id"]: f"{r['origin_file']} row {r['origin_row']}" for r in rows
              if r["sample_id"] in matches or r["sample_id"] in unreadable}
    examples = [{"sample": sid, "origin": origin[sid], **m} for sid, ms in list(matches.items())[:50]
                for m in ms[:1]]
    for sid in unreadable:     # not shown clean: kept out too, and said so
        matches.setdefault(sid, []).append({"benchmark": None, "item": None, "by": "unreadable_image"})
    return matches, {"benchmarks": report, "matched_samples": len(matches) - len(unreadable),
                     "unreadable_images": {"samples": len(unreadable),
                                           "examples": [{"sample": sid, "origin": origin[sid], "reason": why[:300]}
                                                        for sid, why in list(unreadable.items())[:20]]},
                           "settings": {"phash_distance": cfg.phash_distance,
                                        "question_threshold": cfg.question_threshold,
                                        "min_question_chars": cfg.min_question_chars},
                           "examples": examples}


def _match_images(rows, benches, root: Path, cfg, matches) -> dict[str, str]:
    """Matches by image into `matches`; returns the pool images that could not be hashed (path:
    why): their samples cannot be shown clean."""
    paths = {h: p for r in rows for h, p in zip(r["image_hashes"], r["image_paths"], strict=True)}
    hashes, failed = _store_phashes(paths, root, cfg)
    owners: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        for h in r["image_hashes"]:
            owners[h].append(r["sample_id"])
    keys = list(hashes)
    values = np.array([hashes[k] for k in keys], dtype=np.uint64)
    for b in benches:
        for sha, item in b.sha.items():
            for sid in owners.get(sha, []):
                matches[sid].append({"benchmark": b.name, "item": item, "by": "image_exact"})
        if not b.phash or not len(values):
            continue
        bench = np.array([h for h, _ in b.phash], dtype=np.uint64)
        for start in range(0, len(values), 4096):  # bounded memory: 4096 x benchmark images
            block = values[start:start + 4096]
            distance = np.bitwise_count(block[:, None] ^ bench[None, :])
            for i, j in zip(*np.nonzero(distance <= cfg.phash_distance), strict=True):
                sha = keys[start + i]
                for sid in owners[sha]:
                    if not any(m["benchmark"] == b.name and m["by"] == "image_exact"
                               for m in matches.get(sid, [])):
                        matches[sid].append({"benchmark": b.name, "item": b.phash[j][1],
                                             "by": "image_perceptual"})
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


def _match_questions(rows, benches, cfg, matches) -> None:
    items = [(f"s:{r['sample_id']}", "", r["question"]) for r in rows if r["question"]]
    text = {ident: q for ident, _, q in items}
    for b in benches:
        for k, (question, _item) in enumerate(b.questions):
            ident = f"b:{b.name}:{k}"
            items.append((ident, "", question))
            text[ident] = question
    clusters = near_duplicate_clusters(items, cfg.question_threshold)
    members: dict[str, list[str]] = defaultdict(list)
    for ident, root in clusters.items():
        members[root].append(ident)
    lookup = {f"b:{b.name}:{k}": (b.name, item) for b in benches for k, (_, item) in enumerate(b.questions)}
    for group in members.values():
        samples = [i for i in group if i.startswith("s:")]
        found = [i for i in group if i.startswith("b:")]
        if not samples or not found:
            continue
        for s in samples:      # a cluster chains pairs: confirm each sample against an item itself
            sid = s[2:]
            for f in found:
                name, item = lookup[f]
                if any(m["benchmark"] == name for m in matches.get(sid, [])):
                    continue
                if question_similarity(text[s], text[f]) >= cfg.question_threshold:
                    matches[sid].append({"benchmark": name, "item": item, "by": "question"})
