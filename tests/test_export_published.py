"""Exports from a published dataset directory (what a user downloads): both encodings, the
command line, the Dagster asset, quarantined rows, and the pieces each framework labels."""

from __future__ import annotations

import json

import export_data
import pytest
from dagster import DagsterInstance, materialize

from pipelines.__main__ import main
from pipelines.datasets.exports import ExportConfig, export
from pipelines.datasets.exports.llamafactory import llamafactory_messages
from pipelines.datasets.exports.segments import BadRow, response_segments
from sandbox.protocol import OUTPUT_OPEN

TWO = export_data.rows()["2round"][0][0]["response"]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_segments_cover_the_response_and_mark_outputs():
    segs = response_segments(TWO)
    assert "".join(s.text for s in segs) == TWO
    assert [s.sandbox for s in segs] == [False, True, False, True, False]
    assert [s.trained for s in segs] == [True, False, True, False, True]
    assert export_data.ERROR in segs[1].text
    last = response_segments(TWO, train_last_round_only=True)
    assert [s.trained for s in last] == [False, False, True, False, True]  # round 1 is before the last
    assert [s.trained for s in response_segments("a<sandbox_output>x</sandbox_output>b", True)] == \
        [True, False, True]                                                 # one round: all of it
    with pytest.raises(BadRow, match="never closed"):
        response_segments("a<sandbox_output>x")


def test_llamafactory_messages_alternate_and_rebuild_the_response():
    for last_round_only in (False, True):
        messages = llamafactory_messages("Q", TWO, last_round_only)
        roles = [m["role"] for m in messages]
        assert roles == ["user"] + ["assistant", "observation"] * 2 + ["assistant"]
        assert "".join(m["content"] for m in messages[1:]) == TWO
    messages = llamafactory_messages("Q", TWO, True)
    assert messages[1]["content"] == ""                      # round 1's text moved into the observation
    assert messages[2]["content"].startswith("<think>Crop the sign.")


@pytest.mark.parametrize("encoding", ["thyme", "hf"])
def test_published_dataset_exports_every_split(tmp_path, encoding):
    root = export_data.write_published(tmp_path / "pub", encodings=(encoding,))
    report = export(root, tmp_path / "swift", ExportConfig(format="swift"))
    assert report["rows"] == {"wo_thinking_thyme_single_round.jsonl": 1, "2round.jsonl": 1,
                              "computation.jsonl": 2}
    assert report["image_files"] == 5 and report["quarantined"] == {}
    for split, items in export_data.rows().items():
        for out, (row, images) in zip(_jsonl(tmp_path / "swift" / f"{split}.jsonl"), items, strict=True):
            assert out["id"] == row["id"]
            assert "".join(m["content"] for m in out["messages"] if m["role"] == "assistant") == row["response"]
            assert out["images"] == row["images"]               # the paths the prompt names
            assert [(tmp_path / "swift" / p).read_bytes() for p in out["images"]] == \
                [images[p] for p in row["images"]]
    assert "swift sft" in (tmp_path / "swift" / "README.md").read_text()


def test_bad_rows_are_quarantined_and_the_split_goes_on(tmp_path):
    good, images = export_data.rows()["2round"][0]
    unbalanced = {**good, "id": "unbalanced", "response": good["response"].replace("</sandbox_output>", "", 1)}
    missing = {**good, "id": "one-image-short", "images": good["images"][:1]}
    outside = {**good, "id": "image-in-reasoning",
               "response": good["response"].replace("<sandbox_output><image></sandbox_output>", "<image>")}
    root = export_data.write_published(tmp_path / "pub", encodings=("thyme",),
                                       extra={"2round": [(unbalanced, images), (missing, images),
                                                         (outside, images)]})
    report = export(root, tmp_path / "lf", ExportConfig(format="llamafactory"))
    assert report["rows"]["2round.jsonl"] == 1
    assert report["quarantined"] == {"unbalanced_tags": 1, "image_count": 1, "image_outside_output": 1}
    quarantine = _jsonl(tmp_path / "lf" / "quarantine.jsonl")
    assert {(q["id"], q["reason"]) for q in quarantine} == {
        ("unbalanced", "unbalanced_tags"), ("one-image-short", "image_count"),
        ("image-in-reasoning", "image_outside_output")}
    assert all(q["origin"].startswith("data/thyme/2round-00000.parquet:") for q in quarantine)
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["2round"]["tags"]["observation_tag"] == "observation"
    assert "template: thyme_qwen2_vl" in (tmp_path / "lf" / "README.md").read_text()
    assert "register_template" in (tmp_path / "lf" / "thyme_llamafactory.py").read_text()


