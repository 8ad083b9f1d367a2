"""The funnel of a data root, stage by stage: what each stage kept and dropped, and why — the
report a team rebuilding the paper's SFT set from a real pool reads first.

    funnel_report(data_root) -> dict          python -m pipelines funnel --data DIR [--markdown]

The data root is the Dagster storage layout (`pool/`, `augmented/`, `code_samples/`, `audited/`,
`review/`, `splits/`); stages not run yet are absent from the report. Per stage:
- pool: rows read, kept, deduplicated, quarantined by reason, and the ground truth the kept
  samples carry (box, angle, category, difficulty; per source);
- augmented: per transform, samples given a copy and the others by reason;
- code_samples: trajectories by task and kind, the teacher's quarantine by reason;
- audited: per task, trajectories and how many passed, and each check's pass / fail / skip;
- review: items reviewed, verdicts, the combined verdict's agreement with the audit;
- splits: rows per split, and what was dropped on the way (duplicates, mix, review rejections).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

TRUTH_KEYS = ("box", "angle", "category", "difficulty")


def _shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("shard-*.parquet"))


def _reports(files: list[str]) -> list[dict]:
    """The per-shard reports stored in the files' parquet metadata (ingest, augment)."""
    out = []
    for f in files:
        meta = pq.read_schema(f).metadata or {}
        if b"thyme.report" in meta:
            out.append(json.loads(meta[b"thyme.report"]))
    return out


def _pool(root: Path) -> dict | None:
    files = _shards(root / "pool" / "samples")
    if not files:
        return None
    reports = _reports(files)
    reasons = Counter()
    for r in reports:
        reasons.update(r.get("quarantined_by_reason", {}))
    samples = pl.scan_parquet(files).select("source", "meta").collect()
    truth = {key: samples.filter(pl.col("meta").str.json_path_match(f"$.{key}").is_not_null()).height
             for key in TRUTH_KEYS}
    by_source = {}
    for source, group in samples.group_by("source", maintain_order=True):
        by_source[source[0]] = {"samples": group.height, **{
            key: group.filter(pl.col("meta").str.json_path_match(f"$.{key}").is_not_null()).height
            for key in ("box", "angle")}}
    return {"rows_read": sum(r["rows_read"] for r in reports), "kept": samples.height,
            "deduplicated": sum(r["deduplicated"] for r in reports),
            "quarantined": sum(r["quarantined"] for r in reports),
            "quarantined_by_reason": dict(reasons), "with_ground_truth": truth,
            "by_source": by_source}


def _augmented(root: Path) -> dict | None:
    reports = _reports(_shards(root / "augmented" / "samples"))
    if not reports:
        return None
    by: dict[str, Counter] = defaultdict(Counter)
    for r in reports:
        for kind, counts in r["by_transform"].items():
            by[kind].update(counts)
    return {"copies": sum(r["copies"] for r in reports),
            "quarantined": sum(r["quarantined"] for r in reports),
            "by_transform": {k: dict(sorted(c.items())) for k, c in by.items()}}


def _code_samples(root: Path) -> dict | None:
    files = _shards(root / "code_samples")
    if not files:
        return None
    t = pl.scan_parquet(files).select("task", "kind").collect()
    quarantine = _shards(root / "code_samples" / "quarantine")
    reasons = (dict(Counter(pl.scan_parquet(quarantine).select("reason").collect()["reason"]))
               if quarantine else {})
    return {"trajectories": t.height,
            "by_task_kind": {f"{task}/{kind}": n for (task, kind), n in
                             sorted(Counter(zip(t["task"], t["kind"], strict=True)).items())},
            "quarantined_by_reason": reasons}


def _audited(root: Path) -> dict | None:
    files = _shards(root / "audited")
    if not files:
        return None
    rows = pl.scan_parquet(files).select("task", "passed", "audit").collect().to_dicts()
    tasks: dict[str, dict] = {}
    for r in rows:
        entry = tasks.setdefault(r["task"], {"trajectories": 0, "passed": 0, "checks": {}})
        entry["trajectories"] += 1
        entry["passed"] += bool(r["passed"])
        for check in r["audit"] or []:
            verdicts = entry["checks"].setdefault(check["name"], Counter())
            verdicts[check["verdict"]] += 1
    for entry in tasks.values():
        entry["checks"] = {name: dict(c) for name, c in entry["checks"].items()}
    return {"trajectories": len(rows), "passed": sum(bool(r["passed"]) for r in rows),
            "by_task": dict(sorted(tasks.items()))}


def _review(root: Path) -> dict | None:
    path = root / "review" / "report.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    combined = r["audit_vs_combined"]
    return {"items_reviewed": r["items_reviewed"], "verdicts": r["verdicts"],
            "combined": r["combined"], "rejected_trajectories": r["rejected_trajectories"],
            "agreement_with_audit": combined["agreement"], "kappa_with_audit": combined["kappa"],
            "problems": len(r["problems"])}


def _splits(root: Path) -> dict | None:
    path = root / "splits" / "report.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    return {"passed_with_sample": r.get("passed_with_sample"), "dropped": r.get("dropped", {}),
            "rows": r.get("rows", {})}


def funnel_report(data_root: str | Path) -> dict:
    root = Path(data_root)
    stages = {"pool": _pool, "augmented": _augmented, "code_samples": _code_samples,
              "audited": _audited, "review": _review, "splits": _splits}
    return {name: found for name, stage in stages.items() if (found := stage(root)) is not None}


def markdown(report: dict) -> str:
    """The report's main numbers as a markdown table per stage."""
    lines = []
    if "pool" in report:
        p = report["pool"]
        lines += ["| pool | |", "|---|---|", f"| rows read | {p['rows_read']} |", f"| kept | {p['kept']} |",
                  f"| quarantined | {p['quarantined']} {p['quarantined_by_reason']} |",
                  f"| with ground truth | {p['with_ground_truth']} |", ""]
    if "augmented" in report:
        lines += ["| augmented | kept (copies) | dropped, by reason |", "|---|---|---|"]
        for kind, c in report["augmented"]["by_transform"].items():
            lines.append(f"| {kind} | {c.get('kept', 0)} | "
                         f"{ {k: v for k, v in c.items() if k != 'kept'} } |")
        lines.append("")
    if "audited" in report:
        lines += ["| task | trajectories | passed | failed checks |", "|---|---|---|---|"]
        for task, e in report["audited"]["by_task"].items():
            failed = {n: c["fail"] for n, c in e["checks"].items() if c.get("fail")}
            lines.append(f"| {task} | {e['trajectories']} | {e['passed']} | {failed} |")
        lines.append("")
    if "review" in report:
        r = report["review"]
        lines += [f"review: {r['items_reviewed']} items, {r['verdicts']}, rejected "
                  f"{r['rejected_trajectories']}, agreement with the audit "
                  f"{r['agreement_with_audit']} (kappa {r['kappa_with_audit']})", ""]
    if "splits" in report:
        lines += [f"splits: dropped {report['splits']['dropped']}; rows {report['splits']['rows']}"]
    return "\n".join(lines)
