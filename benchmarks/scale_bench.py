"""Scale-out benchmark (issue 18), side by side in one run on the same shards:

  funnel    template teacher -> sandbox -> audit over the same generated pool, run by the local
            engine (this process), then on a real Ray cluster on this machine (`ray start`, one CPU
            per node, no dashboard) with one node and with two: trajectories/s and the speed-up
  ingest    the original Thyme image recipe against `python -m pipelines ingest` on the same
            generated Thyme-SFT parquet (`benchmarks/ingest_bench.py`'s recipe and data)
  4M pool   wall time extrapolated to 1, 4 and 16 nodes from the measured per-node rates, with
            the assumptions printed beside the table

    python benchmarks/scale_bench.py [--shards 8] [--shard-size 12] [--ingest-rows 4000]
                                     [--out docs/benchmarks.md]

Each Ray configuration first runs a warm-up over two shards (Ray starts a node's worker
processes on first use; a long run pays that once), then the timed run on a fresh data root (no
execution cache). Every configuration's audited files must equal the local run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from pipelines.pool.ingest import IngestConfig, ingest  # noqa: E402
from pipelines.samples.audit import AuditConfig  # noqa: E402
from pipelines.samples.stages import SandboxSpec, TeacherSpec  # noqa: E402
from pipelines.scale import open_engine  # noqa: E402
from pipelines.scale.funnel import layout_for, pool_keys, run_funnel  # noqa: E402

POOL_ROWS = 4_000_000
NODES = (1, 4, 16)


def fresh_root(pool: Path, under: Path, name: str, keys: list[str] | None = None) -> Path:
    """A data root holding a copy of the pool (only `keys`' sample files, if given)."""
    root = under / name
    shutil.copytree(pool, root / "pool", ignore=None if keys is None else
                    lambda d, names: [n for n in names if d.endswith("samples")
                                      and n.endswith(".parquet") and Path(n).stem not in keys])
    return root


def funnel(engine, root: Path) -> dict:
    layout = layout_for(root)
    t0 = time.perf_counter()
    report = run_funnel(engine, layout, pool_keys(layout), TeacherSpec(), SandboxSpec(),
                        AuditConfig())
    report["wall"] = time.perf_counter() - t0
    report["rate"] = report["totals"]["audit"]["trajectories"] / report["wall"]
    return report


def audited(root: Path) -> dict:
    from faults import outputs
    return outputs(root, ["code_samples", "executions", "audited"])


def ray_funnel(pool: Path, tmp: Path, nodes: int, keys: list[str]) -> dict:
    """The funnel on a fresh local cluster of `nodes` one-CPU nodes."""
    import ray
    from ray_cluster import LocalRayCluster

    cluster = LocalRayCluster(env={"PYTHONPATH": str(ROOT)}, wait=False)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(wait=False)
        cluster.started()
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(nodes)
        with open_engine("ray", tmp, cluster.address) as engine:
            funnel(engine, fresh_root(pool, tmp, f"warm-{nodes}", keys[:2]))
            report = funnel(engine, root := fresh_root(pool, tmp, f"ray-{nodes}"))
        report["root"] = root
        return report
    finally:
        ray.shutdown()
        cluster.stop()


def ingest_vs_original(rows: int, workers: int, tmp: Path) -> dict:
    from ingest_bench import ORIGINAL, make_parquet, run_measured
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "sft.parquet"
    make_parquet(src, rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    original, _ = run_measured([sys.executable, "-c", ORIGINAL, str(src), str(tmp / "orig"),
                                str(workers)], env)
    ours, _ = run_measured([sys.executable, "-m", "pipelines", "ingest", "--format", "thyme-sft",
                            "--input", str(src), "--out", str(tmp / "ours"), "--workers",
                            str(workers), "--shard-size", "5000", "--quiet"], env)
    return {"rows": rows, "original": original, "ours": ours}


def extrapolate(per_node: float, efficiency: float, ingest_rate: float) -> list[str]:
    lines = ["| nodes (1 CPU each) | funnel traj/s | funnel wall | ingest wall | total |",
             "|---:|---:|---:|---:|---:|"]
    for n in NODES:
        scale = 1.0 if n == 1 else n * efficiency
        funnel_s, ingest_s = POOL_ROWS / (per_node * scale), POOL_ROWS / (ingest_rate * scale)
        lines.append(f"| {n} | {per_node * scale:.1f} | {funnel_s / 3600:.1f} h | "
                     f"{ingest_s / 3600:.1f} h | {(funnel_s + ingest_s) / 3600:.1f} h |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=12)
    parser.add_argument("--ingest-rows", type=int, default=4000)
    parser.add_argument("--out", default=None, help="append the tables to this markdown file")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="thyme-scale-bench-") as tmp:
        tmp = Path(tmp)
        pool = tmp / "pool"
        ingest(IngestConfig(format="generated", out=str(pool), count=args.shards * args.shard_size,
                            shard_size=args.shard_size, workers=1), progress=False)
        keys = pool_keys(layout_for(tmp))
        with open_engine("local", tmp) as engine:
            local = funnel(engine, root := fresh_root(pool, tmp, "local"))
        expected = audited(root)
        runs = {n: ray_funnel(pool, tmp, n, keys) for n in (1, 2)}
        for n, report in runs.items():
            if audited(report["root"]) != expected:
                raise AssertionError(f"the {n}-node run's files differ from the local run's")
        ing = ingest_vs_original(args.ingest_rows, len(os.sched_getaffinity(0)), tmp / "ingest")

    one, two = runs[1]["rate"], runs[2]["rate"]
    speedup = two / one
    rows = args.shards * args.shard_size
    ingest_rate = ing["rows"] / ing["ours"] / len(os.sched_getaffinity(0))   # per core
    lines = [f"Machine: {os.cpu_count()} cores, load average {load:.1f} at the start; "
             f"{args.shards} shards x {args.shard_size} generated samples = {rows} trajectories "
             "(template teacher); every run's files equal the local run's", "",
             "| engine | nodes x CPUs | seconds | traj/s | teacher s | sandbox s | audit s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, shape, r in (("local (this process)", f"1 x {len(os.sched_getaffinity(0))}", local),
                           ("ray", "1 x 1", runs[1]), ("ray", "2 x 1", runs[2])):
        s = r["seconds"]
        lines.append(f"| {name} | {shape} | {r['wall']:.1f} | {r['rate']:.1f} | "
                     f"{s['code_samples']:.1f} | {s['executions']:.1f} | {s['audit']:.1f} |")
    lines += ["", f"- Ray, two one-CPU nodes over one: **{speedup:.2f}x** "
                  f"(parallel efficiency {speedup / 2:.0%})",
              "", f"Ingest, {ing['rows']} generated Thyme-SFT rows "
                  f"(`benchmarks/ingest_bench.py`'s data), {len(os.sched_getaffinity(0))} workers "
                  f"each: original recipe {ing['original']:.1f} s, `pipelines ingest` "
                  f"{ing['ours']:.1f} s: **{ing['original'] / ing['ours']:.1f}x**", "",
              f"4M-row pool, extrapolated from the one-node Ray rate ({one:.1f} traj/s per "
              f"one-CPU node), the measured two-node efficiency ({speedup / 2:.0%}) held for "
              f"every node count, and ingest at {ingest_rate:.0f} rows/s per core:", "",
              *extrapolate(one, speedup / 2, ingest_rate), "",
              "Assumptions: nodes like these (one CPU; a node with C cores runs C sandbox workers "
              "and C shard tasks, so divide by C); the template teacher (a model teacher adds its "
              "own GPU-bound time, which the vLLM actors spread over the GPU nodes); the shared "
              "filesystem keeps up (each trajectory reads one input image and writes its "
              "produced ones); shard scheduling overhead stays small against shards of thousands "
              "of rows (here shards are tiny, which understates the efficiency)."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(f"\n### `benchmarks/scale_bench.py` ({time.strftime('%Y-%m-%d')})\n\n{table}\n")
    return 0


if __name__ == "__main__":
    if "--help" not in sys.argv and subprocess.run(
            [sys.executable, "-c", "import ray"], capture_output=True).returncode:
        sys.exit("the scale benchmark needs Ray: pip install -c constraints.txt -e '.[cluster]'")
    sys.exit(main())
