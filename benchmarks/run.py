"""Run every benchmark and append the tables to docs/benchmarks.md: `make bench`.

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
    from sandbox.__main__ import main as sandbox_cli
    return sandbox_cli(["bench", "--jobs", str(args.jobs), "--rounds", str(args.rounds),
                        "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