def test_cli_writes_the_export_and_prints_the_report(tmp_path, capsys):
    root = export_data.write_published(tmp_path / "pub", encodings=("thyme",))
    assert main(["export", "--format", "trl", "--dataset", str(root), "--out", str(tmp_path / "trl"),
                 "--last-round-only", "--splits", "2round"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == {"2round.parquet": 1} and report["train_last_round_only"] is True
    assert "{%- set last_round_only = true %}" in (tmp_path / "trl" / "chat_template.jinja").read_text()
    with pytest.raises(ValueError, match="has none"):
        main(["export", "--format", "verl", "--dataset", str(root), "--out", str(tmp_path / "verl")])
    assert not (tmp_path / "verl").exists()


def test_dagster_asset_exports_the_published_dataset(tmp_path):
    from assets.exports import EXPORT_ASSETS
    from assets.resources import ThymeStorage

    export_data.write_published(tmp_path / "published" / "thyme-sft", encodings=("thyme", "hf"))
    swift_asset = next(a for a in EXPORT_ASSETS if a.key.path == ["exports", "swift"])
    result = materialize([swift_asset], instance=DagsterInstance.ephemeral(),
                         resources={"storage": ThymeStorage(root=str(tmp_path))})
    assert result.success
    meta = result.asset_materializations_for_node(swift_asset.op.name)[0].metadata
    assert meta["dagster/row_count"].value == 4 and meta["path"].value == "exports/swift"
    rows = _jsonl(tmp_path / "exports" / "swift" / "2round.jsonl")
    assert [m["loss"] for m in rows[0]["messages"] if m["role"] == "assistant"] == [True, False, True, False, True]
    assert all(m["content"].startswith(OUTPUT_OPEN) for m in rows[0]["messages"] if m.get("loss") is False)


def test_verl_from_a_published_rl_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user
    from pipelines.datasets.publish import encode_row, features

    image = export_data.png((10, 200, 10))
    path = export_data.image_path(image)
    user = render_user("Which colour?", path, (56, 56))
    row = {"messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": user}],
           "images": [path], "solution": "green", "question": "Which colour?", "id": "rl-1", "task": "crop",
           "has_image": True, "meta": "{}"}
    folder = tmp_path / "pub" / "data" / "thyme"
    folder.mkdir(parents=True)
    schema = features("rl", "thyme").arrow_schema
    pq.write_table(pa.Table.from_pylist([encode_row(row, "rl", "thyme", {path: image}.__getitem__)],
                                        schema=schema), folder / "train-00000.parquet")
    report = export(tmp_path / "pub", tmp_path / "verl", ExportConfig(format="verl"))
    assert report["rows"] == {"train.parquet": 1}
    table = pq.read_table(tmp_path / "verl" / "train.parquet").to_pylist()
    assert table[0]["prompt"] == row["messages"] and table[0]["images"][0]["bytes"] == image
    assert table[0]["reward_model"] == {"ground_truth": "green", "style": "rule"}
    assert table[0]["extra_info"]["split"] == "train" and table[0]["extra_info"]["id"] == "rl-1"
    with pytest.raises(ValueError, match="has none"):
        export(tmp_path / "pub", tmp_path / "trl", ExportConfig(format="trl"))
