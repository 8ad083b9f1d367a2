"""CPU per sandbox call, by process: what one call costs the worker, its zygote, the children
(the code's child and the image checker, reaped or alive) and the caller. Calls run one after
another on one worker; CPU times come from /proc, so a machine shared with other work skews
them far less than wall times.

With `--against DIR` (another checkout, e.g. `git worktree add /tmp/base <commit>`), rounds
alternate between this tree and DIR, each in a fresh process, and the table shows both.
A last row, "funnel", runs the template teacher's trajectories on `--samples` generated samples
(the code-sample funnel's execute stage, one session per trajectory, one after another) and
gives CPU per trajectory. `--system-zlib` adds rows for this tree with the workers on the
system's zlib instead of the zlib-ng `make` builds (sandbox/deflate.py), alternating too.

`--floor` adds two rows that run the same trajectories' code without the sandbox, in a process
set up as a worker is (the same zlib and malloc settings, `warm_up`, a frozen heap), each block
repaired as the worker repairs it: "in one process" runs every trajectory in one forked process
(what the code itself costs), "a bare fork each" forks that process once per trajectory with no
confinement, zygote, worker, checker or pipes (what a fresh process per trajectory costs; the
trajectories that name sympy after it has warmed sympy too, as the worker's two zygotes are). The
gap from the second to the sandbox's funnel row is the sandbox's own machinery.

    python benchmarks/sandbox_call_cpu.py [--calls 300] [--rounds 4] [--samples 200] [--against DIR]
                                          [--system-zlib] [--floor]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PARTS = ("worker", "zygote", "children", "caller")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [1] ppid, [11] utime ... [14] cstime


def _cpu(worker: int, zygotes: list[int]) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    w, zs = _stat(worker), [_stat(z) for z in zygotes]
    children = sum(int(z[13]) + int(z[14]) for z in zs)  # reaped by the zygotes
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                s = _stat(int(entry))
            except OSError:
                continue
            if int(s[1]) in zygotes:
                children += int(s[11]) + int(s[12])  # still alive (a session, the checker)
    return {"worker": (int(w[11]) + int(w[12])) / tick,
            "zygote": sum(int(z[11]) + int(z[12]) for z in zs) / tick,
            "children": children / tick, "caller": time.process_time()}


def _zygotes(info: dict) -> list[int]:
    """A worker's zygotes (one before the lean/sympy split, sandbox.fork_server)."""
    return list(info.get("zygote_pids", {"": info["zygote_pid"]}).values())


def _funnel_sessions(samples: int, tmp: str) -> list[tuple[list[str], list[str]]]:
    """(inputs, code blocks) of each trajectory the template teacher writes on the pool."""
    from pipelines.core.images import ImageStore
    from pipelines.pool.generate import generate_samples
    from pipelines.samples.teachers import TemplateTeacher

    store = ImageStore(os.path.join(tmp, "images"))
    pool = {s.id: s for s in generate_samples(0, samples, 0, store)}
    teacher = TemplateTeacher(seed=0, multi_round_share=0.25)
    sessions = []
    for s in pool.values():
        for t in teacher.candidates(s):
            inputs = [str(store.path(s.images[0]))] if s.images else []
            sessions.append((inputs, [turn.code for turn in t.code_turns]))
    return sessions


def write_sessions(samples: int, folder: str) -> None:
    """The funnel's sessions, for `floor`, generated in a process of their own: the process that
    forks then holds no pool-generation garbage, as a zygote holds none."""
    Path(folder, "sessions.json").write_text(json.dumps(_funnel_sessions(samples, folder)))


def _run_blocks(image: str | None, scratch: str, blocks: list) -> None:
    """A trajectory's compiled blocks in one namespace, as a session runs them (a failed block
    is a result like any other; what the code prints is discarded)."""
    import contextlib
    import io

    from sandbox import runner

    namespace = runner.initial_namespace(image, scratch, "compat")
    with contextlib.redirect_stdout(io.StringIO()):
        for block in blocks:
            try:
                exec(block, namespace)
            except Exception:  # noqa: BLE001, S110
                pass


def floor(folder: str) -> dict[str, dict[str, float]]:
    """ms of CPU per trajectory for the funnel's code without the sandbox (see the docstring)."""
    import gc

    from sandbox import warm
    from sandbox.repair import RepairContext, image_size, output_subfolders, repair

    warm.warm_up()   # the lean zygote's warm-up; the sympy one's is added below, as a worker does
    sessions = json.loads(Path(folder, "sessions.json").read_text())
    jobs = []
    for k, (inputs, blocks) in enumerate(sessions):
        scratch = os.path.join(folder, f"scratch-{os.getpid()}", str(k))
        os.makedirs(scratch)
        compiled = []
        for code in blocks:   # repaired as the worker does, outside the measured part
            size = image_size(inputs[0]) if inputs else None
            fixed, _ = repair(code, RepairContext(inputs=inputs, image_size=lambda s=size: s,
                                                  output_dir=scratch))
            for sub in output_subfolders(fixed, scratch):
                os.makedirs(sub, exist_ok=True)
            compiled.append(compile(fixed, "<code>", "exec"))
        jobs.append((inputs[0] if inputs else None, scratch, compiled,
                     warm.needs_sympy(blocks[0]) if blocks else False))
    gc.collect()
    gc.freeze()

    def forked(body) -> float:
        pid = os.fork()
        if pid == 0:
            body()
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        return usage.ru_utime + usage.ru_stime

    def fork_each(sympy: bool) -> tuple[float, float]:
        parent = time.process_time()
        children = sum(forked(lambda job=job: _run_blocks(*job[:3])) for job in jobs
                       if job[2] and job[3] == sympy)
        return children, time.process_time() - parent

    children, parent = fork_each(sympy=False)      # from a process warmed as the lean zygote
    warm.warm_up_sympy()
    gc.freeze()
    more, more_parent = fork_each(sympy=True)      # ... and as the sympy zygote
    children, parent = children + more, parent + more_parent
    one = forked(lambda: [_run_blocks(*job[:3]) for job in jobs])
    n = len(jobs) / 1000
    zero = dict.fromkeys(PARTS, 0.0)
    return {"funnel, in one process": {**zero, "children": one / n},
            "funnel, a bare fork each": {**zero, "children": children / n, "caller": parent / n}}


