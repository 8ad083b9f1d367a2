"""Training and evaluation outputs as the Dagster UI shows them (no Dagster here): the per-step
history a trainer left in its output folder, the curves drawn from it, and an evaluation's
results as tables. Reads only files (the trainers run as their own processes):

- GRPO-ATS (`thyme_train.grpo`): `metrics.jsonl`, one record per logged step, appended across
  runs in the same folder (a new run starts again at step 1);
- SFT (`thyme_train.sft`): `metrics.json` (written last) with the loss per step, and the
  `trainer_state.json` of the final checkpoint with every logged value per step;
- evaluation (`thyme_train.evaluate`): `results.json` with the summaries and every item.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.core.previews import Table

# What each trainer's curves show beside its own reward/loss plots, and what goes to Dagster's
# per-step observations (names as the trainers log them).
GRPO_OPTIMISER = ("loss", "kl", "learning_rate", "grad_norm", "entropy", "clip_ratio/region_mean")
GRPO_STEP_METRICS = ("loss", "kl", "learning_rate", "grad_norm", "reward", "reward_std",
                     "thyme/tool_call_rate", "thyme/exec_success", "completions/mean_length")
SFT_STEP_METRICS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy")


def grpo_history(out_dir: Path) -> list[dict]:
    """The latest run's records from GRPO's `metrics.jsonl` (a run restarted in the same folder
    appends from step 1 again; only the last run is this checkpoint's history). A line that is
    not JSON (a run killed mid-write) is skipped; every other line is used."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "step" not in record:
            continue
        if records and record["step"] < records[-1]["step"]:
            records = []                     # a new run started in the same folder
        records.append(record)
    return records


def sft_history(out_dir: Path) -> tuple[list[dict], str]:
    """Per-step records of the finished SFT run and where they came from: the final
    checkpoint's `trainer_state.json` (every logged value) when it covers the run's last step,
    else `metrics.json`'s losses (loss only)."""
    out = Path(out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    steps = metrics.get("steps")
    states = sorted(out.glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
    if states:
        state = json.loads(states[-1].read_text())
        records = [r for r in state.get("log_history", []) if "loss" in r and "step" in r]
        if records and state.get("global_step") == steps:
            return records, f"{states[-1].parent.name}/trainer_state.json"
    return [{"step": s, "loss": v} for s, v in metrics.get("losses", [])], "metrics.json (loss only)"


def series(records: list[dict], names) -> dict[str, list[tuple[float, float]]]:
    """(step, value) points per name, for the names any record has a number for."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name in names:
        points = [(r["step"], float(r[name])) for r in records
                  if isinstance(r.get(name), int | float) and not isinstance(r.get(name), bool)]
        if points:
            out[name] = points
    return out


def thin(records: list[dict], most: int = 500) -> list[dict]:
    """At most `most` records, evenly spaced, always keeping the first and the last."""
    if len(records) <= most:
        return records
    stride = (len(records) - 1) / (most - 1)
    return [records[round(i * stride)] for i in range(most)]


def evaluation_summary(results: dict) -> Table:
    """One row per measure, one column per mode (tools, direct): items, every metric's score
    (Avg@k, percent) with its 95% interval, and tool use. Modes as columns keep the table narrow
    however many metrics a benchmark has. From `results.json`'s `summaries` (thyme_train.
    eval_report); a measure a mode lacks is empty."""
    summaries = results["summaries"]
    metrics = list(dict.fromkeys(m for s in summaries.values() for m in s["metrics"]))

    def score(s, m, part):
        value = s["metrics"].get(m, {}).get(part)
        return value[0] if part == "ci" and value else value

    def ci_high(s, m):
        ci = s["metrics"].get(m, {}).get("ci")
        return ci[1] if ci else None

    measures = [("items", lambda s: s["items"]), ("samples per item", lambda s: s["samples"]),
                *((f"{m} %", lambda s, m=m: _pct(score(s, m, "avg"))) for m in metrics),
                *((f"{m} 95% CI low", lambda s, m=m: _pct(score(s, m, "ci"))) for m in metrics[:1]),
                *((f"{m} 95% CI high", lambda s, m=m: _pct(ci_high(s, m))) for m in metrics[:1]),
                ("used code %", lambda s: _pct(s["tool_use"].get("used_code"))),
                ("executions per answer", lambda s: s["tool_use"].get("executions_per_answer")),
                ("execution success %", lambda s: _pct(s["tool_use"].get("execution_success"))),
                ("fell back", lambda s: s["tool_use"].get("fell_back")),
                ("errors", lambda s: s["tool_use"].get("errors"))]
    rows = []
    for name, value in measures:
        row = {"measure": name}
        for mode, s in summaries.items():
            v = value(s)
            row[mode] = None if v is None else round(float(v), 2)
        rows.append(row)
    return Table([("measure", "string"), *((mode, "float") for mode in summaries)], rows)


def _pct(value) -> float | None:
    return None if value is None else 100 * value


def evaluation_bars(results: dict) -> tuple[list[str], dict[str, list[float]]]:
    """(groups, {mode: score per group}) for a grouped bar chart: each of the benchmark's metrics
    (overall first, then its categories or tasks)."""
    summaries = results["summaries"]
    metrics = list(dict.fromkeys(m for s in summaries.values() for m in s["metrics"]))
    return metrics, {mode: [s["metrics"].get(m, {}).get("avg") or 0.0 for m in metrics]
                     for mode, s in summaries.items()}


def evaluation_items(results: dict, mode: str = "tools", n: int = 12) -> list[dict]:
    """The first `n` items of a mode (first sample of each), with the columns a reader checks
    first."""
    keep = ("id", "category", "truth", "given", "correct", "how", "end_reason")
    records = [r for r in results["items"] if r["mode"] == mode and not r.get("sample")]
    return [{**{k: r.get(k) for k in keep}, "code_blocks": r.get("code_calls", 0)}
            for r in records[:n]]


def evaluation_items_markdown(items: list[dict], images_by_id: dict[str, list[Path]]) -> str:
    """Items as a markdown table with each item's image as a thumbnail (when known), its truth,
    the answer given, ✓/✗ and how it was decided."""
    from pipelines.core.previews import cell, markdown_table, thumbnails

    if not items:
        return "(no items)"
    rows = [[thumbnails(images_by_id.get(i["id"], [])[:1], 72) or "-", cell(i["id"], 20),
             cell(i["category"], 20), cell(i["truth"], 30), cell(i["given"] or "(none)", 30),
             "✓" if i["correct"] else "✗", cell(i["how"], 40), str(i["code_blocks"]),
             cell(i["end_reason"], 20)] for i in items]
    return markdown_table(["image", "id", "category", "truth", "given", "ok", "decided by",
                           "code", "end"], rows)
