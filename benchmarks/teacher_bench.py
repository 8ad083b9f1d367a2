"""Code-sample throughput: the generated pool through teacher -> sandbox -> audit, and the share
of the time spent in the sandbox.

    python benchmarks/teacher_bench.py [--samples 200] [--workers N] [--seed 0]
    (--workers: sandbox workers and audit threads)

Stages, timed one after the other in one process (as the Dagster assets run them):
  pool      generate the samples (images into a temporary store; not part of the rate)
  teacher   TemplateTeacher writes the candidate trajectories
  execute   every code block in the sandbox (one session per trajectory, all workers busy,
            no execution cache); the sandbox's start-up is reported apart
  audit     every audit check (`audit_many`, as many threads as sandbox workers); the same audit
            one trajectory at a time is timed beside it (and must agree), not in the rate
Trajectories/s is over teacher + execute + audit. A last row re-runs the execution with a warm
execution cache (what a re-materialisation costs).

    python benchmarks/teacher_bench.py --baseline f7f6ad4 [--samples 200] [--rounds 2]

compares this checkout with an earlier commit side by side in one run: the commit is checked out
in a temporary `git worktree`, and `funnel_measure.py` runs the same samples through each tree in
a process of its own (alternating, `--rounds` times each), so both see the same machine load.
It reports trajectories/s, the ratio, and CPU seconds per trajectory of the whole process tree
(the load-robust figure), and fails unless every trajectory's code results (images compared by
their pixels) and audit verdicts are the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.core.images import ImageStore  # noqa: E402
from pipelines.pool.generate import generate_samples  # noqa: E402
from pipelines.samples.audit import AuditConfig, audit, audit_many  # noqa: E402
from pipelines.samples.execute import ExecutionCache, execute  # noqa: E402
from pipelines.samples.teachers import TemplateTeacher  # noqa: E402
from sandbox import Sandbox  # noqa: E402


def run(samples: int, workers: int, seed: int, multi_round_share: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="thyme-teacher-bench-") as tmp:
        store = ImageStore(Path(tmp) / "images")
        t0 = time.perf_counter()
        pool = {s.id: s for s in generate_samples(0, samples, seed, store)}
        t_pool = time.perf_counter() - t0

        t0 = time.perf_counter()
        teacher = TemplateTeacher(seed=seed, multi_round_share=multi_round_share)
        trajectories = [t for s in pool.values() for t in teacher.candidates(s)]
        t_teacher = time.perf_counter() - t0

        t0 = time.perf_counter()
        with Sandbox(workers=workers, timeout=10) as sandbox:
            t_start = time.perf_counter() - t0
            t0 = time.perf_counter()
            execute(trajectories, pool, store, sandbox)
            t_execute = time.perf_counter() - t0

            cache = ExecutionCache(Path(tmp) / "cache")
            execute(trajectories, pool, store, sandbox, cache)            # fill the cache
            t0 = time.perf_counter()
            execute(trajectories, pool, store, sandbox, cache)
            t_cached = time.perf_counter() - t0

        t0 = time.perf_counter()
        audited = [audit(t, pool[t.sample_id], store.root) for t in trajectories]
        t_audit_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        threaded = audit_many(trajectories, pool, store.root, AuditConfig(workers=workers))
        t_audit = time.perf_counter() - t0
        if [t.audit for t in threaded] != [t.audit for t in audited]:
            raise AssertionError("the threaded audit disagrees with the one-at-a-time audit")

    blocks = sum(len(t.code_turns) for t in trajectories)
    return {"samples": len(pool), "trajectories": len(trajectories), "code_blocks": blocks,
            "passed": sum(bool(t.passed) for t in audited), "workers": workers,
            "pool": t_pool, "teacher": t_teacher, "sandbox_start": t_start,
            "execute": t_execute, "audit": t_audit, "audit_serial": t_audit_serial,
            "execute_cached": t_cached}


def table(r: dict) -> str:
    busy = r["teacher"] + r["execute"] + r["audit"]
    n = r["trajectories"]
    rows = [("pool (not in the rate)", r["pool"], r["samples"], "samples"),
            ("teacher (template)", r["teacher"], n, "traj"),
            ("execute (sandbox)", r["execute"], n, "traj"),
            (f"audit ({r['workers']} threads)", r["audit"], n, "traj"),
            ("audit, one at a time (not in the rate)", r["audit_serial"], n, "traj"),
            ("teacher + execute + audit", busy, n, "traj"),
            ("execute, cached re-run", r["execute_cached"], n, "traj")]
    lines = [f"{r['samples']} samples -> {n} trajectories, {r['code_blocks']} code blocks, "
             f"{r['passed']} passed the audit ({r['passed'] / max(n, 1):.1%}); "
             f"{r['workers']} sandbox workers (start-up {r['sandbox_start']:.2f} s)", "",
             "| stage | seconds | per second | share of teacher+execute+audit |",
             "|---|---:|---:|---:|"]
    for name, seconds, count, unit in rows:
        in_rate = name.startswith(("teacher (", "execute (", "audit ("))
        share = f"{seconds / busy:.1%}" if in_rate else ""
        rate = f"{count / seconds:.1f} {unit}/s" if seconds else "-"
        lines.append(f"| {name} | {seconds:.2f} | {rate} | {share} |")
    lines.append("")
    lines.append(f"trajectories/s through teacher -> execute -> audit: {n / busy:.1f}; "
                 f"time in the sandbox: {r['execute'] / busy:.1%}; audit in threads vs one at a "
                 f"time: {r['audit_serial'] / r['audit']:.2f}x")
    return "\n".join(lines)


def measure_tree(tree: Path, args, out: Path) -> dict:
    """`funnel_measure.py` with `tree` first on PYTHONPATH, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "funnel_measure.py"), "--samples",
                    str(args.samples), "--workers", str(args.workers), "--seed", str(args.seed),
                    "--multi-round-share", str(args.multi_round_share), "--out", str(out)],
                   env=env, check=True, cwd=tree)
    return json.loads(out.read_text())