def measure(calls: int, samples: int) -> dict[str, dict[str, float]]:
    """ms of CPU per call, by process, for each snippet (this process's `sandbox`)."""
    from sandbox import Sandbox
    from sandbox.bench import IMAGE_SNIPPET, SYMPY_SNIPPET, make_image

    out = {}
    with tempfile.TemporaryDirectory() as tmp, \
            Sandbox(workers=1, results_dir=os.path.join(tmp, "results")) as sb:
        handle = sb._handles[0]
        image = os.path.join(tmp, "bench.jpg")
        make_image(image)
        for _ in range(10):
            sb.run(IMAGE_SNIPPET, inputs=[image])
        for name, code, inputs, n in (("print(1)", "print(1)", [], calls),
                                      ("image", IMAGE_SNIPPET, [image], calls),
                                      ("sympy", SYMPY_SNIPPET, [], max(calls // 4, 1))):
            before = _cpu(handle.pid, _zygotes(handle.info))
            for _ in range(n):
                r = sb.run(code, inputs=inputs)
                if not r.ok:
                    raise RuntimeError(f"{name} failed: {r.error}")
            after = _cpu(handle.pid, _zygotes(handle.info))
            out[name] = {p: (after[p] - before[p]) / n * 1000 for p in PARTS}
        if samples:
            sessions = _funnel_sessions(samples, tmp)
            before = _cpu(handle.pid, _zygotes(handle.info))
            for inputs, blocks in sessions:
                if blocks:
                    with sb.session(inputs=inputs) as session:
                        for code in blocks:
                            session.run(code)  # a failed block is a result like any other
            after = _cpu(handle.pid, _zygotes(handle.info))
            out["funnel (per trajectory)"] = {p: (after[p] - before[p]) / len(sessions) * 1000
                                              for p in PARTS}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--samples", type=int, default=200,
                    help="generated samples for the funnel row (0: leave it out)")
    ap.add_argument("--against", help="another checkout to compare with, measured alternately")
    ap.add_argument("--system-zlib", action="store_true",
                    help="also this tree with the workers on the system's zlib")
    ap.add_argument("--floor", action="store_true",
                    help="add the funnel's code without the sandbox: in one process, a bare fork each")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write-sessions", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--floor-one", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.calls, args.samples)))
        return 0
    if args.write_sessions:
        write_sessions(args.samples, args.write_sessions)
        return 0
    if args.floor_one:
        print(json.dumps(floor(args.floor_one)))
        return 0
    trees = {"this tree": (str(HERE), {})}
    if args.system_zlib:
        trees["this tree, system zlib"] = (str(HERE), {"THYME_SANDBOX_ZLIB": "system"})
    if args.against:
        trees[f"{args.against}"] = (str(Path(args.against).resolve()), {})
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    floor_runs: list[dict] = []
    if args.floor:   # (this tree's sandbox: the floor rows run this tree's code)
        from sandbox import deflate
        from sandbox.core import worker_environment
        worker_env = worker_environment(deflate.resolve(None))   # the zlib and malloc a worker has
    with tempfile.TemporaryDirectory(prefix="thyme-call-cpu-") as tmp:
        sessions = os.path.join(tmp, "sessions")
        if args.floor:
            os.makedirs(sessions)
            _self(["--write-sessions", sessions, "--samples", str(args.samples)], {})
        for _ in range(args.rounds):
            for label, (root, extra) in trees.items():
                out = _self(["--one", "--calls", str(args.calls), "--samples", str(args.samples)],
                            {"PYTHONPATH": root, **extra})
                runs[label].append(json.loads(out))
            if args.floor:
                floor_runs.append(json.loads(_self(["--floor-one", sessions], worker_env)))
    if floor_runs:
        runs["this tree, without the sandbox"] = floor_runs
    print(f"CPU ms per call (median of {args.rounds} rounds of {args.calls} calls, one worker; "
          f"load {os.getloadavg()[0]:.1f})\n")
    print("| tree | snippet | worker | zygote | children | caller | total |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, rounds in runs.items():
        for snippet in rounds[0]:
            med = {p: statistics.median(r[snippet][p] for r in rounds) for p in PARTS}
            total = statistics.median(sum(r[snippet].values()) for r in rounds)
            print(f"| {label} | {snippet} | " + " | ".join(f"{med[p]:.2f}" for p in PARTS)
                  + f" | {total:.2f} |")
    return 0


def _self(args: list[str], env: dict[str, str]) -> str:
    """This script with `args` in a fresh process; its standard output."""
    env = {**os.environ, "PYTHONPATH": str(HERE), **env}
    return subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                          text=True, check=True).stdout


if __name__ == "__main__":
    sys.exit(main())
