"""One reader of benchmark files (pipelines.core.benchmarks) under decontamination and evaluation:
a TSV and a JSONL with the awkward cases (a repeated image by index, before and after its row, a
list-of-images cell, option columns with gaps, a hint, broken rows) give decontamination
(`read_benchmark`, what pipelines.datasets.decontaminate reads) and the evaluation (`load_items`)
the same questions, options, answers and image bytes, and the same errors naming file and row;
the one difference is a row with several images, which the evaluation refuses by name."""

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pipelines.core.benchmarks import BenchmarkError, read_benchmark
from thyme_train.eval_data import load_items


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, format="PNG")
    return buf.getvalue()


RED, GREEN, BLUE, GREY = (_png(c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tsv(path: Path) -> None:
    rows = [
        dict(index="0", image=_b64(RED), question="What colour is the cup?", A="red", B="",
             C="blue", answer="C", category="colour"),                  # a gap at B
        dict(index="1", image="0", question="Is the cup left of the plate?", hint="Look closely.",
             A="yes", B="no", answer="B", l2="position"),                # row 0's image again
        dict(index="2", image="3", question="What is on the table?", answer="a cup"),  # a later row's
        dict(index="3", image=_b64(GREEN), question="How many cups?", answer="2"),
        dict(index="4", image=str([_b64(BLUE)]), question="Which shape?", A="round", C="square",
             D="oval", answer="D"),                                      # a list cell of one image
        dict(index="5", image=str([_b64(RED), _b64(GREY)]), question="Same cup in both?",
             A="yes", B="no", answer="A"),                               # two images
        dict(index="6", image="%%not base64%%" * 8, question="Broken?", answer="x"),
        dict(index="7", image="99", question="Dangling?", answer="x"),   # no row 99
    ]
    columns = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", restval="")
        writer.writeheader()
        writer.writerows(rows)


def _jsonl(path: Path) -> None:
    (path.parent / "pics").mkdir()
    (path.parent / "pics" / "green.png").write_bytes(GREEN)
    lines = [json.dumps(x) for x in (
        {"id": "a", "image": _b64(RED), "question": "Which colour?", "hint": "The cup.",
         "options": ["red", "green"], "answer": "A", "category": "colour"},
        {"id": "b", "images": ["pics/green.png"], "question": "What is it?", "answer": "a cup",
         "options": {"A": "a cup", "C": "a plate"}},                   # a list, an option gap
        {"id": "c", "images": [_b64(RED), _b64(BLUE)], "question": "Same?", "answer": "no"},
        {"id": "d", "image": "missing.png", "question": "Broken?", "answer": "x"},
        {"id": "e", "question": "What is 2+2?", "answer": "4"},          # text only
    )]
    path.write_text("\n".join(lines[:4] + ["{not json"] + lines[4:]) + "\n")


@pytest.mark.parametrize("name", ["bench.tsv", "bench.jsonl"])
def test_decontamination_and_evaluation_read_the_same_items(tmp_path, name):
    path = tmp_path / name
    (_tsv if name.endswith(".tsv") else _jsonl)(path)
    seen_errors, scored_errors = [], []
    seen = {i.id: i for i in read_benchmark(path, "skip", seen_errors)}
    scored = {i.id: i for i in load_items(path, tmp_path / "img", on_error="skip",
                                          errors=scored_errors)}

    multi = {"5"} if name.endswith(".tsv") else {"c"}
    assert set(scored) == set(seen) - multi and len(scored) == (5 if name.endswith(".tsv") else 3)
    for ident, item in scored.items():
        read = seen[ident]
        assert (item.question, item.options, item.answer, item.hint) == \
            (read.question, read.options, read.answer, read.hint)
        own = read.images or (seen[read.image_refs[0]].images if read.image_refs else [])
        assert (Path(item.image).read_bytes() if item.image else None) == (own[0] if own else None)
    assert [len(seen[i].images) for i in multi] == [2]          # decontamination checks both

    if name.endswith(".tsv"):
        assert seen["0"].options == scored["0"].options == {"A": "red", "C": "blue"}
        assert Path(scored["1"].image).read_bytes() == RED and scored["1"].hint == "Look closely."
        assert Path(scored["2"].image).read_bytes() == GREEN       # a reference to a later row
        assert Path(scored["4"].image).read_bytes() == BLUE and scored["1"].meta == {"l2": "position"}
        assert seen["1"].text() == ("Hint: Look closely.\nIs the cup left of the plate?\n"
                                    "A. yes\nB. no")
        broken = [("7 (index 6)", "neither a file nor base64"),
                  ("8 (index 7)", "row index '99', which holds no image")]
    else:
        assert seen["b"].options == scored["b"].options == {"A": "a cup", "C": "a plate"}
        assert scored["a"].prompt_text().startswith("Hint: The cup.\nWhich colour?\nOptions:")
        assert scored["e"].image is None and seen["e"].images == []
        broken = [(4, "neither a file nor base64"), (5, "Expecting property name")]
    # the same broken rows, named by file and row, in both; the evaluation's own refusal as well
    assert [(e.source, e.row) for e in seen_errors] == [(str(path), row) for row, _ in broken]
    (refused,) = [e for e in scored_errors if e.row not in [row for row, _ in broken]]
    assert refused.reason.startswith("2 images: the evaluation asks one image per item")
    for errors in (seen_errors, scored_errors):
        for row, why in broken:
            (error,) = [e for e in errors if e.row == row]
            assert why in error.reason and str(error).startswith(f"{path}: row {row}: ")
    with pytest.raises(BenchmarkError, match=rf"{name}: row "):
        load_items(path, tmp_path / "img")


@pytest.mark.parametrize("name", ["VStarBench.tsv", "hr_bench_4k.tsv", "MME-RealWorld.tsv",
                                  "MME-RealWorld-Lite.tsv", "HallusionBench.tsv", "OCRBench.tsv"])
def test_the_real_layouts_read_alike(tmp_path, name):
    path = Path(__file__).parent / "data" / "benchmarks" / name
    seen = list(read_benchmark(path))
    scored = load_items(path, tmp_path / "img")
    assert [(i.id, i.question, i.options, i.answer) for i in seen] == \
        [(i.id, i.question, i.options, i.answer) for i in scored]
    assert all(i.options for i in seen) == name.startswith(("VStar", "hr_", "MME"))  # Lite's list too