def compare(baseline: dict, ours: dict) -> str:
    """Every trajectory's code, results and verdicts must be the baseline's; a summary line."""
    if set(baseline["verdicts"]) != set(ours["verdicts"]):
        raise AssertionError("the two trees wrote different trajectories (ids differ)")
    for tid, want in baseline["verdicts"].items():
        got = ours["verdicts"][tid]
        for field in ("code", "results", "passed", "checks"):
            if got[field] != want[field]:
                raise AssertionError(f"trajectory {tid}: {field} differs from the baseline's: "
                                     f"{got[field]!r} != {want[field]!r}")
    return (f"all {len(ours['verdicts'])} trajectories: same code, same sandbox results and the "
            f"same audit verdicts as the baseline ({ours['passed']} passed); images compared "
            f"by their pixels")


def side_by_side(args) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from trees import baseline_tree
    with tempfile.TemporaryDirectory(prefix="thyme-baseline-") as tmp, \
            baseline_tree(args.baseline, tmp) as tree:
        runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            for name, path in (("baseline", tree), ("ours", ROOT)):
                runs[name].append(measure_tree(path, args, Path(tmp) / f"{name}-{r}.json"))
        load_end = os.getloadavg()[0]
    checked = [compare(runs["baseline"][0], run) for run in runs["ours"]][-1]
    first = runs["ours"][0]
    lines = [f"{first['samples']} samples -> {first['trajectories']} trajectories, "
             f"{first['code_blocks']} code blocks; {args.workers} sandbox workers and audit threads; "
             f"{args.rounds} round(s), baseline and ours alternating; load average "
             f"{load:.1f} at the start, {load_end:.1f} at the end (1 min, {os.cpu_count()} cores)", "",
             "| tree | round | teacher s | execute s | audit s | trajectories/s | CPU s | "
             "CPU ms/traj | of which execute | audit | sandbox start+stop |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rate, cpu, steady = {}, {}, {}
    for name in ("baseline", "ours"):
        for r, run in enumerate(runs[name]):
            busy = run["teacher"] + run["execute"] + run["audit"]
            n = run["trajectories"]
            label = f"{args.baseline} (baseline)" if name == "baseline" else "this checkout"
            lines.append(f"| {label} | {r + 1} | {run['teacher']:.2f} | {run['execute']:.2f} | "
                         f"{run['audit']:.2f} | {n / busy:.1f} | {run['cpu']:.1f} | "
                         f"{run['cpu'] / n * 1000:.0f} | {run['cpu_execute'] / n * 1000:.0f} | "
                         f"{run['cpu_audit'] / n * 1000:.0f} | {run['cpu_sandbox_start_stop']:.2f} s |")
        total = sum(run["trajectories"] for run in runs[name])
        rate[name] = total / sum(run["teacher"] + run["execute"] + run["audit"] for run in runs[name])
        cpu[name] = sum(run["cpu"] for run in runs[name]) / total
        steady[name] = sum(run["cpu_teacher"] + run["cpu_execute"] + run["cpu_audit"]
                           for run in runs[name]) / total
    lines += ["", f"- trajectories/s (teacher + execute + audit, all rounds): baseline "
                  f"{rate['baseline']:.1f}, ours {rate['ours']:.1f}: **{rate['ours'] / rate['baseline']:.2f}x** "
                  "(target >= 2x; wall clock: only meaningful on a quiet machine)",
              f"- CPU per trajectory, teacher + execute + audit (the sandbox's start-up left out, as "
              f"from the rate): baseline {steady['baseline'] * 1000:.0f} ms, ours "
              f"{steady['ours'] * 1000:.0f} ms: **{steady['baseline'] / steady['ours']:.2f}x** less",
              f"- CPU per trajectory, whole process tree (start-up included): baseline "
              f"{cpu['baseline'] * 1000:.0f} ms, ours {cpu['ours'] * 1000:.0f} ms: "
              f"**{cpu['baseline'] / cpu['ours']:.2f}x** less",
              f"- {checked}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--multi-round-share", type=float, default=0.25)
    parser.add_argument("--baseline", metavar="COMMIT",
                        help="compare with this commit side by side (e.g. f7f6ad4)")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: runs of each tree")
    args = parser.parse_args(argv)
    if args.baseline:
        print(side_by_side(args))
        return 0
    print(table(run(args.samples, args.workers, args.seed, args.multi_round_share)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
