"""Real photographs for tests: scikit-image's sample data (`skimage.data`, shipped in its wheel,
public-domain / CC0 photos), with hand-drawn annotations in the V*-style (question, options,
rough box of the target, category). Nothing here is generated: the pixels are camera photos."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

# name -> question, answer, box [x1, y1, x2, y2] (pixels, x2/y2 exclusive), category, target.
# Boxes were drawn by looking at each photo (rough, as the paper's RL set's are).
PHOTOS = {
    "astronaut": ("What is standing on the stand in the background on the right?",
                  "a space shuttle model", [350, 0, 472, 285], "object", "the shuttle model"),
    "coffee": ("What utensil rests on the saucer?", "a spoon", [318, 62, 428, 330], "object",
               "the spoon"),
    "rocket": ("What shape is the top of the rocket?", "a rounded cone", [300, 120, 345, 185],
               "attribute", "the rocket's nose"),
    "chelsea": ("What colour are the cat's eyes?", "green", [125, 80, 350, 170], "attribute",
                "the cat's eyes"),
    "camera": ("What is the man looking through?", "a camera", [250, 135, 330, 200],
               "object", "the camera"),
    "page": ("What kind of document is this?", "a printed page of text", [0, 0, 384, 191],
             "ocr", "the page"),    # 384x191: below augmentation's min side
}


def photo(name: str) -> Image.Image:
    import skimage.data
    return Image.fromarray(getattr(skimage.data, name)())


def photo_bytes(name: str, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    photo(name).save(out, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue()


def write_photos(folder: Path, names=tuple(PHOTOS)) -> dict[str, str]:
    """Each photo as `<folder>/<name>.jpg` (grey ones as PNG); name -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in names:
        image = photo(name)
        fname = f"{name}.png" if image.mode == "L" else f"{name}.jpg"
        image.save(folder / fname, **({"quality": 92} if fname.endswith(".jpg") else {}))
        files[name] = fname
    return files


def write_vstar_bench(folder: Path, names=("astronaut", "coffee", "rocket")) -> None:
    """A V*-Bench-layout folder (`<category>/<image>.jpg` + `<image>.json` with `question`,
    `options` (the correct one first), `target_object` and `bbox` as [x, y, w, h])."""
    for name in names:
        question, answer, box, category, target = PHOTOS[name]
        sub = folder / ("direct_attributes" if category != "position" else "relative_position")
        write_photos(sub, (name,))
        x1, y1, x2, y2 = box
        wrong = [o for o in ("a flag", "a cup", "a tower", "a helmet") if o != answer][:3]
        (sub / f"{name}.json").write_text(json.dumps({
            "question": question, "options": [answer, *wrong], "target_object": [target],
            "bbox": [[x1, y1, x2 - x1, y2 - y1]]}))
