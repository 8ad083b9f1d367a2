"""Ground truth from real sources: the column mapping reads boxes (several formats and units),
angles, categories, difficulty, targets, options and answers into the samples of real photographs,
validates them against the stored image and quarantines bad values with the column named; V*-Bench
annotations and an annotated high-resolution RL set ingest with their boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from real_photos import PHOTOS, write_photos, write_vstar_bench

from pipelines.core.formats import SourceRow, deepeyes_table, write_parquet
from pipelines.core.schema import ImageRef, Sample
from pipelines.pool import truth
from pipelines.pool.ingest import IngestConfig, ingest
from pipelines.pool.vstar import vstar_rows


def samples_of(out) -> list[dict]:
    rows = [r for f in sorted((Path(out) / "samples").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    for r in rows:
        r["meta"] = json.loads(r["meta"])
    return rows


def quarantine_of(out) -> list[dict]:
    return [r for f in sorted((Path(out) / "quarantine").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_annotated_photos_ingest_with_their_ground_truth(tmp_path):
    files = write_photos(tmp_path / "photos", ("astronaut", "coffee", "rocket", "chelsea", "camera"))
    rows = []
    for name, fname in files.items():
        question, answer, (x1, y1, x2, y2), category, target = PHOTOS[name]
        rows.append({"q": question, "file": fname, "a": answer, "cat": category, "level": 2,
                     "ann": {"bbox": [x1, y1, x2 - x1, y2 - y1], "what": target}})
    rows[1]["ann"]["bbox"] = json.dumps(rows[1]["ann"]["bbox"])           # JSON text is fine too
    rows[2]["ann"]["bbox"] = {"x": 300, "y": 120, "w": 45, "h": 65}        # a dict
    bad = [dict(rows[0], ann={"bbox": [400, 400, 300, 300]}),             # outside 512x512
           dict(rows[0], ann={"bbox": [10, 10, 0, 5]}),                    # no area
           dict(rows[0], ann={"bbox": "left corner"}),                     # not a box
           dict(rows[0], level=[1, 2]),                                    # difficulty: a list
           dict(rows[0], ann={"bbox": [1, 2, 3, 4], "rot": "a lot"})]      # angle: not a number
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    mapping = {"question": "q", "image": "file", "answer": "a", "box": "ann.bbox",
               "box_format": "xywh", "category": "cat", "difficulty": "level", "target": "ann.what",
               "angle": "ann.rot", "set_task": "auto", "source": "photos"}
    report = ingest(IngestConfig("generic", str(tmp_path / "pool"), [str(tmp_path / "rows.jsonl")],
                                 image_root=str(tmp_path / "photos"), mapping=mapping), progress=False)
    assert report["kept"] == 5 and report["quarantined_by_reason"] == {"bad_ground_truth": 5}
    kept = {r["origin"]["row"]: r for r in samples_of(tmp_path / "pool")}
    for k, name in enumerate(files):
        meta = kept[k]["meta"]
        assert meta["box"] == PHOTOS[name][2], name
        assert meta["category"] == PHOTOS[name][3] and meta["target"] == PHOTOS[name][4]
        assert meta["difficulty"] == 2 and kept[k]["source"] == "photos"
        assert meta["truth_columns"]["box"] == "ann.bbox"
    # auto task: small boxes are crop targets; the astronaut's shuttle covers 13% of the image
    assert {kept[k]["task"] for k in kept} == {"crop"}
    details = {q["origin"]["row"]: q["detail"] for q in quarantine_of(tmp_path / "pool")}
    assert "column 'ann.bbox' (box): the box [400, 400, 700, 700] lies outside the 512x512" in details[5]
    assert "has no area" in details[6] and "not JSON" in details[7]
    assert "column 'level' (difficulty)" in details[8] and "[1, 2]" in details[8]
    assert "column 'ann.rot' (angle)" in details[9] and "'a lot'" not in details[9]
    assert '"a lot"' in details[9]


def sample(width=1000, height=500) -> Sample:
    return Sample(question="q", images=[ImageRef("ab" * 32, "jpg", width, height)], source="s",
                  origin_file="f", origin_row=0)


@pytest.mark.parametrize("value, settings, box", [
    ([100, 50, 300, 150], {}, [100, 50, 300, 150]),
    ([100.4, 50.6, 299.2, 150], {}, [100, 50, 300, 150]),                 # outward to pixels
    ([0.1, 0.1, 0.3, 0.3], {"box_units": "normalized"}, [100, 50, 300, 150]),
    ([100, 100, 300, 300], {"box_units": "thousandths"}, [100, 50, 300, 150]),
    ([200, 100, 200, 100], {"box_format": "cxcywh"}, [100, 50, 300, 150]),
    ([-1.5, 0, 1001, 500], {}, [0, 0, 1000, 500]),                       # within the tolerance
    ([[100, 50, 200, 100], [250, 120, 300, 150]], {}, [100, 50, 300, 150]),  # several: the union
    ({"x1": 100, "y1": 50, "x2": 300, "y2": 150}, {}, [100, 50, 300, 150]),
])
def test_box_conventions(value, settings, box):
    s = truth.apply(sample(), {"b": value}, {"box": "b", **settings})
    assert s.meta["box"] == box
    assert ("boxes" in s.meta) == (isinstance(value, list) and isinstance(value[0], list))


@pytest.mark.parametrize("value, sense, angle", [(90, "ccw", 90), (-30, "ccw", 330),
                                                   (30, "cw", 330), (359.5, "ccw", 359.5),
                                                   ("45", "ccw", 45)])
def test_angles(value, sense, angle):
    s = truth.apply(sample(), {"deg": value}, {"angle": "deg", "angle_sense": sense, "set_task": "auto"})
    assert s.meta["angle"] == angle and s.task == "rotate"


@pytest.mark.parametrize("value", [360, -400, "nan", True, [90]])
def test_bad_angles(value):
    with pytest.raises(truth.BadTruth, match="column 'deg' \\(angle\\)"):
        truth.apply(sample(), {"deg": value}, {"angle": "deg"})


def test_settings_are_checked_when_the_config_is_made(tmp_path):
    for bad in ({"box_format": "yxyx"}, {"set_task": "zoom"}, {"preset": "nope"},
                {"box_tolerance": "-1"}, {"bbox": "bbox"}):
        with pytest.raises(ValueError):
            IngestConfig("generic", str(tmp_path), [], mapping=bad)
    assert truth.apply(sample(), {"b": [1, 2, 3, 4]}, {}).meta == {}          # no mapping


def test_vstar_bench_ingests_with_its_boxes(tmp_path):
    bench = tmp_path / "vstar_bench"
    write_vstar_bench(bench, ("astronaut", "coffee", "rocket"))
    (bench / "direct_attributes" / "orphan.json").write_text("{}")           # no image beside it
    report = vstar_rows(bench, tmp_path / "vstar.jsonl", seed=0)
    assert report["rows"] == 3 and report["skipped"] == [
        {"file": "direct_attributes/orphan.json", "reason": "no image beside the annotation"}]
    rows = [json.loads(line) for line in (tmp_path / "vstar.jsonl").read_text().splitlines()]
    assert {r["answer"] for r in rows} != {"A"} or len(rows) < 3       # shuffled, not always A
    out = tmp_path / "pool"
    ingest(IngestConfig("generic", str(out), [str(tmp_path / "vstar.jsonl")], image_root=str(bench),
                        mapping={"preset": "vstar"}), progress=False)
    by_question = {r["question"].split("\n")[0]: r for r in samples_of(out)}
    for name in ("astronaut", "coffee", "rocket"):
        question, answer, box, _, target = PHOTOS[name]
        row = by_question[question]
        assert row["meta"]["box"] == box and row["task"] == "crop" and row["source"] == "vstar"
        assert row["meta"]["target"] == target and row["meta"]["category"] == "direct_attributes"
        letter = row["answer"]
        assert f"{letter}. {answer}" in row["meta"]["options"] and f"{letter}. {answer}" in row["question"]


def test_an_annotated_high_resolution_rl_set_in_another_format(tmp_path):
    """A DeepEyes-style verl parquet whose rows carry a box and category in `extra_info`."""
    from real_photos import photo_bytes
    rows = [SourceRow(PHOTOS[n][0], [photo_bytes(n)], answer=PHOTOS[n][1], data_source="hr")
            for n in ("coffee", "rocket")]
    table = deepeyes_table(rows)
    extra = [{"index": 0, "bbox": json.dumps(PHOTOS["coffee"][2]), "category": "object"},
             {"index": 1, "bbox": json.dumps([300, 120, 345, 999]), "category": "attribute"}]
    import pyarrow as pa
    table = table.set_column(table.schema.get_field_index("extra_info"), "extra_info",
                             pa.array(extra))
    write_parquet(table, tmp_path / "hr.parquet")
    report = ingest(IngestConfig("deepeyes", str(tmp_path / "pool"), [str(tmp_path / "hr.parquet")],
                                 mapping={"preset": "hr-rl", "box": "extra_info.bbox",
                                          "category": "extra_info.category"}), progress=False)
    assert report["kept"] == 1 and report["quarantined_by_reason"] == {"bad_ground_truth": 1}
    (row,) = samples_of(tmp_path / "pool")
    assert row["meta"]["box"] == PHOTOS["coffee"][2] and row["task"] == "crop"
    assert row["meta"]["category"] == "object" and row["source"] == "deepeyes"
    (bad,) = quarantine_of(tmp_path / "pool")
    assert "outside the 640x427 image" in bad["detail"] and bad["origin"]["row"] == 1
