"""Writes the miniature benchmark fixtures beside this file, each in its benchmark's real
layout (docs/evaluation.md names the source of each): a few rows, tiny synthetic images.

    python tests/data/benchmarks/make_fixtures.py

The files are committed; this script documents how they were made and remakes them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).parent


def picture(seed: int, size=(32, 24), box=None) -> Image.Image:
    """A textured image (cross-correlation needs texture), a red box drawn where `box` says."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    if box:
        x, y, w, h = box
        ImageDraw.Draw(img).rectangle([x, y, x + w, y + h], outline=(255, 0, 0), width=2)
    return img


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def tsv(name: str, columns: list[str], rows: list[dict]) -> None:
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def vstar_tsv() -> None:
    """VLMEvalKit's VStarBench.tsv: its image-MCQ layout (options in A-D, the letter in answer)."""
    rows = [
        dict(index=0, image=b64(picture(0)), question="What is the color of the woman's bag?",
             A="red", B="blue", C="black", D="white", answer="C", category="direct_attributes"),
        dict(index=1, image=b64(picture(1)), question="What is the material of the glove?",
             A="rubber", B="cotton", C="leather", D="wool", answer="A", category="direct_attributes"),
        dict(index=2, image=b64(picture(2)), question="What is the color of the umbrella?",
             A="green", B="yellow", C="purple", D="orange", answer="B", category="direct_attributes"),
        dict(index=3, image=b64(picture(3)), question="Is the dog on the left or right side of the "
             "car?", A="left", B="right", C="", D="", answer="B", category="relative_position"),
        dict(index=4, image="3", question="Is the cup on the left or right side of the plate?",
             A="left", B="right", C="", D="", answer="A", category="relative_position"),
    ]
    tsv("VStarBench.tsv", ["index", "image", "question", "A", "B", "C", "D", "answer", "category"], rows)


def vstar_folder() -> None:
    """V*'s own release (vstar_bench/): an image and a JSON per item, the correct option first,
    the targets' names and [x, y, w, h] boxes."""
    items = {
        "direct_attributes": [
            ("sa_1", "What is the color of the clock?", ["red", "green", "blue", "white"],
             ["clock"], [[40, 30, 60, 40]]),
            ("sa_2", "What is the color of the flag?", ["yellow", "black", "red", "blue"],
             ["flag"], [[230, 170, 50, 40]]),
        ],
        "relative_position": [
            ("sa_3", "Is the bike on the left or right side of the bench?", ["left", "right"],
             ["bike", "bench"], [[20, 150, 50, 50], [220, 150, 60, 50]]),
        ],
    }
    for category, rows in items.items():
        folder = HERE / "vstar_bench" / category
        folder.mkdir(parents=True, exist_ok=True)
        for k, (stem, question, options, targets, boxes) in enumerate(rows):
            img = picture(10 + k + len(category), size=(320, 240))
            for box in boxes:
                x, y, w, h = box
                ImageDraw.Draw(img).rectangle([x, y, x + w, y + h], outline=(255, 0, 0), width=3)
            img.save(folder / f"{stem}.jpg", quality=75)
            (folder / f"{stem}.json").write_text(json.dumps(
                {"target_object": targets, "bbox": boxes, "question": question,
                 "options": options}, indent=2) + "\n")


def hrbench() -> None:
    """HR-Bench 4K (hr_bench_4k.tsv): each question asked in several cycles (its options rotated),
    `category` single (FSP) or cross (FCP), `cycle_category` naming the cycle."""
    questions = [("What is written on the sign?", ["STOP", "GO", "EXIT", "OPEN"], 0, "single"),
                 ("Which building is taller?", ["left", "right", "same", "neither"], 1, "cross")]
    rows, index = [], 0
    for q, (text, options, right, category) in enumerate(questions):
        image = b64(picture(20 + q))
        for cycle in range(4):
            rotated = options[cycle:] + options[:cycle]
            rows.append(dict(index=index, question=text, answer="ABCD"[rotated.index(options[right])],
                             category=category, image=image, A=rotated[0], B=rotated[1],
                             C=rotated[2], D=rotated[3], cycle_category=f"cycle{cycle + 1}"))
            index += 1
    tsv("hr_bench_4k.tsv", ["index", "question", "answer", "category", "image", "A", "B", "C", "D",
                            "cycle_category"], rows)


