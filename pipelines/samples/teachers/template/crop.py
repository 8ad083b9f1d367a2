"""crop: a box = ground-truth box + a random margin (inside the image, sides >= `common.MIN_SIDE` px),
zoomed 2-4x with OpenCV or PIL, saved under the virtual output directory, path printed.

Two-round variants: "further_enhancement" (a wide crop, then a tight one) and "error_correction"
(a realistic mistake, then the fix: wrong region, a box that cuts the target off, a misspelled
variable, `Image.crop` with four arguments, numpy indices swapped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.core.trajectory import Turn
from pipelines.samples.teachers.template.common import (
    Draw,
    Facts,
    Names,
    assemble,
    box_lines,
    contains,
    crop_expr,
    fit_box,
    gt_box,
    margin_box,
    open_line,
    option_sentence,
    overlaps,
    position_words,
    save_lines,
)

MAX_ZOOMED_SIDE = 2400        # keep produced images a sensible size


# ---------------------------------------------------------------------------------------------
# Code: crop and zoom
# ---------------------------------------------------------------------------------------------

def _zoom(d: Draw, box, options=(2, 2, 2.5, 3, 3, 4)) -> float:
    z = d.pick(options)
    side = max(box[2] - box[0], box[3] - box[1])
    while z > 2 and side * z > MAX_ZOOMED_SIDE:
        z -= 0.5
    return z


def _num(z: float) -> str:
    return str(int(z)) if float(z).is_integer() else str(z)


def _zoom_lines(d: Draw, n: Names, src: str, dst: str, z: float) -> list[str]:
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


def _crop_code(d: Draw, n: Names, box, z: float, noun: str, stem: str,
               mistake: str | None = None, reuse: bool = False) -> str:
    # a later block of the same session reuses the image it already loaded
    body = [] if reuse else [open_line(n)]
    comment = d.say(_BOX_COMMENTS, noun=noun) if d.chance(0.8) else None
    body += box_lines(n, box, comment)
    body.append(f"{n.crop} = {crop_expr(n, mistake)}")
    if d.chance(0.6):
        body.append("# " + d.say(_ZOOM_COMMENTS, z=_num(z)))
    src = n.typo if mistake == "typo" else n.crop
    body += _zoom_lines(d, n, src, n.zoomed, z)
    body += save_lines(d, n, n.zoomed, stem)
    return assemble(body)


# ---------------------------------------------------------------------------------------------
# One round, and the phrasing shared by the two-round variants
# ---------------------------------------------------------------------------------------------

def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


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


def _crop_subject(f: Facts) -> _Subject:
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


def _stem(noun: str, d: Draw) -> str:
    base = re.sub(r"\W+", "_", noun.lower()).strip("_") or "crop"
    return d.pick((f"{base}_zoom", f"{base}_crop", "zoomed", "crop", f"zoom_{base}"))


def build_crop(f: Facts, d: Draw, u: float, share: float):
    gt = gt_box(f)
    W, H = f.width, f.height
    s = _crop_subject(f)
    fields = dict(s.fields(), size=f"{W}x{H}", where=position_words(gt, W, H), text=f.text)
    n = Names.draw(d)
    box = margin_box(d, gt, W, H)
    z = _zoom(d, box)
    close = "\n\n" + d.say(_CROP_CLOSE, observe=s.observe, mc=option_sentence(d, f), **fields)
    if u < share / 2:
        return _crop_further(f, d, n, gt, box, z, s, fields, close)
    if u < share:
        return _crop_error(f, d, n, gt, box, z, s, fields, close)
    intro = d.say(_CROP_INTRO, **fields) + "\n\n"
    code = _crop_code(d, n, box, z, s.noun, _stem(s.noun, d))
    return "single", [Turn(intro, code), Turn(close)], f.answer


# ---------------------------------------------------------------------------------------------
# further_enhancement: a wide crop, then a tight one
# ---------------------------------------------------------------------------------------------

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


def _wide_box(d: Draw, gt, W, H) -> list[int]:
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    rw = min(max(gw * d.uniform(4, 8), 320.0), W * 0.6)
    rh = min(max(gh * d.uniform(4, 8), 240.0), H * 0.6)
    cx = (gt[0] + gt[2]) / 2 + d.uniform(-0.2, 0.2) * rw
    cy = (gt[1] + gt[3]) / 2 + d.uniform(-0.2, 0.2) * rh
    x1, x2 = min(cx - rw / 2, gt[0] - 8), max(cx + rw / 2, gt[2] + 8)
    y1, y2 = min(cy - rh / 2, gt[1] - 8), max(cy + rh / 2, gt[3] + 8)
    return fit_box(x1, y1, x2, y2, W, H)


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


# ---------------------------------------------------------------------------------------------
# error_correction: a realistic mistake, then the fix
# ---------------------------------------------------------------------------------------------

def _direction(src, dst, W, H) -> str:
    dx = (dst[0] + dst[2] - src[0] - src[2]) / 2
    dy = (dst[1] + dst[3] - src[1] - src[3]) / 2
    parts = []
    if abs(dy) > 0.08 * H:
        parts.append("lower down" if dy > 0 else "higher up")
    if abs(dx) > 0.08 * W:
        parts.append("further right" if dx > 0 else "further left")
    return " and ".join(parts) or "a bit to the side"


def _wrong_region(d: Draw, gt, box, W, H) -> list[int] | None:
    bw, bh = box[2] - box[0], box[3] - box[1]
    pad = max(gt[2] - gt[0], gt[3] - gt[1])
    keep_out = [gt[0] - pad, gt[1] - pad, gt[2] + pad, gt[3] + pad]
    if bw >= W or bh >= H:
        return None
    for _ in range(40):
        x = int(d.rng.integers(0, W - bw + 1))
        y = int(d.rng.integers(0, H - bh + 1))
        cand = [x, y, x + bw, y + bh]
        if not overlaps(cand, keep_out):
            return cand
    return None


def _partial(d: Draw, gt, box, W, H) -> tuple[list[int], str] | None:
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
        if 0 <= x1 <= W - bw and 0 <= y1 <= H - bh and not contains(cand, gt):
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
        if sx[2] <= W and sx[3] <= H and not overlaps(sx, gt):
            options.append("swap")
    intro = d.say(_CROP_INTRO, **fields) + "\n\n"
    for k in d.rng.permutation(len(options)):
        mistake = options[int(k)]
        if mistake == "wrong_region":
            wrong = _wrong_region(d, gt, box, W, H)
            if wrong is None:
                continue
            first = d.say(_EC_FIRST_WRONG, wrong_where=position_words(wrong, W, H), **fields) + "\n\n"
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
