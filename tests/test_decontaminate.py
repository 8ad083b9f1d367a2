"""Decontamination (pipelines.datasets.decontaminate, pipelines.core.benchmarks): pool samples
whose image (the same file, or the same picture re-encoded and resized) or question (a near
duplicate) is an evaluation benchmark item's never reach a split; counts per benchmark; broken
benchmark rows are errors naming file and row."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
import released_pool
from PIL import Image

from pipelines.core.benchmarks import BenchmarkError, read_benchmark
from pipelines.datasets.decontaminate import DecontaminationConfig, find_contaminated
from pipelines.datasets.names import PARTS, SPLITS
from pipelines.datasets.rl_prompts import pool_index
from pipelines.datasets.splits import SplitConfig, build_splits, iter_split


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return root, released_pool.build(root)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _stored(info, sample, k=0) -> bytes:
    return (info["store"] / sample.images[k].relpath).read_bytes()


def write_tsv(path, rows: list[dict]) -> None:
    fields = ["index", "image", "question", "answer", "A", "B", "category"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})


@pytest.fixture(scope="module")
def benchmarks(pool, tmp_path_factory):
    """A miniature VLMEvalKit TSV (V*-like) and a JSONL benchmark."""
    root, info = pool
    d = tmp_path_factory.mktemp("bench")
    rl = info["rl"]
    with Image.open(io.BytesIO(_stored(info, rl["options"]))) as im:       # re-encoded, half size
        smaller = released_pool.encode(im.resize((im.width // 2, im.height // 2)), "PNG")
    write_tsv(d / "VStar_mini.tsv", [
        {"index": "0", "image": _b64(_stored(info, rl["plain"])), "question": "What colour is it?",
         "answer": "A", "A": "red", "B": "blue", "category": "attr"},
        {"index": "1", "image": _b64(smaller), "question": "Which side?", "answer": "B", "A": "l", "B": "r"},
        {"index": "2", "image": "0", "question": "Is the shape round?", "answer": "A", "A": "yes", "B": "no"},
        {"index": "3", "image": _b64(released_pool.encode(released_pool.picture(99))),
         "question": released_pool.LONG_QUESTION.replace(", and", " and"), "answer": "87"},
        {"index": "4", "image": _b64(released_pool.encode(released_pool.picture(98))),
         "question": "Is there a shape?", "answer": "yes"},
    ])
    (d / "images").mkdir()
    (d / "images" / "b.jpg").write_bytes(_stored(info, rl["two_images"], 1))
    (d / "mini.jsonl").write_text(json.dumps({"id": "q1", "image": "images/b.jpg",
                                              "question": "How many?", "answer": "3"}) + "\n")
    return d


def test_benchmark_items_are_read_with_options_and_references(benchmarks):
    items = list(read_benchmark(benchmarks / "VStar_mini.tsv"))
    assert [i.id for i in items] == ["0", "1", "2", "3", "4"]
    assert items[0].options == {"A": "red", "B": "blue"} and items[0].category == "attr"
    assert items[0].text() == "What colour is it?\nA. red\nB. blue"
    assert items[2].images == [] and items[2].image_refs == ["0"]
    (j,) = read_benchmark(benchmarks / "mini.jsonl")
    assert j.id == "q1" and len(j.images) == 1


def test_broken_benchmark_rows_name_file_and_row(tmp_path):
    write_tsv(tmp_path / "bad.tsv", [{"index": "7", "image": "%%not base64%%" * 10, "question": "q", "answer": "a"},
                                     {"index": "8", "image": "42", "question": "q2", "answer": "a"}])
    with pytest.raises(BenchmarkError, match=r"bad.tsv: row 1 \(index 7\): image .* neither a file nor base64"):
        list(read_benchmark(tmp_path / "bad.tsv"))
    errors: list = []
    # a row whose image reference dangles is an error, not an item (the evaluation cannot score it)
    assert [i.id for i in read_benchmark(tmp_path / "bad.tsv", "skip", errors)] == []
    assert [e.row for e in errors] == ["1 (index 7)", "2 (index 8)"]
    assert "row index '42', which holds no image" in errors[1].reason
    (tmp_path / "b.jsonl").write_text('{"question": "q", "image": "missing.jpg"}\nnot json\n')
    with pytest.raises(BenchmarkError, match=r"b.jsonl: row 1: image 'missing.jpg' is neither"):
        list(read_benchmark(tmp_path / "b.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(BenchmarkError, match="unknown benchmark format"):
        list(read_benchmark(tmp_path / "x.csv"))


def test_matches_by_image_file_picture_and_question(pool, benchmarks):
    root, info = pool
    rl = info["rl"]
    cfg = DecontaminationConfig(benchmarks=(str(benchmarks / "VStar_mini.tsv"), str(benchmarks / "mini.jsonl")))
    matches, report = find_contaminated(pool_index(released_pool.files(root)[1]), info["store"], cfg)
    how = {sid: {(m["benchmark"], m["by"]) for m in ms} for sid, ms in matches.items()}
    assert how == {rl["plain"].id: {("VStar_mini", "image_exact")},
                   rl["options"].id: {("VStar_mini", "image_perceptual")},
                   info["text"].id: {("VStar_mini", "question")},
                   rl["two_images"].id: {("mini", "image_exact")}}
    vstar = report["benchmarks"]["VStar_mini"]
    assert vstar == {"items": 5, "images": 4, "matched_samples": 3, "by_image_exact": 1,
                     "by_image_perceptual": 1, "by_question": 1, "questions_too_short": 4, "errors": 0}
    assert report["benchmarks"]["mini"]["matched_samples"] == 1
    assert {e["origin"] for e in report["examples"]} >= {"released.parquet row 3"}
    # short questions match by text only when asked to
    loose = DecontaminationConfig(benchmarks=(str(benchmarks / "VStar_mini.tsv"),), short_questions=True)
    matches, _ = find_contaminated(pool_index(released_pool.files(root)[1]), info["store"], loose)
    assert rl["easy"].id in matches


def test_decontaminated_samples_reach_no_split(pool, benchmarks, tmp_path):
    root, info = pool
    cfg = DecontaminationConfig(benchmarks=(str(benchmarks / "VStar_mini.tsv"),),
                                cache_dir=str(tmp_path / "cache"))
    out = tmp_path / "splits"
    report = build_splits(*released_pool.files(root), out,
                          SplitConfig(rl_source="pool", rl_share=0.0, test_share=0.0, decontaminate=cfg))
    ids = {r.get("sample_id") or r["id"] for s in SPLITS for p in PARTS
           for batch in iter_split(out, s, p) for r in batch}
    dropped = {info["rl"]["plain"].id, info["rl"]["options"].id, info["text"].id}
    assert not ids & dropped and info["rl"]["two_images"].id in ids
    assert report["decontamination"]["benchmarks"]["VStar_mini"]["matched_samples"] == 3
    assert report["dropped"]["decontaminated"] == 1       # the text-only trajectory
    assert (tmp_path / "cache" / "phash.parquet").is_file()   # a re-run hashes nothing again


def test_a_pool_image_that_cannot_be_hashed_keeps_its_sample_out_and_says_so(pool, benchmarks, tmp_path):
    import shutil

    root, info = pool
    copy = tmp_path / "pool"
    shutil.copytree(root, copy)
    easy = info["rl"]["easy"]
    (copy / "pool" / "images" / easy.images[0].relpath).write_bytes(b"not an image")
    cfg = DecontaminationConfig(benchmarks=(str(benchmarks / "mini.jsonl"),))
    out = tmp_path / "splits"
    report = build_splits(*released_pool.files(copy), out,
                          SplitConfig(rl_source="pool", rl_share=0.0, test_share=0.0, decontaminate=cfg))
    unreadable = report["decontamination"]["unreadable_images"]
    assert unreadable["samples"] == 1 and unreadable["examples"][0]["origin"] == "released.parquet row 10"
    assert report["rl_prompts"]["filtered"]["unreadable_image"] == 1
    assert report["decontamination"]["matched_samples"] == 1           # the benchmark's own match
    assert easy.id not in {r["id"] for p in PARTS for b in iter_split(out, "rl", p) for r in b}


def test_pool_questions_are_matched_against_the_benchmark_once_per_distinct_text(monkeypatch):
    """A pool asks the same question of thousands of pictures: decontamination works each
    distinct text out once and never compares pool questions with each other (clustering the
    whole pool was quadratic in alike questions: 5,000 rows took 42 s, docs/benchmarks.md)."""
    import polars as pl

    from pipelines.datasets import decontaminate, dedup

    signatures = []
    real = dedup._signature
    monkeypatch.setattr(dedup, "_signature", lambda grams: signatures.append(1) or real(grams))
    asked = "What is the colour of the striped umbrella next to the bench?"
    questions = [asked] * 1500 + ["What is the color of the striped umbrella next to the bench?"] * 500 + \
        ["Which of the 3 boats in the harbour is the closest one to the camera?"] * 500 + [None, ""]
    n = len(questions)
    index = pl.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "question": questions})
    bench = decontaminate._Bench("b", {}, [], [("What is the colour of the striped umbrella next to the bench?", "7"),
                                               ("Which of the 4 boats in the harbour is the closest one to the camera?", "8")])
    found: list = []
    decontaminate._match_questions(index.with_row_index("_order"), [bench],
                                   decontaminate.DecontaminationConfig(benchmarks=("x",)), found)
    matched = pl.concat(found)
    assert set(matched["item"]) == {"7"}                       # the 3-boat question has other numbers
    assert matched.height == 2000                              # the question and its rewording, every copy
    assert len(signatures) <= 2 + 2                            # the references, then two distinct texts
