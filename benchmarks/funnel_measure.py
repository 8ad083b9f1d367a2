"""One measurement of the code-sample funnel (template teacher -> sandbox -> audit), in a process of
its own, for `teacher_bench.py --baseline`: it imports the `pipelines` and `sandbox` first on
PYTHONPATH, so the same measurement runs this checkout or an earlier commit's worktree (the
module layout before the pipelines/ packages were split is found too).

    PYTHONPATH=<tree> python benchmarks/funnel_measure.py --samples 200 --workers 2 --out r.json

It writes: seconds per stage, CPU seconds of the whole process tree from the teacher on (this
process, its threads, the sandbox workers, their zygotes and every child that ran code: the
process is their subreaper, so orphans are reaped and counted), the same per stage (the sandbox's
start-up measured apart, on an idle sandbox started and closed first), and each trajectory's
results (images by their pixels) and verdicts.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# The environment may hold the project installed in editable mode: its import finder would fill
# in, from the installed checkout, the modules an older tree lacks (`pipelines.core` for one).
# Only the tree on PYTHONPATH is measured.
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]

try:  # this checkout's layout
    from pipelines.core.images import ImageStore
    from pipelines.pool.generate import generate_samples
    from pipelines.samples.audit import AuditConfig, audit_many
    from pipelines.samples.execute import execute
    from pipelines.samples.teachers import TemplateTeacher
except ImportError:  # before the split into packages (e.g. f7f6ad4)
    from pipelines.audit import AuditConfig, audit_many
    from pipelines.execute import execute
    from pipelines.generate import generate_samples
    from pipelines.images import ImageStore
    from pipelines.teachers import TemplateTeacher
from sandbox import Sandbox  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process and every descendant reaped so far."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def self_cpu() -> float:
    """CPU seconds of this process (all its threads: the audit's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reap_orphans(timeout: float = 10.0) -> None:
    """Wait for the descendants that were re-parented to this subreaper (a worker's zygote)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def pixels_digest(path: Path) -> str:
    """What an image shows (mode, size, pixels), not its bytes: a PNG's bytes, and so its name in
    the content-addressed store, depend on the zlib that deflated it (sandbox/deflate.py)."""
    from PIL import Image
    with Image.open(path) as im:
        return hashlib.sha256(f"{im.mode} {im.size}".encode() + im.tobytes()).hexdigest()[:16]


def measure(samples: int, workers: int, seed: int, multi_round_share: float) -> dict:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    with tempfile.TemporaryDirectory(prefix="thyme-funnel-") as tmp:
        store = ImageStore(Path(tmp) / "images")
        pool = {s.id: s for s in generate_samples(0, samples, seed, store)}
        cpu_idle = tree_cpu()
        Sandbox(workers=workers, timeout=10).close()     # what starting and closing one costs
        reap_orphans()
        cpu_idle = tree_cpu() - cpu_idle
        cpu0, t_all = tree_cpu(), time.perf_counter()
        t0 = time.perf_counter()
        teacher = TemplateTeacher(seed=seed, multi_round_share=multi_round_share)
        trajectories = [t for s in pool.values() for t in teacher.candidates(s)]
        t_teacher = time.perf_counter() - t0
        cpu_teacher = tree_cpu() - cpu0
        t0 = time.perf_counter()
        sandbox = Sandbox(workers=workers, timeout=10)
        t_start = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            execute(trajectories, pool, store, sandbox)
            t_execute = time.perf_counter() - t0
        finally:
            t0 = time.perf_counter()
            sandbox.close()
            t_stop = time.perf_counter() - t0
        reap_orphans()
        cpu_sandbox = tree_cpu() - cpu0 - cpu_teacher
        t0, cpu_audit = time.perf_counter(), self_cpu()
        audited = audit_many(trajectories, pool, store.root, AuditConfig(workers=workers))
        t_audit = time.perf_counter() - t0
        cpu_audit = self_cpu() - cpu_audit
        wall = time.perf_counter() - t_all
        reap_orphans()
        cpu = tree_cpu() - cpu0
        verdicts = {t.id: {"passed": bool(t.passed), "checks": [[c.name, c.verdict] for c in t.audit],
                           "code": hashlib.sha256(json.dumps([c.code for c in t.code_turns]).encode())
                           .hexdigest()[:16],
                           "results": [[c.result.kind, c.result.text,
                                        [pixels_digest(store.root / rel) for rel in c.result.images]]
                                       for c in t.code_turns]}
                    for t in audited}
    return {"samples": len(pool), "trajectories": len(trajectories),
            "code_blocks": sum(len(t.code_turns) for t in trajectories), "workers": workers,
            "teacher": t_teacher, "sandbox_start": t_start, "execute": t_execute,
            "sandbox_stop": t_stop, "audit": t_audit, "wall": wall, "cpu": cpu,
            "cpu_teacher": cpu_teacher, "cpu_sandbox_start_stop": cpu_idle,
            "cpu_execute": cpu_sandbox - cpu_idle, "cpu_audit": cpu_audit,
            "passed": sum(v["passed"] for v in verdicts.values()), "verdicts": verdicts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--multi-round-share", type=float, default=0.25)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report = measure(args.samples, args.workers, args.seed, args.multi_round_share)
    Path(args.out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
