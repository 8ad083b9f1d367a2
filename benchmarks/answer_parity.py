"""Answer checking against math-verify, on the parity table (tests/data/answer_parity.jsonl):
agreement counts and time per check, for the cascade (pipelines.core.answers.score_answer, math
stage in worker processes) and for math-verify called as its README shows (in this process).

    python benchmarks/answer_parity.py                      # counts and timings
    python benchmarks/answer_parity.py --baseline aac631d   # also an earlier cascade, by git rev
    python benchmarks/answer_parity.py --markdown           # the disagreements, for docs/answers.md

Each pair is checked once with the math stage's memo cleared (a first sight of the pair; the
workers are started before the clock runs). Results and their reading: docs/answers.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.core import answers, mathverify  # noqa: E402

TABLE = ROOT / "tests" / "data" / "answer_parity.jsonl"


def _cascade_at(rev: str):
    """pipelines/core/answers.py as it was at git revision `rev`, imported on its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:pipelines/core/answers.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "answers_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("answers_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["answers_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _timed(rows, check, before_each=None) -> tuple[list[bool], list[float]]:
    verdicts, seconds = [], []
    for row in rows:
        if before_each:
            before_each()
        t0 = time.perf_counter()
        verdicts.append(bool(check(row)))
        seconds.append(time.perf_counter() - t0)
    return verdicts, seconds


def _line(name: str, verdicts, seconds, rows, reference) -> str:
    n = len(rows)
    agree_mv = sum(v == m for v, m in zip(verdicts, reference, strict=True))
    agree_reader = sum(v == r["reader"] for v, r in zip(verdicts, rows, strict=True))
    ms = sorted(1000 * s for s in seconds)
    return (f"| {name} | {agree_mv}/{n} | {agree_reader}/{n} | {statistics.median(ms):.2f} | "
            f"{ms[int(0.9 * n)]:.1f} | {max(ms):.0f} | {sum(ms) / 1000:.1f} |")


def _markdown(rows) -> str:
    out = ["| group | given | truth | ours | math-verify | reader | why |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("why"):
            cells = [r["group"], f"`{r['given']}`", f"`{r['truth']}`",
                     *("yes" if r[k] else "no" for k in ("ours", "math_verify", "reader")), r["why"]]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="also time the cascade at this git revision")
    parser.add_argument("--markdown", action="store_true", help="print the disagreements table")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    rows = [json.loads(line) for line in TABLE.read_text().splitlines() if line.strip()]
    if args.markdown:
        print(_markdown(rows))
        return

    def ours(row):
        return answers.score_answer(f"<answer>{row['given']}</answer>", row["truth"],
                                    row.get("options")).correct

    ours(rows[0])
    mathverify.math_check("1", "1")                        # workers up before the clock
    reference, t_ref = _timed(rows, lambda r: mathverify.reference_verify(r["given"], r["truth"]))
    asked = []                                             # did the pair reach math-verify?

    def ours_noting_math(row):
        mathverify._memo.clear()
        verdict = ours(row)
        asked.append(bool(mathverify._memo))
        return verdict

    mine, t_mine = _timed(rows, ours_noting_math)
    print(f"{len(rows)} pairs; math-verify {mathverify.pool().workers} worker process(es), "
          f"timeout {mathverify.pool().timeout_s:g} s\n")
    print("| checker | agrees with math-verify | agrees with the reader | median ms | p90 ms | "
          "max ms | total s |\n|---|---:|---:|---:|---:|---:|---:|")
    if args.baseline:
        old = _cascade_at(args.baseline)
        verdicts, seconds = _timed(rows, lambda r: old.score_answer(
            f"<answer>{r['given']}</answer>", r["truth"], r.get("options")).correct)
        print(_line(f"cascade at {args.baseline}", verdicts, seconds, rows, reference))
    print(_line("cascade (this tree)", mine, t_mine, rows, reference))
    print(_line("math-verify alone, in-process", reference, t_ref, rows, reference))
    math_rows = [i for i, a in enumerate(asked) if a]
    pick = [[x[i] for i in math_rows] for x in (mine, t_mine, rows, reference, t_ref)]
    print(_line(f"cascade, the {len(math_rows)} pairs that reach math-verify", *pick[:4]))
    print(_line(f"math-verify alone, the same {len(math_rows)} pairs", pick[3], pick[4], pick[2],
                pick[3]))
    recorded = sum(r["ours"] == c for r, c in zip(rows, mine, strict=True))
    print(f"\nverdicts equal to the table's recorded ones: {recorded}/{len(rows)}")


if __name__ == "__main__":
    main()
