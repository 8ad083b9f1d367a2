"""The embedded default teacher: templated reasoning and code built from a sample's ground truth,
so the whole flow runs without a model (THYME.md §3, how the paper's generator was briefed).

    TemplateTeacher(seed=0, multi_round_share=0.25).candidates(sample) -> [Trajectory]

Per task (the generated pool's `meta` conventions, `pipelines.pool.generate`):
- crop: a box = ground-truth box + a random margin (inside the image, sides >= 64 px), zoomed
  2-4x with OpenCV or PIL, saved under the virtual output directory, path printed;
- rotate: the image rotated back (PIL `rotate(expand=True)` or OpenCV `warpAffine` on the
  enlarged canvas);
- contrast: CLAHE, histogram equalisation, gamma, a percentile stretch or PIL enhancers,
  sometimes on a crop around the target;
- computation: the values read off the chart/table (or the word problem), then exact Python
  (fractions, decimal, sympy, numpy) printing the result in the sample's `answer_format`;
- no_code: one turn of reasoning and the answer (kind "direct").
Multi-round: `multi_round_share` of crop samples get two code rounds, half "further_enhancement"
(a wide crop, then a tight one) and half "error_correction" (a realistic mistake: wrong region,
a box that cuts the target off, a misspelled variable, `Image.crop` with four arguments, numpy
indices swapped); rotate samples get "error_correction" at half that share (rotated the wrong
way, a wrong keyword, the canvas size used before it was computed). The reasoning never states
the ground-truth box or angle: it reads as if the model located the target itself; the numbers
appear only in the code, as in the paper's data.

Everything varies (phrasing, library, variable and file names, margins, zoom, method) from one
`numpy.random.default_rng` seeded by (seed, sample id): the same configuration and sample always
give the same trajectory. Samples a template cannot serve (no ground truth, unknown task, empty
answer) get no candidate.
"""

from __future__ import annotations

import hashlib
import keyword
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory, Turn
from sandbox.protocol import VIRTUAL_OUTPUT_DIR

MIN_SIDE = 64                 # the sandbox's minimum crop side (THYME.md §2)
MAX_ZOOMED_SIDE = 2400        # keep produced images a sensible size
_HEX = "0123456789abcdef"


class _Skip(Exception):
    """The sample lacks what this template needs."""


class TemplateTeacher:
    name = "template/1"

    def __init__(self, seed: int = 0, multi_round_share: float = 0.25):
        if not 0.0 <= multi_round_share <= 1.0:
            raise ValueError(f"multi_round_share must be in [0, 1] (got {multi_round_share})")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (got {seed})")
        self.seed = int(seed)
        self.multi_round_share = float(multi_round_share)

    def candidates(self, sample: Sample) -> list[Trajectory]:
        build = _BUILDERS.get(sample.task)
        if build is None or not sample.answer:
            return []
        key = int.from_bytes(hashlib.blake2b(sample.id.encode(), digest_size=8).digest(), "big")
        draw = _Draw(np.random.default_rng([self.seed, key, 0x7E4C]))
        # The round structure has its own stream, so the share is exact in expectation.
        u = float(np.random.default_rng([self.seed, key, 0x40D5]).random())
        try:
            kind, turns, answer = build(_Facts.of(sample), draw, u, self.multi_round_share)
        except _Skip:
            return []
        return [Trajectory(sample_id=sample.id, teacher=self.name, kind=kind, task=sample.task,
                           turns=turns, answer=answer)]


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

class _Draw:
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


@dataclass
class _Facts:
    sample: Sample
    meta: dict
    answer: str            # what goes in <answer>: the letter for multiple choice
    text: str              # the answer's content (the option text for multiple choice)
    letter: str | None
    width: int
    height: int

    @classmethod
    def of(cls, sample: Sample) -> _Facts:
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


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _mc(d: _Draw, f: _Facts) -> str:
    if f.letter is None:
        return ""
    return d.say((" That matches option {L}.", " This corresponds to option {L}.",
                  " The correct choice is therefore {L}.", " Among the options, that is {L}."),
                 L=f.letter)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _gt_box(f: _Facts) -> list[int]:
    box = f.meta.get("box")
    if not box or len(box) != 4 or not f.width or not f.height:
        raise _Skip
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


def _fit_box(x1, y1, x2, y2, W, H) -> list[int]:
    a, c = _span(x1, x2, W)
    b, e = _span(y1, y2, H)
    return [a, b, c, e]


def _margin_box(d: _Draw, gt: list[int], W: int, H: int, lo=0.25, hi=1.1) -> list[int]:
    """The ground-truth box grown by a random margin on each side (relative and absolute)."""
    x1, y1, x2, y2 = gt
    bw, bh = x2 - x1, y2 - y1
    base = max(bw, bh)
    grow = [d.uniform(lo, hi) * base * 0.5 + d.uniform(6, 30) for _ in range(4)]
    return _fit_box(x1 - grow[0], y1 - grow[1], x2 + grow[2], y2 + grow[3], W, H)


def _contains(box, gt) -> bool:
    return box[0] <= gt[0] and box[1] <= gt[1] and box[2] >= gt[2] and box[3] >= gt[3]


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _where(box, W, H) -> str:
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


def _zoom(d: _Draw, box, options=(2, 2, 2.5, 3, 3, 4)) -> float:
    z = d.pick(options)
    side = max(box[2] - box[0], box[3] - box[1])
    while z > 2 and side * z > MAX_ZOOMED_SIDE:
        z -= 0.5
    return z


def _num(z: float) -> str:
    return str(int(z)) if float(z).is_integer() else str(z)


# ---------------------------------------------------------------------------------------------
# Code writing: names, imports, saving
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
class _Names:
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
    def draw(cls, d: _Draw, lib: str | None = None) -> _Names:
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


def _assemble(body: list[str]) -> str:
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


def _save(d: _Draw, n: _Names, var: str, stem: str) -> list[str]:
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


def _open(n: _Names) -> str:
    if n.lib == "cv2":
        return f"{n.img} = cv2.imread(image_path)"
    return f'{n.img} = Image.open(image_path).convert("RGB")'


