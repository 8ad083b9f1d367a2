"""Decontamination at pool scale (issue 18): `find_contaminated` on a synthetic pool index against
a VLMEvalKit TSV, this tree's code side by side with a baseline commit's (by default the last one
before it went columnar), each in its own process on the same files:

    python benchmarks/decontamination_bench.py [--rows 2000 5000 10000 1000000]
                                               [--baseline-max-rows 10000] [--baseline 35ec961]

The pool asks what real pools ask: templated questions ("What is the colour of the {thing}?")
over a vocabulary, so the same text comes back for thousands of pictures, plus questions of
their own; 3 % of the samples reuse a benchmark question (some reworded), a few a benchmark
picture (the same file, or a near perceptual hash). Pool images are not decoded: their
perceptual hashes are in the cache the splits keep (`cache_dir`), as on any re-run, so the
figures are the matching's. Per size: seconds and peak RSS of each tree, whether both found the
same matches, and the 4M-row pool's time extrapolated from the largest size this tree ran (the
matching is linear in pool rows). The baseline compared every pair of alike pool questions, so it
runs only up to `--baseline-max-rows`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "35ec961"        # main before the columnar decontamination
POOL_ROWS = 4_000_000
THINGS = [f"{a} {b}" for a in ("red", "small", "old", "wooden", "striped", "bright", "broken", "tall")
          for b in ("bag", "car", "sign", "door", "lamp", "bottle", "chair", "clock", "kite", "boat",
                    "bench", "hat", "cup", "book", "bicycle", "umbrella", "dog", "bird", "tree", "window")]
TEMPLATES = ["What is the colour of the {}?", "Where is the {} in the picture relative to the person?",
             "Is the {} on the left or on the right side of the image?",
             "What is written on the label of the {} near the centre?"]


def write_data(d: Path, rows: int, seed: int = 0) -> None:
    """pool.parquet (the pool index columns decontamination reads), bench.tsv (200 items, 50
    pictures), cache/phash.parquet (every pool image's perceptual hash)."""
    import numpy as np
    import polars as pl
    from PIL import Image

    from pipelines.core.images import perceptual_hash

    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    pictures = []
    for k in range(50):
        pixels = np.random.default_rng(k).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).resize((256, 192)).save(buf, "PNG")
        pictures.append(buf.getvalue())
    bench_questions = [rng.choice(TEMPLATES).format(rng.choice(THINGS)) + f" Answer about item {k} of the set."
                       for k in range(200)]
    with open(d / "bench.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "answer", "A", "B"])
        for k, q in enumerate(bench_questions):
            w.writerow([k, base64.b64encode(pictures[k % 50]).decode() if k < 50 else str(k % 50), q, "A", "yes", "no"])
    import hashlib
    bench_sha = [hashlib.sha256(p).hexdigest() for p in pictures]
    bench_phash = [int(perceptual_hash(io.BytesIO(p)), 16) for p in pictures]
    ids, questions, hashes, paths, cache_sha, cache_phash = [], [], [], [], [], []
    for i in range(rows):
        r = rng.random()
        if r < 0.02:
            q = rng.choice(bench_questions)
        elif r < 0.03:
            q = rng.choice(bench_questions).replace("What is", "What's").replace("colour", "color")
        elif r < 0.75:
            q = rng.choice(TEMPLATES).format(rng.choice(THINGS))
        else:
            q = f"Describe what the {rng.choice(THINGS)} is doing in scene {rng.randrange(10**6)}."
        if r < 0.0005:
            sha, ph = bench_sha[i % 50], bench_phash[i % 50]
        else:
            sha = f"{rng.getrandbits(256):064x}"
            ph = bench_phash[i % 50] ^ 0b101 if 0.0005 <= r < 0.001 else rng.getrandbits(64)
        ids.append(f"s{i:08d}")
        questions.append(q)
        hashes.append([sha])
        paths.append([f"{sha[:2]}/{sha}.jpg"])
        cache_sha.append(sha)
        cache_phash.append(f"{ph:016x}")
    pl.DataFrame({"sample_id": ids, "question": questions, "image_hashes": hashes, "image_paths": paths,
                  "origin_file": ["pool.parquet"] * rows, "origin_row": list(range(rows))}).write_parquet(d / "pool.parquet")
    (d / "cache").mkdir(exist_ok=True)
    pl.DataFrame({"sha256": cache_sha, "phash": cache_phash}).unique("sha256").write_parquet(d / "cache" / "phash.parquet")


def run_one(code_root: str, data: str) -> None:
    """(child process) find_contaminated with the code under `code_root`; print JSON."""
    import hashlib
    sys.path.insert(0, code_root)
    import polars as pl
    from trees import peak_rss_mb  # (benchmarks/ is this script's folder)

    from pipelines.datasets.decontaminate import DecontaminationConfig, find_contaminated
    data = Path(data)
    pool = pl.read_parquet(data / "pool.parquet")
    cfg = DecontaminationConfig(benchmarks=(str(data / "bench.tsv"),), cache_dir=str(data / "cache"))
    start = time.perf_counter()
    matches, report = find_contaminated(pool, data / "images", cfg)
    seconds = time.perf_counter() - start
    canonical = sorted((sid, m["by"], m["item"]) for sid, ms in matches.items() for m in ms)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                      "report": report["benchmarks"]["bench"],
                      "matches": hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:16]}))


