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


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (sandbox workers, ingest workers)."""
    import resource
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def fresh_root(pool: Path, under: Path, name: str, keys: list[str] | None = None) -> Path:
    """A data root holding a copy of the pool (only `keys`' sample files, if given)."""
    root = under / name
    shutil.copytree(pool, root / "pool", ignore=None if keys is None else
                    lambda d, names: [n for n in names if d.endswith("samples")
                                      and n.endswith(".parquet") and Path(n).stem not in keys])
    return root


def funnel(engine, root: Path) -> dict:
    """The funnel's report with its wall seconds and trajectories per second; run here (the
    local engine), also its CPU seconds (this process and the sandbox workers it reaped) and
    trajectories per CPU second: on a shared machine the wall rate depends on what else runs,
    the rate per CPU second is what a core delivers when it is the run's alone."""
    layout = layout_for(root)
    t0, c0 = time.perf_counter(), own_cpu()
    report = run_funnel(engine, layout, pool_keys(layout), TeacherSpec(), SandboxSpec(),
                        AuditConfig())
    report["wall"], report["cpu"] = time.perf_counter() - t0, own_cpu() - c0
    trajectories = report["totals"]["audit"]["trajectories"]
    report["rate"], report["cpu_rate"] = trajectories / report["wall"], trajectories / report["cpu"]
    return report


def audited(root: Path) -> dict:
    from faults import outputs
    return outputs(root, ["code_samples", "executions", "audited"])


def _first_difference(a: Path, b: Path, files: list[str]) -> str:
    import pyarrow.parquet as pq
    for name in files:
        if name.endswith(".parquet") and (a / name).exists() and (b / name).exists():
            for x, y in zip(pq.read_table(a / name).to_pylist(), pq.read_table(b / name).to_pylist(),
                            strict=False):
                if x != y:
                    keys = [k for k in x if x[k] != y.get(k)]
                    return f"{name} row {x.get('id')}: " + "; ".join(
                        f"{k}: {str(x[k])[:300]} != {str(y.get(k))[:300]}" for k in keys)
    return "no differing row found"


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
    c0 = own_cpu()
    original, _ = run_measured([sys.executable, "-c", ORIGINAL, str(src), str(tmp / "orig"),
                                str(workers)], env)
    c1 = own_cpu()
    ours, _ = run_measured([sys.executable, "-m", "pipelines", "ingest", "--format", "thyme-sft",
                            "--input", str(src), "--out", str(tmp / "ours"), "--workers",
                            str(workers), "--shard-size", "5000", "--quiet"], env)
    return {"rows": rows, "original": original, "ours": ours, "original_cpu": c1 - c0,
            "ours_cpu": own_cpu() - c1}


def extrapolate(per_node: float, efficiency: float, ingest_rate: float) -> list[str]:
    lines = ["| nodes (1 CPU each) | funnel traj/s | funnel wall | ingest wall | total |",
             "|---:|---:|---:|---:|---:|"]
    for n in NODES:
        scale = 1.0 if n == 1 else n * min(efficiency, 1.0)
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
            got = audited(report["root"])
            if got != expected:
                differ = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
                detail = _first_difference(root, report["root"], differ)
                raise AssertionError(f"the {n}-node run's files differ from the local run's: "
                                     f"{differ[:10]}; {detail}")
        ing = ingest_vs_original(args.ingest_rows, len(os.sched_getaffinity(0)), tmp / "ingest")

    one, two = runs[1]["rate"], runs[2]["rate"]
    speedup = two / one
    rows = args.shards * args.shard_size
    cores = len(os.sched_getaffinity(0))
    per_core, ingest_per_core = local["cpu_rate"], ing["rows"] / ing["ours_cpu"]
    lines = [f"Machine: {os.cpu_count()} cores, load average {load:.1f} at the start; "
             f"{args.shards} shards x {args.shard_size} generated samples = {rows} trajectories "
             "(template teacher); every run's files equal the local run's", "",
             "| engine | nodes x CPUs | seconds | traj/s | teacher s | sandbox s | audit s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, shape, r in (("local (this process)", f"1 x {cores}", local),
                           ("ray", "1 x 1", runs[1]), ("ray", "2 x 1", runs[2])):
        s = r["seconds"]
        lines.append(f"| {name} | {shape} | {r['wall']:.1f} | {r['rate']:.1f} | "
                     f"{s['code_samples']:.1f} | {s['executions']:.1f} | {s['audit']:.1f} |")
    lines += ["", f"- Ray, two one-CPU nodes over one: **{speedup:.2f}x** (parallel efficiency "
                  f"{speedup / 2:.0%}; both nodes share this machine's {cores} cores with "
                  f"whatever else runs: at load {load:.1f} this measures the machine, not Ray)",
              f"- local run: {local['cpu']:.1f} CPU s for {rows} trajectories, "
                  f"**{per_core:.2f} trajectories per CPU second** (sandbox workers included)",
              "", f"Ingest, {ing['rows']} generated Thyme-SFT rows "
                  f"(`benchmarks/ingest_bench.py`'s data), {cores} workers each: original recipe "
                  f"{ing['original']:.1f} s ({ing['original_cpu']:.1f} CPU s), `pipelines ingest` "
                  f"{ing['ours']:.1f} s ({ing['ours_cpu']:.1f} CPU s): "
                  f"**{ing['original'] / ing['ours']:.1f}x** wall, "
                  f"**{ing['original_cpu'] / ing['ours_cpu']:.1f}x** CPU", "",
              f"4M-row pool, extrapolated from the rates per CPU second ({per_core:.2f} "
              f"trajectories, {ingest_per_core:.0f} ingested rows), nodes of one CPU that is "
              "theirs, scaling linearly:", "",
              *extrapolate(per_core, 1.0, ingest_per_core), "",
              "Assumptions: linear scaling (each node adds its core's rate: shards are "
              "independent, every node reads and writes the shared filesystem directly, the "
              "driver only schedules); per-node overhead as measured here is left out (Ray's "
              "one-node run against the local one above shows it); a node with C cores runs C "
              "sandbox workers and C shard tasks: divide the times by C; the template teacher "
              "(a model teacher adds its GPU-bound time, spread over the vLLM actors); the shared "
              "filesystem keeps up; ingest spreads over the nodes like the funnel."]
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
