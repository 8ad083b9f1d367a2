"""A real pool through the new stages, as Dagster assets, on real photographs (scikit-image's
photos, hand-annotated): ground truth from the source's columns (a bad box quarantined), rotated
and low-contrast copies, the template teacher, the sandbox, the audit judging the real boxes,
angles and transforms, a human review whose rejections the splits leave out, and the funnel
report of what every stage kept and dropped."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from real_photos import PHOTOS, write_photos

from assets.augment import augmented
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
from assets.review import REVIEW_ASSETS
from pipelines.funnel import funnel_report, markdown

ASSETS = [source_manifest, source_pool, augmented, code_samples, executions, audited,
          *REVIEW_ASSETS, *DATASET_ASSETS]
SHARD = "shard-00000"


def source_rows(folder) -> str:
    files = write_photos(folder / "photos")
    rows = []
    for name, fname in files.items():
        question, answer, (x1, y1, x2, y2), category, target = PHOTOS[name]
        rows.append({"question": question, "image": fname, "answer": answer, "category": category,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "target": target})
    rows.append({**rows[0], "question": "Where is the flag?", "bbox": [480, 10, 90, 40]})  # outside
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_a_real_pool_through_the_new_stages(tmp_path):
    instance = DagsterInstance.ephemeral()
    root = tmp_path / "data"
    resources = {"storage": ThymeStorage(root=str(root)), "sandbox": SandboxResource(workers=2),
                 "teacher": TeacherResource(multi_round_share=0.0), "judge": JudgeResource(),
                 "cluster": ClusterResource()}
    plan = {"format": "generic", "inputs": [source_rows(tmp_path)], "image_root": str(tmp_path / "photos"),
            "shard_size": 100, "workers": 1,
            "mapping": {"box": "bbox", "box_format": "xywh", "category": "category",
                        "target": "target", "set_task": "auto", "source": "photos"}}
    assert materialize([source_manifest], instance=instance, resources=resources,
                       run_config={"ops": {"pool__source_manifest": {"config": plan}}}).success
    funnel = {"ops": {"pool__augmented": {"config": {"rotate_share": 1.0, "contrast_share": 1.0}},
                      "samples__audited": {"config": {"min_pass_rate": 0.0}},
                      "pool__source_pool": {"config": {"max_quarantine_rate": 0.5}}}}
    result = materialize(ASSETS, instance=instance, resources=resources, partition_key=SHARD,
                         run_config=funnel,
                         selection=[AssetKey(k) for k in (["pool", "source_pool"], ["pool", "augmented"],
                                                           ["samples", "code_samples"],
                                                           ["samples", "executions"], ["samples", "audited"])])
    assert result.success
    (aug,) = list(result.asset_materializations_for_node("pool__augmented"))
    by_transform = aug.metadata["by_transform"].value
    # five photos are 300-640 px; `page` (384x191) is below min_side and gets no copy
    assert by_transform["rotate"] == {"kept": 5, "too_small": 1}
    assert by_transform["low_contrast"] == {"kept": 5, "too_small": 1}

    report = funnel_report(root)
    pool = report["pool"]
    assert pool["kept"] == 6 and pool["quarantined_by_reason"] == {"bad_ground_truth": 1}
    assert pool["with_ground_truth"]["box"] == 6 and pool["with_ground_truth"]["category"] == 6
    audit = report["audited"]["by_task"]
    # the copies went through the teacher, the sandbox and the audit with the shard's samples
    assert audit["rotate"]["trajectories"] == 5 and audit["contrast"]["trajectories"] == 5
    assert audit["rotate"]["checks"]["rotation_semantics"].get("pass", 0) == 5
    assert audit["contrast"]["checks"]["contrast_semantics"].get("pass", 0) >= 4
    # real boxes make the crop check judge real crops (page's box is the whole page: set_task
    # auto leaves it without a task). The template's margins around the large targets of these
    # small photos (12-15% of the image) crop over half of it: not a zoom-in, and dropped.
    assert audit["crop"]["checks"]["crop_semantics"] == {"pass": 2, "fail": 3}
    reasons = [c["reason"] for f in (root / "audited").glob("*.parquet")
               for r in pq.read_table(f).to_pylist() for c in r["audit"]
               if c["name"] == "crop_semantics" and c["verdict"] == "fail"]
    assert all("not a zoom-in" in r for r in reasons), reasons

    # review: export, two reviewers fill the form, import; the splits leave rejections out
    result = materialize(ASSETS, instance=instance, resources=resources,
                         run_config={"ops": {"review__export": {"config": {"per_stratum": 3}}}},
                         selection=[AssetKey(["review", "export"])])
    assert result.success
    export = root / "review" / "export"
    with open(export / "verdicts-template.csv") as f:
        items = list(csv.DictReader(f))
    passed = [i for i in items if i["audit"] == "pass"]
    reject = {passed[0]["trajectory_id"]}                  # the reviewers disagree with the audit
    for who in ("ana", "ben"):
        with open(root / "review" / "returned" / f"{who}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(items[0]))
            w.writeheader()
            for i in items:
                verdict = "reject" if i["audit"] == "fail" or i["trajectory_id"] in reject else "accept"
                w.writerow({**i, "verdict": verdict, "reviewer": who})
    splits_config = {"single_round_mix": {}, "test_share": 0.5, "rl_share": 0.0, "min_rows": 0}
    result = materialize(ASSETS, instance=instance, resources=resources, raise_on_error=False,
                         run_config={"ops": {"splits": {"config": splits_config}}},
                         selection=[AssetKey(["review", "verdicts"])] + [
                             AssetKey(["splits", s]) for s in ("wo_thinking_thyme_single_round",
                                                               "2round", "computation", "rl")])
    (verdicts,) = list(result.asset_materializations_for_node("review__verdicts"))
    assert verdicts.metadata["rejected_trajectories"].value == len(items) - len(passed) + 1
    report = funnel_report(root)
    assert report["review"]["agreement_with_audit"] == round(1 - 1 / len(items), 4)
    assert report["splits"]["dropped"]["review_rejected"] == 1
    # a copy and its source are held out together: no source image on both sides
    single = root / "splits" / "wo_thinking_thyme_single_round"
    samples = {r["id"]: json.loads(r["meta"]) for f in ("pool", "augmented")
               for p in (root / f / "samples").glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    sides = {}
    for part in ("train", "test"):
        for row in pq.read_table(single / f"{part}.parquet").to_pylist():
            meta = samples[row["sample_id"]]
            root_image = meta.get("lineage", {}).get("image") or row["image_key"]
            sides.setdefault(root_image, set()).add(part)
    assert sides and all(len(s) == 1 for s in sides.values()), sides
    print("\n" + markdown(report))


@pytest.mark.slow
def test_a_model_teacher_in_the_loop_through_the_teacher_resource(tmp_path):
    """The code_samples asset opens the sandbox for a model teacher in the loop; the executions
    stage then finds every result in the cache the teacher filled."""
    from fake_openai import FakeOpenAI, loop_reply

    server = FakeOpenAI(loop_reply(), honour_stop=True)
    try:
        instance = DagsterInstance.ephemeral()
        root = tmp_path / "data"
        teacher = TeacherResource(kind="openai", model="fake-vlm", base_url=server.url,
                                  api_key_env="THYME_TEST_NO_KEY", loop="prefill",
                                  multi_round_share=1.0)
        resources = {"storage": ThymeStorage(root=str(root)), "sandbox": SandboxResource(workers=2),
                     "teacher": teacher, "judge": JudgeResource(), "cluster": ClusterResource()}
        plan = {"format": "generic", "inputs": [source_rows(tmp_path)], "workers": 1,
                "image_root": str(tmp_path / "photos"), "shard_size": 100,
                "mapping": {"box": "bbox", "box_format": "xywh", "set_task": "auto"}}
        assert materialize([source_manifest], instance=instance, resources=resources,
                           run_config={"ops": {"pool__source_manifest": {"config": plan}}}).success
        result = materialize(ASSETS, instance=instance, resources=resources, partition_key=SHARD,
                             run_config={"ops": {"pool__source_pool": {"config": {"max_quarantine_rate": 0.5}},
                                                 "samples__audited": {"config": {"min_pass_rate": 0.0}}}},
                             selection=[AssetKey(k) for k in (["pool", "source_pool"], ["pool", "augmented"],
                                                               ["samples", "code_samples"],
                                                               ["samples", "executions"], ["samples", "audited"])])
    finally:
        server.close()
    assert result.success
    (code,) = list(result.asset_materializations_for_node("samples__code_samples"))
    stats = code.metadata["teacher_stats"].value
    assert stats["mode"] == "loop:prefill" and stats["loop"]["end:answer"] == 6
    # every crop sample drew a two-round plan; the cat's eyes fill too much of the photo for a
    # wrong region to exist, so that plan falls back to one round; the page is answered directly
    assert stats["loop"]["plan:error_correction"] == 2 and stats["loop"]["plan:further_enhancement"] == 3
    by_kind = {r.data["kind"]: r.data["count"] for r in code.metadata["by_kind"].value.records}
    assert by_kind == {"further_enhancement": 3, "error_correction": 1, "single": 1, "direct": 1}
    (ex,) = list(result.asset_materializations_for_node("samples__executions"))
    assert ex.metadata["cache_misses"].value == 0
    assert ex.metadata["cache_hits"].value == stats["loop"]["code_run"] == 9
    rows = pq.read_table(root / "audited" / f"{SHARD}.parquet").to_pylist()
    assert all(json.loads(r["lineage"])["mode"] == "loop" for r in rows)


def test_the_command_line_recipes(tmp_path, capsys):
    """V*-Bench rows -> ingest with the preset -> rotated copies -> the funnel, from the shell."""
    from real_photos import write_vstar_bench

    from pipelines.__main__ import main

    write_vstar_bench(tmp_path / "vstar", ("astronaut", "coffee", "rocket"))
    assert main(["vstar-rows", "--bench", str(tmp_path / "vstar"), "--out", str(tmp_path / "v.jsonl")]) == 0
    assert main(["ingest", "--format", "generic", "--input", str(tmp_path / "v.jsonl"), "--image-root",
                 str(tmp_path / "vstar"), "--map", "preset=vstar", "--out", str(tmp_path / "data" / "pool"),
                 "--workers", "1", "--quiet"]) == 0
    assert main(["augment", "--pool", str(tmp_path / "data" / "pool"), "--out",
                 str(tmp_path / "data" / "augmented"), "--rotate-share", "1"]) == 0
    capsys.readouterr()
    assert main(["funnel", "--data", str(tmp_path / "data")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pool"]["kept"] == 3 and report["pool"]["with_ground_truth"]["box"] == 3
    assert report["pool"]["by_source"] == {"vstar": {"samples": 3, "box": 3, "angle": 0}}
    assert report["augmented"]["by_transform"]["rotate"] == {"kept": 3}
    assert main(["funnel", "--data", str(tmp_path / "data"), "--markdown"]) == 0
    assert "| rotate | 3 |" in capsys.readouterr().out