def _box_lines(n: _Names, box, comment: str | None) -> list[str]:
    nums = ", ".join(str(int(v)) for v in box)
    lines = [f"# {comment}"] if comment else []
    if n.corners:
        lines.append(f"{', '.join(n.corners)} = {nums}")
    else:
        lines.append(f"{n.box} = ({nums})  # left, top, right, bottom")
    return lines


def _crop_expr(n: _Names, mistake: str | None = None) -> str:
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


def _zoom_lines(d: _Draw, n: _Names, src: str, dst: str, z: float) -> list[str]:
    zs = _num(z)
    whole = float(z).is_integer()
    if n.lib == "cv2":
        interp = d.pick(("cv2.INTER_CUBIC", "cv2.INTER_CUBIC", "cv2.INTER_LANCZOS4"))
        if d.chance(0.5):
            return [f"{dst} = cv2.resize({src}, None, fx={zs}, fy={zs}, interpolation={interp})"]
        size = f"(w * {zs}, h * {zs})" if whole else f"(int(w * {zs}), int(h * {zs}))"
        return [f"h, w = {src}.shape[:2]", f"{dst} = cv2.resize({src}, {size}, interpolation={interp})"]
    resample = d.pick(("Image.LANCZOS", "Image.BICUBIC", "Image.Resampling.LANCZOS",
                       "Image.Resampling.BICUBIC"))
    if whole and d.chance(0.5):
        return [f"{dst} = {src}.resize(({src}.width * {zs}, {src}.height * {zs}), {resample})"]
    if d.chance(0.5):
        return ["scale = " + zs,
                f"{dst} = {src}.resize((int({src}.width * scale), int({src}.height * scale)), {resample})"]
    size = f"(w * {zs}, h * {zs})" if whole else f"(int(w * {zs}), int(h * {zs}))"
    return [f"w, h = {src}.size", f"{dst} = {src}.resize({size}, {resample})"]


_BOX_COMMENTS = ("region around the {noun}, with some margin",
                 "the {noun} plus a margin so nothing is cut off",
                 "crop the area containing the {noun}",
                 "{noun} region (padded)")
_ZOOM_COMMENTS = ("enlarge {z}x so the details become legible", "zoom in {z}x",
                  "upscale the crop {z}x", "make it {z} times bigger to read it")


def _crop_code(d: _Draw, n: _Names, box, z: float, noun: str, stem: str,
               mistake: str | None = None, reuse: bool = False) -> str:
    # a later block of the same session reuses the image it already loaded
    body = [] if reuse else [_open(n)]
    comment = d.say(_BOX_COMMENTS, noun=noun) if d.chance(0.8) else None
    body += _box_lines(n, box, comment)
    body.append(f"{n.crop} = {_crop_expr(n, mistake)}")
    if d.chance(0.6):
        body.append("# " + d.say(_ZOOM_COMMENTS, z=_num(z)))
    src = n.typo if mistake == "typo" else n.crop
    body += _zoom_lines(d, n, src, n.zoomed, z)
    body += _save(d, n, n.zoomed, stem)
    return _assemble(body)


# ---------------------------------------------------------------------------------------------
# crop
# ---------------------------------------------------------------------------------------------

@dataclass
class _Subject:
    noun: str       # "sign", "licence plate": for comments and file names
    what: str       # "the small blue sign"
    goal: str       # "read", "count", "judge the colour of"
    observe: str    # 'the blue sign reads "EXIT"'
    plural: bool = False

    def fields(self) -> dict:
        pl = self.plural
        return dict(what=self.what, What=_cap(self.what), goal=self.goal,
                    is_="are" if pl else "is", it="them" if pl else "it", It="They" if pl else "It",
                    it_sub="they" if pl else "it", its="their" if pl else "its",
                    s="" if pl else "s")


def _crop_subject(f: _Facts) -> _Subject:
    kind, target, text = f.meta.get("kind"), str(f.meta.get("target", "")), f.text
    if kind == "sign" and (m := re.match(r"small (\w+) sign", target)):
        c = m.group(1)
        return _Subject("sign", f"the small {c} sign", "read", f'the {c} sign reads "{text}"')
    if kind == "price" and (m := re.search(r"price tag for (.+?) reading", target)):
        item = m.group(1).lower()
        return _Subject("price tag", f"the price tag for the {item}", "read",
                        f"the tag for the {item} shows {text}")
    if kind == "plate":
        return _Subject("licence plate", "the car's licence plate", "read",
                        f"the licence plate reads {text}")
    if kind == "badge" and (m := re.match(r"small (\w+) circle", target)):
        c = m.group(1)
        return _Subject("badge", f"the number on the small {c} circle", "read",
                        f"the number inside the {c} circle is {text}")
    if kind == "count" and (m := re.match(r"\d+ small (\w+) (\w+?)s$", target)):
        c, shape = m.groups()
        return _Subject(f"{shape}s", f"the small {c} {shape}s", "count",
                        f"I can count {text} {c} {shape}{'' if text == '1' else 's'}", True)
    if kind == "attribute" and (m := re.match(r"small (\w+) (\w+)$", target)):
        shape = m.group(2)
        return _Subject(shape, f"the small {shape}", "judge the colour of",
                        f"the {shape} is clearly {text}")
    return _Subject("target", "the detail the question asks about", "make out",
                    f"the detail is legible now: {text}")


_CROP_INTRO = (
    "The question is about {what}. In this {size} image {it} {is_} only a few pixels tall, "
    "{where}, too small to {goal} reliably. I'll crop that area with some margin and enlarge it.",
    "{What} {is_} tiny compared with the whole {size} picture. I can tell roughly where "
    "({where}), but not enough to {goal} {it}. Cropping around {it} and zooming in should help.",
    "To answer, I need to {goal} {what}, which cover{s} only a small patch {where}. "
    "Let me zoom into that region.",
    "The image is large and busy, and {what} {is_} hard to make out at this scale. I'll crop "
    "the region {where} and upscale it so the details become clear.",
    "At this resolution I can't {goal} {what} with confidence: {it_sub} sit{s} {where} and "
    "take{s} up a very small fraction of the image. Zooming in is the natural first step.",
)
_CROP_CLOSE = (
    "The zoomed view shows {what} clearly: {observe}.{mc}",
    "Now the detail is easy to make out: {observe}.{mc}",
    "After zooming in, {observe}.{mc}",
    "In the enlarged crop {observe}, so the answer is {text}.{mc}",
    "The crop worked: {observe}. The answer is {text}.{mc}",
)


