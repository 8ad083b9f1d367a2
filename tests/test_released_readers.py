"""Readers on the released data's shapes (issue 14): Thyme-SFT text-only and multi-image rows,
Thyme-RL and DeepEyes prompts whose <image> tokens disagree with their images, generic rows
without images or with an answer, options and difficulty columns; task inference from code and
output."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.core.formats import (
    SourceRow,
    deepeyes_table,
    thyme_rl_table,
    thyme_sft_table,
    write_parquet,
)
from pipelines.core.tasks import infer_task, infer_task_from_response
from pipelines.pool.ingest import IngestConfig, ingest


def _jpeg(seed: int, size=(160, 120)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _ingest(tmp_path, fmt, table=None, name="in.parquet", out="out", **kw):
    if table is not None:
        write_parquet(table, tmp_path / name)
    report = ingest(IngestConfig(fmt, str(tmp_path / out), [str(tmp_path / name)], **kw), progress=False)
    samples = [r for f in sorted((tmp_path / out / "samples").glob("*.parquet"))
               for r in pq.read_table(f).to_pylist()]
    quarantine = [r for f in sorted((tmp_path / out / "quarantine").glob("*.parquet"))
                  for r in pq.read_table(f).to_pylist()]
    return report, samples, quarantine


CROP = ("<think>Zoom in. <code>```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 80, 60)).save('/mnt/data/temp_processed_images/c.jpg')\n"
        "print('/mnt/data/temp_processed_images/c.jpg')\n```</code><sandbox_output><image>"
        "</sandbox_output>It reads 7.</think> <answer>7</answer>")
COMPUTE = ("<think>Compute. <code>```python\nprint(12 * 7 + 3)\n```</code><sandbox_output>87"
           "</sandbox_output>So 87.</think> <answer>87</answer>")


def test_thyme_sft_text_only_and_multi_image_rows_are_kept(tmp_path):
    rows = [
        SourceRow("What is 12 times 7 plus 3?", [], response=COMPUTE),                 # text-only
        SourceRow("Compare the two charts. Which is higher?", [_jpeg(1), _jpeg(2), _jpeg(3)],
                  response=CROP, inputs=2, image_path="/data/a.jpg", image_size=(160, 120)),
        SourceRow("Plain single image?", [_jpeg(4), _jpeg(5)], response=CROP,
                  image_path="/data/b.jpg", image_size=(160, 120)),
    ]
    report, samples, quarantine = _ingest(tmp_path, "thyme-sft", thyme_sft_table(rows))
    assert report["kept"] == 3 and not quarantine
    text, multi, single = samples
    assert text["images"] == [] and text["task"] == "computation" and text["answer"] == "87"
    assert text["question"] == "What is 12 times 7 plus 3?"
    assert len(multi["images"]) == 2 and len(json.loads(multi["reference"])["images"]) == 1
    assert multi["task"] == "crop"
    assert len(single["images"]) == 1 and len(json.loads(single["reference"])["images"]) == 1


def test_thyme_sft_row_whose_question_names_more_images_than_it_has(tmp_path):
    rows = [SourceRow("Two images?", [_jpeg(1)], response=CROP, inputs=2, image_size=(160, 120))]
    report, samples, quarantine = _ingest(tmp_path, "thyme-sft", thyme_sft_table(rows))
    assert not samples and quarantine[0]["reason"] == "image_mismatch"
    assert "2 <image>" in quarantine[0]["detail"] and quarantine[0]["origin"] == {"file": "in.parquet", "row": 0}


def test_null_image_column_is_a_text_only_row_but_a_missing_column_is_not(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"image": pa.array([None], pa.list_(pa.string())), "question": ["Q?"],
                             "response": [COMPUTE]}), tmp_path / "a.parquet")
    _, samples, _ = _ingest(tmp_path, "thyme-sft", name="a.parquet")
    assert samples[0]["images"] == []
    pq.write_table(pa.table({"question": ["Q?"], "response": [COMPUTE]}), tmp_path / "b.parquet")
    _, _, quarantine = _ingest(tmp_path, "thyme-sft", name="b.parquet", out="out-b")
    assert quarantine[0]["reason"] == "missing_field" and "'image'" in quarantine[0]["detail"]


def test_rl_prompts_keep_every_image_and_reject_token_mismatches(tmp_path):
    rows = [SourceRow("Which is larger?", [_jpeg(1), _jpeg(2)], answer="left", image_size=(160, 120))]
    _, samples, _ = _ingest(tmp_path, "thyme-rl", thyme_rl_table(rows))
    assert len(samples[0]["images"]) == 2
    table = deepeyes_table([SourceRow("What colour?", [_jpeg(3)], answer="red")])
    prompt = table.column("prompt").to_pylist()
    prompt[0][0]["content"] = "<image>\n<image>\nWhat colour?"
    write_parquet(table.set_column(1, "prompt", [prompt]), tmp_path / "de.parquet")
    _, _, quarantine = _ingest(tmp_path, "deepeyes", name="de.parquet", out="out-de")
    assert quarantine[0]["reason"] == "image_mismatch"


def test_generic_text_only_rows_answers_options_and_difficulty(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg(1))
    lines = [{"question": "How many sides has a hexagon?", "answer": 6, "difficulty": "easy"},
             {"question": "Which animal?", "image": "a.jpg", "answer": "B",
              "options": ["cat", "dog"], "category": "object"},
             {"question": "Zero?", "answer": 0}]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    _, samples, quarantine = _ingest(tmp_path, "generic", name="g.jsonl", image_root=str(tmp_path))
    assert not quarantine
    text, mc, zero = samples
    assert text["images"] == [] and text["answer"] == "6" and json.loads(text["meta"]) == {
        "difficulty": "easy", "truth_columns": {"difficulty": "difficulty"}}
    assert json.loads(mc["meta"]) == {"category": "object", "options": ["A. cat", "B. dog"],
                                      "truth_columns": {"category": "category", "options": "options"}}
    assert zero["answer"] == "0"


@pytest.mark.parametrize("codes, outputs, task", [
    ([], [], "no_code"),
    (["print(3 * 4)"], ["text"], "computation"),
    (["img = Image.open(image_path)\nw, h = img.size\nprint(w * h)"], ["text"], "computation"),
    (["img.crop((1, 2, 3, 4)).save(p)"], ["image"], "crop"),
    (["sub = arr[y1:y2, x1:x2]\ncv2.imwrite(p, sub)"], ["image"], "crop"),
    (["img.rotate(-90, expand=True).save(p)"], ["image"], "rotate"),
    (["c = img.crop(b)\nImageEnhance.Contrast(c).enhance(2).save(p)"], ["image"], "contrast"),
    (["cv2.createCLAHE(2.0).apply(g)"], ["image"], "contrast"),
    (["img.resize((800, 600)).save(p)"], ["image"], "real_world"),
    (["img.crop(b).save(p)", "img.crop(b2).save(p)"], ["error", "image"], "crop"),
    (["img.crop(b).save(p)"], [None], "crop"),
    (["x = 2 ** 10\nprint(x)"], [None], "computation"),
])
def test_infer_task(codes, outputs, task):
    assert infer_task(codes, outputs) == task


def test_infer_task_from_a_released_response():
    assert infer_task_from_response(CROP) == "crop"
    assert infer_task_from_response(COMPUTE) == "computation"
    assert infer_task_from_response("<think>Easy.</think> <answer>4</answer>") == "no_code"


def test_formats_writer_renders_one_token_per_input():
    table = thyme_sft_table([SourceRow("Q?", [_jpeg(1), _jpeg(2), _jpeg(3)], inputs=2, image_size=(1, 1)),
                             SourceRow("T?", [])])
    questions = table.column("question").to_pylist()
    assert questions[0].count("<image>") == 2 and "<image>" not in questions[1]
