"""Path rewriting (pipelines.datasets.paths) and the `rewrite-paths` command on realistic released
Thyme-SFT rows: the authors' absolute paths in the question and in code, an author's own
processed-image folder, several processed images, a row without code, and rows the validation
must reject."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.__main__ import main
from pipelines.core.formats import SourceRow, thyme_rl_table, thyme_sft_table, write_parquet
from pipelines.core.images import ImageStore
from pipelines.core.prompts import load_prompt_set, parse_user
from pipelines.datasets.paths import find_absolute_paths, rewrite_question, rewrite_text
from pipelines.pool.readers import Reader, list_units, read_unit
from sandbox.protocol import VIRTUAL_OUTPUT_DIR

AUTHOR_INPUT = "/mnt/bn/thyme-authors/data/images/train/000123.jpg"
RESPONSE = f'''<think>The sign is small; I will crop around it and zoom in.
<code>
```python
from PIL import Image
image_path = "{AUTHOR_INPUT}"
img = Image.open(image_path)
crop = img.crop((10, 10, 200, 200)).resize((380, 380))
out = "/mnt/bn/thyme-authors/temp_processed_images/000123_crop_a1b2.jpg"
crop.save(out)
print(out)
```
</code><sandbox_output><image></sandbox_output>Still small; a tighter crop.
<code>
```python
import os
save_dir = "/home/tiger/workspace/temp_processed_images"
tight = Image.open("{AUTHOR_INPUT}").crop((50, 50, 150, 150))
p = os.path.join(save_dir, "000123_tight_c3d4.jpg")
tight.save(p)
print(p)
```
</code><sandbox_output><image></sandbox_output>It reads OPEN.</think> <answer>OPEN</answer>'''


def _jpeg(w: int, h: int, colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A released-format parquet: a 2-round crop row, a no-code row, two bad rows."""
    d = tmp_path_factory.mktemp("released")
    img, crop1, crop2 = _jpeg(640, 480, "red"), _jpeg(380, 380, "green"), _jpeg(100, 100, "blue")
    other = _jpeg(300, 200, "yellow")
    rows = [
        SourceRow("What does the sign say?", [img, crop1, crop2], response=RESPONSE,
                  image_path=AUTHOR_INPUT, image_size=(1000, 1000)),       # wrong size on purpose
        SourceRow("Which option is correct?", [other], response="<think>It is visible.</think> <answer>B</answer>",
                  image_path="/mnt/bn/thyme-authors/data/images/train/000124.jpg", image_size=(300, 200)),
        SourceRow("Where is it?", [other], image_path="/mnt/bn/x/000125.jpg", image_size=(300, 200),
                  response="<think>See /data/users/zhang/notes.txt.</think> <answer>left</answer>"),
        SourceRow("Count them.", [other], image_path="/mnt/bn/x/000126.jpg", image_size=(300, 200),
                  response="<think>Three.<code>print(3)</think> <answer>3</answer>"),  # unbalanced
    ]
    write_parquet(thyme_sft_table(rows), d / "thyme-sft.parquet")
    return d / "thyme-sft.parquet"


