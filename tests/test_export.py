"""Exporters (pipelines.datasets.exports) over built splits: each output loads in the shape its
framework documents — TRL conversational vision rows, ms-swift messages JSONL, LLaMA-Factory
ShareGPT with dataset_info.json, verl RL parquet — and carries the same rows as the splits."""

from __future__ import annotations

import json

import pytest
import thyme_corpus
from PIL import Image

from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, parse_user
from pipelines.datasets.exports import ExportConfig, content_parts, export
from pipelines.datasets.names import PARTS, SFT_SPLITS
from pipelines.datasets.splits import SplitConfig, build_splits, iter_split


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root, _ = thyme_corpus.corpus(tmp_path_factory)
    d = tmp_path_factory.mktemp("export")
    build_splits(*thyme_corpus.files(root), d / "splits", SplitConfig(test_share=0.25))
    rows = {(s, p): [r for b in iter_split(d / "splits", s, p) for r in b]
            for s in (*SFT_SPLITS, "rl") for p in PARTS}
    return d, root / "pool" / "images", rows


def _load_parquet(path):
    from datasets import load_dataset
    return load_dataset("parquet", data_files=str(path), split="train",
                        cache_dir=str(path.parent.parent / "hf-cache"))


def test_trl_conversational_rows(splits):
    d, store, rows = splits
    counts = export(d / "splits", d / "trl", ExportConfig(format="trl"), store_root=store)
    assert counts["rows"]["2round-train.parquet"] == len(rows["2round", "train"]) > 0
    ds = _load_parquet(d / "trl" / "2round-train.parquet")
    for row, src in zip(ds, rows["2round", "train"], strict=True):
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        parts = [p for m in row["messages"] for p in m["content"]]
        assert sum(p["type"] == "image" for p in parts) == len(row["images"]) == len(src["images"])
        assert row["messages"][1]["content"][0] == {"type": "image", "text": None}
        assert all(isinstance(im, Image.Image) for im in row["images"])
        assistant = "".join("<image>" if p["type"] == "image" else p["text"]
                            for p in row["messages"][2]["content"])
        assert assistant == src["response"]


def test_content_parts_keep_image_order():
    assert content_parts("<image>\nQ") == [{"type": "image", "text": None}, {"type": "text", "text": "\nQ"}]
    assert [p["type"] for p in content_parts("a<image>b<image><image>c")] == \
           ["text", "image", "text", "image", "image", "text"]


def test_swift_jsonl(splits):
    d, store, rows = splits
    export(d / "splits", d / "swift", ExportConfig(format="swift"), store_root=store)
    lines = (d / "swift" / "computation-train.jsonl").read_text().splitlines()
    assert len(lines) == len(rows["computation", "train"]) > 0
    for line in lines:
        row = json.loads(line)
        assert [m["role"] for m in row["messages"][:3]] == ["system", "user", "assistant"]
        assert {m["role"] for m in row["messages"][2:]} == {"assistant"}   # one turn, cut in pieces
        assert row["messages"][0]["content"] == DEFAULT_SYSTEM_PROMPT
        pieces = row["messages"][2:]
        assert [p["loss"] for p in pieces] == [not p["content"].startswith("<sandbox_output>") for p in pieces]
        text = "".join(m["content"] for m in row["messages"])
        assert text.count("<image>") == len(row["images"])
        assert all((d / "swift" / p).is_file() and not p.startswith("/") for p in row["images"])


def test_llamafactory_sharegpt_with_dataset_info(splits):
    d, store, rows = splits
    export(d / "splits", d / "lf", ExportConfig(format="llamafactory"), store_root=store)
    info = json.loads((d / "lf" / "dataset_info.json").read_text())
    assert "wo_thinking_thyme_single_round_train" in info
    for entry in info.values():
        assert entry["formatting"] == "sharegpt"
        assert entry["tags"]["user_tag"] == "user" and entry["tags"]["assistant_tag"] == "assistant"
        for line in (d / "lf" / entry["file_name"]).read_text().splitlines():
            row = json.loads(line)
            assert set(entry["columns"].values()) <= set(row)
            roles = [m[entry["tags"]["role_tag"]] for m in row["messages"]]
            assert roles[0] == "user" and roles[-1] == "assistant" and len(roles) % 2 == 0
            assert all(r == ("assistant" if k % 2 else "observation") for k, r in enumerate(roles) if k)
            assert all(m["content"].startswith("<sandbox_output>") for m in row["messages"] if
                       m["role"] == "observation")
            assert row["system"] == DEFAULT_SYSTEM_PROMPT
            text = "".join(m["content"] for m in row["messages"])
            assert text.count("<image>") == len(row["images"])
            assert all((d / "lf" / p).is_file() for p in row["images"])   # media_dir = dataset_dir


def test_verl_parquet(splits):
    d, store, rows = splits
    counts = export(d / "splits", d / "verl", ExportConfig(format="verl"), store_root=store)
    assert counts["rows"]["rl-train.parquet"] == len(rows["rl", "train"]) > 0
    ds = _load_parquet(d / "verl" / "rl-train.parquet")
    assert set(ds.column_names) == {"data_source", "prompt", "images", "ability", "reward_model", "extra_info"}
    for row, src in zip(ds, rows["rl", "train"], strict=True):
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        user = row["prompt"][1]["content"]
        assert user.count("<image>") == len(row["images"]) == 1
        assert parse_user(user)[1]["original_path"] == src["images"][0]
        assert row["images"][0]["bytes"] == (store / src["images"][0].removeprefix("images/")).read_bytes()
        assert row["reward_model"] == {"ground_truth": src["solution"], "style": "rule"}
        assert row["extra_info"]["question"] == src["question"] and row["extra_info"]["split"] == "train"


def test_config_errors(splits):
    d, store, _ = splits
    with pytest.raises(ValueError, match="format"):
        ExportConfig(format="axolotl")
    with pytest.raises(ValueError, match="not rl splits"):
        export(d / "splits", d / "bad", ExportConfig(format="verl", splits=("2round-train",)), store_root=store)
    with pytest.raises(ValueError, match="--images"):
        export(d / "splits", d / "bad", ExportConfig(format="trl"))
    assert not (d / "bad").exists()
