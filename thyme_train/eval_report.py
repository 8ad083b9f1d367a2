"""The evaluation's numbers from its records: the benchmark's metrics as Avg@k and pass@k with
bootstrap confidence intervals, the spread between runs, and tool-use quality; then the reports.

    summary = summarize("vstar", records, samples=4)        # per mode: metrics, CIs, tool use
    write_benchmark_report(summary, out / "vstar", title)   # results.json, report.md, chart
    write_summary(summaries, out, title)                    # one table over all benchmarks

Confidence intervals: the 2.5th and 97.5th percentiles of the metric over BOOTSTRAP resamples of
the benchmark's items (with replacement, clusters that must stay together resampled whole, all k
samples of an item kept with it; seeded, so a report is reproducible). They show how much the
score would move on another draw of items of the same kind; `runs` (the metric of each of the k
sampled runs) shows how much it moves between runs of the same items.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipelines.core.atomic import write_json, write_text
from thyme_train import benchmarks
from thyme_train.crops import OPERATIONS

BOOTSTRAP = 1000
LEVEL = 0.95


def summarize(kind: str, records: list[dict], samples: int, bootstrap: int = BOOTSTRAP,
              seed: int = 0) -> dict:
    """{mode: {"items", "samples", "metrics": {name: {"avg", "ci", "pass"}}, "runs", "tool_use"}}."""
    by_mode: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_mode[r["mode"]].append(r)
    out = {}
    for mode, rs in by_mode.items():
        out[mode] = {"items": len({r["id"] for r in rs}), "samples": samples,
                     **performance(kind, rs, samples, bootstrap, seed), "tool_use": tool_use(rs)}
    return out


def performance(kind: str, records: list[dict], samples: int, bootstrap: int, seed: int) -> dict:
    """Avg@k and pass@k of every metric with its interval, and each run's headline."""
    clusters = sorted({r["cluster"] for r in records})
    index = {c: i for i, c in enumerate(clusters)}
    runs = [[r for r in records if r["sample"] == j] for j in range(samples)]
    best: dict[str, dict] = {}
    for r in records:                         # pass@k: an item counts when any sample is right
        if r["id"] not in best or (r["correct"] and not best[r["id"]]["correct"]):
            best[r["id"]] = r
    matrices, keys = _matrices(kind, [*runs, list(best.values())], index)
    # Resample weights (how often each cluster is drawn), the first row the data itself; drawn
    # in chunks so a 20,000-item benchmark does not hold 1,000 x 20,000 counts at once.
    rng = np.random.default_rng(seed)
    n = len(clusters)
    chunks = [np.ones((1, n))] + [rng.multinomial(n, [1 / n] * n, size=min(100, bootstrap - k))
                                  .astype(np.float32) for k in range(0, bootstrap, 100)]
    summed_by_run = [np.vstack([w @ m for w in chunks]) for m in matrices]  # per run: rows x 2*stats

    def metric_rows(summed) -> list[dict[str, float]]:
        """Per resample, the metrics averaged over the given runs' sums."""
        rows = []
        for b in range(bootstrap + 1):
            values: dict[str, list[float]] = defaultdict(list)
            for s in summed:
                sums = dict(zip(keys, s[b].reshape(-1, 2).tolist(), strict=True))
                for name, v in benchmarks.combine(kind, sums).items():
                    values[name].append(v)
            rows.append({n: float(np.nanmean(v)) if not all(map(math.isnan, v)) else math.nan
                         for n, v in values.items()})
        return rows

    avg_rows, pass_rows = metric_rows(summed_by_run[:-1]), metric_rows(summed_by_run[-1:])
    alpha = (1 - LEVEL) / 2 * 100
    metrics = {}
    for name, value in avg_rows[0].items():
        dist = np.array([row.get(name, math.nan) for row in avg_rows[1:]], dtype=float)
        ci = [float(np.nanpercentile(dist, alpha)), float(np.nanpercentile(dist, 100 - alpha))] \
            if np.isfinite(dist).any() else [math.nan, math.nan]
        metrics[name] = {"avg": value, "ci": ci, "pass": pass_rows[0].get(name, math.nan)}
    headline = [benchmarks.combine(kind, dict(zip(keys, m.sum(0).reshape(-1, 2).tolist(),
                                                  strict=True)))["overall"] for m in matrices[:-1]]
    return {"metrics": metrics, "runs": headline,
            "run_std": float(np.std(headline, ddof=1)) if len(headline) > 1 else 0.0}


