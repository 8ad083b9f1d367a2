"""Thyme SFT rows for the export checks, written as a published dataset directory
(`pipelines.datasets.publish` layout and encoders): one of each shape the exports must label
right — single round with an image result, two rounds whose first output is an error message,
computation text-only, computation with an image."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.core.prompts import render_user
from pipelines.datasets.publish import encode_row, features

CODE_CROP = ("<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
             "img.crop((0, 0, 40, 40)).save('/mnt/data/temp_processed_images/crop.jpg')\n"
             "print('/mnt/data/temp_processed_images/crop.jpg')\n```\n</code>")
CODE_BAD = "<code>\n```python\nimg.crop((0, 0, 40, 40)).sav('/tmp/x.jpg')\n```\n</code>"
CODE_CALC = "<code>\n```python\nprint(3 * 7)\n```\n</code>"
ERROR = "Error (runtime): AttributeError: 'Image' object has no attribute 'sav'"


def png(color: tuple[int, int, int], size=(56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def image_path(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"images/{digest[:2]}/{digest}.png"


def _row(rid: str, task: str, kind: str, question: str, response: str, images: list[bytes]) -> tuple[dict, dict]:
    paths = [image_path(b) for b in images]
    q = render_user(question, paths[0], (56, 56)) if images else render_user(question)
    row = {"id": rid, "task": task, "kind": kind, "question": q, "response": response,
           "images": paths, "has_image": bool(images)}
    return row, dict(zip(paths, images, strict=True))


def rows() -> dict[str, list[tuple[dict, dict]]]:
    """split -> [(split row, {path: bytes})], in the shapes named above."""
    single = _row("single", "crop", "single", "What colour is the sign?",
                  f"<think>The sign is small; crop it.\n{CODE_CROP}\n<sandbox_output><image></sandbox_output>\n"
                  "The crop shows red.</think> <answer>red</answer>",
                  [png((200, 30, 30)), png((210, 40, 40), (84, 56))])
    two = _row("two", "crop", "2round", "What does the sign say?",
               f"<think>Crop the sign.\n{CODE_BAD}\n<sandbox_output>{ERROR}</sandbox_output>\n"
               f"The method is save, not sav. Again.\n{CODE_CROP}\n<sandbox_output><image></sandbox_output>\n"
               "It reads STOP.</think> <answer>STOP</answer>",
               [png((30, 200, 30)), png((40, 210, 40), (56, 112))])
    text_only = _row("calc", "computation", "computation", "What is 3 times 7?",
                     f"<think>Multiply.\n{CODE_CALC}\n<sandbox_output>21</sandbox_output>\n"
                     "So 21.</think> <answer>21</answer>", [])
    with_image = _row("calc-image", "computation", "computation", "How many pixels wide times 3?",
                      f"<think>Read the width and multiply.\n{CODE_CALC}\n<sandbox_output>21\n"
                      "</sandbox_output>\nSo 21.</think> <answer>21</answer>", [png((30, 30, 200))])
    return {"wo_thinking_thyme_single_round": [single], "2round": [two],
            "computation": [text_only, with_image]}


def write_published(root: Path, encodings=("thyme", "hf"), extra: dict | None = None) -> Path:
    """A published SFT dataset directory holding `rows()` (plus `extra` {split: [(row, images)]})."""
    splits = rows()
    for split, items in (extra or {}).items():
        splits.setdefault(split, []).extend(items)
    for encoding in encodings:
        folder = root / "data" / encoding
        folder.mkdir(parents=True, exist_ok=True)
        schema = features("sft", encoding).arrow_schema
        for split, items in splits.items():
            table = pa.Table.from_pylist([encode_row(r, "sft", encoding, images.__getitem__)
                                          for r, images in items], schema=schema)
            pq.write_table(table, folder / f"{split}-00000.parquet")
    return root


def thyme_row(row: dict, images: dict) -> dict:
    """The row as `thyme_train.chat` reads it (the published `thyme` encoding's columns)."""
    return {"image": [images[p] for p in row["images"]], "question": row["question"],
            "response": row["response"], "_origin": row["id"]}
