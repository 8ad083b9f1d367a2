"""Run every benchmark and append the tables to docs/benchmarks.md: `make bench`
(the sandbox throughput, then the ingest decode benchmark; ~10 minutes on 2 cores).

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
    return status or ingest.returncode


if __name__ == "__main__":
    sys.exit(main())