def _stem(noun: str, d: _Draw) -> str:
    base = re.sub(r"\W+", "_", noun.lower()).strip("_") or "crop"
    return d.pick((f"{base}_zoom", f"{base}_crop", "zoomed", "crop", f"zoom_{base}"))


def _build_crop(f: _Facts, d: _Draw, u: float, share: float):
    gt = _gt_box(f)
    W, H = f.width, f.height
    s = _crop_subject(f)
    fields = dict(s.fields(), size=f"{W}x{H}", where=_where(gt, W, H), text=f.text)
    n = _Names.draw(d)
    box = _margin_box(d, gt, W, H)
    z = _zoom(d, box)
    close = "\n\n" + d.say(_CROP_CLOSE, observe=s.observe, mc=_mc(d, f), **fields)
    if u < share / 2:
        return _crop_further(f, d, n, gt, box, z, s, fields, close)
    if u < share:
        return _crop_error(f, d, n, gt, box, z, s, fields, close)
    intro = d.say(_CROP_INTRO, **fields) + "\n\n"
    code = _crop_code(d, n, box, z, s.noun, _stem(s.noun, d))
    return "single", [Turn(intro, code), Turn(close)], f.answer


_WIDE_INTRO = (
    "{What} {is_} very small in this {size} image ({where}). I'll first crop a wider area "
    "around {it} to see the surroundings at a better scale, then zoom in further if needed.",
    "The question needs me to {goal} {what}, but {it_sub} {is_} tiny. A first, generous crop "
    "{where} will show me where exactly {it_sub} {is_}.",
    "Let me start with a broad crop of the area {where}, where {what} appear{s} to be, and see "
    "whether that is enough to {goal} {it}.",
)
_WIDE_THEN = (
    "The wider crop shows {what} more clearly, but {it_sub} {is_} still too small to {goal} "
    "with confidence. I'll crop tighter around {it} and zoom in more.",
    "I can now locate {what} within this view, yet the details are still blurry at this "
    "scale. A tighter crop with a stronger zoom should settle it.",
    "This helps: {what} {is_} visible in the crop, but still only a few pixels high. Let me "
    "zoom in on {it} directly.",
)


def _wide_box(d: _Draw, gt, W, H) -> list[int]:
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    rw = min(max(gw * d.uniform(4, 8), 320.0), W * 0.6)
    rh = min(max(gh * d.uniform(4, 8), 240.0), H * 0.6)
    cx = (gt[0] + gt[2]) / 2 + d.uniform(-0.2, 0.2) * rw
    cy = (gt[1] + gt[3]) / 2 + d.uniform(-0.2, 0.2) * rh
    x1, x2 = min(cx - rw / 2, gt[0] - 8), max(cx + rw / 2, gt[2] + 8)
    y1, y2 = min(cy - rh / 2, gt[1] - 8), max(cy + rh / 2, gt[3] + 8)
    return _fit_box(x1, y1, x2, y2, W, H)


def _crop_further(f, d, n, gt, box, z, s, fields, close):
    W, H = f.width, f.height
    wide = _wide_box(d, gt, W, H)
    z1 = _zoom(d, wide, (1.5, 2, 2)) if max(wide[2] - wide[0], wide[3] - wide[1]) > 500 else 2
    z2 = max(z, 3) if max(box[2] - box[0], box[3] - box[1]) * 3 <= MAX_ZOOMED_SIDE else z
    stem = _stem(s.noun, d)
    code1 = _crop_code(d, n, wide, z1, s.noun, f"{stem}_wide")
    code2 = _crop_code(d, n, box, z2, s.noun, d.pick((f"{stem}_tight", f"{stem}_detail", f"{stem}2")),
                       reuse=d.chance(0.5))
    turns = [Turn(d.say(_WIDE_INTRO, **fields) + "\n\n", code1),
             Turn("\n\n" + d.say(_WIDE_THEN, **fields) + "\n\n", code2), Turn(close)]
    return "further_enhancement", turns, f.answer


def _direction(src, dst, W, H) -> str:
    dx = (dst[0] + dst[2] - src[0] - src[2]) / 2
    dy = (dst[1] + dst[3] - src[1] - src[3]) / 2
    parts = []
    if abs(dy) > 0.08 * H:
        parts.append("lower down" if dy > 0 else "higher up")
    if abs(dx) > 0.08 * W:
        parts.append("further right" if dx > 0 else "further left")
    return " and ".join(parts) or "a bit to the side"


def _wrong_region(d: _Draw, gt, box, W, H) -> list[int] | None:
    bw, bh = box[2] - box[0], box[3] - box[1]
    pad = max(gt[2] - gt[0], gt[3] - gt[1])
    keep_out = [gt[0] - pad, gt[1] - pad, gt[2] + pad, gt[3] + pad]
    if bw >= W or bh >= H:
        return None
    for _ in range(40):
        x = int(d.rng.integers(0, W - bw + 1))
        y = int(d.rng.integers(0, H - bh + 1))
        cand = [x, y, x + bw, y + bh]
        if not _overlaps(cand, keep_out):
            return cand
    return None


