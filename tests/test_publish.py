"""Publishing (pipelines.datasets.publish): the dataset directory loads with `datasets` from its local
path in both image encodings, its rows equal the trajectories they came from, a published
Thyme-format split re-ingests through the Thyme-SFT reader unchanged, and the Hub push is a dry
run unless a repo id and a token are configured."""

from __future__ import annotations

import base64
import io

import pytest
import thyme_corpus
import yaml
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.prompts import parse_user, render_user
from pipelines.datasets.paths import dataset_path, rewrite_trajectory
from pipelines.datasets.publish import PublishConfig, publish, push
from pipelines.datasets.splits import SplitConfig, build_splits
from pipelines.pool.readers import Reader, list_units, read_unit

SFT_SPLITS = ["wo_thinking_thyme_single_round", "2round", "computation", "test"]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root, info = thyme_corpus.corpus(tmp_path_factory)
    d = tmp_path_factory.mktemp("publish")
    report = build_splits(*thyme_corpus.files(root), d / "splits", SplitConfig(test_share=0.25))
    store = root / "pool" / "images"
    sft = publish(d / "splits", store, d / "thyme-sft", PublishConfig(kind="sft", funnel=report))
    rl = publish(d / "splits", store, d / "thyme-rl", PublishConfig(kind="rl", funnel=report))
    return d, root, info, report, sft, rl


def _load(path, split, config=None):
    from datasets import load_dataset
    # The Arrow cache goes beside the dataset, not into the user's home.
    return load_dataset(str(path), config, split=split, cache_dir=str(path.parent / "hf-cache"))


def _store_bytes(root, path):
    return (root / "pool" / "images" / path.removeprefix("images/")).read_bytes()


def test_sft_rows_equal_their_trajectories_in_both_encodings(published):
    d, root, info, report, sft, _ = published
    assert sft["splits"] == SFT_SPLITS
    seen = 0
    for split in SFT_SPLITS:
        thyme, hf = _load(d / "thyme-sft", split), _load(d / "thyme-sft", split, "hf")
        assert len(thyme) == len(hf) == sft["rows"][split] > 0
        assert set(thyme.column_names) >= {"image", "question", "response", "task", "id", "has_image"}
        for row, row_hf in zip(thyme, hf, strict=True):
            traj = info["trajectories"][row["id"]]
            sample = info["samples"][traj.sample_id]
            path = dataset_path(sample.images[0].relpath) if sample.images else None
            size = (sample.images[0].width, sample.images[0].height) if sample.images else None
            assert row["question"] == render_user(sample.question, path, size)
            assert row["response"] == rewrite_trajectory(traj, path).render()
            assert (row["task"], row["has_image"]) == (traj.task, bool(sample.images))
            paths = ([path] if path else []) + [dataset_path(p) for t in traj.code_turns
                                                for p in t.result.images]
            expected = [_store_bytes(root, p) for p in paths]
            assert [base64.b64decode(b) for b in row["image"]] == expected
            assert row["response"].count("<image>") == len(row["image"]) - int(row["has_image"])
            assert {k: row_hf[k] for k in ("question", "response", "id")} == \
                   {k: row[k] for k in ("question", "response", "id")}
            assert all(isinstance(im, Image.Image) for im in row_hf["images"])
            assert [im.size for im in row_hf["images"]] == \
                   [Image.open(io.BytesIO(b)).size for b in expected]
            seen += 1
    assert seen == sum(sft["rows"].values())
    assert _load(d / "thyme-sft", "computation").unique("has_image") in ([True, False], [False, True])


def test_published_thyme_split_reingests_unchanged(published):
    d, root, info, *_ = published
    reader, store = Reader("thyme-sft"), ImageStore(d / "reingest-store")
    files = sorted((d / "thyme-sft" / "data" / "thyme").glob("2round-*.parquet"))
    rows = [(str(f), n, row) for f in files for unit in list_units(str(f)) for n, row, _ in read_unit(unit)]
    assert rows
    for file, n, row in rows:
        sample = reader.to_sample(file, n, row, store)
        traj = info["trajectories"][row["id"]]
        original = info["samples"][traj.sample_id]
        assert sample.question == original.question
        assert [im.hash for im in sample.images] == [original.images[0].hash]   # same bytes
        assert sample.answer == traj.answer
        assert sample.reference["response"] == row["response"]
        assert sample.meta["original_path"] == dataset_path(original.images[0].relpath)
        assert len(sample.reference["images"]) == row["response"].count("<image>")


def test_rl_dataset_ships_the_files_its_prompts_name(published):
    d, root, info, _, _, rl = published
    ds, ds_hf = _load(d / "thyme-rl", "train"), _load(d / "thyme-rl", "train", "hf")
    assert len(ds) == len(ds_hf) == rl["rows"]["train"] > 0
    for row, row_hf in zip(ds, ds_hf, strict=True):
        path = parse_user(row["messages"][1]["content"])[1]["original_path"]
        assert (d / "thyme-rl" / path).read_bytes() == base64.b64decode(row["images"][0])
        assert row_hf["images"][0].size == Image.open(d / "thyme-rl" / path).size
        assert row["solution"] == info["samples"][row["id"]].answer


def test_dataset_card(published):
    d, _, _, report, sft, _ = published
    text = (d / "thyme-sft" / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "apache-2.0"
    assert [c["config_name"] for c in header["configs"]] == ["thyme", "hf"]
    assert header["configs"][0]["default"] is True
    info = {i["config_name"]: i for i in header["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in info["hf"]["splits"]} == sft["rows"]
    assert {f["name"] for f in info["thyme"]["features"]} >= {"image", "question", "response"}
    assert '"pool_samples": 41' in text and "## Row counts" in text


def test_push_is_a_dry_run_without_repo_or_token(published, monkeypatch, capsys):
    d, *_ = published
    monkeypatch.delenv("HF_TOKEN", raising=False)
    plan = push(d / "thyme-sft", PublishConfig(kind="sft", repo_id="me/thyme-sft"))
    assert plan["dry_run"] and "HF_TOKEN" in plan["reason"]
    assert {f["path"] for f in plan["files"]} >= {"README.md", "data/thyme/2round-00000.parquet"}
    assert "would upload" in capsys.readouterr().out

    class FakeApi:  # the Hub is remote: record what would be sent
        calls = []

        def create_repo(self, repo_id, **kw):
            self.calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            self.calls.append(("upload_folder", kw["repo_id"], kw["folder_path"]))
            return "commit-1"

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    api = FakeApi()
    done = push(d / "thyme-sft", PublishConfig(kind="sft", repo_id="me/thyme-sft"), api=api)
    assert not done["dry_run"] and done["commit"] == "commit-1"
    assert [c[:2] for c in api.calls] == [("create_repo", "me/thyme-sft"), ("upload_folder", "me/thyme-sft")]
    assert api.calls[0][2]["repo_type"] == "dataset"


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="encodings"):
        PublishConfig(encodings=("base64",))
    with pytest.raises(ValueError, match="kind"):
        PublishConfig(kind="dpo")
