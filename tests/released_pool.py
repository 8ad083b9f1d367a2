"""A small pool shaped like the released data, for the split, decontamination and publishing
tests: a Thyme-SFT text-only computation row, a multi-image row, a single-image crop and a
two-round error correction with audit-passing trajectories, Thyme-RL/DeepEyes-like prompts without any (one with two images, one with options,
one with an open-prose answer, one too small, one text-only, two with a difficulty). Images are
smooth random "photos" (structure at several scales, so perceptual hashes mean something).

Layout (what the assets read under a storage root):
    pool/samples/shard-00000.parquet   pool/images/   audited/shard-00000.parquet
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipelines.core.images import ImageStore
from pipelines.core.schema import Sample, samples_table
from pipelines.core.trajectory import PASS, Check, Result, Trajectory, Turn, trajectories_table

LONG_QUESTION = ("A crate holds 12 boxes with 7 apples in each box, and 3 loose apples lie beside "
                 "it. How many apples are there in total?")


def picture(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    img = coarse.resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, size[0] - size[0] // 4), rng.integers(0, size[1] - size[1] // 4)
        w, h = rng.integers(size[0] // 10, size[0] // 4), rng.integers(size[1] // 10, size[1] // 4)
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kw)
    return buf.getvalue()


def _sample(store, n, question, images, answer, task="unknown", meta=None, source="thyme-rl"):
    refs = [store.put(encode(img))[0] for img in images]
    return Sample(question=question, images=refs, source=source, origin_file="released.parquet",
                  origin_row=n, answer=answer, task=task, meta=meta or {})


def _passed(sample: Sample, turns: list[Turn], answer: str, kind="single") -> Trajectory:
    return Trajectory(sample_id=sample.id, teacher="reference", kind=kind, task=sample.task,
                      turns=turns, answer=answer, audit=[Check("executed", PASS, "ran")], passed=True)


def build(root: Path) -> dict:
    store = ImageStore(root / "pool" / "images")
    text = _sample(store, 0, LONG_QUESTION, [], "87", "computation", source="thyme-sft")
    left, right = picture(1), picture(2)
    multi = _sample(store, 1, "Which of the two pictures has the larger red shape?", [left, right],
                    "left", "crop", source="thyme-sft")
    single = _sample(store, 2, "What colour is the small shape at the top?", [picture(3, (400, 300))],
                     "blue", "crop", source="thyme-sft")
    two_round = _sample(store, 11, "What colour is the shape in the lower right corner?",
                        [picture(12, (400, 300))], "green", "crop", source="thyme-sft")
    rl = {
        "plain": _sample(store, 3, "What colour is the largest shape?", [picture(4)], "red"),
        "two_images": _sample(store, 4, "How many shapes are in both pictures together?",
                              [picture(5), picture(6)], "12"),
        "options": _sample(store, 5, "Which shape is leftmost?\nA. circle\nB. square", [picture(7)],
                           "A", meta={"options": ["A. circle", "B. square"]}),
        "open": _sample(store, 6, "Describe the scene.", [picture(8)],
                        "A quiet landscape with several coloured shapes scattered over a soft gradient"),
        "small": _sample(store, 7, "What colour is it?", [picture(9, (40, 40))], "green"),
        "text_only": _sample(store, 8, "What is 2 + 2?", [], "4"),
        "hard": _sample(store, 9, "Count the ellipses.", [picture(10)], "6", meta={"difficulty": "hard"}),
        "easy": _sample(store, 10, "Is there a shape?", [picture(11)], "yes", meta={"difficulty": "easy"}),
    }
    crop = left.crop((40, 30, 200, 150)).resize((320, 240))
    produced = store.put(encode(crop, "PNG"))[0].relpath
    produced_single = store.put(encode(picture(3, (400, 300)).crop((100, 0, 300, 150)).resize((400, 300)),
                                       "PNG"))[0].relpath
    wide = store.put(encode(picture(12, (400, 300)).crop((200, 150, 400, 300)).resize((400, 300)),
                            "PNG"))[0].relpath
    trajectories = [
        _passed(text, [Turn("I compute it.", "print(12 * 7 + 3)", Result("text", "87")),
                       Turn("So 87 apples.")], "87"),
        _passed(multi, [Turn("I zoom into the first picture.",
                             "from PIL import Image\nimg = Image.open(image_path)\n"
                             "img.crop((40, 30, 200, 150)).resize((320, 240)).save('/mnt/data/temp_processed_images/a.png')\n"
                             "print('/mnt/data/temp_processed_images/a.png')",
                             Result("image", "", [produced])),
                        Turn("The red shape on the left is larger.")], "left"),
        _passed(single, [Turn("Zoom in at the top.",
                              "img = Image.open(image_path)\nimg.crop((100, 0, 300, 150)).resize((400, 300)).save(p)",
                              Result("image", "", [produced_single])),
                         Turn("It is blue.")], "blue"),
        _passed(two_round, [Turn("The corner is small; a first crop.", "img.crop((0, 0, 5, 5)).save(p)",
                                 Result("error", "tile cannot extend outside image", [], "exception")),
                            Turn("Wrong box; the lower right quarter instead.",
                                 "img.crop((200, 150, 400, 300)).resize((400, 300)).save(p)",
                                 Result("image", "", [wide])),
                            Turn("It is green.")], "green", kind="error_correction"),
    ]
    samples = [text, multi, single, two_round, *rl.values()]
    (root / "pool" / "samples").mkdir(parents=True, exist_ok=True)
    (root / "audited").mkdir(parents=True, exist_ok=True)
    pq.write_table(samples_table(samples), root / "pool" / "samples" / "shard-00000.parquet")
    pq.write_table(trajectories_table(trajectories), root / "audited" / "shard-00000.parquet")
    return {"store": store.root, "samples": {s.id: s for s in samples}, "text": text,
            "multi": multi, "single": single, "two_round": two_round, "rl": rl,
            "trajectories": {t.id: t for t in trajectories}}


def files(root: Path) -> tuple[list[str], list[str]]:
    return ([str(p) for p in sorted((root / "audited").glob("*.parquet"))],
            [str(p) for p in sorted((root / "pool" / "samples").glob("*.parquet"))])