def _run(released: Path, out: Path, capsys, *extra) -> dict:
    assert main(["rewrite-paths", "--input", str(released), "--images-root", str(out.parent / "images"),
                 "--out", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_rewrite_paths_command(released, tmp_path, capsys):
    out = tmp_path / "ds" / "thyme-sft.parquet"
    report = _run(released, out, capsys)
    assert report["rows"] == 4 and report["written"] == 2
    assert report["failures_by_check"] == {"no_absolute_paths": 1, "balanced_tags": 1}
    full = json.loads(out.with_name("thyme-sft.report.json").read_text())
    assert {(r["row"], r["check"]) for r in full["rejected"]} == {(2, "no_absolute_paths"), (3, "balanced_tags")}
    assert report["images_written"] == 4          # red, green, blue, yellow: each decoded once

    crop_row, plain_row = pq.read_table(out).to_pylist()
    paths = crop_row["image_paths"]
    assert len(paths) == 3 and all(not p.startswith("/") for p in paths)
    files = [out.parent / p for p in paths]
    assert [f.read_bytes() for f in files] == [base64.b64decode(b) for b in crop_row["image"]]
    _, meta = parse_user(crop_row["question"])
    assert meta == {"original_path": paths[0], "original_size": [640, 480]}   # real size
    response = crop_row["response"]
    assert f'image_path = "{paths[0]}"' in response
    assert f'Image.open("{paths[0]}")' in response
    assert f'"{VIRTUAL_OUTPUT_DIR}/000123_crop_a1b2.jpg"' in response
    assert f'save_dir = "{VIRTUAL_OUTPUT_DIR}"' in response
    assert response.count("<image>") == len(crop_row["image"]) - 1
    assert not find_absolute_paths(crop_row["question"] + response)
    assert "/mnt/bn" not in json.dumps(crop_row["question"] + response)

    # The row without code: only the question's path changes.
    assert plain_row["response"] == "<think>It is visible.</think> <answer>B</answer>"
    assert parse_user(plain_row["question"])[1]["original_path"] == plain_row["image_paths"][0]

    # Images are decoded once: a second run writes none.
    again = _run(released, tmp_path / "ds" / "again.parquet", capsys)
    assert again["images_written"] == 0 and again["written"] == 2
    kept = _run(released, tmp_path / "ds" / "all.parquet", capsys, "--keep-invalid")
    assert kept["written"] == 4


def test_rewrite_paths_on_released_rl_rows(tmp_path, capsys):
    """Thyme-RL rows: images decoded to files, the prompt's User Image Path names that file and
    its size is the real one; the release's own system prompt is kept; a row without a
    solution is rejected with its reason."""
    release = load_prompt_set("thyme-release")
    original_system = release.system
    img = _jpeg(640, 480, "red")
    rows = [SourceRow("What does the sign say?", [img], answer="OPEN", image_path=AUTHOR_INPUT,
                      image_size=(1, 1)),
            SourceRow("Which colour?", [_jpeg(300, 200, "blue")], answer="", image_path="/mnt/x/2.jpg",
                      image_size=(300, 200))]
    write_parquet(thyme_rl_table(rows, release), tmp_path / "thyme-rl.parquet")
    out = tmp_path / "ds" / "thyme-rl.parquet"
    report = _run(tmp_path / "thyme-rl.parquet", out, capsys)
    assert report["rows"] == 2 and report["written"] == 1
    assert report["failures_by_check"] == {"rl_prompt": 1}
    (row,) = pq.read_table(out).to_pylist()
    assert row["messages"][0]["content"] == original_system
    path = row["image_paths"][0]
    assert not path.startswith("/") and (out.parent / path).read_bytes() == img
    assert parse_user(row["messages"][1]["content"])[1] == {"original_path": path,
                                                            "original_size": [640, 480]}
    assert "/mnt/" not in json.dumps(row["messages"]) and row["solution"] == "OPEN"


def test_rewritten_rows_reingest_through_the_thyme_reader(released, tmp_path, capsys):
    out = tmp_path / "thyme-sft.parquet"
    _run(released, out, capsys)
    reader, store = Reader("thyme-sft"), ImageStore(tmp_path / "store")
    rows = [row for unit in list_units(str(out)) for _, row, _ in read_unit(unit)]
    samples = [reader.to_sample(str(out), n, row, store) for n, row in enumerate(rows)]
    crop = samples[0]
    assert crop.question == "What does the sign say?" and crop.answer == "OPEN"
    assert crop.meta["original_path"] == rows[0]["image_paths"][0]
    assert crop.reference["response"] == rows[0]["response"] and len(crop.reference["images"]) == 2
    assert samples[1].task == "no_code"


def test_rewrite_text_rules():
    text = ('image_path = "input.jpg"\nimage_path = "/mnt/data/temp_processed_images/a.jpg"\n'
            'x = "/opt/authors/processed_imgs/b.png"  # see https://x.org/a/b.png, 3/4\n'
            'y = "/srv/other/c.jpg"')
    out = rewrite_text(text, "images/ab/in.jpg", ["/srv/other/in.jpg"])
    assert out.splitlines()[0] == 'image_path = "images/ab/in.jpg"'            # named the input
    assert out.splitlines()[1] == 'image_path = "/mnt/data/temp_processed_images/a.jpg"'  # kept
    assert f'"{VIRTUAL_OUTPUT_DIR}/b.png"' in out and "https://x.org/a/b.png, 3/4" in out
    assert find_absolute_paths(out) == ["/srv/other/c.jpg"]   # unknown: left for validation
    assert rewrite_text("print(1)", None) == "print(1)"


def test_rewrite_question_keeps_the_rest():
    q = '<image>\nQ?\n\n### User Image Path:** "/a/b/c.jpg"\n### User Image Size:** "10x20"\n\nFORMAT'
    assert rewrite_question(q, "images/x.jpg", (30, 40)) == (
        '<image>\nQ?\n\n### User Image Path:** "images/x.jpg"\n### User Image Size:** "30x40"\n\nFORMAT')
