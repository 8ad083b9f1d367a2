"""Run every benchmark and append the tables to docs/benchmarks.md: `make bench`
(the sandbox throughput, the ingest decode benchmark, code-sample throughput through
teacher -> sandbox -> audit, the repetition detector, evaluation throughput and interval
widths, the sandbox over HTTP vs in process, padding-free SFT batches, GRPO-ATS with the hf and
vllm rollout engines, the splits build and decontamination against their baselines, and the
scale-out benchmark: one Ray node vs two, ingest vs the original recipe, the 4M-pool
extrapolation; ~100 minutes on 2 cores). The GRPO engine benchmark runs in
the vLLM environment (`.venv-vllm`, scripts/vllm_cpu_env.sh, which `make bench` sets up): never
two vLLM processes at once; where other vLLM jobs share the machine, run `make bench` under their
lock.

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
    vllm_python = os.path.join(ROOT, ".venv-vllm", "bin", "python")
    for python, script, title in (
            (sys.executable, "teacher_bench.py", "Code-sample throughput"),
            (sys.executable, "repetition_bench.py", "Repetition detector at 3,196 tokens"),
            (sys.executable, "eval_throughput.py", "Evaluation throughput, sequential vs batched"),
            (sys.executable, "eval_intervals.py", "Evaluation interval widths"),
            (sys.executable, "sandbox_service_bench.py", "Sandbox over HTTP vs in process"),
            (sys.executable, "sft_packing_bench.py", "SFT padded vs padding-free batches"),
            (vllm_python, "grpo_engine_bench.py", "GRPO-ATS rollout engines, hf vs vllm")):
        if not os.path.exists(python):
            print(f"benchmarks/{script}: no {os.path.relpath(python, ROOT)} (run "
                  "`bash scripts/vllm_cpu_env.sh`): not run", file=sys.stderr)
            status = status or 1
            continue
        run = subprocess.run([python, os.path.join(ROOT, "benchmarks", script)],
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT})
        print(run.stdout, end="")
        if run.returncode:
            print(f"benchmarks/{script} failed ({run.returncode}):\n{run.stderr[-3000:]}", file=sys.stderr)
        with open(args.out, "a") as f:
            f.write(f"\n### `benchmarks/{script}`: {title} ({today})\n\n{run.stdout}\n")
        status = status or run.returncode
    for script in ("splits_bench.py", "decontamination_bench.py", "scale_bench.py"):
        run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--out", args.out])
        status = status or run.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
