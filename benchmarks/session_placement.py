"""Where a trajectory's sandbox session goes, and what it costs the funnel's execute stage: the
generated pool's trajectories through `Sandbox` sessions (2 workers, 2 caller threads, as
`pipelines.samples.execute` runs them), with sessions placed on the worker with the fewest open
sessions (what `Sandbox.session` does) and in plain turns (what it did before 2026-12-07),
alternating. Reports the stage's wall time, the CPU seconds of the whole process tree, the
snippets' own CPU (each child's report) and the share of the stage during which both open
sessions sat on one worker while the other idled.

    PYTHONPATH=. python benchmarks/session_placement.py --samples 200 --rounds 2
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnel_measure import PR_SET_CHILD_SUBREAPER, reap_orphans, tree_cpu  # noqa: E402

from pipelines.core.images import ImageStore  # noqa: E402
from pipelines.pool.generate import generate_samples  # noqa: E402
from pipelines.samples.execute import stored_result  # noqa: E402
from pipelines.samples.teachers import TemplateTeacher  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from sandbox.core import Session  # noqa: E402


def in_turns(sandbox: Sandbox):
    """The placement before 2026-12-07: workers in turn, whatever they already hold."""
    def session(inputs=(), timeout=None):
        handle = sandbox._handles[next(sandbox._next_session) % len(sandbox._handles)]
        return Session(sandbox, handle, [os.fspath(p) for p in inputs], timeout)
    return session


def start_stop_cpu(workers: int) -> float:
    """CPU seconds of starting and closing an idle sandbox (its workers warm up), counted once
    they are reaped: taken off each run's tree CPU."""
    cpu0 = tree_cpu()
    Sandbox(workers=workers, timeout=10).close()
    reap_orphans()
    return tree_cpu() - cpu0


def run(placement: str, trajectories, pool, store, workers: int) -> dict:
    idle = start_stop_cpu(workers)
    sandbox = Sandbox(workers=workers, timeout=10)
    if placement == "turns":
        sandbox.session = in_turns(sandbox)
    spans, snippets = [], []
    cpu0, t0 = tree_cpu(), time.perf_counter()

    def one(t):
        if not t.code_turns:
            return
        sample = pool[t.sample_id]
        inputs = [str(store.path(sample.images[0]))] if sample.images else []
        start = time.perf_counter()
        with sandbox.session(inputs=inputs, timeout=10) as session:
            for turn in t.code_turns:
                r = session.run(turn.code)
                snippets.append(r.cpu_s)
                turn.result = stored_result(r, store)
            spans.append((start, time.perf_counter(), id(session.handle)))

    with ThreadPoolExecutor(workers) as threads:
        list(threads.map(one, trajectories))
    wall = time.perf_counter() - t0
    sandbox.close()
    reap_orphans()
    cpu = tree_cpu() - cpu0 - idle
    edges = sorted({e for a, b, _ in spans for e in (a, b)})
    shared = 0.0
    for x, y in zip(edges, edges[1:], strict=False):
        held = [h for a, b, h in spans if a <= (x + y) / 2 < b]
        if len(held) > 1 and len(set(held)) < len(held):
            shared += y - x
    return {"wall": wall, "cpu": cpu, "snippets": sum(snippets), "shared": shared}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    with tempfile.TemporaryDirectory(prefix="thyme-placement-") as tmp:
        store = ImageStore(Path(tmp) / "images")
        pool = {s.id: s for s in generate_samples(0, args.samples, 0, store)}
        trajectories = [t for s in pool.values()
                        for t in TemplateTeacher(seed=0, multi_round_share=0.25).candidates(s)]
        print(f"{len(trajectories)} trajectories, {sum(len(t.code_turns) for t in trajectories)} "
              f"code blocks; {args.workers} workers and caller threads; load average "
              f"{os.getloadavg()[0]:.1f} at the start\n")
        print("| placement | round | execute s | trajectories/s | CPU s (tree, start-up off) | cores busy | "
              "snippets' own CPU s | both sessions on one worker |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for k in range(args.rounds):
            for placement in ("turns", "fewest open"):
                r = run("turns" if placement == "turns" else "fewest", trajectories, pool, store,
                        args.workers)
                print(f"| {placement} | {k + 1} | {r['wall']:.2f} | {len(trajectories) / r['wall']:.1f} "
                      f"| {r['cpu']:.2f} | {r['cpu'] / r['wall']:.2f} | {r['snippets']:.2f} "
                      f"| {r['shared']:.2f} s ({r['shared'] / r['wall']:.0%}) |")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
