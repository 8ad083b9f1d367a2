"""Benchmarks by kind: which one a file is, how its answers are scored when the benchmark has a
rule of its own, and its official metrics (docs/evaluation.md names the source of each).

    bench = parse_spec("hrbench4k=data/hr_bench_4k.tsv")       # Benchmark(name, path, kind)
    table = metrics(bench.kind, records)                       # {"overall": .., "single": .., ...}

Kinds and their headline metric (the first key of `metrics`):
- `vstar`     V* Bench: accuracy over all items, and per category (direct_attributes,
              relative_position), as VLMEvalKit's VStarBench reports it;
- `hrbench`   HR-Bench 4K/8K: accuracy per `cycle_category` (each question is asked with its
              options in several rotations), then the mean over cycles, for all, `single` (FSP)
              and `cross` (FCP) (VLMEvalKit's report_acc_hrbench);
- `mme_realworld`  MME-RealWorld and -Lite: accuracy over all items, per task (Perception,
              Reasoning: the part of `category` before "/") and per task/subtask
              (get_dimension_rating);
- `hallusionbench` aAcc (per question), fAcc (all questions of a figure right), qAcc (a question
              right for every figure of its set), and their mean as the headline (Hallusion_rating;
              the set, figure and question ids are the 4th-6th `_` fields of the index);
- `ocrbench`  an answer counts when one of the truths (a list in `answer`) occurs in the
              extracted answer, lower-cased (spaces removed for handwritten formulas); the
              headline is the final score / 1000 as a share, with VLMEvalKit's five groups;
- `generic`   accuracy over all items and per `category`.

Metrics are ratios of sums over clusters of items (`cluster_key`: the items that must stay
together when resampling, e.g. one HallusionBench set, or one HR-Bench question's cycles), so the
report can bootstrap them (thyme_train.eval_report).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

KINDS = ("vstar", "hrbench", "mme_realworld", "hallusionbench", "ocrbench", "generic")
_ALIASES = (("vstar", "vstar"), ("v_star", "vstar"), ("hrbench", "hrbench"),
            ("hr_bench", "hrbench"), ("mme_realworld", "mme_realworld"),
            ("mme-realworld", "mme_realworld"), ("hallusion", "hallusionbench"),
            ("ocrbench", "ocrbench"))
OCR_GROUPS = {
    "Regular Text Recognition": "Text Recognition", "Irregular Text Recognition": "Text Recognition",
    "Artistic Text Recognition": "Text Recognition", "Handwriting Recognition": "Text Recognition",
    "Digit String Recognition": "Text Recognition",
    "Non-Semantic Text Recognition": "Text Recognition",
    "Scene Text-centric VQA": "Scene Text-centric VQA", "Doc-oriented VQA": "Doc-oriented VQA",
    "Key Information Extraction": "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition": "Handwritten Math Expression",
}
HME = "Handwritten Mathematical Expression Recognition"


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path
    kind: str = "generic"
    split: str = "test"


def parse_spec(spec: str, split: str = "test") -> Benchmark:
    """`PATH` or `NAME=PATH` (NAME names the results folder); `NAME:KIND=PATH` forces the kind,
    else it is read from the name or the file name (see KINDS)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    name, _, kind = name.partition(":")
    path = Path(path)
    name = name or (path.stem if path.suffix else path.name) or "benchmark"
    if not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", name):
        raise ValueError(f"benchmark name {name!r}: letters, digits, '.', '_', '+', '-' only "
                         "(it names a folder)")
    kind = kind or detect_kind(name, path)
    if kind not in KINDS:
        raise ValueError(f"benchmark kind {kind!r}: one of {KINDS}")
    return Benchmark(name, path, kind, split)


def detect_kind(name: str, path: Path) -> str:
    for text in (name.lower(), path.name.lower(), path.stem.lower()):
        for alias, kind in _ALIASES:
            if alias in text:
                return kind
    if path.is_dir() and any((path / c).is_dir() for c in ("direct_attributes", "relative_position")):
        return "vstar"
    return "generic"


# ---------------------------------------------------------------------------------------------
# A benchmark's own answer rule
# ---------------------------------------------------------------------------------------------

def own_rule(kind: str, answer: str, truth_field: str, category: str) -> tuple[bool, str] | None:
    """(correct, how) where the benchmark defines the matching itself (OCRBench), else None (the
    shared cascade decides)."""
    if kind != "ocrbench":
        return None
    truths = ocr_truths(truth_field)
    if category == HME:
        pred = answer.strip().replace("\n", " ").replace(" ", "")
        hit = any(t.strip().replace("\n", " ").replace(" ", "") in pred for t in truths)
    else:
        pred = answer.lower().strip().replace("\n", " ")
        hit = any(t.lower().strip().replace("\n", " ") in pred for t in truths)
    return hit, "ocrbench: a truth occurs in the answer" if hit else "ocrbench: no truth occurs"