def _matrices(kind: str, runs: list[list[dict]], index: dict[str, int]):
    """Per run, a (clusters x 2*stats) matrix of (numerator, denominator) sums."""
    per_run = []
    for run in runs:
        grouped: dict[str, list[dict]] = defaultdict(list)
        for r in run:
            grouped[r["cluster"]].append(r)
        per_run.append({c: benchmarks.stats(kind, rs) for c, rs in grouped.items()})
    keys = sorted({k for run in per_run for s in run.values() for k in s})
    mats = []
    for run in per_run:
        m = np.zeros((len(index), 2 * len(keys)))
        for c, s in run.items():
            for j, k in enumerate(keys):
                if k in s:
                    m[index[c], 2 * j:2 * j + 2] = s[k]
        mats.append(m)
    return mats, keys


def tool_use(records: list[dict]) -> dict:
    """How the answers used code: shares, execution success, each operation's use and accuracy,
    and faithful crops where the items carry target boxes."""
    n = len(records)
    with_code = [r for r in records if r["code_calls"]]
    calls = [c for r in records for c in r.get("calls", [])]
    ops = {}
    for op in (*OPERATIONS, "compute"):         # compute: a run that printed, no image
        used = [r for r in records if any(op in c["ops"] for c in r.get("calls", []))]
        op_calls = [c for c in calls if op in c["ops"]]
        if op_calls:
            ops[op] = {"calls": len(op_calls), "ok": _share(c["ok"] for c in op_calls),
                       "answers": len(used), "accuracy": _share(r["correct"] for r in used)}
    boxed = [r for r in records if r.get("boxes")]
    crops = [c for r in boxed for c in r.get("calls", []) if c["ok"] and "crop" in c["ops"]]
    located = [c for c in crops if c.get("crop")]
    judged = [r for r in boxed if r.get("faithful") is not None]
    faithful = {
        "items_with_boxes": len(boxed), "crop_calls": len(crops), "located": len(located),
        "contain_target": _share(c["crop"]["contains"] for c in located),
        "answers_faithful": _share(r["faithful"] for r in judged),
        "accuracy_faithful": _share(r["correct"] for r in judged if r["faithful"]),
        "accuracy_unfaithful": _share(r["correct"] for r in judged if not r["faithful"]),
        "median_area_share": float(np.median([c["crop"]["area_share"] for c in located]))
        if located else math.nan,
    } if boxed else {}
    ends: dict[str, int] = defaultdict(int)
    for r in records:
        ends[r["end_reason"]] += 1
    return {
        "answers": n, "used_code": _share(r["code_calls"] > 0 for r in records),
        "executions_per_answer": sum(r["code_calls"] for r in records) / n if n else 0.0,
        "execution_success": _share(c["ok"] for c in calls),
        "answers_code_clean": _share(r["code_ok"] == r["code_calls"] for r in with_code),
        "accuracy_with_code": _share(r["correct"] for r in with_code),
        "accuracy_without_code": _share(r["correct"] for r in records if not r["code_calls"]),
        "operations": ops, "faithful": faithful,
        "fell_back": sum(bool(r["fell_back"]) for r in records),
        "errors": sum(r["error"] is not None for r in records),
        "judged": sum(r["how"] == "judge" for r in records),
        "end_reasons": dict(ends),
    }


def _share(values) -> float:
    values = [bool(v) for v in values]
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

def pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def with_ci(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{pct(m['avg'])} [{pct(lo)}, {pct(hi)}]"


def markdown(name: str, summary: dict, settings: dict) -> str:
    """The benchmark's tables: metrics per mode with intervals, tool use, operations."""
    k = max(s["samples"] for s in summary.values())
    head_metric = f"Avg@{k}" if k > 1 else "score"
    names = list(next(iter(summary.values()))["metrics"])
    lines = [f"### {name}", "",
             f"{head_metric} (percent) with its {LEVEL:.0%} bootstrap interval" +
             (f"; pass@{k}, and the standard deviation of the {k} runs' overall score." if k > 1 else "."),
             "", "| mode | items | " + " | ".join(names) + (f" | pass@{k} | run std |" if k > 1 else " |"),
             "|" + "---|" * (len(names) + 2 + (2 if k > 1 else 0))]
    for mode, s in summary.items():
        cells = [mode, str(s["items"]), *(with_ci(s["metrics"][n]) for n in names)]
        if k > 1:
            cells += [pct(s["metrics"]["overall"]["pass"]), pct(s["run_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    tools = summary.get("tools")
    if tools:
        t = tools["tool_use"]
        lines += ["", "| used code | exec/answer | exec success | all code ran | acc. with code | "
                  "acc. without | fell back | errors |", "|---|---|---|---|---|---|---|---|",
                  f"| {pct(t['used_code'])} | {t['executions_per_answer']:.2f} | "
                  f"{pct(t['execution_success'])} | {pct(t['answers_code_clean'])} | "
                  f"{pct(t['accuracy_with_code'])} | {pct(t['accuracy_without_code'])} | "
                  f"{t['fell_back']} | {t['errors']} |"]
        if t["operations"]:
            lines += ["", "| operation | calls | ran ok | answers | their accuracy |",
                      "|---|---|---|---|---|"]
            lines += [f"| {op} | {o['calls']} | {pct(o['ok'])} | {o['answers']} | {pct(o['accuracy'])} |"
                      for op, o in t["operations"].items()]
        f = t["faithful"]
        if f:
            lines += ["", "| items with boxes | crop calls | located | crops holding the target | "
                      "faithful answers | acc. faithful | acc. unfaithful |", "|---|---|---|---|---|---|---|",
                      f"| {f['items_with_boxes']} | {f['crop_calls']} | {f['located']} | "
                      f"{pct(f['contain_target'])} | {pct(f['answers_faithful'])} | "
                      f"{pct(f['accuracy_faithful'])} | {pct(f['accuracy_unfaithful'])} |"]
    lines += ["", "Settings: " + ", ".join(f"{k}={settings[k]}" for k in SHOWN if k in settings)]
    return "\n".join(lines) + "\n"


SHOWN = ("model", "prompt_set", "prompt_set_source", "engine", "temperature", "samples", "max_turns", "max_new_tokens",
         "on_code_error", "judge", "option_seed", "seed", "sandbox")


def summary_table(rows: dict[str, tuple[str, dict]], settings: dict) -> str:
    """One line per benchmark: headline (tools, direct), its interval, tool use."""
    k = max((s["samples"] for _, summ in rows.values() for s in summ.values()), default=1)
    lines = ["| benchmark | kind | items | tools | direct | Δ tools | used code | exec success "
             "| crops holding target |" if k == 1 else
             f"| benchmark | kind | items | tools Avg@{k} | direct Avg@{k} | Δ tools | pass@{k} "
             "| used code | exec success | crops holding target |"]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for name, (kind, summ) in rows.items():
        tools, direct = summ.get("tools"), summ.get("direct")
        t = tools["metrics"]["overall"] if tools else None
        d = direct["metrics"]["overall"] if direct else None
        delta = pct(t["avg"] - d["avg"]) if t and d else "-"
        tu = tools["tool_use"] if tools else {}
        cells = [name, kind, str((tools or direct)["items"]), with_ci(t) if t else "-",
                 with_ci(d) if d else "-", delta]
        if k > 1:
            cells.append(pct(t["pass"]) if t else "-")
        cells += [pct(tu.get("used_code", math.nan)), pct(tu.get("execution_success", math.nan)),
                  pct((tu.get("faithful") or {}).get("contain_target", math.nan))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Settings: " + ", ".join(f"{k}={settings[k]}" for k in SHOWN if k in settings)]
    return "\n".join(lines) + "\n"


def json_safe(value):
    """NaN (no JSON number) as None, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_benchmark_report(name: str, kind: str, summary: dict, settings: dict, records: list[dict],
                           out: Path, title: str) -> dict[str, Path]:
    """results.json (settings, summary, records), report.md and accuracy.png, atomically."""
    from thyme_train.plots import accuracy_bars

    paths = {"json": out / "results.json", "markdown": out / "report.md", "chart": out / "accuracy.png"}
    write_json(paths["json"], json_safe({"title": title, "benchmark": name, "kind": kind,
                                         "settings": settings, "summaries": summary,
                                         "items": records}), indent=1)
    write_text(paths["markdown"], markdown(name, summary, settings))
    names = list(next(iter(summary.values()))["metrics"])
    accuracy_bars(names, {m: [s["metrics"][n]["avg"] for n in names] for m, s in summary.items()},
                  paths["chart"], title,
                  errors={m: [s["metrics"][n]["ci"] for n in names] for m, s in summary.items()})
    return paths


def write_summary(rows: dict[str, tuple[str, dict]], settings: dict, out: Path,
                  title: str) -> dict[str, Path]:
    """summary.md, summary.json and summary.png over all benchmarks of the run."""
    from thyme_train.plots import accuracy_bars

    paths = {"json": out / "summary.json", "markdown": out / "summary.md", "chart": out / "summary.png"}
    write_json(paths["json"], json_safe({"title": title, "settings": settings, "benchmarks": {
        n: {"kind": k, "summaries": s} for n, (k, s) in rows.items()}}), indent=1)
    write_text(paths["markdown"], f"### {title}\n\n" + summary_table(rows, settings))
    modes = sorted({m for _, s in rows.values() for m in s}, key=["tools", "direct"].index)
    nan = {"avg": math.nan, "ci": [math.nan, math.nan]}
    accuracy_bars(list(rows), {m: [s.get(m, {"metrics": {"overall": nan}})["metrics"]["overall"]["avg"]
                                   for _, s in rows.values()] for m in modes}, paths["chart"], title,
                  errors={m: [s.get(m, {"metrics": {"overall": nan}})["metrics"]["overall"]["ci"]
                              for _, s in rows.values()] for m in modes})
    return paths
