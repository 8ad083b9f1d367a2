"""What every task's template shares: the random draw, the sample's facts, box geometry and the
code-writing pieces (variable names, imports, open/save lines, box and crop lines).

    Draw(rng)        every random choice of one trajectory
    Facts.of(sample) the answer (letter and text), meta and image size
    Skip             raised when a sample lacks what a template needs (no candidate)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipelines.core.schema import Sample
from sandbox.protocol import VIRTUAL_OUTPUT_DIR

MIN_SIDE = 64                 # the sandbox's minimum crop side (THYME.md §2)
_HEX = "0123456789abcdef"


class Skip(Exception):
    """The sample lacks what this template needs."""


class Draw:
    """All random choices of one trajectory."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def say(self, templates, **fields) -> str:
        return self.pick(templates).format(**fields)

    def suffix(self) -> str:
        return "".join(self.pick(_HEX) for _ in range(self.pick((4, 6, 8))))


class FixedDraw(Draw):
    """The teacher's fixed wording: every choice is the first option and no optional sentence or
    comment is added, so one task's trajectories differ only in the sample's own values. The
    tool-use learning check uses it (a tiny model learns a copy at a constant offset far sooner
    than one whose position varies with the phrasing); numbers drawn with `uniform` still vary."""

    def pick(self, seq):
        return seq[0]

    def chance(self, p: float) -> bool:
        return False

    def suffix(self) -> str:
        return "".join(Draw.pick(self, _HEX) for _ in range(6))


@dataclass
class Facts:
    """What the templates read from a sample: the answer, meta and the first image's size."""
    sample: Sample
    meta: dict
    answer: str            # what goes in <answer>: the letter for multiple choice
    text: str              # the answer's content (the option text for multiple choice)
    letter: str | None
    width: int
    height: int

    @classmethod
    def of(cls, sample: Sample) -> Facts:
        meta = sample.meta or {}
        letter, text = None, sample.answer
        options = meta.get("options") or []
        if options:
            if meta.get("answer_text") is not None:
                letter, text = sample.answer, str(meta["answer_text"])
            else:
                for line in options:
                    m = re.match(r"\s*([A-Z])[.)]\s*(.*)", str(line))
                    if m and m.group(1) == sample.answer.strip():
                        letter, text = m.group(1), m.group(2).strip()
        width = height = 0
        if sample.images:
            width, height = sample.images[0].width, sample.images[0].height
        return cls(sample, meta, sample.answer, text, letter, width, height)


def option_sentence(d: Draw, f: Facts) -> str:
    """The sentence naming the option (" That matches option B.") for multiple choice, else ""."""
    if f.letter is None:
        return ""
    return d.say((" That matches option {L}.", " This corresponds to option {L}.",
                  " The correct choice is therefore {L}.", " Among the options, that is {L}."),
                 L=f.letter)


# ---------------------------------------------------------------------------------------------
# Box geometry
# ---------------------------------------------------------------------------------------------

def gt_box(f: Facts) -> list[int]:
    """The ground-truth box from `meta`, clipped to the image; Skip when there is none."""
    box = f.meta.get("box")
    if not box or len(box) != 4 or not f.width or not f.height:
        raise Skip
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1 = max(0, min(x1, x2)), max(0, min(y1, y2))
    x2, y2 = min(f.width, max(x1 + 1, x2)), min(f.height, max(y1 + 1, y2))
    return [x1, y1, x2, y2]


