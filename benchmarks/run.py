"""Run every benchmark and append the tables to docs/benchmarks.md: `make bench`
(the sandbox throughput, the ingest decode benchmark, code-sample throughput through
teacher -> sandbox -> audit, the repetition detector, evaluation throughput and interval
widths, the sandbox over HTTP vs in process, and the scale-out benchmark: one Ray node vs two,
ingest vs the original recipe, the 4M-pool extrapolation; ~45 minutes on 2 cores; vLLM's part
runs in .venv-vllm: never two vLLM processes at once).

Each benchmark measures ratios side by side in one run (never a timed test)."""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = parser.parse_args()
    import subprocess

    from sandbox.__main__ import main as sandbox_cli
    status = sandbox_cli(["bench", "--jobs", str(args.jobs), "--rounds", str(args.rounds),
                          "--out", args.out])
    ingest = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ingest_bench.py"),
                             "--rows", "10000", "100000", "--out", args.out])
    status = status or ingest.returncode
    import datetime
    today = datetime.date.today().isoformat()
    for script, title in (("teacher_bench.py", "Code-sample throughput"),
                          ("repetition_bench.py", "Repetition detector at 3,196 tokens"),
                          ("eval_throughput.py", "Evaluation throughput, sequential vs batched"),
                          ("eval_intervals.py", "Evaluation interval widths"),
                          ("sandbox_service_bench.py", "Sandbox over HTTP vs in process")):
        run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script)],
                             capture_output=True, text=True)
        print(run.stdout, end="")
        with open(args.out, "a") as f:
            f.write(f"\n### `benchmarks/{script}`: {title} ({today})\n\n{run.stdout}\n")
        status = status or run.returncode
    scale = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scale_bench.py"),
                            "--out", args.out])
    return status or scale.returncode


if __name__ == "__main__":
    sys.exit(main())
