"""The corpus-level dataset assets (assets.datasets) on an ephemeral instance: splits from the
audited shards with their blocking checks, then the published SFT and RL datasets; a failing
check stops publishing in the same run."""

from __future__ import annotations

import shutil

import pytest
import thyme_corpus
from dagster import AssetKey, DagsterInstance, materialize

from assets.datasets import DATASET_ASSETS
from assets.resources import ThymeStorage
from pipelines.core.prompts import load_prompt_set
from pipelines.datasets import validate
from pipelines.datasets.names import CHECKS, RL_ROW_CHECKS, SFT_ROW_CHECKS, SPLIT_CHECKS, SPLITS

RUN_CONFIG = {"ops": {"splits": {"config": {"test_share": 0.25}}}}


@pytest.fixture
def storage(tmp_path_factory, tmp_path):
    root, info = thyme_corpus.corpus(tmp_path_factory)
    data = tmp_path / "data"
    shutil.copytree(root, data)
    return ThymeStorage(root=str(data)), info


def test_every_named_check_exists_and_is_described():
    for name in SFT_ROW_CHECKS + RL_ROW_CHECKS + SPLIT_CHECKS:
        assert callable(getattr(validate, f"check_{name}")) and CHECKS[name]


def test_definitions_hold_the_dataset_assets():
    from assets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys >= {f"splits/{s}" for s in SPLITS} | {"datasets/thyme_sft", "datasets/thyme_rl"}


def test_splits_checks_and_published_datasets(storage):
    res, _ = storage
    # rendered with the released checkpoints' prompts: the set travels into both datasets
    run_config = {"ops": {"splits": {"config": {"test_share": 0.25, "prompt_set": "thyme-release"}}}}
    result = materialize(DATASET_ASSETS, instance=DagsterInstance.ephemeral(),
                         resources={"storage": res}, run_config=run_config)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 * len(SFT_ROW_CHECKS + SPLIT_CHECKS) + len(RL_ROW_CHECKS + SPLIT_CHECKS)
    assert all(c.passed for c in checks), [(c.asset_key, c.check_name) for c in checks if not c.passed]
    meta = {m.asset_key: {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()}
    single = meta[AssetKey(["splits", "wo_thinking_thyme_single_round"])]
    assert single["dagster/row_count"] == sum(r.data["rows"] for r in single["rows"].records) > 0
    assert {r.data["task"] for r in single["rows_by_task"].records
            if r.data["part"] == "train"} >= {"no_code", "crop"}
    assert "<think>" in single["preview"] and single["path"].endswith("splits/wo_thinking_thyme_single_round")
    # every image of a previewed row is shown, not counted
    assert single["preview"].count("data:image/jpeg;base64,") >= 3
    funnel = {r.data["stage"]: r.data["count"] for r in single["funnel"].records}
    assert funnel["rows in wo_thinking_thyme_single_round"] == single["dagster/row_count"]
    sft = meta[AssetKey(["datasets", "thyme_sft"])]
    assert {r.data["split"] for r in sft["rows"].records} == {
        "wo_thinking_thyme_single_round", "2round", "computation", "test"}
    assert sft["hub"]["dry_run"] is True and sft["path"].endswith("published/thyme-sft")
    assert (res.path("published", "thyme-sft", "README.md")).is_file()
    rl = meta[AssetKey(["datasets", "thyme_rl"])]
    def train_rows(value, key):
        return next(r.data["rows"] for r in value.records if r.data[key] == "train")
    assert train_rows(rl["rows"], "split") == train_rows(meta[AssetKey(["splits", "rl"])]["rows"], "part") > 0
    release = load_prompt_set("thyme-release")
    assert single["prompt_set"] == sft["prompt_set"] == rl["prompt_set"] == "thyme-release"
    for name in ("thyme-sft", "thyme-rl"):
        recorded = load_prompt_set(f"from:{res.path('published', name)}")
        assert (recorded.name, recorded.system, recorded.user) == ("thyme-release", release.system, release.user)


def test_a_failing_check_blocks_publishing(storage):
    res, info = storage
    # Lose a produced image: rows that show it must fail `images_exist`, and nothing publishes.
    produced = {p for t in info["trajectories"].values() for turn in t.code_turns
                for p in turn.result.images}
    for p in produced:
        res.path("pool", "images", p).unlink()
    result = materialize(DATASET_ASSETS, instance=DagsterInstance.ephemeral(),
                         resources={"storage": res}, run_config=RUN_CONFIG, raise_on_error=False)
    failed = {(c.asset_key.path[-1], c.check_name) for c in result.get_asset_check_evaluations()
              if not c.passed}
    assert not result.success and ("2round", "images_exist") in failed
    published = {m.asset_key for m in result.get_asset_materialization_events()}
    assert AssetKey(["datasets", "thyme_sft"]) not in published
    assert not res.path("published", "thyme-sft").exists()
    assert not res.path("published", "thyme-rl").exists()   # the whole step is blocked
