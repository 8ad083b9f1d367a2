"""The pool assets, in-process on an ephemeral instance and through `dagster asset materialize`."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from PIL import Image

from assets.definitions import defs
from assets.pool import source_manifest, source_pool
from assets.resources import ClusterResource, ThymeStorage
from pipelines.core.formats import SourceRow, thyme_sft_table, write_parquet

MANIFEST = AssetKey(["pool", "source_manifest"])
POOL = AssetKey(["pool", "source_pool"])


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def sft_file(tmp_path) -> str:
    rows = [SourceRow(f"Question {i}?", [jpeg(i)], response=f"<answer>{i}</answer>") for i in range(5)]
    rows.append(SourceRow("Broken?", [b"garbage"], response="<answer>x</answer>"))
    path = tmp_path / "src" / "sft.parquet"
    path.parent.mkdir()
    write_parquet(thyme_sft_table(rows), path)
    return str(path)


def manifest_config(sft_file: str) -> dict:
    config = {"format": "thyme-sft", "inputs": [sft_file], "shard_size": 3, "workers": 1}
    return {"ops": {"pool__source_manifest": {"config": config}}}


def pool_config(max_quarantine_rate: float = 0.5) -> dict:
    return {"ops": {"pool__source_pool": {"config": {"max_quarantine_rate": max_quarantine_rate}}}}


def test_pool_assets_in_process(tmp_path, sft_file):
    instance = DagsterInstance.ephemeral()
    resources = {"storage": ThymeStorage(root=str(tmp_path / "data")), "cluster": ClusterResource()}
    result = materialize([source_manifest], instance=instance, resources=resources,
                         run_config=manifest_config(sft_file))
    assert result.success
    assert instance.get_dynamic_partitions("shards") == ["shard-00000", "shard-00001"]
    tags = {"dagster/asset_partition_range_start": "shard-00000",
            "dagster/asset_partition_range_end": "shard-00001"}
    result = materialize([source_manifest, source_pool], selection=[POOL], instance=instance,
                         resources=resources, run_config=pool_config(), tags=tags)
    assert result.success
    # one materialization per partition, each with that shard's own numbers (as its file holds)
    mats = {m.partition: {k: v.value for k, v in m.metadata.items()}
            for m in result.asset_materializations_for_node("pool__source_pool")}
    assert sorted(mats) == ["shard-00000", "shard-00001"]
    for key, meta in mats.items():
        kept = pq.read_table(tmp_path / "data" / "pool" / "samples" / f"{key}.parquet").num_rows
        quarantined = pq.read_table(tmp_path / "data" / "pool" / "quarantine" / f"{key}.parquet").num_rows
        assert meta["dagster/row_count"] == meta["rows_out"] == kept
        assert meta["quarantined"] == quarantined and meta["rows_in"] == 3
        assert "![](data:image/jpeg;base64," in meta["preview"]
    reasons = [r.data for r in mats["shard-00001"]["quarantined_by_reason"].records]
    assert reasons == [{"reason": "undecodable_image", "count": 1}]
    assert sum(m["rows_out"] for m in mats.values()) == 5
    # every check evaluated on each shard of the run, with that shard's own numbers
    checks = {(c.check_name, c.partition): c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {(name, key): True for name in ("schema", "images_exist", "quarantine_rate")
                      for key in ("shard-00000", "shard-00001")}
    rates = {c.partition: c.metadata["rate"].value for c in result.get_asset_check_evaluations()
             if c.check_name == "quarantine_rate"}
    assert rates == {"shard-00000": 0.0, "shard-00001": round(1 / 3, 4)}
    rows = [r for f in sorted((tmp_path / "data" / "pool" / "samples").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert [r["question"] for r in rows] == [f"Question {i}?" for i in range(5)]

    # Same inputs and config again: nothing to do.
    again = materialize([source_manifest, source_pool], selection=[POOL], instance=instance,
                        resources=resources, run_config=pool_config(), tags=tags)
    assert all(m.metadata["skipped"].value
               for m in again.asset_materializations_for_node("pool__source_pool"))


def test_blocking_quarantine_check_fails_the_run(tmp_path, sft_file):
    instance = DagsterInstance.ephemeral()
    resources = {"storage": ThymeStorage(root=str(tmp_path / "data")), "cluster": ClusterResource()}
    assert materialize([source_manifest], instance=instance, resources=resources,
                       run_config=manifest_config(sft_file)).success
    result = materialize([source_manifest, source_pool], selection=[POOL], instance=instance,
                         resources=resources, run_config=pool_config(0.01), partition_key="shard-00001",
                         raise_on_error=False)
    checks = {(c.check_name, c.partition): c.passed for c in result.get_asset_check_evaluations()}
    assert checks[("quarantine_rate", "shard-00001")] is False  # the broken row: 1 of 3
    assert not result.success           # blocking: the step fails once the results are recorded


def test_definitions_load_with_pool_assets():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"pool/source_manifest", "pool/source_pool"} <= keys


@pytest.mark.slow
def test_dagster_cli_materializes_one_shard_and_a_range(tmp_path, sft_file, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(Path("dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    cli = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "assets.definitions"]
    work = tmp_path / "work"  # data goes to DAGSTER_HOME/data wherever the command starts
    work.mkdir()
    env.pop("THYME_DATA", None)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo

    def run(*args, config):
        proc = subprocess.run([*cli, *args, "--config-json", json.dumps(config)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run("--select", "pool/source_manifest", config=manifest_config(sft_file))
    run("--select", "pool/source_pool", "--partition", "shard-00000", config=pool_config())
    assert (home / "data" / "pool" / "samples" / "shard-00000.parquet").exists()
    assert not (home / "data" / "pool" / "samples" / "shard-00001.parquet").exists()
    assert not (work / "data").exists()
    run("--select", "pool/source_pool", "--partition-range", "shard-00000...shard-00001",
        config=pool_config())
    assert (home / "data" / "pool" / "samples" / "shard-00001.parquet").exists()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.from_config(str(home))
    records = instance.fetch_materializations(POOL, limit=10).records
    assert len(records) >= 3  # one shard, then the range of two
