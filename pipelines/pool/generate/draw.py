"""The drawing toolkit every task builder uses: colours, text rendered as coverage masks (Pillow's
bundled face and OpenCV 5's embedded faces only, so no machine fonts), filled shapes, free-spot
placement, sign plates, filler text lines and image encoding. All drawing is on uint8 RGB numpy
arrays; every function that returns a box returns [x1, y1, x2, y2], x2/y2 exclusive."""

from __future__ import annotations

import io
import math
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.pool.generate.rand import pick, randint

# ---------------------------------------------------------------------------------------------
# Colours: named colours, jitter, readable ink, a colour that stands out locally
# ---------------------------------------------------------------------------------------------

COLOURS = {
    "red": (210, 35, 35), "green": (40, 150, 60), "blue": (35, 80, 205), "yellow": (240, 205, 30),
    "orange": (245, 130, 25), "purple": (125, 55, 165), "pink": (240, 125, 180),
    "brown": (125, 80, 45), "black": (25, 25, 25), "white": (245, 245, 245),
    "grey": (128, 128, 128), "cyan": (30, 185, 205),
}
SIGN_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
OBJECT_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan")


def jitter(rng, rgb, amount=12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _lum(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def ink_on(rgb) -> tuple[int, int, int]:
    """A readable text colour on a ground of colour rgb."""
    return (20, 20, 25) if _lum(rgb) > 140 else (245, 245, 240)


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def local_mean(img, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return img[y1:y2:2, x1:x2:2].reshape(-1, 3).mean(axis=0)


def contrasting(rng, names, local, min_dist=90.0) -> str:
    """A colour name in `names` at least `min_dist` from the `local` colour, else the farthest."""
    good = [n for n in names if _dist(COLOURS[n], local) >= min_dist]
    if good:
        return pick(rng, good)
    return max(names, key=lambda n: _dist(COLOURS[n], local))


# ---------------------------------------------------------------------------------------------
# Text: styles, coverage masks, blending, plates and filler lines
# ---------------------------------------------------------------------------------------------

# OpenCV 5's embedded fonts (its Hershey constants now all draw "sans"): variable-weight sans
# and italic, and a fixed-weight Unicode face. Unknown names silently fall back to sans.
_CV_FACES = ("sans", "italic", "uni")
N_FACES = 2 + len(_CV_FACES)


@lru_cache(maxsize=256)
def _pil_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)   # Pillow's bundled TrueType face (Aileron)


@lru_cache(maxsize=8)
def _cv_font(name: str):
    return cv2.FontFace(name)


def text_style(rng, slant: bool = True) -> dict:
    """A text style: face (Pillow regular/bold, OpenCV sans/italic/uni), weight, stretch, slant."""
    return {"face": int(rng.integers(N_FACES)), "weight": float(rng.uniform(0.8, 1.5)),
            "stretch": float(rng.uniform(0.85, 1.2)),
            "slant": float(pick(rng, (0.0, 0.0, 0.0, 0.18))) if slant else 0.0}


def text_mask(text: str, cap: float, style: dict) -> np.ndarray:
    """Coverage mask (uint8) of `text` with capital letters about `cap` px tall, cropped tight."""
    cap = max(8.0, float(cap))
    face = style["face"]
    if face < 2:
        size = max(8, round(cap / 0.7))
        font = _pil_font(size)
        stroke = 0 if face == 0 else max(1, round(size * 0.025 * style["weight"]))
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        img = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(img).text((2 - left, 2 - top), text, font=font, fill=255,
                                 stroke_width=stroke, stroke_fill=255)
        mask = np.asarray(img)
    else:
        size = max(8, round(cap / 0.75))
        weight = int(300 + (style["weight"] - 0.8) / 0.7 * 600)    # 300 (light) .. 900 (black)
        mask = np.zeros((size * 2, size * (len(text) + 2)), np.uint8)
        cv2.putText(mask, text, (size // 2, round(size * 1.4)), 255, _cv_font(_CV_FACES[face - 2]),
                    size, weight)
    h, w = mask.shape
    if abs(style["stretch"] - 1.0) > 0.02:
        mask = cv2.resize(mask, (max(1, round(w * style["stretch"])), h), interpolation=cv2.INTER_LINEAR)
        h, w = mask.shape
    if style["slant"] and face != 3:     # (face 3 is already italic)
        k = style["slant"]
        shear = np.float32([[1, -k, k * (h - 1)], [0, 1, 0]])
        mask = cv2.warpAffine(mask, shear, (w + math.ceil(k * h), h), flags=cv2.INTER_LINEAR)
    return _tight(mask)


def _tight(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return mask[:1, :1]
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _blend(canvas: np.ndarray, mask: np.ndarray, colour, x: int, y: int) -> None:
    """Paint `colour` through `mask` onto canvas at (x, y) (the mask must fit)."""
    h, w = mask.shape
    region = canvas[y:y + h, x:x + w]
    alpha = mask[..., None].astype(np.float32) * np.float32(1 / 255)
    col = np.asarray(colour, np.float32)
    region[...] = (region + (col - region) * alpha + np.float32(0.5)).astype(np.uint8)


def place_mask(canvas, mask, colour, x, y, anchor="lt") -> list[int]:
    """Blend a text mask anchored at (x, y) (l/m/r, t/m/b), clamped inside; returns its box."""
    H, W = canvas.shape[:2]
    mask = mask[:H, :W]
    h, w = mask.shape
    x = x - (w // 2 if anchor[0] == "m" else w if anchor[0] == "r" else 0)
    y = y - (h // 2 if anchor[1] == "m" else h if anchor[1] == "b" else 0)
    x = int(min(max(round(x), 0), W - w))
    y = int(min(max(round(y), 0), H - h))
    _blend(canvas, mask, colour, x, y)
    return [x, y, x + w, y + h]


def put_text(canvas, text, cap, style, colour, x, y, anchor="lt") -> list[int]:
    return place_mask(canvas, text_mask(text, cap, style), colour, x, y, anchor)


def text_plate(text_lines, caps, style, plate_rgb, ink_rgb, border_rgb=None, pad=(0.55, 0.45)):
    """An opaque sign/tag patch with centred lines of text; returns (patch, line boxes)."""
    masks = [text_mask(t, c, style) for t, c in zip(text_lines, caps, strict=True)]
    ref = max(caps)
    px, py, gap = round(ref * pad[0]) + 2, round(ref * pad[1]) + 2, round(ref * 0.45)
    pw = max(m.shape[1] for m in masks) + 2 * px
    ph = sum(m.shape[0] for m in masks) + gap * (len(masks) - 1) + 2 * py
    patch = np.empty((ph, pw, 3), np.uint8)
    patch[:] = plate_rgb
    if border_rgb is not None:
        cv2.rectangle(patch, (0, 0), (pw - 1, ph - 1), tuple(int(c) for c in border_rgb),
                      max(1, round(ref * 0.12)))
    boxes, y = [], py
    for m in masks:
        boxes.append(place_mask(patch, m, ink_rgb, (pw - m.shape[1]) // 2, y))
        y += m.shape[0] + gap
    return patch, boxes


_BODY = ("the", "report", "shows", "that", "all", "units", "were", "checked", "before", "delivery",
         "please", "sign", "and", "return", "this", "form", "within", "ten", "days", "of",
         "receipt", "any", "damage", "must", "be", "noted", "on", "arrival", "staff", "will",
         "review", "each", "request", "next", "week", "budget", "figures", "remain", "under",
         "review", "until", "final", "approval", "is", "given", "by", "the", "board", "site",
         "visit", "scheduled", "for", "monday", "morning", "contact", "office", "with", "questions")


def body_line(rng, cap, style, max_width) -> np.ndarray:
    """The mask of a line of filler words that fits in max_width."""
    words = [pick(rng, _BODY) for _ in range(randint(rng, 4, 9))]
    while True:
        mask = text_mask(" ".join(words).capitalize(), cap, style)
        if mask.shape[1] <= max_width or len(words) == 1:
            return mask[:, :max_width]
        words.pop()


# ---------------------------------------------------------------------------------------------
# Shapes and placement
# ---------------------------------------------------------------------------------------------

def _polygon(kind: str, cx: float, cy: float, r: float, rot: float = 0.0) -> np.ndarray:
    if kind == "star":
        ang = -math.pi / 2 + rot + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    else:
        n = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}[kind]
        start = -math.pi / 2 + (math.pi / 4 if kind == "square" else 0.0)
        if kind == "hexagon":
            start = 0.0
        ang = start + rot + np.arange(n) * 2 * math.pi / n
        rad = np.full(n, r * (1.2 if kind == "square" else 1.0))
        if kind == "diamond":
            rad = rad * np.array([1.0, 0.7, 1.0, 0.7])
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def shape_area(kind: str, r: float) -> float:
    if kind == "circle":
        return math.pi * r * r
    pts = _polygon(kind, 0.0, 0.0, r)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def draw_shape(canvas, kind, cx, cy, r, colour, rot=0.0) -> list[int]:
    """Filled, anti-aliased shape; returns its box (clipped to the canvas)."""
    H, W = canvas.shape[:2]
    colour = tuple(int(c) for c in colour)
    if kind == "circle":
        cv2.circle(canvas, (round(cx * 16), round(cy * 16)), round(r * 16), colour, -1,
                   cv2.LINE_AA, shift=4)
        x1, y1, x2, y2 = cx - r, cy - r, cx + r, cy + r
    else:
        pts = _polygon(kind, cx, cy, r, rot)
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
        (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
    return [max(0, math.floor(x1) - 1), max(0, math.floor(y1) - 1),
            min(W, math.ceil(x2) + 2), min(H, math.ceil(y2) + 2)]


def union(boxes) -> list[int]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _overlaps(a, b, pad=0) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


def spot(rng, W, H, w, h, taken, pad=0, margin=0, tries=80):
    """Top-left corner for a w x h item that overlaps nothing in `taken`, or None."""
    if w + 2 * margin >= W or h + 2 * margin >= H:
        return None
    for _ in range(tries):
        x = randint(rng, margin, W - w - margin)
        y = randint(rng, margin, H - h - margin)
        if not any(_overlaps((x, y, x + w, y + h), t, pad) for t in taken):
            return x, y
    return None


def paste(rng, img, patch, avoid, W, H, margin, taken) -> bool:
    """Copy `patch` to a free spot clear of `avoid` and add its box to `taken`; False if none."""
    h, w = patch.shape[:2]
    pos = spot(rng, W, H, w, h, avoid, pad=int(min(W, H) * 0.01), margin=margin)
    if pos is None:
        return False
    x, y = pos
    img[y:y + h, x:x + w] = patch
    taken.append([x, y, x + w, y + h])
    return True


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

JPEG_QUALITY = 90


def encode(arr: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "jpg":
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(out, format="PNG", compress_level=6)
    return out.getvalue()
