"""The dataset assets on a released-shaped pool (issue 14): RL prompts from the pool, a benchmark
to keep out, a row set aside by validation below the allowed rate; the counts on the assets and
in the published card; a rate above the allowed one blocks publishing."""

from __future__ import annotations

import base64
import json

import pytest
import released_pool
from dagster import AssetKey, DagsterInstance, materialize

from assets.datasets import DATASET_ASSETS
from assets.resources import ThymeStorage


@pytest.fixture
def storage(tmp_path):
    info = released_pool.build(tmp_path / "data")
    plain = info["rl"]["plain"]
    image = (info["store"] / plain.images[0].relpath).read_bytes()
    (tmp_path / "data" / "bench").mkdir()
    (tmp_path / "data" / "bench" / "V_mini.jsonl").write_text(
        json.dumps({"id": "v1", "question": "What is it?", "image": base64.b64encode(image).decode()}) + "\n")
    return ThymeStorage(root=str(tmp_path / "data")), info


def _config(**extra):
    return {"ops": {"splits": {"config": {"test_share": 0.0, "rl_source": "pool", "rl_share": 0.0,
                                          "decontaminate": ["bench/V_mini.jsonl"], **extra}}}}


def test_counts_on_the_assets_and_in_the_card(storage):
    res, info = storage
    result = materialize(DATASET_ASSETS, instance=DagsterInstance.ephemeral(), resources={"storage": res},
                         run_config=_config())
    assert result.success
    meta = {m.asset_key: {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()}
    rl = meta[AssetKey(["splits", "rl"])]
    assert rl["rl_prompts"]["source"] == "pool" and rl["rl_prompts"]["taken"] == rl["dagster/row_count"] == 5
    assert rl["decontamination"]["V_mini"]["matched_samples"] == 1
    card = (res.path("published", "thyme-rl", "README.md")).read_text()
    assert "## Decontamination" in card and "`V_mini`" in card
    checks = {(c.asset_key.path[-1], c.check_name): c for c in result.get_asset_check_evaluations()}
    images = checks[("rl", "images_exist")].metadata
    assert images["allowed_rate"].value == 0.01 and images["quarantined"].value == 0


def test_a_missing_image_blocks_only_above_the_allowed_rate(storage):
    res, info = storage
    plain = info["rl"]["options"]
    res.path("pool", "images", plain.images[0].relpath).unlink()     # 1 RL prompt of 6
    # (without decontamination: it would keep the unreadable sample out itself, and say so)
    blocked = materialize(DATASET_ASSETS, instance=DagsterInstance.ephemeral(), resources={"storage": res},
                          run_config=_config(decontaminate=[]), raise_on_error=False)
    failed = {(c.asset_key.path[-1], c.check_name): c for c in blocked.get_asset_check_evaluations()
              if not c.passed}
    assert not blocked.success and set(failed) == {("rl", "images_exist")}
    meta = failed[("rl", "images_exist")].metadata
    assert meta["quarantined"].value == 1 and meta["quarantine_rate"].value == pytest.approx(1 / 6, abs=1e-3)
    (example,) = [r.data for r in meta["examples"].value.records]
    assert example["origin"] == "released.parquet row 5" and "no such file" in example["reason"]
    allowed = materialize(DATASET_ASSETS, instance=DagsterInstance.ephemeral(), resources={"storage": res},
                          run_config=_config(decontaminate=[], failure_rates={"images_exist": 0.25}))
    assert allowed.success
    card = res.path("published", "thyme-rl", "README.md").read_text()
    assert "## Rows set aside by validation" in card and "images_exist" in card