def _span(lo: float, hi: float, limit: int, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """An integer interval covering [lo, hi], at least min_side long, shifted inside [0, limit]."""
    lo, hi = int(np.floor(lo)), int(np.ceil(hi))
    if hi - lo < min_side:
        lo = int(round((lo + hi - min_side) / 2))
        hi = lo + min_side
    if hi - lo >= limit:
        return 0, limit
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return lo, hi


def fit_box(x1, y1, x2, y2, W, H) -> list[int]:
    """An integer box covering the given one, sides >= MIN_SIDE, shifted inside the W x H image."""
    a, c = _span(x1, x2, W)
    b, e = _span(y1, y2, H)
    return [a, b, c, e]


def margin_box(d: Draw, gt: list[int], W: int, H: int, lo=0.25, hi=1.1) -> list[int]:
    """The ground-truth box grown by a random margin on each side (relative and absolute)."""
    x1, y1, x2, y2 = gt
    bw, bh = x2 - x1, y2 - y1
    base = max(bw, bh)
    grow = [d.uniform(lo, hi) * base * 0.5 + d.uniform(6, 30) for _ in range(4)]
    return fit_box(x1 - grow[0], y1 - grow[1], x2 + grow[2], y2 + grow[3], W, H)


def contains(box, gt) -> bool:
    return box[0] <= gt[0] and box[1] <= gt[1] and box[2] >= gt[2] and box[3] >= gt[3]


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def position_words(box, W, H) -> str:
    """Rough position words, as someone looking at the picture would say."""
    cx, cy = (box[0] + box[2]) / 2 / W, (box[1] + box[3]) / 2 / H
    col = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    row = "upper" if cy < 0.36 else "lower" if cy > 0.64 else ""
    if not col and not row:
        return "near the centre of the image"
    if not row:
        return f"on the {col} side of the image"
    if not col:
        return "near the top of the image" if row == "upper" else "near the bottom of the image"
    return f"in the {row}-{col} part of the image"


# ---------------------------------------------------------------------------------------------
# Code writing: names, imports, opening and saving, boxes and crops
# ---------------------------------------------------------------------------------------------

# (name, a realistic misspelling or mix-up of it)
_CROP_NAMES = (("crop", "crop_img"), ("cropped", "croped"), ("region", "regoin"),
               ("roi", "roi_img"), ("patch", "pacth"), ("crop_img", "cropped_img"))
_IMG_NAMES = ("img", "image", "im", "src")
_ZOOM_NAMES = ("zoomed", "enlarged", "upscaled", "zoom", "big")
_PATH_NAMES = ("out_path", "save_path", "output_path", "processed_path", "path")
_CORNERS = (("x1", "y1", "x2", "y2"), ("left", "top", "right", "bottom"),
            ("x_min", "y_min", "x_max", "y_max"))
_BOX_VARS = ("box", "roi_box", "bbox", "crop_box")


@dataclass
class Names:
    """The variable names, library and file naming of one trajectory's code."""
    lib: str                # cv2 | pil
    img: str
    crop: str
    typo: str
    zoomed: str
    path: str
    corners: tuple[str, str, str, str] | None   # None: a box tuple variable
    box: str
    ext: str
    path_style: int

    @classmethod
    def draw(cls, d: Draw, lib: str | None = None) -> Names:
        crop, typo = d.pick(_CROP_NAMES)
        return cls(lib=lib or d.pick(("cv2", "pil")), img=d.pick(_IMG_NAMES), crop=crop, typo=typo,
                   zoomed=d.pick(_ZOOM_NAMES), path=d.pick(_PATH_NAMES),
                   corners=d.pick(_CORNERS) if d.chance(0.7) else None, box=d.pick(_BOX_VARS),
                   ext="jpg" if d.chance(0.7) else "png", path_style=int(d.rng.integers(3)))


_STD_IMPORTS = ((r"\bos\.", "import os"), (r"\bmath\.", "import math"),
                (r"\bDecimal\(", "from decimal import {decimal}"),
                (r"\bFraction\(", "from fractions import Fraction"),
                (r"(?<![.\w])comb\(", "from math import comb"))
_THIRD_IMPORTS = ((r"\bcv2\.", "import cv2"), (r"\bnp\.", "import numpy as np"),
                  (r"\bsp\.", "import sympy as sp"))


def assemble(body: list[str]) -> str:
    """The code with the imports its body uses, grouped like isort would."""
    text = "\n".join(line for line in body if not line.lstrip().startswith("#"))
    decimal = "ROUND_HALF_UP, Decimal" if "ROUND_HALF_UP" in text else "Decimal"
    std = sorted((imp.format(decimal=decimal) for pat, imp in _STD_IMPORTS if re.search(pat, text)),
                 key=lambda imp: (imp.startswith("from"), imp))
    third = [imp for pat, imp in _THIRD_IMPORTS if re.search(pat, text)]
    pil = [name for name in ("Image", "ImageEnhance", "ImageOps") if re.search(rf"\b{name}\.", text)]
    if pil:
        third.append("from PIL import " + ", ".join(pil))
    head = std + ([""] if std and third else []) + third
    return "\n".join(head + ([""] if head else []) + body)


def save_lines(d: Draw, n: Names, var: str, stem: str) -> list[str]:
    """Lines that save `var` under the virtual output directory and print the path."""
    name = f"{stem}_{d.suffix()}.{n.ext}"
    if n.path_style == 0:
        lines = [f'{n.path} = "{VIRTUAL_OUTPUT_DIR}/{name}"']
    elif n.path_style == 1:
        lines = [f'out_dir = "{VIRTUAL_OUTPUT_DIR}"', "os.makedirs(out_dir, exist_ok=True)",
                 f'{n.path} = os.path.join(out_dir, "{name}")']
    else:
        lines = ["name = os.path.splitext(os.path.basename(image_path))[0]",
                 f'{n.path} = os.path.join("{VIRTUAL_OUTPUT_DIR}", f"{{name}}_{name}")']
    if n.lib == "cv2":
        lines.append(f"cv2.imwrite({n.path}, {var})")
    elif n.ext == "jpg" and d.chance(0.4):
        lines.append(f"{var}.save({n.path}, quality=95)")
    else:
        lines.append(f"{var}.save({n.path})")
    lines.append(f"print({n.path})")
    return lines


def open_line(n: Names) -> str:
    """The line that loads `image_path`."""
    if n.lib == "cv2":
        return f"{n.img} = cv2.imread(image_path)"
    return f'{n.img} = Image.open(image_path).convert("RGB")'


def box_lines(n: Names, box, comment: str | None) -> list[str]:
    """The box as corner variables or one tuple, after an optional comment."""
    nums = ", ".join(str(int(v)) for v in box)
    lines = [f"# {comment}"] if comment else []
    if n.corners:
        lines.append(f"{', '.join(n.corners)} = {nums}")
    else:
        lines.append(f"{n.box} = ({nums})  # left, top, right, bottom")
    return lines


def crop_expr(n: Names, mistake: str | None = None) -> str:
    """The crop of `n.img` to the box; mistake "swap" or "pil_args" writes that slip."""
    if n.lib == "cv2":
        if n.corners:
            a, b, c, e = n.corners
            if mistake == "swap":   # numpy images are [row, column]: a classic slip
                return f"{n.img}[{a}:{c}, {b}:{e}]"
            return f"{n.img}[{b}:{e}, {a}:{c}]"
        return f"{n.img}[{n.box}[1]:{n.box}[3], {n.box}[0]:{n.box}[2]]"
    args = ", ".join(n.corners) if n.corners else n.box
    if mistake == "pil_args":
        return f"{n.img}.crop({args})" if n.corners else f"{n.img}.crop(*{n.box})"
    return f"{n.img}.crop(({args}))" if n.corners else f"{n.img}.crop({n.box})"
