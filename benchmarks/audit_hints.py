"""The audit with and without the code's hints: the boxes it names, tried first by `locate`
(`AuditConfig.code_box_hints`), and the rotation it names, scored first by the rotation check
(`code_rotation_hints`), on the generated pool's trajectories: CPU seconds one trajectory at a time
and in `audit_many`'s threads, the rotation check's own CPU, how often a hint was confirmed, and
whether every verdict is the same (the script fails otherwise).

    PYTHONPATH=. python benchmarks/audit_hints.py [--samples 200] [--workers 2] [--rounds 2]

The pool is generated, written by the template teacher and executed once; then each round audits
it with hints off and on (alternating, so both see the same machine load).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.core.images import ImageStore  # noqa: E402
from pipelines.pool.generate import generate_samples  # noqa: E402
from pipelines.samples.audit import AuditConfig, audit, audit_many, rotation, rules  # noqa: E402
from pipelines.samples.audit import context as context_module  # noqa: E402
from pipelines.samples.audit import locate as locate_module  # noqa: E402
from pipelines.samples.execute import execute  # noqa: E402
from pipelines.samples.teachers import TemplateTeacher  # noqa: E402
from sandbox import Sandbox  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Counts:
    """By check (crop, contrast, rotation): locate's calls, their CPU seconds (the calling thread's),
    its full searches, and the hints tried and confirmed (boxes by `locate`, the code's rotation by
    the rotation check); and the rotation check's whole CPU ("check_cpu": its reductions, the code's
    claim and any search). Wraps the internals; the caller is told apart by the thread."""

    FIELDS = ("calls", "cpu", "searches", "tried", "confirmed")

    def __init__(self):
        self.n: dict[tuple[str, str], float] = {}
        self._lock, self._where = threading.Lock(), threading.local()
        grid, confirm = locate_module._zoom_grid, locate_module.confirm
        claim, verdict = rotation._code_claim, rules.rotation_verdict

        def count(field: str, n: float = 1) -> None:
            with self._lock:
                key = (getattr(self._where, "check", "rotation"), field)
                self.n[key] = self.n.get(key, 0) + n

        def counted(locate, check=None):
            def wrapper(*a, **k):
                # rules.py: the crop check clips the band, the contrast check does not
                self._where.check = check or ("crop" if k.get("clip") else "contrast")
                count("calls")
                t0 = time.thread_time()
                try:
                    return locate(*a, **k)
                finally:
                    count("cpu", time.thread_time() - t0)
                    self._where.check = "rotation"
            return wrapper

        def counted_grid(*a, **k):
            count("searches")
            return grid(*a, **k)

        def counted_confirm(needle, pyr, cfg, *a, **k):
            count("tried")
            found = confirm(needle, pyr, cfg, *a, **k)
            if found is not None and found.score >= cfg.early_exit_score:
                count("confirmed")
            return found

        def counted_claim(*a, **k):
            count("tried")
            found = claim(*a, **k)
            if found is not None:
                count("confirmed")
            return found

        def counted_verdict(*a, **k):
            t0 = time.thread_time()
            try:
                return verdict(*a, **k)
            finally:
                count("check_cpu", time.thread_time() - t0)

        locate_module._zoom_grid, locate_module.confirm = counted_grid, counted_confirm
        rotation._code_claim, rules.rotation_verdict = counted_claim, counted_verdict
        rotation.locate = counted(rotation.locate, "rotation")
        rules.locate = counted(rules.locate)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.n)


def audit_round(trajectories, pool, root, cfg, threads: int):
    context_module._INPUTS.clear()        # each pass decodes its inputs, as a fresh run would
    c0, t0 = cpu(), time.perf_counter()
    if threads == 1:
        done = [audit(t, pool[t.sample_id], root, cfg) for t in trajectories]
    else:
        done = audit_many(trajectories, pool, root, dataclasses.replace(cfg, workers=threads))
    return done, cpu() - c0, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thyme-audit-hints-") as tmp:
        store = ImageStore(Path(tmp) / "images")
        pool = {s.id: s for s in generate_samples(0, args.samples, args.seed, store)}
        trajectories = [t for s in pool.values()
                        for t in TemplateTeacher(seed=args.seed).candidates(s)]
        with Sandbox(workers=args.workers, timeout=10) as sandbox:
            execute(trajectories, pool, store, sandbox)
        counts = Counts()
        modes = {"off": AuditConfig(code_box_hints=0, code_rotation_hints=False), "on": AuditConfig()}
        rows, checks, reasons = [], {}, {}
        for rnd in range(1, args.rounds + 1):
            for threads in (1, args.workers):
                for mode, cfg in modes.items():
                    before = counts.snapshot()
                    done, c, wall = audit_round(trajectories, pool, store.root, cfg, threads)
                    after = counts.snapshot()
                    checks[mode] = [[(x.name, x.verdict) for x in t.audit] for t in done]
                    reasons[mode] = [[x.reason for x in t.audit] for t in done]
                    rows.append((rnd, threads, mode, c, wall,
                                 {k: v - before.get(k, 0) for k, v in after.items()}))
                if checks["off"] != checks["on"]:
                    diff = [t.id for t, a, b in zip(trajectories, checks["off"], checks["on"], strict=True) if a != b]
                    raise AssertionError(f"verdicts differ with hints on: {diff}")
        reasons_differ = sum(a != b for a, b in zip(reasons["off"], reasons["on"], strict=True))
    n = len(trajectories)
    print(f"{len(pool)} samples -> {n} trajectories; every check's verdict the same with hints on "
          f"and off; {reasons_differ} trajectories' reasons differ (a located box or score; the rotation check names the code's claim it confirmed)\n")
    kinds = ("crop", "contrast", "rotation")
    rotations = sum(1 for t in trajectories if pool[t.sample_id].task == "rotate")
    print("| round | threads | hints | audit CPU s | CPU ms/traj | wall s | locate calls (crop / "
          "contrast / rotation) | their CPU s | full searches | hints tried | confirmed | "
          f"rotation check CPU s ({rotations} traj) | ms each |")
    print("|---:|---:|---|---:|---:|---:|---|---|---|---|---|---:|---:|")
    for rnd, threads, mode, c, wall, n_ in rows:
        cols = [" / ".join(f"{n_.get((k, f), 0):{'.2f' if f == 'cpu' else '.0f'}}" for k in kinds)
                for f in Counts.FIELDS]
        check = n_.get(("rotation", "check_cpu"), 0)
        print(f"| {rnd} | {threads} | {mode} | {c:.2f} | {1000 * c / n:.1f} | {wall:.2f} | "
              + " | ".join(cols) + f" | {check:.2f} | {1000 * check / max(1, rotations):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
