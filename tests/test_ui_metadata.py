"""What the Dagster UI shows, checked without a browser: each partition's numbers as the instance
recorded them (what the asset pages read) against the files, checks evaluated per partition,
tables as table metadata, and previews whose markdown parses as intended under CommonMark (the
UI's renderer follows it): quoted text stays one code block, its `#` comments never become
headings, its tags stay literal, and images are shown rather than counted.

The screenshots themselves come from `scripts/ui_screenshots.py` (needs Chromium)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    TableMetadataValue,
    materialize,
)
from markdown_it import MarkdownIt

from assets.code_samples import audited, code_samples, executions
from assets.pool import source_manifest, source_pool
from assets.resources import (
    ClusterResource,
    JudgeResource,
    SandboxResource,
    TeacherResource,
    ThymeStorage,
)
from pipelines.core.previews import Table, example, fence, funnel_chart, thumbnails

SHARDS = ["shard-00000", "shard-00001"]
STAGES = {"pool/source_pool": "pool/samples", "samples/code_samples": "code_samples",
          "samples/executions": "executions", "samples/audited": "audited"}


def blocks(markdown: str) -> list:
    return MarkdownIt("commonmark").parse(markdown)


def test_a_fence_is_never_closed_by_the_text_it_quotes():
    text = ("<think>Crop the sign.\n<code>\n```python\n# the region around the sign\n"
            "img = Image.open(image_path)\n````\n```\n</code></think> <answer>**B**</answer>")
    tokens = blocks(fence(text))
    assert [t.type for t in tokens] == ["fence"]
    assert tokens[0].content == text + "\n"


def test_an_example_keeps_comments_tags_and_code_inside_its_block(tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (300, 200), "white").save(image)
    response = ("<think>Zoom in.\n<code>\n```python\n# crop the top left\nimg.crop((0, 0, 9, 9))\n"
                "```\n</code><sandbox_output>processed_1.png</sandbox_output></think> "
                "<answer>3</answer>")
    markdown = example("crop · 1 image(s)", [image, tmp_path / "gone.png"],
                       [("question", "# How many?"), ("response", response)])
    tokens = blocks(markdown)
    assert not [t for t in tokens if t.type == "heading_open"]
    fences = [t.content for t in tokens if t.type == "fence"]
    assert fences == ["# How many?\n", response + "\n"]
    inline = "".join(t.content for t in tokens if t.type == "inline")
    assert inline.count("![](data:image/jpeg;base64,") == 1 and "`gone.png: " in inline
    assert "data:image/jpeg;base64," in thumbnails([image])


def test_a_table_rejects_a_row_with_other_columns(tmp_path):
    with pytest.raises(ValueError, match="row 0"):
        Table([("a", "int")], [{"b": 1}])
    png = funnel_chart([("in", 10), ("after x", 7), ("passed", 5)], tmp_path / "f.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def funnel_run(tmp_path_factory):
    """The shard funnel over a range of two partitions in one run, on a generated pool."""
    root = tmp_path_factory.mktemp("ui") / "data"
    instance = DagsterInstance.ephemeral()
    resources = {"storage": ThymeStorage(root=str(root)), "sandbox": SandboxResource(workers=2),
                 "teacher": TeacherResource(), "judge": JudgeResource(),
                 "cluster": ClusterResource()}
    plan = {"ops": {"pool__source_manifest": {"config": {"count": 30, "shard_size": 15,
                                                         "workers": 1}}}}
    assert materialize([source_manifest], instance=instance, resources=resources,
                       run_config=plan).success
    assets = [source_manifest, source_pool, code_samples, executions, audited]
    result = materialize(assets, instance=instance, resources=resources,
                         selection=[AssetKey.from_user_string(k) for k in STAGES],
                         tags={"dagster/asset_partition_range_start": SHARDS[0],
                               "dagster/asset_partition_range_end": SHARDS[1]})
    assert result.success
    return instance, root, result


def _recorded(instance, key: str, partition: str) -> dict:
    """The metadata of a partition's latest materialization, as the instance holds it."""
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey.from_user_string(key), asset_partitions=[partition]),
        limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_each_partition_records_its_own_counts(funnel_run):
    instance, root, _ = funnel_run
    for key, folder in STAGES.items():
        for shard in SHARDS:
            rows = pq.read_table(root / folder / f"{shard}.parquet").num_rows
            meta = _recorded(instance, key, shard)
            assert meta["dagster/row_count"] == rows > 0, (key, shard)
    for shard in SHARDS:
        pool = _recorded(instance, "pool/source_pool", shard)
        assert pool["rows_in"] == 15 and pool["rows_out"] == pool["dagster/row_count"]
        audit = _recorded(instance, "samples/audited", shard)
        passed = sum(pq.read_table(root / "audited" / f"{shard}.parquet").column("passed").to_pylist())
        assert audit["passed"] == passed


def test_checks_are_evaluated_on_each_partition(funnel_run):
    _, _, result = funnel_run
    evaluations = {(c.asset_key.to_user_string(), c.check_name, c.partition): c
                   for c in result.get_asset_check_evaluations()}
    names = {"pool/source_pool": ("schema", "images_exist", "quarantine_rate"),
             "samples/audited": ("pass_rate", "every_trajectory_answers")}
    assert set(evaluations) == {(a, n, s) for a, ns in names.items() for n in ns for s in SHARDS}
    assert all(c.passed and c.target_materialization_data for c in evaluations.values())
    rates = {s: evaluations[("samples/audited", "pass_rate", s)].metadata["trajectories"].value
             for s in SHARDS}
    assert rates == {s: pq.read_table(
        Path(funnel_run[1]) / "audited" / f"{s}.parquet").num_rows for s in SHARDS}


def test_the_audit_reads_as_a_funnel_and_tables(funnel_run):
    instance, _, _ = funnel_run
    meta = _recorded(instance, "samples/audited", SHARDS[1])
    for name in ("funnel", "pass_rate_by_task"):
        assert isinstance(meta[name], TableMetadataValue), name
    funnel = [r.data for r in meta["funnel"].records]
    assert funnel[0]["remaining"] == meta["dagster/row_count"]
    assert [r["stage"] for r in funnel[1:-1]] == [f"after {c}" for c in (
        "executed", "result_kind", "image_sanity", "crop_semantics", "rotation_semantics",
        "contrast_semantics", "computation", "answer", "consistency")]
    assert funnel[-1] == {**funnel[-1], "stage": "passed", "remaining": meta["passed"]}
    assert sum(r["dropped_here"] for r in funnel) == meta["dagster/row_count"] - meta["passed"]
    assert meta["funnel_chart"].startswith("![audit funnel](data:image/png;base64,")


def test_trajectory_previews_render_as_blocks_with_images(funnel_run):
    instance, _, _ = funnel_run
    for key in ("samples/code_samples", "samples/executions"):
        preview = _recorded(instance, key, SHARDS[0])["preview"]
        tokens = blocks(preview)
        assert not [t for t in tokens if t.type == "heading_open"], key
        fences = [t.content for t in tokens if t.type == "fence"]
        assistant = [f for f in fences if f.startswith("<think>")]
        assert assistant and all("</think>" in f and "<answer>" in f for f in assistant), key
        # code keeps its lines (and its ```python fence) inside the block
        assert any("```python\n" in f for f in assistant), key
        images = "".join(t.content for t in tokens if t.type == "inline")
        assert images.count("data:image/jpeg;base64,") >= 3, key   # one input image per example
    executed = _recorded(instance, "samples/executions", SHARDS[0])["preview"]
    assert "<sandbox_output>" in executed
