"""What the Dagster UI shows of the splits and the published datasets (no Dagster here): the
first rows with their images, row counts and the corpus funnel as `Table`s."""

from __future__ import annotations

from pathlib import Path

from pipelines.core.previews import Table, example, examples
from pipelines.datasets.names import RL, UNROUTED


def rows_markdown(rows: list[dict], split: str, pool_dir: Path) -> str:
    """Rows of a split as a reader sees them: every image as a thumbnail (paths are relative to
    the pool folder), the prompt and the response (RL: the user turn and the solution) quoted in
    fences nothing in them can close."""
    parts = []
    for r in rows:
        if split == RL:
            texts = [("user", r["messages"][-1]["content"]), ("solution", r["solution"])]
        else:
            texts = [("question", r["question"]), ("response", r["response"])]
        parts.append(example(f"{r['task']} · {r['id']} · {len(r['images'])} image(s)",
                             [pool_dir / p for p in r["images"]], texts))
    return examples(parts)


def counts_table(counts: dict, key: str) -> Table:
    """{part: rows} as (key, rows); {part: {task: rows}} as (key, task, rows)."""
    if all(isinstance(v, int) for v in counts.values()):
        return Table([(key, "string"), ("rows", "int")],
                     [{key: k, "rows": v} for k, v in counts.items()])
    return Table([(key, "string"), ("task", "string"), ("rows", "int")],
                 [{key: part, "task": task, "rows": n}
                  for part, by_task in counts.items() for task, n in sorted(by_task.items())])


def corpus_funnel(report: dict, split: str | None = None) -> Table:
    """From the pool to the splits (`build_splits`' report): pool samples, trajectories, passed
    the audit, routed to each split, dropped by reason, quarantined before any split (a row
    without a task), and the rows `split` ended with."""
    stages = [("pool samples", report["pool_samples"]), ("trajectories", report["trajectories"]),
              ("passed the audit", report["passed"])]
    stages += [(f"routed to {s}", n) for s, n in sorted(report["routed"].items())]
    stages += [(f"dropped: {reason}", n) for reason, n in sorted(report["dropped"].items())]
    unrouted = report.get("validated", {}).get("quarantined", {}).get(UNROUTED, {})
    stages += [(f"quarantined, no split: {check}", n) for check, n in sorted(unrouted.items())]
    if split is not None:
        stages.append((f"rows in {split}", sum(report["rows"][split].values())))
    return Table([("stage", "string"), ("count", "int")],
                 [{"stage": name, "count": n} for name, n in stages])
