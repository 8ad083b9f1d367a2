"""Small Thyme-SFT datasets for the training tests: real-format parquet (pipelines.core.formats) laid
out as a published dataset directory, one folder per split."""

import io
from pathlib import Path

from PIL import Image

from pipelines.core.formats import SourceRow, thyme_sft_table, write_parquet

COLORS = ["red", "green", "blue", "yellow"]
RGB = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220),
       "yellow": (230, 220, 40)}
CODE = ("<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 28, 28)).save('/mnt/data/temp_processed_images/crop.jpg')\n"
        "print('/mnt/data/temp_processed_images/crop.jpg')\n```\n</code>")
CALC = "<code>\n```python\nprint({a} * {b})\n```\n</code>"


def png(color, size=(56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, RGB[color]).save(buf, "PNG")
    return buf.getvalue()


def single_round(i: int) -> SourceRow:
    color = COLORS[i % len(COLORS)]
    response = (f"<think>The patch is small; crop it.{CODE}<sandbox_output><image>"
                f"</sandbox_output>The crop is {color}.</think> <answer>{color}</answer>")
    return SourceRow(question="What colour is the patch?", images=[png(color), png(color)],
                     response=response, image_path=f"images/{i:04d}.png", image_size=(56, 56))


def two_round(i: int) -> SourceRow:
    color = COLORS[i % len(COLORS)]
    response = (f"<think>Crop wide first.{CODE}<sandbox_output><image></sandbox_output>"
                f"Crop tighter.{CODE}<sandbox_output><image></sandbox_output>"
                f"It is {color}.</think> <answer>{color}</answer>")
    return SourceRow(question="What colour is the patch?",
                     images=[png(color), png(color), png(color)], response=response,
                     image_path=f"images/{i:04d}.png", image_size=(56, 56))


def computation(i: int, with_image: bool) -> SourceRow:
    a, b = 3 + i % 5, 7
    response = (f"<think>Multiply.{CALC.format(a=a, b=b)}<sandbox_output>{a * b}"
                f"</sandbox_output>So {a * b}.</think> <answer>{a * b}</answer>")
    row = SourceRow(question=f"What is {a} times {b}?", images=[png("blue")] if with_image else [],
                    response=response, image_path=f"images/c{i:04d}.png", image_size=(56, 56))
    return row


def thyme_table(rows):
    """Thyme-SFT rows; text-only rows get the text-only question template (THYME.md §3)."""
    return thyme_sft_table(rows)


def write_dataset(root: Path, n_single=24, n_two=8, n_computation=12) -> Path:
    """A directory laid out as a published dataset (pipelines.datasets.publish):
    data/thyme/<split>-00000.parquet."""
    splits = {
        "wo_thinking_thyme_single_round": [single_round(i) for i in range(n_single)],
        "2round": [two_round(i) for i in range(n_two)],
        "computation": [computation(i, with_image=i % 2 == 0) for i in range(n_computation)],
    }
    (root / "data" / "thyme").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_parquet(thyme_table(rows), root / "data" / "thyme" / f"{split}-00000.parquet")
    return root
