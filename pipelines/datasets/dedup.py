"""Near duplicates among questions (one implementation, used by the splits' dedup and by
decontamination): MinHash LSH over character 5-grams of the canonical question (NFKC, case-folded,
punctuation as spaces), confirmed by the exact Jaccard of the 5-gram sets.

    near_duplicate_clusters(items, threshold) -> {id: smallest id of its cluster}
    near_duplicates_of(queries, references, threshold) -> {query index: [reference indices]}
    question_similarity(a, b) -> Jaccard of the two questions' 5-grams
"""

from __future__ import annotations

import re
import zlib
from collections import Counter, defaultdict

import numpy as np

from pipelines.core.schema import normalise_question

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NON_WORD = re.compile(r"[\W_]+")
NUM_PERM, BANDS = 32, 8     # 8 bands of 4 rows: a pair at Jaccard 0.8 is a candidate with p ~ 0.985
_rng = np.random.default_rng(0x7E4C)
_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def canonical_question(question: str) -> str:
    """The text near-duplicate detection compares: NFKC, case-folded, punctuation as spaces."""
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

    text, group_of, first_of = {}, {}, {}
    for ident, key, question in items:
        canon = canonical_question(question)
        group = (key, tuple(_NUMBER.findall(canon)))
        same = first_of.setdefault((group, canon), ident)
        if same != ident:     # the same text in the same group: one cluster, no pair to compare
            ra, rb = find(same), find(ident)
            parent[max(ra, rb)] = min(ra, rb)
            continue
        text[ident] = canon
        group_of[ident] = group
    sizes = Counter(group_of.values())
    buckets: dict[tuple, list[str]] = defaultdict(list)
    rows = NUM_PERM // BANDS
    for ident, group in group_of.items():
        if sizes[group] < 2:       # alone with its image and numbers: nothing to compare with
            continue
        sig = _signature(_grams(text[ident]))
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


def near_duplicates_of(queries: list[str], references: list[str], threshold: float) -> dict[int, list[int]]:
    """For each query question, the reference questions it nearly duplicates (same numbers,
    5-gram Jaccard >= threshold): {query index: [reference indices]}, only queries with some.

    Decontamination's shape: millions of pool questions against a few thousand benchmark ones.
    Only references are bucketed, so the work is linear in the queries (clustering them all,
    `near_duplicate_clusters`, compares every pair of alike pool questions: quadratic when a pool
    asks the same question of many pictures); a query whose numbers no reference has needs no
    signature; each distinct query text is worked out once."""
    rows = NUM_PERM // BANDS
    buckets: dict[tuple, list[int]] = defaultdict(list)
    ref_grams, ref_numbers = [], set()
    for j, question in enumerate(references):
        canon = canonical_question(question)
        numbers = tuple(_NUMBER.findall(canon))
        grams = _grams(canon)
        ref_grams.append(grams)
        ref_numbers.add(numbers)
        sig = _signature(grams)
        for band in range(BANDS):
            buckets[(numbers, band, sig[band * rows:(band + 1) * rows].tobytes())].append(j)
    found_by_text: dict[str, list[int]] = {}
    out: dict[int, list[int]] = {}
    for i, question in enumerate(queries):
        canon = canonical_question(question)
        if canon not in found_by_text:
            numbers = tuple(_NUMBER.findall(canon))
            found: list[int] = []
            if numbers in ref_numbers:
                grams = _grams(canon)
                sig = _signature(grams)
                candidates = {j for band in range(BANDS)
                              for j in buckets.get((numbers, band, sig[band * rows:(band + 1) * rows].tobytes()), ())}
                found = sorted(j for j in candidates
                               if len(grams & ref_grams[j]) / len(grams | ref_grams[j]) >= threshold)
            found_by_text[canon] = found
        if found_by_text[canon]:
            out[i] = found_by_text[canon]
    return out


def question_similarity(a: str, b: str) -> float:
    """The Jaccard similarity of two questions' character 5-grams (canonical text), the measure
    `near_duplicate_clusters` thresholds."""
    ga, gb = _grams(canonical_question(a)), _grams(canonical_question(b))
    return len(ga & gb) / len(ga | gb)
