"""Splits benchmark (issue 18): `build_splits` on synthetic pool + audited shards, this tree's code
side by side with a baseline commit's (by default the last one before the build went columnar),
each build in its own process on the same shards:

    python benchmarks/splits_bench.py [--rows 10000 100000] [--shards 16] [--layout aligned mixed]
                                      [--baseline 5e697b7] [--out docs/benchmarks.md]

Per size and layout: wall seconds, pool rows per second, peak RSS, the most times any input file
was opened (inotify), whether both builds wrote identical files, and the speed-up; then the
4M-row pool's build time extrapolated linearly from the largest size (the build is linear in
rows and shards: tests/test_splits_linear.py). Layouts (tests/split_shards.py): `aligned`, audited
shard k holds pool shard k's samples (as the funnel writes them); `mixed`, every audited shard
holds samples of every pool shard. The baseline runs from a detached `git worktree` of its commit.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))     # run as a script or imported: its siblings
from trees import baseline_tree  # noqa: E402

BASELINE = "5e697b7"        # main before the columnar splits build (issue 18)
POOL_ROWS = 4_000_000


def run_one(code_root: str, data: str, out: str, workers: str) -> None:
    """(child process) Build the splits of `data` with the code under `code_root` (`workers` > 1:
    in that many processes); print JSON."""
    sys.path[:0] = [code_root, str(ROOT / "tests")]
    from file_opens import FileOpens
    from trees import peak_rss_mb

    from pipelines.datasets.splits import SplitConfig, build_splits
    data = Path(data)
    audited = sorted(str(p) for p in (data / "audited").glob("*.parquet"))
    samples = sorted(str(p) for p in (data / "pool" / "samples").glob("*.parquet"))
    with FileOpens([data / "audited", data / "pool" / "samples"]) as opens:
        start = time.perf_counter()
        report = build_splits(audited, samples, out, SplitConfig(), data / "pool" / "images",
                              **({"workers": int(workers)} if int(workers) > 1 else {}))
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                      "max_opens": max(opens.counts.values()), "rows": report["rows"]}))


def _build(code_root: Path, data: Path, out: Path, workers: int = 1) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--run-one", str(code_root), str(data), str(out), str(workers)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code_root)})
    if proc.returncode:
        raise RuntimeError(f"build with {code_root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--layout", nargs="+", choices=("aligned", "mixed"), default=["aligned", "mixed"])
    ap.add_argument("--baseline", default=BASELINE, help="commit whose build_splits is compared")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="append the results to this markdown file")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="also time this tree's build with this many processes (1: skip)")
    ap.add_argument("--run-one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one:
        run_one(*args.run_one)
        return 0
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import split_shards
    args.load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(dir=args.work) as tmp, baseline_tree(args.baseline, tmp) as base:
        tmp = Path(tmp)
        results = []
        for rows in args.rows:
            for layout in args.layout:
                data = tmp / f"data-{rows}-{layout}"
                start = time.perf_counter()
                split_shards.write(data, rows, args.shards, mixed=layout == "mixed")
                print(f"{rows} rows, {args.shards} shards, {layout}: data in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
                old = _build(base, data, tmp / "out-old")
                new = _build(ROOT, data, tmp / "out-new")
                same = _same_files(tmp / "out-old", tmp / "out-new")
                parallel = None
                if args.workers > 1:
                    parallel = _build(ROOT, data, tmp / "out-par", args.workers)
                    same = same and _same_files(tmp / "out-old", tmp / "out-par")
                results.append({"rows": rows, "layout": layout, "old": old, "new": new,
                                "parallel": parallel, "same": same})
                print(_line(results[-1]), flush=True)
                for d in ("out-old", "out-new", "out-par"):
                    subprocess.run(["rm", "-rf", str(tmp / d)], check=True)
                subprocess.run(["rm", "-rf", str(data)], check=True)
    text = _markdown(results, args)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return 0 if all(r["same"] for r in results) else 1


def _line(r: dict) -> str:
    old, new, par = r["old"], r["new"], r["parallel"]
    parallel = (f"{par['seconds']:.1f} ({old['seconds'] / par['seconds']:.2f}x)" if par else "-")
    return (f"| {r['rows']:,} | {r['layout']} | {old['seconds']:.1f} | {new['seconds']:.1f} | "
            f"{r['rows'] / old['seconds']:,.0f} | {r['rows'] / new['seconds']:,.0f} | "
            f"{old['peak_rss_mb']:,.0f} | {new['peak_rss_mb']:,.0f} | {old['max_opens']} | "
            f"{new['max_opens']} | {old['seconds'] / new['seconds']:.2f}x | {parallel} | "
            f"{'yes' if r['same'] else 'NO'} |")


def _markdown(results: list[dict], args) -> str:
    cpus = os.cpu_count()
    parallel = (f"parallel: rendering and validation in {args.workers} processes "
                "(`build_splits(workers=)`), its speed-up over the baseline" if args.workers > 1
                else "parallel: not run")
    lines = [f"### `benchmarks/splits_bench.py --rows {' '.join(map(str, args.rows))} --shards "
             f"{args.shards} --layout {' '.join(args.layout)} --workers {args.workers}` "
             f"({datetime.date.today()}, {cpus} cores, load average {args.load:.1f} at the start)", "",
             f"Baseline `{args.baseline}` (main before this change) and this tree, each "
             "build in its own process on the same synthetic shards (`tests/split_shards.py`: every "
             "row its own image files; 10% of samples with a second trajectory, 2% near "
             "duplicates), default `SplitConfig` (paper mix, RL share 0.2, test share 0.05). Rows: "
             f"pool samples; new: one process, as the baseline; {parallel}.", "",
             "| pool rows | layout | old s | new s | old rows/s | new rows/s | old peak RSS MB | "
             "new peak RSS MB | old max opens/file | new max opens/file | speed-up | parallel s | "
             "identical files |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             *(_line(r) for r in results), ""]
    largest = max(r["rows"] for r in results)
    for r in results:
        if r["rows"] == largest:
            scale = POOL_ROWS / r["rows"]
            par = (f", {r['parallel']['seconds'] * scale / 60:.0f} min in {args.workers} processes"
                   if r["parallel"] else "")
            lines.append(f"- 4M-row pool ({r['layout']}, extrapolated linearly from {largest:,} rows): "
                         f"old {r['old']['seconds'] * scale / 60:.0f} min, new "
                         f"{r['new']['seconds'] * scale / 60:.0f} min in one process{par}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
