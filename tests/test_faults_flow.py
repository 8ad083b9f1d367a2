"""kill -9 in every stage of the flow (issue 20): the real `dagster asset materialize` in a
subprocess, killed (the CLI process alone, as `kill -9 <pid>` or the OOM killer does) at a point
inside the stage; nothing it started may outlive it; a re-run then gives exactly what an
undisturbed run gives (ids, counts, checksums of every output file), with no partial file.

Kill points, all read from the disk (no test hook in the code): in the shard stages (source_pool,
code_samples, executions, audited), running a range of three shards, the moment the first shard's
output appears (the other two are still to come); in splits and publishing, the moment the
folder being written (its temporary) appears. Reference and re-runs are materialized in this
process on the same instance (the code path is the same; only the process differs).
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize
from faults import descendants, outputs, partial_files, survivors

from assets.code_samples import audited, code_samples, executions
from assets.datasets import DATASET_ASSETS
from assets.pool import source_manifest, source_pool
from assets.resources import (
    ClusterResource,
    JudgeResource,
    SandboxResource,
    TeacherResource,
    ThymeStorage,
)
from pipelines.datasets.names import SPLITS

REPO = Path(__file__).resolve().parent.parent
COUNT, SHARD_SIZE = 30, 10
SHARDS = [f"shard-{i:05d}" for i in range(COUNT // SHARD_SIZE)]
RANGE_TAGS = {"dagster/asset_partition_range_start": SHARDS[0],
              "dagster/asset_partition_range_end": SHARDS[-1]}
MANIFEST_CONFIG = {"ops": {"pool__source_manifest": {"config": {
    "count": COUNT, "shard_size": SHARD_SIZE, "workers": 2}}}}
ASSETS = [source_manifest, source_pool, code_samples, executions, audited, *DATASET_ASSETS]


def shard_stage(name: str, key: str, out: str, compared: list[str]) -> dict:
    return {"name": name, "keys": [AssetKey(key.split("/"))], "partitioned": True,
            "out": out, "compared": compared}


STAGES = [
    shard_stage("source_pool", "pool/source_pool", "pool/samples",
                ["pool/samples", "pool/quarantine", "pool/images"]),
    shard_stage("code_samples", "samples/code_samples", "code_samples", ["code_samples"]),
    shard_stage("executions", "samples/executions", "executions", ["executions", "pool/images"]),
    shard_stage("audited", "samples/audited", "audited", ["audited", "reports"]),
    {"name": "splits", "keys": [AssetKey(["splits", s]) for s in SPLITS], "partitioned": False,
     "writing": "splits", "compared": ["splits"]},
    {"name": "publishing", "keys": [AssetKey(["datasets", "thyme_sft"]), AssetKey(["datasets", "thyme_rl"])],
     "partitioned": False, "writing": "published/thyme-", "compared": ["published"]},
]


def new_home(path: Path) -> Path:
    path.mkdir()
    (path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return path


def in_process(home: Path, keys: list[AssetKey], partitioned: bool = True, run_config=None) -> None:
    """Materialize `keys` in this process on `home`'s instance (DAGSTER_HOME is set)."""
    resources = {"storage": ThymeStorage(root=str(home / "data")), "sandbox": SandboxResource(),
                 "teacher": TeacherResource(), "judge": JudgeResource(),
                 "cluster": ClusterResource()}
    result = materialize(ASSETS, selection=keys, instance=DagsterInstance.from_config(str(home)),
                         resources=resources, tags=RANGE_TAGS if partitioned else None,
                         run_config=run_config)
    assert result.success


def cli_args(stage: dict) -> list[str]:
    args = ["--select", ",".join(k.to_user_string() for k in stage["keys"])]
    if stage["partitioned"]:
        args += ["--partition-range", f"{SHARDS[0]}...{SHARDS[-1]}"]
    return args


def kill_during(home: Path, args: list[str], ready: Callable[[], bool], log: Path) -> set[int]:
    """Start the materialization, SIGKILL the CLI process the moment `ready()`; returns the
    processes it had started."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("THYME_DATA", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                                 "assets.definitions", *args], env=env, cwd=home,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    try:
        while not ready():
            assert proc.poll() is None, f"it ended ({proc.returncode}) before the kill point: " \
                                        + log.read_text()[-3000:]
            assert time.time() < deadline, "the kill point never came"
            time.sleep(0.005)
        started = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return started


@pytest.mark.slow
def test_kill_9_in_every_stage_then_a_rerun_matches_an_undisturbed_run(tmp_path, monkeypatch):
    monkeypatch.delenv("THYME_DATA", raising=False)
    reference, victim = new_home(tmp_path / "reference"), new_home(tmp_path / "victim")
    for home in (reference, victim):
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        in_process(home, [AssetKey(["pool", "source_manifest"])], partitioned=False,
                   run_config=MANIFEST_CONFIG)
    monkeypatch.setenv("DAGSTER_HOME", str(reference))
    expected = {}   # each stage's outputs as they stand after it
    for stage in STAGES:
        in_process(reference, stage["keys"], stage["partitioned"])
        expected[stage["name"]] = outputs(reference / "data", stage["compared"])

    data = victim / "data"
    for stage in STAGES:
        name = stage["name"]
        if stage["partitioned"]:
            first, last = (data / stage["out"] / f"{s}.parquet" for s in (SHARDS[0], SHARDS[-1]))
            ready = first.exists
        else:
            parent, prefix = (data / stage["writing"]).parent, (data / stage["writing"]).name
            ready = lambda parent=parent, prefix=prefix: parent.is_dir() and any(  # noqa: E731
                p.name.startswith(prefix) and p.name.endswith(".tmp") for p in parent.iterdir())
        started = kill_during(victim, cli_args(stage), ready, tmp_path / f"{name}.log")
        at_kill = outputs(data, stage["compared"])
        assert started, f"{name}: the kill came before the run had started its step"
        assert not survivors(started), f"{name}: processes outlived the killed run"
        assert outputs(data, stage["compared"]) == at_kill, f"{name}: the killed run kept writing"
        if stage["partitioned"]:
            assert not last.exists(), f"{name}: the kill came too late (every shard was done)"
        else:
            assert partial_files(data), f"{name}: the kill left nothing half-written to clean up"

        monkeypatch.setenv("DAGSTER_HOME", str(victim))
        in_process(victim, stage["keys"], stage["partitioned"])
        assert not partial_files(data), f"{name}: {partial_files(data)}"
        got = outputs(data, stage["compared"])
        assert got, name
        assert got == expected[name], f"{name}: outputs differ from the undisturbed run"
    everything = ["pool", "code_samples", "executions", "audited", "reports", "splits", "published"]
    assert outputs(data, everything) == outputs(reference / "data", everything)