def ocr_truths(field: str) -> list[str]:
    """OCRBench's `answer`: a Python list literal of accepted answers (or one answer)."""
    import ast

    text = field.strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
            if isinstance(value, list):
                return [str(v) for v in value if str(v)]
        except (ValueError, SyntaxError):
            pass
    return [text]


# ---------------------------------------------------------------------------------------------
# Metrics as sums over clusters
# ---------------------------------------------------------------------------------------------

def cluster_key(kind: str, record: Mapping) -> str:
    """Records that share a key are resampled together (one bootstrap unit)."""
    meta = record.get("meta") or {}
    if kind == "hallusionbench":
        l2, set_id, _, _ = _hallusion_ids(record)
        return f"{l2}/{set_id}"
    if kind == "hrbench":
        return f"{record.get('image')}|{record.get('question')}"
    return str(meta.get("cluster") or record["id"])


def stats(kind: str, records: Iterable[Mapping]) -> dict[str, tuple[float, float]]:
    """(numerator, denominator) sums of one run's records (each with `correct`, `category`,
    `meta`) from which `combine` makes the metrics; additive over disjoint clusters."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(key: str, hit: float, n: float = 1.0) -> None:
        out[key][0] += hit
        out[key][1] += n

    records = list(records)
    if kind == "hallusionbench":
        figures, questions = defaultdict(list), defaultdict(list)
        for r in records:
            l2, set_id, figure, question = _hallusion_ids(r)
            add("aAcc", r["correct"])
            add(f"aAcc:{r['category']}", r["correct"])
            figures[(l2, set_id, figure)].append(r["correct"])
            questions[(l2, set_id, question)].append(r["correct"])
        for key, values in (("fAcc", figures), ("qAcc", questions)):
            for hits in values.values():
                add(key, float(all(hits)))
        return {k: tuple(v) for k, v in out.items()}
    for r in records:
        hit, meta = float(r["correct"]), r.get("meta") or {}
        if kind == "hrbench":
            cycle = meta.get("cycle_category", "0")
            add(f"{cycle}|all", hit)
            add(f"{cycle}|{r['category']}", hit)
        elif kind == "mme_realworld":
            add("overall", hit)
            task, _, subtask = str(r["category"]).partition("/")
            add(f"task:{task}", hit)
            if subtask:
                add(f"sub:{task}/{subtask}", hit)
        elif kind == "ocrbench":
            add("overall", hit)
            add(f"group:{OCR_GROUPS.get(r['category'], r['category'])}", hit)
        else:
            add("overall", hit)
            add(f"cat:{r['category']}", hit)
    return {k: tuple(v) for k, v in out.items()}


def combine(kind: str, sums: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """The benchmark's metrics from summed `stats`: {"overall": headline, name: value, ...}."""
    def ratio(key: str) -> float:
        num, den = sums.get(key, (0.0, 0.0))
        return num / den if den else float("nan")

    if kind == "hallusionbench":
        parts = {k: ratio(k) for k in ("aAcc", "fAcc", "qAcc")}
        out = {"overall": sum(parts.values()) / 3, **parts}
        out.update({f"aAcc {k[5:]}": ratio(k) for k in sorted(sums) if k.startswith("aAcc:")})
        return out
    if kind == "hrbench":
        cycles = sorted({k.split("|", 1)[0] for k in sums})
        groups = sorted({k.split("|", 1)[1] for k in sums} - {"all"})

        def over_cycles(group: str) -> float:        # the mean of the cycles that hold the group
            values = [ratio(f"{c}|{group}") for c in cycles if sums.get(f"{c}|{group}", (0, 0))[1]]
            return sum(values) / len(values) if values else float("nan")
        return {"overall": over_cycles("all"), **{g: over_cycles(g) for g in groups}}
    out = {"overall": ratio("overall")}
    for prefix in ("cat", "task", "sub", "group"):           # tasks before their subtasks
        for key in sorted(k for k in sums if k.startswith(prefix + ":")):
            out[key.partition(":")[2]] = ratio(key)
    return out


def _hallusion_ids(record: Mapping) -> tuple[str, str, str, str]:
    """HallusionBench's (l2-category, set, figure, question) ids: VLMEvalKit reads the set,
    figure and question from the 4th, 5th and 6th `_` fields of the index."""
    parts = str(record["id"]).split("_")
    if len(parts) < 6:
        raise ValueError(f"HallusionBench index {record['id']!r}: expected at least six "
                         "'_'-separated fields (set, figure and question ids are the 4th-6th)")
    l2 = (record.get("meta") or {}).get("l2-category", "")
    return l2, parts[3], parts[4], parts[5]
