"""The deployment matrix: which isolation mechanisms are active and which hostile snippets stay
contained on a bare host, in containers (Docker's default seccomp profile, the thyme.json
profile), rootless, under a restricted Kubernetes pod, and on kernels without Landlock.

    python benchmarks/sandbox_matrix.py [--modes host docker-default ...] [--json out.json]

Every mode but `host` is emulated on this host (tests/container_modes.py says how, and what is
not emulated). For each mode this starts a sandbox under the strict policy (does it refuse?),
then under the mode's weakest policy (what is active?), and runs the whole hostile suite
(tests/test_sandbox_hostile*.py) there with THYME_TEST_SANDBOX_MODE set: a passing test is a
contained snippet, a failing one is not (its first failure line says what got through). Prints
the markdown tables of docs/sandbox.md ("Where it runs"); ~5-10 minutes per mode on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import container_modes  # noqa: E402

HOSTILE_FILES = ["tests/test_sandbox_hostile.py", "tests/test_sandbox_hostile_next_job.py"]


def mechanisms(mode: container_modes.Mode) -> dict:
    """Start a one-worker sandbox in `mode`: strict first, then under the mode's policy."""
    import conftest

    from sandbox import Sandbox, SandboxUnavailable

    conftest._warm_for_forking()
    uid = 0 if "as_root" in mode.users else conftest.UNPRIVILEGED_UID
    results = tempfile.mkdtemp(prefix="thyme-matrix-")
    os.chown(results, uid, uid)
    launcher = conftest.launch_forked_as(uid, mode)
    out = {}
    try:
        try:
            Sandbox(workers=1, results_dir=results, isolation="strict", launcher=launcher).close()
            out["strict"] = "runs"
        except SandboxUnavailable as exc:
            out["strict"] = f"refused: {exc}"
        with Sandbox(workers=1, results_dir=results, isolation=mode.policy, launcher=launcher) as sb:
            out["report"] = sb.isolation_report
    finally:
        shutil.rmtree(results, ignore_errors=True)
    return out


def hostile_suite(mode: container_modes.Mode, timeout_s: int) -> dict:
    """Run both hostile files in `mode`; per test: passed (contained), failed, or skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        env = dict(os.environ, **{container_modes.ENV_VAR: mode.name}, PYTHONPATH=ROOT)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", *HOSTILE_FILES, "-q",
                               "-p", "no:cacheprovider", f"--timeout={timeout_s}",
                               f"--junitxml={junit}"], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t0
        if not os.path.exists(junit):
            raise RuntimeError(f"pytest produced no report in mode {mode.name}:\n{proc.stdout[-3000:]}")
        tests = {}
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"
            failure = case.find("failure")
            failure = case.find("error") if failure is None else failure
            if case.find("skipped") is not None:
                tests[name] = {"outcome": "skipped"}
            elif failure is not None:
                message = (failure.get("message") or failure.text or "").strip().splitlines()
                tests[name] = {"outcome": "failed", "why": message[0][:300] if message else ""}
            else:
                tests[name] = {"outcome": "passed"}
    return {"wall_s": round(wall, 1), "tests": tests}


def table(rows: dict) -> str:
    lines = ["| mode | emulated | strict policy | weakest policy that runs | active | "
             "snippet runs contained | not contained |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        mode = container_modes.MODES[name]
        counts = Counter(t["outcome"] for t in row["suite"]["tests"].values())
        ran = counts["passed"] + counts["failed"]
        report = row["mechanisms"]["report"]
        active = "+".join(f"landlock(ABI {report['landlock_abi']})" if m == "landlock" else m
                          for m in report["active"])
        lines.append(f"| {name} | {'yes' if mode.emulated else 'no'} | "
                     f"{'runs' if row['mechanisms']['strict'] == 'runs' else 'refuses'} | "
                     f"`{report['policy']}` | {active} | {counts['passed']}/{ran} | "
                     f"{counts['failed']} |")
    return "\n".join(lines)


def failures(rows: dict) -> str:
    """Per mode, the hostile tests with runs that were not contained: failed/ran runs, and the
    first failure line of one of them."""
    out = []
    for name, row in rows.items():
        by_test: dict[str, list] = {}
        for test, result in row["suite"]["tests"].items():
            if result["outcome"] != "skipped":
                by_test.setdefault(test.split("[")[0], []).append(result)
        failed = {t: rs for t, rs in by_test.items() if any(r["outcome"] == "failed" for r in rs)}
        if failed:
            out.append(f"\n**{name}**: {len(failed)} tests with runs not contained")
            for test, results in sorted(failed.items()):
                bad = [r for r in results if r["outcome"] == "failed"]
                out.append(f"- `{test}` ({len(bad)}/{len(results)}): {bad[0]['why'][:160]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(container_modes.MODES),
                        choices=list(container_modes.MODES))
    parser.add_argument("--timeout", type=int, default=180, help="per test, seconds")
    parser.add_argument("--json", help="also write the raw results here (after each mode); modes "
                                       "it already holds are not run again (delete it to remeasure)")
    args = parser.parse_args(argv)
    if os.getuid() != 0:
        parser.error("run as root: the modes drop to an unprivileged uid themselves")
    rows = {}
    if args.json and os.path.exists(args.json):
        with open(args.json) as f:
            rows = {k: v for k, v in json.load(f).items() if k in args.modes}
    for name in args.modes:
        if name in rows:
            print(f"[{name}] kept from {args.json}", file=sys.stderr)
            continue
        mode = container_modes.MODES[name]
        print(f"[{name}] {mode.description}", file=sys.stderr, flush=True)
        rows[name] = {"mechanisms": mechanisms(mode), "suite": hostile_suite(mode, args.timeout)}
        print(f"[{name}] suite took {rows[name]['suite']['wall_s']} s", file=sys.stderr, flush=True)
        if args.json:  # after every mode: a long run keeps what it measured
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(tmp, args.json)
    ordered = {name: rows[name] for name in args.modes}
    print(table(ordered))
    print(failures(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
