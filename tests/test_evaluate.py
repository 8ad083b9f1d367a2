"""Evaluation: benchmark formats parsed from small files, scoring, and the report on a fake policy
whose accuracy is known in advance."""

import base64
import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from thyme_train.eval_data import BenchmarkError, EvalItem, load_items
from thyme_train.evaluate import Answered, evaluate, score_item


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _write_tsv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def test_vlmevalkit_tsv(tmp_path):
    b64 = base64.b64encode(_png()).decode()
    _write_tsv(tmp_path / "vstar.tsv", [
        {"index": "0", "image": b64, "question": "What colour is the cup?", "A": "red", "B": "blue",
         "C": "", "answer": "A", "category": "attribute", "hint": ""},
        # VLMEvalKit writes a repeated image as the index of the row holding it
        {"index": "1", "image": "0", "question": "Is the cup left of the plate?", "A": "yes",
         "B": "no", "C": "", "answer": "B", "category": "position", "hint": "Look closely."},
    ])
    items = load_items(tmp_path / "vstar.tsv", tmp_path / "img")
    assert [i.id for i in items] == ["0", "1"]
    assert items[0].options == {"A": "red", "B": "blue"} and items[0].category == "attribute"
    assert items[1].image == items[0].image and Image.open(items[0].image).size == (40, 30)
    assert items[1].question.startswith("Hint: Look closely.")
    assert "A. red\nB. blue" in items[0].prompt_text()


def test_jsonl_with_relative_image_paths(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png())
    lines = [{"image": "pics/a.png", "question": "How many?", "answer": "3", "category": "count"},
             {"question": "2+2?", "answer": "4", "options": ["3", "4"]}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    items = load_items(tmp_path / "b.jsonl", tmp_path / "img")
    assert items[0].image and items[0].image.endswith(".png")
    assert items[1].image is None and items[1].options == {"A": "3", "B": "4"}


def test_published_split(tmp_path):
    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user

    user = render_user("Which option?\nOptions:\nA. cat\nB. dog", "images/x.png", (40, 30))
    table = pa.table({
        "id": ["r1"], "task": ["crop"],
        "messages": [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                      {"role": "user", "content": user}]],
        "images": [[base64.b64encode(_png()).decode()]], "solution": ["B"],
        "meta": [json.dumps({"options": ["A. cat", "B. dog"]})],
    })
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "ds" / "data" / "test-00000-of-00001.parquet")
    (item,) = load_items(tmp_path / "ds", tmp_path / "img", split="test")
    assert item.question.startswith("Which option?") and "User Image Path" not in item.question
    assert item.options == {"A": "cat", "B": "dog"} and item.prompt_text() == item.question
    assert item.category == "crop" and item.answer == "B"


def test_broken_rows_name_file_and_row(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "1", "image": "nope.png"}\n'
                                        '{"answer": "2"}\n'
                                        '{"question": "ok", "answer": "3"}\n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl: row 1: .*neither a file nor base64"):
        load_items(tmp_path / "bad.jsonl", tmp_path / "img")
    errors = []
    items = load_items(tmp_path / "bad.jsonl", tmp_path / "img", on_error="skip", errors=errors)
    assert [i.answer for i in items] == ["3"]
    assert [(e.row, "question" in e.reason) for e in errors] == [(1, False), (2, True)]
    (tmp_path / "bench.txt").write_text("")
    with pytest.raises(BenchmarkError, match="unknown benchmark format"):
        load_items(tmp_path / "bench.txt", tmp_path / "img")


@pytest.mark.parametrize("response,truth,options,correct", [
    ("<think>zoom</think> <answer>B</answer>", "B", {"A": "x", "B": "y"}, True),
    ("<think>..</think> <answer>(C) green</answer>", "B", {"A": "x", "B": "y", "C": "green"}, False),
    ("The answer is \\boxed{12}", "12", None, True),
    ("<answer>12.0 cm</answer>", "12", None, True),
    ("no tags at all", "7", None, False),
])
def test_score_item(response, truth, options, correct):
    item = EvalItem(id="1", image=None, question="q", answer=truth, options=options or {})
    assert score_item(item, Answered(response=response)).correct is correct


def test_report_on_a_fake_policy_with_known_accuracy(tmp_path):
    items = [EvalItem(id=str(i), image=None, question=f"{i}+1?", answer=str(i + 1),
                      category="even" if i % 2 == 0 else "odd") for i in range(20)]

    def policy(item: EvalItem, tools: bool) -> Answered:
        i = int(item.id)
        if i == 19:
            raise RuntimeError("engine died")           # recorded on this item only
        right = (i % 4 != 0) if tools else (i % 2 == 0)  # tools: 15/20 right; direct: 10/20
        answer = str(i + 1) if right else "-1"
        code = 1 if tools and i % 5 == 0 else 0
        return Answered(response=f"<think>x</think> <answer>{answer}</answer>", code_blocks=code,
                        code_ok=code if i != 10 else 0)

    summaries = evaluate(items, policy, tmp_path / "out", title="fake")
    tools, direct = summaries["tools"], summaries["direct"]
    assert tools.accuracy == pytest.approx(14 / 20)      # 15 right minus the engine error on 19
    assert tools.by_category == {"even": pytest.approx(5 / 10), "odd": pytest.approx(9 / 10)}
    assert direct.accuracy == pytest.approx(10 / 20) and direct.used_code == 0
    assert tools.used_code == pytest.approx(4 / 20) and tools.execution_success == pytest.approx(3 / 4)
    assert tools.errors == 1 and direct.errors == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["items"]["tools"][19]["how"].startswith("engine error: RuntimeError")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| tools | 20 | 70.0 |" in md and "| direct | 20 | 50.0 |" in md
    assert Image.open(tmp_path / "out" / "accuracy.png").size[0] > 300


def test_published_dataset_with_two_encodings_is_read_once(tmp_path):
    from pipelines.core.prompts import render_user

    for encoding in ("thyme", "hf"):
        folder = tmp_path / "ds" / "data" / encoding
        folder.mkdir(parents=True)
        images = ([base64.b64encode(_png()).decode()] if encoding == "thyme"
                  else [{"bytes": _png(), "path": None}])
        pq.write_table(pa.table({"id": ["r1"], "question": [render_user("Colour?", "x.png", (40, 30))],
                                 "images": [images], "solution": ["red"]}),
                       folder / "test-00000.parquet")
    assert [i.id for i in load_items(tmp_path / "ds", tmp_path / "img", split="test")] == ["r1"]