MME = [("Perception/Monitoring", "vehicle/counting", "How many cars are in the image?",
        ["3", "4", "5", "6", "The image does not feature the cars"], "B"),
       ("Perception/OCR with Complex Context", "ocr/text", "What is the shop's name?",
        ["Bo", "Mo", "Lo", "Go", "The image does not feature the shop"], "A"),
       ("Reasoning/Autonomous_Driving", "relation/intention", "Where will the car turn?",
        ["left", "right", "straight", "back", "The image does not feature the car"], "C")]


def mme_realworld() -> None:
    """MME-RealWorld-Lite (mme_realworld_lite.tsv): the options as a list literal in
    `multi-choice options`; MME-RealWorld as VLMEvalKit's generate_tsv writes it: the options
    text plus columns A-E."""
    lite, full = [], []
    for k, (category, l2, question, options, answer) in enumerate(MME):
        lines = [f"({'ABCDE'[i]}) {o}" for i, o in enumerate(options)]
        image = b64(picture(30 + k))
        lite.append({"index": k, "question": question, "multi-choice options": str(lines),
                     "answer": answer, "category": category, "l2-category": l2, "image": image})
        full.append({"index": k, "image": image, "question": question,
                     "multi-choice options": "The choices are listed below:\n" + "\n".join(lines),
                     **{"ABCDE"[i]: line[4:] for i, line in enumerate(lines)},
                     "answer": answer, "category": category, "l2-category": l2})
    tsv("MME-RealWorld-Lite.tsv", ["index", "question", "multi-choice options", "answer",
                                   "category", "l2-category", "image"], lite)
    tsv("MME-RealWorld.tsv", ["index", "image", "question", "multi-choice options", "A", "B", "C",
                              "D", "E", "answer", "category", "l2-category"], full)


def hallusion() -> None:
    """HallusionBench.tsv: yes/no questions; the index's 4th-6th `_` fields are the set, figure
    and question ids (VLMEvalKit's Hallusion_rating)."""
    rows = []
    for k, (set_id, figure, question, answer) in enumerate(
            [(0, 0, 0, "Yes"), (0, 1, 0, "No"), (0, 0, 1, "No"), (0, 1, 1, "Yes")]):
        rows.append({"index": f"VD_chart_x_{set_id}_{figure}_{question}", "image": b64(picture(40 + k)),
                     "question": f"Is the bar {question} higher than the others in figure {figure}?",
                     "answer": answer, "category": "VD", "l2-category": "chart"})
    tsv("HallusionBench.tsv", ["index", "image", "question", "answer", "category", "l2-category"], rows)


def ocrbench() -> None:
    """OCRBench.tsv: `answer` a list literal of accepted answers, `category` one of its ten."""
    rows = [
        {"index": 0, "image": b64(picture(50)), "question": "what is written in the image?",
         "answer": str(["Centre", "center"]), "category": "Regular Text Recognition"},
        {"index": 1, "image": b64(picture(51)), "question": "What is the total?",
         "answer": str(["$12.50"]), "category": "Key Information Extraction"},
        {"index": 2, "image": b64(picture(52)), "question": "Write the formula in LaTeX.",
         "answer": str(["x^{2} + 1"]), "category": "Handwritten Mathematical Expression Recognition"},
    ]
    tsv("OCRBench.tsv", ["index", "image", "question", "answer", "category"], rows)


if __name__ == "__main__":
    vstar_tsv()
    vstar_folder()
    hrbench()
    mme_realworld()
    hallusion()
    ocrbench()