def _partial(d: _Draw, gt, box, W, H) -> tuple[list[int], str] | None:
    """The right-sized box shifted so that part of the target falls outside it."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    sides = ["right", "left", "bottom", "top"]
    for k in d.rng.permutation(4):
        side, frac = sides[int(k)], d.uniform(0.35, 0.65)
        x1, y1 = box[0], box[1]
        if side == "right":     # the right part is cut off
            x1 = int(gt[0] + frac * gw) - bw
        elif side == "left":
            x1 = int(gt[2] - frac * gw)
        elif side == "bottom":
            y1 = int(gt[1] + frac * gh) - bh
        else:
            y1 = int(gt[3] - frac * gh)
        cand = [x1, y1, x1 + bw, y1 + bh]
        if 0 <= x1 <= W - bw and 0 <= y1 <= H - bh and not _contains(cand, gt):
            return cand, side
    return None


_EC_FIRST_WRONG = (
    "{What} should be {wrong_where}; let me crop that area and zoom in to {goal} {it}.",
    "I think {what} {is_} {wrong_where}. I'll zoom into that region first.",
)
_EC_AFTER_WRONG = (
    "There is no trace of {what} in this crop, so I looked in the wrong place. Checking the full image again, {it_sub} {is_} {direction} (overall {where}). "
    "Let me crop there instead.",
    "{What} {is_} not in this crop at all; I picked the wrong region. Looking at the original "
    "again, {it_sub} {is_} {direction}. I'll move the box.",
)
_EC_AFTER_PARTIAL = (
    "The crop cuts {what} off: {its} {side} part lies outside the box, so I can't {goal} {it} "
    "completely. I'll move the box toward the {side} and crop again.",
    "Only part of {what} made it into the crop; the {side} edge of the box slices through {it}. "
    "Let me shift the region toward the {side} so everything is included.",
)
_EC_AFTER_TYPO = (
    "The code failed with a NameError: I stored the crop as `{good}` but then used `{bad}`. "
    "Let me fix the name and run it again.",
    "NameError: `{bad}` is not defined. That's a slip on my side; the crop variable is "
    "`{good}`. Rerunning with the correct name.",
)
_EC_AFTER_PIL = (
    "The crop raised a TypeError: `Image.crop` takes the box as one (left, top, right, bottom) "
    "tuple, not four separate arguments. Fixing the call.",
    "TypeError from `crop()`: PIL expects a single 4-tuple for the box. Let me pass the "
    "coordinates as a tuple.",
)
_EC_AFTER_SWAP = (
    "This crop shows an unrelated part of the scene, not {what}. I sliced the array as "
    "[x, y], but OpenCV images are indexed [row, column], i.e. [y, x]. Let me fix the slicing.",
    "That is the wrong area: numpy arrays from cv2.imread are indexed rows first, so the "
    "slice must be [y1:y2, x1:x2]. Correcting the indices and cropping again.",
)


def _crop_error(f, d, n, gt, box, z, s, fields, close):
    W, H = f.width, f.height
    stem = _stem(s.noun, d)
    options = ["wrong_region", "partial", "typo"]
    if n.lib == "pil":
        options.append("pil_args")
    if n.lib == "cv2" and n.corners:
        sx = [box[1], box[0], box[3], box[2]]   # the region [x1:x2, y1:y2] really selects
        if sx[2] <= W and sx[3] <= H and not _overlaps(sx, gt):
            options.append("swap")
    intro = d.say(_CROP_INTRO, **fields) + "\n\n"
    for k in d.rng.permutation(len(options)):
        mistake = options[int(k)]
        if mistake == "wrong_region":
            wrong = _wrong_region(d, gt, box, W, H)
            if wrong is None:
                continue
            first = d.say(_EC_FIRST_WRONG, wrong_where=_where(wrong, W, H), **fields) + "\n\n"
            code1 = _crop_code(d, n, wrong, z, s.noun, stem)
            after = d.say(_EC_AFTER_WRONG, direction=_direction(wrong, gt, W, H), **fields)
        elif mistake == "partial":
            got = _partial(d, gt, box, W, H)
            if got is None:
                continue
            first, code1 = intro, _crop_code(d, n, got[0], z, s.noun, stem)
            after = d.say(_EC_AFTER_PARTIAL, side=got[1], **fields)
        else:
            first, code1 = intro, _crop_code(d, n, box, z, s.noun, stem, mistake=mistake)
            templates = {"typo": _EC_AFTER_TYPO, "pil_args": _EC_AFTER_PIL, "swap": _EC_AFTER_SWAP}
            after = d.say(templates[mistake], good=n.crop, bad=n.typo, **fields)
        code2 = _crop_code(d, n, box, z, s.noun, stem)
        turns = [Turn(first, code1), Turn("\n\n" + after + "\n\n", code2), Turn(close)]
        return "error_correction", turns, f.answer
    raise AssertionError("the typo mistake is always possible")


# ---------------------------------------------------------------------------------------------
# rotate
# ---------------------------------------------------------------------------------------------

def _tilt_words(angle: int) -> tuple[str, str]:
    """(how the content looks, how to fix it), in rough words: never the exact angle."""
    t = angle if angle <= 180 else 360 - angle
    ccw = angle <= 180
    turn = "clockwise" if ccw else "counter-clockwise"
    if t >= 170:
        return "upside down", "turn it half way round"
    if 85 <= t <= 95:
        side = "counter-clockwise, so the lines run from bottom to top" if ccw else \
            "clockwise, so the lines run from top to bottom"
        return f"turned on its side ({side})", f"turn it a quarter turn {turn}"
    r = int(round(t / 10.0) * 10)
    if r == t:
        rough = f"somewhere between {t - 5} and {t + 5} degrees"
    else:
        rough = f"roughly {r} degrees"
    how = "counter-clockwise" if ccw else "clockwise"
    return f"tilted by {rough} {how}", f"rotate it {turn} by that amount"


def _rotate_subject(f: _Facts) -> tuple[str, str]:
    """(the document noun, what the answer is once readable)."""
    kind, target, text = f.meta.get("kind"), str(f.meta.get("target", "")), f.text
    noun = {"receipt": "receipt", "document": "document", "sign": "sign"}.get(kind, "text")
    if target == "receipt total":
        obs = f"the TOTAL line of the receipt shows {text}"
    elif target == "store name":
        obs = f"the store name printed at the top is {text}"
    elif target.startswith("price of "):
        obs = f"the line for {target[9:].lower()} shows {text}"
    elif target == "document title":
        obs = f'the heading at the top reads "{text}"'
    elif target == "reference number":
        obs = f"the reference number after \"Ref. No.\" is {text}"
    elif kind == "sign":
        obs = f'the sign reads "{text}"'
    else:
        obs = f"the text now reads {text}"
    return noun, obs


_ROT_INTRO = (
    "The {noun} in this image is not upright: its text is {looks}, which makes it hard to "
    "read. I'll {fix}, expanding the canvas so no corner gets cut off.",
    "Reading this is awkward because the {noun} is {looks}. Let me straighten the image "
    "first: {fix}, keeping the whole content.",
    "The lines of text on the {noun} are {looks}. Before answering, I'll rotate the image back "
    "so the text is horizontal.",
)
_ROT_CLOSE = (
    "Now the {noun} is upright and the text reads normally: {observe}.{mc}",
    "After the rotation the {noun} is level, and {observe}.{mc}",
    "With the image straightened, {observe}. The answer is {text}.{mc}",
)
_ROT_AFTER_WRONG = (
    "The {noun} is still not upright; it is now turned even further. I rotated the wrong way: "
    "{rule}. Let me use the opposite sign.",
    "That made it worse: the text is even more tilted than before, because {rule}. "
    "Flipping the sign of the angle.",
)
_ROT_AFTER_FILL = (
    "The call failed: `Image.rotate` has no `fill` argument; the background colour is set "
    "with `fillcolor`. Fixing the keyword.",
    "TypeError: `rotate()` got an unexpected keyword `fill`. In PIL it is called "
    "`fillcolor`. Let me correct that.",
)
_ROT_AFTER_SIZE = (
    "NameError: I used `new_w` and `new_h` before computing them. The enlarged canvas size "
    "comes from the rotation matrix's cosine and sine; let me add that.",
    "The code failed because the new canvas size was never computed. I'll derive it from the "
    "rotation matrix and run it again.",
)


def _rotate_code(d: _Draw, n: _Names, a: int, stem: str, mistake: str | None = None) -> str:
    body = [_open(n)]
    direction = "clockwise" if a < 0 else "counter-clockwise"
    if n.lib == "pil":
        comment = d.pick((f"rotate {direction}; expand=True keeps the corners",
                          f"PIL rotates counter-clockwise for positive angles; {a} turns the text back",
                          "straighten the text, enlarging the canvas to fit"))
        fill = d.pick(("", ", fillcolor=(255, 255, 255)", ', fillcolor="white"',
                       ", fillcolor=(0, 0, 0)"))
        if mistake == "fill":
            fill = ", fill=(255, 255, 255)"
        resample = d.pick(("", ", resample=Image.BICUBIC", ", resample=Image.Resampling.BILINEAR"))
        out = d.pick(("upright", "rotated", "straight"))
        body += [f"# {comment}", f"{out} = {n.img}.rotate({a}, expand=True{resample}{fill})"]
    else:
        hw = d.pick((("h", "w"), ("height", "width")))
        m = d.pick(("M", "rot_mat", "matrix"))
        out = d.pick(("upright", "rotated", "straight"))
        h, w = hw
        body.append(f"{h}, {w} = {n.img}.shape[:2]")
        body.append(f"# positive angles are counter-clockwise in OpenCV; {a} turns it {direction}")
        body.append(f"{m} = cv2.getRotationMatrix2D(({w} / 2, {h} / 2), {a}, 1.0)")
        size = []
        if d.chance(0.5):
            size += [f"cos, sin = abs({m}[0, 0]), abs({m}[0, 1])",
                     f"new_w = int({h} * sin + {w} * cos)", f"new_h = int({h} * cos + {w} * sin)"]
        else:
            size += [f"rad = math.radians({a})",
                     f"new_w = int(abs({w} * math.cos(rad)) + abs({h} * math.sin(rad)))",
                     f"new_h = int(abs({h} * math.cos(rad)) + abs({w} * math.sin(rad)))"]
        if mistake != "size":
            body += size
        body += ["# shift so the result is centred on the enlarged canvas",
                 f"{m}[0, 2] += new_w / 2 - {w} / 2", f"{m}[1, 2] += new_h / 2 - {h} / 2"]
        border = d.pick(("", ", borderValue=(255, 255, 255)", ", borderValue=(0, 0, 0)"))
        flags = d.pick(("", ", flags=cv2.INTER_LINEAR", ", flags=cv2.INTER_CUBIC"))
        body.append(f"{out} = cv2.warpAffine({n.img}, {m}, (new_w, new_h){flags}{border})")
    body += _save(d, n, out, stem)
    return _assemble(body)


def _build_rotate(f: _Facts, d: _Draw, u: float, share: float):
    angle = f.meta.get("angle")
    if angle is None or not f.width:
        raise _Skip
    angle = int(round(float(angle))) % 360
    if angle == 0:
        raise _Skip
    a = -angle if angle <= 180 else 360 - angle     # the rotation that undoes it
    looks, fix = _tilt_words(angle)
    noun, observe = _rotate_subject(f)
    fields = dict(noun=noun, looks=looks, fix=fix, observe=observe, text=f.text)
    n = _Names.draw(d)
    stem = d.pick(("rotated", "upright", "deskewed", "straightened", f"{noun}_upright"))
    intro = d.say(_ROT_INTRO, **fields) + "\n\n"
    close = d.say(_ROT_CLOSE, mc=_mc(d, f), **fields)
    if u < share / 2:
        t = angle if angle <= 180 else 360 - angle
        options = ["fill" if n.lib == "pil" else "size"] + (["direction"] if t <= 110 else [])
        mistake = d.pick(options)
        if mistake == "direction":
            code1 = _rotate_code(d, n, -a, stem)
            rule = ("PIL's rotate() turns counter-clockwise for positive angles" if n.lib == "pil"
                    else "getRotationMatrix2D treats positive angles as counter-clockwise")
            after = d.say(_ROT_AFTER_WRONG, rule=rule, **fields)
        else:
            code1 = _rotate_code(d, n, a, stem, mistake=mistake)
            after = d.say(_ROT_AFTER_FILL if mistake == "fill" else _ROT_AFTER_SIZE, **fields)
        code2 = _rotate_code(d, n, a, stem)
        turns = [Turn(intro, code1), Turn("\n\n" + after + "\n\n", code2), Turn("\n\n" + close)]
        return "error_correction", turns, f.answer
    return "single", [Turn(intro, _rotate_code(d, n, a, stem)), Turn("\n\n" + close)], f.answer


# ---------------------------------------------------------------------------------------------
# contrast
# ---------------------------------------------------------------------------------------------

_CONTRAST_LOOK = {
    "faded_document": ("The print on this page is very faint: the text is only slightly darker "
                       "than the paper", "the reference number"),
    "dark_photo": ("The photo is very dark, and the letters on the sign are barely lighter than "
                   "its background", "the sign"),
    "grey_panel": ("The label is grey text on a grey panel with very little contrast",
                   "the serial number"),
}
_CONTRAST_OBSERVE = {
    "faded_document": "the reference number reads {text}",
    "dark_photo": 'the sign clearly says "{text}"',
    "grey_panel": "the serial number after S/N is {text}",
}
_CONTRAST_INTRO = (
    "{look}, so reading {what} directly is error-prone. {plan}",
    "{look}. Enhancing the contrast should make {what} legible. {plan}",
    "{look}; I can barely make out {what}. {plan}",
)
_CONTRAST_CLOSE = (
    "After the enhancement the text stands out clearly: {observe}.{mc}",
    "The enhanced image is much easier to read, and {observe}.{mc}",
    "With the contrast boosted, {observe}. The answer is {text}.{mc}",
)
_METHOD_WORDS = {
    "clahe": "I'll apply CLAHE to the lightness channel (LAB), which boosts local contrast "
             "without blowing out the colours.",
    "equalize": "Histogram equalisation should spread the narrow range of intensities over the "
                "full scale.",
    "gamma": "A gamma correction will brighten the dark tones, followed by a min-max "
             "normalisation to use the full range.",
    "stretch": "I'll stretch the grey levels between the 1st and 99th percentiles to the full "
               "0-255 range.",
    "autocontrast": "PIL's autocontrast will stretch the histogram, ignoring a small fraction of "
                    "outliers.",
    "enhance": "I'll increase the contrast with PIL's ImageEnhance.",
    "bright": "I'll raise the brightness and then the contrast with PIL's ImageEnhance.",
}


def _contrast_method(d: _Draw, lib: str, kind: str | None) -> str:
    # Global equalisation and autocontrast can flatten a dark sign against brighter
    # surroundings (measured), so a dark photo gets local or tone-curve methods.
    if lib == "cv2":
        return d.pick(("clahe", "gamma", "stretch", "clahe") if kind == "dark_photo"
                      else ("clahe", "equalize", "stretch", "clahe"))
    return d.pick(("bright", "enhance", "bright") if kind == "dark_photo"
                  else ("enhance", "autocontrast", "enhance"))


def _contrast_code(d: _Draw, n: _Names, method: str, box, upscale: int, stem: str) -> str:
    body = [_open(n)]
    src = n.img
    if box is not None:
        body += _box_lines(n, box, d.pick(("focus on the area with the text", "the faint text region",
                                           None)))
        body.append(f"{n.crop} = {_crop_expr(n)}")
        src = n.crop
    out = d.pick(("enhanced", "result", "boosted"))
    if method == "clahe":
        clip = d.pick(("2.0", "3.0", "4.0"))
        tile = d.pick(("(8, 8)", "(8, 8)", "(4, 4)"))
        body += [f"lab = cv2.cvtColor({src}, cv2.COLOR_BGR2LAB)", "l, a, b = cv2.split(lab)",
                 f"clahe = cv2.createCLAHE(clipLimit={clip}, tileGridSize={tile})",
                 f"{out} = cv2.cvtColor(cv2.merge((clahe.apply(l), a, b)), cv2.COLOR_LAB2BGR)"]
    elif method == "equalize":
        if d.chance(0.5):
            body += [f"ycrcb = cv2.cvtColor({src}, cv2.COLOR_BGR2YCrCb)",
                     "ycrcb[:, :, 0] = cv2.equalizeHist(ycrcb[:, :, 0])",
                     f"{out} = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)"]
        else:
            body += [f"gray = cv2.cvtColor({src}, cv2.COLOR_BGR2GRAY)",
                     f"{out} = cv2.equalizeHist(gray)"]
    elif method == "gamma":
        g = d.pick(("0.4", "0.5", "0.6"))
        body += [f"gamma = {g}  # < 1 brightens the shadows",
                 "table = np.array([((i / 255.0) ** gamma) * 255 for i in range(256)]).astype(np.uint8)",
                 f"brighter = cv2.LUT({src}, table)",
                 f"{out} = cv2.normalize(brighter, None, 0, 255, cv2.NORM_MINMAX)"]
    elif method == "stretch":
        body += [f"gray = cv2.cvtColor({src}, cv2.COLOR_BGR2GRAY).astype(np.float32)",
                 "lo, hi = np.percentile(gray, (1, 99))",
                 f"{out} = np.clip((gray - lo) * 255.0 / (hi - lo), 0, 255).astype(np.uint8)"]
    elif method == "autocontrast":
        grey = ".convert(\"L\")" if d.chance(0.4) else ""
        body.append(f"{out} = ImageOps.autocontrast({src}{grey}, cutoff={d.pick((1, 2))})")
    elif method == "enhance":
        body.append(f"{out} = ImageEnhance.Contrast({src}).enhance({d.pick(('2.5', '3.0', '3.5'))})")
    else:   # bright
        body += [f"brighter = ImageEnhance.Brightness({src}).enhance({d.pick(('2.0', '2.5'))})",
                 f"{out} = ImageEnhance.Contrast(brighter).enhance({d.pick(('1.5', '1.8', '2.0'))})"]
    if upscale > 1:
        body.append("# enlarge a little for easier reading")
        if n.lib == "cv2":
            body.append(f"{out} = cv2.resize({out}, None, fx={upscale}, fy={upscale}, "
                        "interpolation=cv2.INTER_CUBIC)")
        else:
            body.append(f"{out} = {out}.resize(({out}.width * {upscale}, {out}.height * {upscale}), "
                        "Image.LANCZOS)")
    body += _save(d, n, out, stem)
    return _assemble(body)


def _build_contrast(f: _Facts, d: _Draw, u: float, share: float):
    if not f.width:
        raise _Skip
    kind = f.meta.get("kind")
    look, what = _CONTRAST_LOOK.get(kind, ("The image has very low contrast", "the text"))
    observe = _CONTRAST_OBSERVE.get(kind, "the text reads {text}").format(text=f.text)
    n = _Names.draw(d)
    method = _contrast_method(d, n.lib, kind)
    box, upscale = None, 1
    if f.meta.get("box") and d.chance(0.5):
        gt = _gt_box(f)
        box = _margin_box(d, gt, f.width, f.height, 0.4, 1.6)
        if max(box[2] - box[0], box[3] - box[1]) < 600:
            upscale = d.pick((1, 2))
    plan = _METHOD_WORDS[method]
    if box is not None:
        plan = d.pick(("I'll crop the area with the text and enhance it. ",
                       "Let me focus on the text region and boost it. ")) + plan
    intro = d.say(_CONTRAST_INTRO, look=look, what=what, plan=plan) + "\n\n"
    code = _contrast_code(d, n, method, box, upscale,
                          d.pick(("enhanced", "contrast", "clahe" if method == "clahe" else "boosted")))
    close = "\n\n" + d.say(_CONTRAST_CLOSE, observe=observe, text=f.text, mc=_mc(d, f))
    return "single", [Turn(intro, code), Turn(close)], f.answer


# ---------------------------------------------------------------------------------------------
# computation
# ---------------------------------------------------------------------------------------------

# Names the generated code uses itself: a value called like this is renamed.
_RESERVED = {"Fraction", "Decimal", "ROUND_HALF_UP", "sp", "np", "math", "comb", "os", "cv2",
             "result", "answer", "value", "exact", "round", "int", "print", "sum", "len", "abs", "float", "str"}
_RESULT_NAMES = ("result", "answer", "value", "exact")
_PLACES = {1: "one decimal place", 2: "two decimal places", 3: "three decimal places"}


def _format_words(fmt: str) -> str:
    if fmt == "integer":
        return "as a whole number"
    if fmt == "fraction":
        return "as a fraction in lowest terms"
    places = int(fmt.split(":")[1])
    return f"rounded to {_PLACES.get(places, f'{places} decimal places')}"


def _literal(v) -> str:
    fv = Fraction(str(v))
    return str(fv.numerator) if fv.denominator == 1 else str(v)


def _safe_names(values: dict, expression: str) -> tuple[dict, str, dict]:
    """Values under names that are valid and clash with nothing the code uses; the renames."""
    out, expr, renamed = {}, expression, {}
    for name, v in values.items():
        new = name
        if not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED:
            new = re.sub(r"\W", "_", f"{name}_v")
            if not new.isidentifier():
                new = f"v_{new}"
            expr = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", new, expr)
            renamed[name] = new
        out[new] = v
    return out, expr, renamed


def _labels(f: _Facts, values: dict) -> dict[str, str]:
    """Human names of the values, as the chart, table or question shows them."""
    meta = f.meta
    labels = dict(meta.get("labels") or {})
    header = meta.get("header") or []
    for name in values:
        if name in labels:
            continue
        for col in header[1:]:
            suffix = "_" + re.sub(r"\W", "_", str(col).lower())
            short = {"qty": "_qty", "unit price": "_price"}.get(str(col).lower(), suffix)
            if name.endswith(short):
                row = name[: -len(short)].replace("_", " ").title()
                labels[name] = f"{row} {str(col).lower()}"
                break
    return labels


def _reading(d: _Draw, f: _Facts, values: dict, labels: dict) -> str:
    def show(name, v):
        text = _literal(v)
        if name.endswith("_price"):
            text = f"{Fraction(str(v)).numerator / Fraction(str(v)).denominator:.2f}"
        return text

    if f.sample.images:
        chart = f.meta.get("chart")
        items = ", ".join(f"{labels.get(k, k)} {show(k, v)}" for k, v in values.items())
        if chart == "table":
            return d.pick(("Reading the table: ", "From the table I read: ",
                           "The table gives: ")) + items + "."
        return d.pick(("Reading the chart: ", "The bars show: ",
                       "From the chart, the values are: ")) + items + "."
    items = ", ".join(f"{k} = {show(k, v)}" for k, v in values.items())
    return d.pick(("From the problem: ", "The given quantities are ", "Setting up the numbers: ")) \
        + items + "."


def _pretty(expression: str, labels: dict) -> str:
    out = expression
    for name in sorted(labels, key=len, reverse=True):
        out = re.sub(rf"(?<![\w]){re.escape(name)}(?!\w)", labels[name], out)
    return out


_SUM_MEAN = re.compile(r"^\(?\s*([A-Za-z_]\w*(?:\s*\+\s*[A-Za-z_]\w*)+)\s*\)?(?:\s*/\s*(\d+))?$")


def _computation_code(d: _Draw, values: dict, expression: str, fmt: str) -> str:
    ints = all(Fraction(str(v)).denominator == 1 for v in values.values())
    res = d.pick([r for r in _RESULT_NAMES if r not in values])
    sum_mean = _SUM_MEAN.match(expression.strip())
    styles = []
    if "binomial" in expression:
        styles = ["sympy", "plain"] if ints else ["sympy"]
    else:
        styles = ["fractions", "sympy"] + (["decimal"] if fmt.startswith("decimal") else [])
        if ints and fmt == "integer":
            styles.append("plain")
        if (ints and sum_mean and all(t.strip() in values for t in sum_mean.group(1).split("+"))
                and (fmt.startswith("decimal") if sum_mean.group(2) else fmt == "integer")):
            styles.append("numpy")
    style = d.pick(styles)
    body: list[str] = []
    places = int(fmt.split(":")[1]) if fmt.startswith("decimal") else 0
    quantum = f'Decimal("0.{"0" * (places - 1)}1")' if places else ""
    if style == "numpy":
        names = [t.strip() for t in sum_mean.group(1).split("+")]
        arr = d.pick([a for a in ("vals", "nums", "data_points") if a not in values])
        tot = d.pick([t for t in ("total", "s", "sum_all") if t not in values])
        body.append("# the values in the order they appear")
        body.append(f"{arr} = np.array([{', '.join(_literal(values[k]) for k in names)}])")
        body.append(f"{tot} = int({arr}.sum())")
        if sum_mean.group(2):
            body.append(f"{res} = Decimal({tot}) / {sum_mean.group(2)}")
            body.append(f"print({res}.quantize({quantum}, rounding=ROUND_HALF_UP))")
        else:
            body.append(f"print({tot})")
        return _assemble(body)
    expr = expression
    if style == "sympy":
        for k, v in values.items():
            lit = _literal(v)
            body.append(f"{k} = sp.Integer({lit})" if "." not in lit else f'{k} = sp.Rational("{lit}")')
        expr = expr.replace("binomial(", "sp.binomial(")
    elif style == "fractions":
        for k, v in values.items():
            lit = _literal(v)
            body.append(f"{k} = Fraction({lit})" if "." not in lit else f'{k} = Fraction("{lit}")')
    elif style == "decimal":
        for k, v in values.items():
            lit = _literal(v)
            body.append(f"{k} = Decimal({lit})" if "." not in lit else f'{k} = Decimal("{lit}")')
    else:   # plain integers
        if "binomial(" in expr:
            expr = expr.replace("binomial(", "comb(")
        body += [f"{k} = {_literal(v)}" for k, v in values.items()]
    if d.chance(0.5):
        body.append(d.pick(("# exact arithmetic, so rounding happens only at the end",
                            "# compute the quantity the question asks for", "# evaluate")))
    body.append(f"{res} = {expr}")
    if fmt in ("integer", "fraction"):
        if style == "plain":
            body.append(f"print(round({res}))" if "/" in expr else f"print({res})")
        else:
            body.append(f"print({res})")
    elif style == "decimal":
        body.append(f"print({res}.quantize({quantum}, rounding=ROUND_HALF_UP))")
    else:
        p, q = ("p", "q") if style == "sympy" else ("numerator", "denominator")
        conv = (f"int({res}.{p})", f"int({res}.{q})") if style == "sympy" else \
            (f"{res}.{p}", f"{res}.{q}")
        body.append(f"# round half up to {places} places")
        body.append(f"print((Decimal({conv[0]}) / {conv[1]}).quantize({quantum}, rounding=ROUND_HALF_UP))")
    return _assemble(body)


_COMP_PLAN = (
    "{reading} The question asks for {pretty}, {fmt_words}. I'll compute it exactly in Python.",
    "{reading} So I need {pretty} ({fmt_words}). Let me let Python do the arithmetic.",
    "{reading} The answer is {pretty}, {fmt_words}; computing it with code avoids slips.",
)
_COMP_CLOSE = (
    "The code prints {text}, so the answer is {text}.{mc}",
    "The computation gives {text}.{mc}",
    "Python confirms the result: {text}.{mc}",
    "So {pretty} = {text}.{mc}",
)


def _build_computation(f: _Facts, d: _Draw, u: float, share: float):
    meta = f.meta
    values, expression, fmt = meta.get("values"), meta.get("expression"), meta.get("answer_format")
    if not values or not expression or not fmt:
        raise _Skip
    if fmt not in ("integer", "fraction") and not re.fullmatch(r"decimal:\d", fmt):
        raise _Skip
    labels = _labels(f, values) if f.sample.images else {}
    values, expression, renamed = _safe_names(dict(values), str(expression))
    labels = {renamed.get(k, k): v for k, v in labels.items()}
    pretty = _pretty(expression, labels)
    reading = _reading(d, f, values, labels)
    intro = d.say(_COMP_PLAN, reading=reading, pretty=pretty, fmt_words=_format_words(fmt)) + "\n\n"
    code = _computation_code(d, values, expression, fmt)
    close = "\n\n" + d.say(_COMP_CLOSE, text=f.text, pretty=pretty, mc=_mc(d, f))
    return "single", [Turn(intro, code), Turn(close)], f.answer


# ---------------------------------------------------------------------------------------------
# no_code
# ---------------------------------------------------------------------------------------------

def _direct_reasoning(d: _Draw, f: _Facts) -> str:
    meta, text = f.meta, f.text
    kind = meta.get("kind")
    shapes = meta.get("shapes") or []
    no_tool = d.pick((" No zooming or other processing is needed.", " This is clear at a glance.",
                      " The image is simple enough to answer directly.", ""))
    if kind == "dominant_colour" and shapes:
        big = shapes[0]
        return d.pick((f"One large {big['shape']} dominates the picture, and its colour is plainly "
                       f"{text}.", f"The biggest shape is a {big['shape']}; it is {text}.")) + no_tool
    if kind == "count_circles":
        others = sorted({s["shape"] for s in shapes if s["shape"] != "circle"})
        rest = ""
        if others:
            rest = (f" The other shapes ({_and(others)}) don't count." if len(others) > 1
                    else f" The {others[0]}s don't count." if sum(
                        s["shape"] == others[0] for s in shapes) > 1
                    else f" The {others[0]} doesn't count.")
        return d.pick((f"The shapes are large and well separated. Going through them, I count {text} "
                       f"circle{'s' if text != '1' else ''}.{rest}",
                       f"There are only a few shapes on a plain background; {text} of them "
                       f"{'are circles' if text != '1' else 'is a circle'}.{rest}")) + no_tool
    if kind == "largest_shape":
        others = [s["shape"] for s in shapes if s["shape"] != text]
        tail = f", clearly bigger than the {_and(others)}" if others else ""
        return d.pick((f"The largest shape in the image is the {text}{tail}.",
                       f"Comparing the shapes, the {text} is by far the biggest.")) + no_tool
    if kind == "big_word":
        return d.pick((f'The large letters in the middle of the image spell "{text}".',
                       f'The big text is easy to read: it says "{text}".')) + no_tool
    if kind == "left_right" and len(shapes) == 2:
        a, b = shapes
        side_a = "left" if (a["box"][0] + a["box"][2]) < (b["box"][0] + b["box"][2]) else "right"
        return d.pick((f"The {a['colour']} {a['shape']} is on the {side_a} side of the picture and "
                       f"the {b['colour']} {b['shape']} on the other, so it is to the {text}.",
                       f"Comparing their horizontal positions, the {a['colour']} {a['shape']} lies "
                       f"to the {text} of the {b['colour']} {b['shape']}.")) + no_tool
    if f.sample.images:
        return d.pick((f"The answer can be read directly from the image: {text}.",
                       f"Looking at the image, the answer is {text}.")) + no_tool
    return f"The answer is {text}."


def _build_no_code(f: _Facts, d: _Draw, u: float, share: float):
    return "direct", [Turn(_direct_reasoning(d, f) + _mc(d, f))], f.answer


_BUILDERS = {"crop": _build_crop, "rotate": _build_rotate, "contrast": _build_contrast,
             "computation": _build_computation, "no_code": _build_no_code}