def _run(code_root: Path, data: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--run-one", str(code_root), str(data)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code_root)})
    if proc.returncode:
        raise RuntimeError(f"decontamination with {code_root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[2_000, 5_000, 10_000, 1_000_000])
    ap.add_argument("--baseline", default=BASELINE, help="commit whose find_contaminated is compared")
    ap.add_argument("--baseline-max-rows", type=int, default=10_000,
                    help="largest pool the baseline runs (it is quadratic in alike questions)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="append the results to this markdown file")
    ap.add_argument("--run-one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one:
        run_one(*args.run_one)
        return 0
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()[0]
    results = []
    from trees import baseline_tree
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, baseline_tree(args.baseline, tmp) as base:
        for rows in args.rows:
            data = Path(tmp) / f"data-{rows}"
            write_data(data, rows)
            old = _run(base, data) if rows <= args.baseline_max_rows else None
            new = _run(ROOT, data)
            results.append({"rows": rows, "old": old, "new": new,
                            "same": None if old is None else old["matches"] == new["matches"]})
            print(_line(results[-1]), flush=True)
            subprocess.run(["rm", "-rf", str(data)], check=True)
    largest = results[-1]
    text = "\n".join([
        f"### `benchmarks/decontamination_bench.py --rows {' '.join(map(str, args.rows))}` "
        f"({datetime.date.today()}, {os.cpu_count()} cores, load average {load:.1f} at the start)", "",
        f"Baseline: {args.baseline} (every pair of alike pool questions clustered). Pool questions: "
        "72 % from 4 templates over 160 things, 3 % a benchmark question or a rewording, the rest "
        "their own; 200 benchmark items, 50 pictures; pool images' perceptual hashes cached.", "",
        "| pool rows | baseline s | this tree s | baseline peak RSS MB | this tree peak RSS MB | "
        "speed-up | matched samples (question / image exact / perceptual) | same matches |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
        *(_line(r) for r in results), "",
        f"- 4M-row pool, extrapolated linearly from {largest['rows']:,} rows: this tree "
        f"{largest['new']['seconds'] * POOL_ROWS / largest['rows'] / 60:.1f} min",
    ])
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text + "\n")
    return 0 if all(r["same"] in (None, True) for r in results) else 1


def _line(r: dict) -> str:
    old, new = r["old"], r["new"]
    rep = new["report"]
    counts = f"{rep['by_question']} / {rep['by_image_exact']} / {rep['by_image_perceptual']}"
    if old is None:
        return (f"| {r['rows']:,} | not run | {new['seconds']:.2f} | - | {new['peak_rss_mb']:,.0f} | - | "
                f"{counts} | - |")
    return (f"| {r['rows']:,} | {old['seconds']:.2f} | {new['seconds']:.2f} | {old['peak_rss_mb']:,.0f} | "
            f"{new['peak_rss_mb']:,.0f} | {old['seconds'] / new['seconds']:.1f}x | {counts} | "
            f"{'yes' if r['same'] else 'NO'} |")


if __name__ == "__main__":
    raise SystemExit(main())
