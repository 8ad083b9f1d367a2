"""The rule audit's CPU per trajectory, this checkout against an earlier commit, on the same
executed trajectories; fails unless every trajectory's checks (name, verdict and reason) and
pass/fail are the baseline's.

    PYTHONPATH=. python benchmarks/audit_cpu.py --baseline ad1b810 [--samples 200] [--seed 0]
        [--rounds 5] [--workers 2]

The generated pool is written by the template teacher and executed once, by this checkout; the
commit is checked out in a temporary `git worktree` (`trees.baseline_tree`), and each round audits
the trajectories in a fresh process per tree (baseline and ours alternating, so both see the same
machine load): one at a time (`audit`), then in `audit_many` with --workers threads, each pass
with a cold input cache. CPU is the auditing process's own (all its threads), from
`getrusage`: it stays meaningful on a loaded machine where wall time does not, but neighbours
still move it by +-20 % from round to round, hence the median of several rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare(samples: int, seed: int, workers: int, multi_round_share: float, folder: Path) -> Path:
    """The executed pool, in `folder`: images/ and data.json (sample and trajectory rows)."""
    sys.path.insert(0, str(ROOT))
    from pipelines.core.images import ImageStore
    from pipelines.pool.generate import generate_samples
    from pipelines.samples.execute import execute
    from pipelines.samples.teachers import TemplateTeacher
    from sandbox import Sandbox

    store = ImageStore(folder / "images")
    pool = {s.id: s for s in generate_samples(0, samples, seed, store)}
    teacher = TemplateTeacher(seed=seed, multi_round_share=multi_round_share)
    trajectories = [t for s in pool.values() for t in teacher.candidates(s)]
    with Sandbox(workers=workers, timeout=10) as sandbox:
        execute(trajectories, pool, store, sandbox)
    data = folder / "data.json"
    data.write_text(json.dumps({"samples": [s.to_row() for s in pool.values()],
                                "trajectories": [t.to_row() for t in trajectories]}))
    return data


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(data: Path, workers: int) -> dict:
    """In the tree first on PYTHONPATH: the audit one at a time, then in threads."""
    # An editable install's finder would fill in modules from another checkout.
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not getattr(f, "__module__", "").startswith("__editable__")]
    import dataclasses

    import sympy  # noqa: F401  the funnel's pool stage has imported it before the audit runs

    from pipelines.core.schema import Sample
    from pipelines.core.trajectory import Trajectory
    from pipelines.samples.audit import DEFAULTS, audit, audit_many
    from pipelines.samples.audit import context as context_module

    rows = json.loads(data.read_text())
    pool = {s.id: s for s in map(Sample.from_row, rows["samples"])}
    trajectories = [Trajectory.from_row(r) for r in rows["trajectories"]]
    root = data.parent / "images"
    timings = {}
    context_module._INPUTS.clear()
    c0, t0 = _cpu(), time.perf_counter()
    serial = [audit(t, pool[t.sample_id], root) for t in trajectories]
    timings["serial"] = (_cpu() - c0, time.perf_counter() - t0)
    context_module._INPUTS.clear()
    c0, t0 = _cpu(), time.perf_counter()
    threaded = audit_many(trajectories, pool, root, dataclasses.replace(DEFAULTS, workers=workers))
    timings["threads"] = (_cpu() - c0, time.perf_counter() - t0)
    if [t.audit for t in threaded] != [t.audit for t in serial]:
        raise AssertionError("the threaded audit disagrees with the one-at-a-time audit")
    return {"trajectories": len(trajectories), "timings": timings,
            "audits": {t.id: {"passed": t.passed, "task": t.task,
                              "checks": [[c.name, c.verdict, c.reason] for c in t.audit]}
                       for t in serial}}


def measure_tree(tree: Path, data: Path, workers: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", str(data),
                    "--workers", str(workers), "--out", str(out)], env=env, check=True, cwd=tree)
    return json.loads(out.read_text())


def compare(baseline: dict, ours: dict) -> None:
    """Every trajectory's audit (checks with their reasons, pass/fail, task) must be the baseline's."""
    if set(baseline["audits"]) != set(ours["audits"]):
        raise AssertionError("the two trees audited different trajectories (ids differ)")
    differ = [tid for tid, want in baseline["audits"].items() if ours["audits"][tid] != want]
    if differ:
        tid = differ[0]
        want, got = baseline["audits"][tid], ours["audits"][tid]
        first = next((f"{w} != {g}" for w, g in zip(want["checks"], got["checks"], strict=False)
                      if w != g), f"{want} != {got}")
        raise AssertionError(f"{len(differ)} trajectories' audits differ from the baseline's; "
                             f"first {tid}: {first}")


def side_by_side(args) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from trees import baseline_tree

    with tempfile.TemporaryDirectory(prefix="thyme-audit-cpu-") as tmp, \
            baseline_tree(args.baseline, tmp) as tree:
        data = prepare(args.samples, args.seed, args.workers, args.multi_round_share, Path(tmp) / "pool")
        runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            for name, path in (("baseline", tree), ("ours", ROOT)):
                runs[name].append(measure_tree(path, data, args.workers, Path(tmp) / f"{name}-{r}.json"))
        load_end = os.getloadavg()[0]
    for run in runs["ours"] + runs["baseline"][1:]:
        compare(runs["baseline"][0], run)
    n = runs["ours"][0]["trajectories"]
    audits = runs["ours"][0]["audits"].values()
    passed = sum(bool(a["passed"]) for a in audits)
    checks = sum(len(a["checks"]) for a in audits)
    lines = [f"{args.samples} samples (seed {args.seed}) -> {n} trajectories; {args.rounds} round(s), "
             f"baseline and ours alternating, each in a fresh process; load average {load:.1f} at "
             f"the start, {load_end:.1f} at the end (1 min, {os.cpu_count()} cores)", "",
             f"| tree | round | one at a time: CPU ms/traj | wall ms/traj | {args.workers} threads: "
             "CPU ms/traj | wall ms/traj |", "|---|---:|---:|---:|---:|---:|"]
    median = {}
    for name in ("baseline", "ours"):
        label = f"{args.baseline} (baseline)" if name == "baseline" else "this checkout"
        for r, run in enumerate(runs[name]):
            (sc, sw), (tc, tw) = run["timings"]["serial"], run["timings"]["threads"]
            lines.append(f"| {label} | {r + 1} | {1000 * sc / n:.1f} | {1000 * sw / n:.1f} | "
                         f"{1000 * tc / n:.1f} | {1000 * tw / n:.1f} |")
        median[name] = [statistics.median(run["timings"][mode][0] for run in runs[name]) / n * 1000
                      for mode in ("serial", "threads")]
    (bs, bt), (os_, ot) = median["baseline"], median["ours"]
    lines += ["", f"- CPU per trajectory, one at a time (median of the rounds): baseline {bs:.1f} ms, "
                  f"ours {os_:.1f} ms: **{bs / os_:.2f}x** less",
              f"- CPU per trajectory, {args.workers} threads (median): baseline {bt:.1f} ms, ours {ot:.1f} ms: "
              f"**{bt / ot:.2f}x** less",
              f"- all {n} trajectories: the same {checks} checks (name, verdict and reason) and "
              f"pass/fail as the baseline's in every round ({passed} passed)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", metavar="COMMIT", help="the commit to compare with (e.g. ad1b810)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="sandbox workers and audit threads")
    p.add_argument("--multi-round-share", type=float, default=0.25)
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)    # the per-tree child
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        args.out.write_text(json.dumps(measure(args.measure, args.workers)))
        return 0
    if not args.baseline:
        p.error("--baseline COMMIT is required")
    print(side_by_side(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
