"""The embedded default source pool: synthetic samples for every Thyme task (THYME.md §3), with
exact answers and ground truth, so the whole flow runs without any dataset and every later stage
can be checked against what was drawn.

    generate_samples(start, count, seed, store) -> Iterator[Sample]

Sample `i` depends only on `(seed, i)`: its pixels, text and choices come from
`numpy.random.default_rng([seed, i])` and its task slot from a per-block shuffle seeded with
`(seed, i // 20)`. Shards can therefore generate disjoint index ranges independently, and a re-run
gives identical ids, byte-identical image files and identical text. No global random state is
touched, and only fonts that ship with Pillow (its default TrueType face) and OpenCV 5 (its
embedded sans, italic and uni faces) are used, so the output does not depend on what the machine
has installed. Bytes are identical for the pinned numpy/Pillow/OpenCV versions (and any number of
OpenCV threads); other versions may rasterise differently, so `meta["generator"]` names the
generator version and should be bumped whenever the output for a (seed, index) changes.

Task mix: every aligned block of 20 indices holds exactly 6 crop, 6 no_code, 3 rotate,
2 contrast, 2 chart/table computation and 1 text-only computation sample (30/30/15/10/10/5 %),
shuffled per block; half of each task's samples are multiple choice, alternating by block.

Conventions in `meta`:
- `box` = [x1, y1, x2, y2] in pixels of the stored image, x2/y2 exclusive (`PIL.Image.crop`).
- `angle` (rotate) = degrees counter-clockwise, the convention of `PIL.Image.rotate` and of
  `cv2.getRotationMatrix2D`: the upright document was turned by +angle, so
  `Image.rotate(-angle, expand=True)` (clockwise) restores it.
- Multiple choice: the question lists the options ("A. ..."), the answer is the letter,
  `options` holds the option lines and `answer_text` the correct option's text.
- Computation: `values` (name -> number), `expression` (a sympy-parsable expression over those
  names) and `answer_format` ("integer", "fraction", or "decimal:N" = rounded to N places, half
  up; values that would land exactly on a rounding tie are never drawn).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import cv2
import numpy as np
import sympy
from PIL import Image, ImageDraw, ImageFont

from pipelines.core.images import ImageStore
from pipelines.core.schema import TASKS, Sample

GENERATOR = "thyme-generate/1"   # bump when the output for a (seed, index) changes
SOURCE = "generated"
JPEG_QUALITY = 90

# One block of consecutive indices holds exactly this mix, in a per-block shuffled order.
_MIX = (("crop", 6), ("no_code", 6), ("rotate", 3), ("contrast", 2), ("chart", 2),
        ("word_problem", 1))
_SLOTS = tuple(key for key, n in _MIX for _ in range(n))
BLOCK = len(_SLOTS)

COLOURS = {
    "red": (210, 35, 35), "green": (40, 150, 60), "blue": (35, 80, 205), "yellow": (240, 205, 30),
    "orange": (245, 130, 25), "purple": (125, 55, 165), "pink": (240, 125, 180),
    "brown": (125, 80, 45), "black": (25, 25, 25), "white": (245, 245, 245),
    "grey": (128, 128, 128), "cyan": (30, 185, 205),
}
_SIGN_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
_OBJECT_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan")
_ATTR_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white")
_GLANCE_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
                   "cyan")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "pentagon", "hexagon")

_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"   # no I, O, Q: never confusable with 1 and 0
_DIGITS = "0123456789"

_SIGN_WORDS = (
    "OPEN", "EXIT", "BAKERY", "PHARMACY", "HOTEL", "PARKING", "CAFE", "BOOKS", "TAXI", "BUS STOP",
    "NO ENTRY", "SALE", "MARKET", "POST OFFICE", "BANK", "GARAGE", "FLORIST", "TICKETS", "PIZZA",
    "GYM", "LIBRARY", "MUSEUM", "DENTIST", "LAUNDRY", "BARBER", "TOILETS", "INFO", "ENTRANCE",
    "KEEP LEFT", "STOP", "SLOW", "ONE WAY", "DELI", "NOODLES", "SUSHI", "TOYS", "SHOES", "REPAIRS",
    "BIKES", "PETS", "CINEMA", "BAR", "TAILOR", "HARDWARE", "FISH", "BUTCHER", "TEA HOUSE",
    "ARCADE", "PRINTS", "KEYS CUT", "FRESH JUICE", "VINTAGE", "CLOSED", "PUSH", "PULL", "DANGER",
)
_PLACE_PREFIX = ("GATE", "PLATFORM", "ROOM", "LEVEL", "BAY", "DOCK", "ZONE", "AISLE", "EXIT",
                 "UNIT", "BLOCK", "HALL")
_ITEMS = ("APPLES", "BANANAS", "BREAD", "MILK", "EGGS", "CHEESE", "COFFEE", "TEA", "RICE", "PASTA",
          "BUTTER", "YOGURT", "ORANGES", "TOMATOES", "ONIONS", "CARROTS", "HONEY", "JUICE", "SOAP",
          "CEREAL", "LEMONS", "GRAPES", "FLOUR", "SUGAR", "PEPPERS", "OLIVES")
_STORE_A = ("GREEN", "GOLDEN", "CORNER", "SUNNY", "BLUE", "OLD TOWN", "CITY", "RIVER", "MAPLE",
            "NORTH", "HILLSIDE", "HARBOR", "PINE", "STAR")
_STORE_B = ("MARKET", "GROCER", "BAKERY", "DELI", "FOODS", "STORE", "PANTRY", "SHOP", "MART")
_TITLES = ("QUARTERLY REPORT", "MEETING NOTES", "SAFETY NOTICE", "DELIVERY NOTE", "INVOICE",
           "PROJECT PLAN", "LEASE AGREEMENT", "WORK ORDER", "PACKING LIST", "TRAVEL ITINERARY",
           "MAINTENANCE LOG", "EXAM SCHEDULE", "PRICE LIST", "VISITOR PASS", "BUDGET SUMMARY",
           "SITE INSPECTION", "PURCHASE ORDER", "TRAINING PLAN")
_BODY = ("the", "report", "shows", "that", "all", "units", "were", "checked", "before", "delivery",
         "please", "sign", "and", "return", "this", "form", "within", "ten", "days", "of",
         "receipt", "any", "damage", "must", "be", "noted", "on", "arrival", "staff", "will",
         "review", "each", "request", "next", "week", "budget", "figures", "remain", "under",
         "review", "until", "final", "approval", "is", "given", "by", "the", "board", "site",
         "visit", "scheduled", "for", "monday", "morning", "contact", "office", "with", "questions")
_CATEGORY_SETS = {
    "city": ("Oslo", "Lima", "Cairo", "Tokyo", "Paris", "Delhi", "Quito", "Perth", "Rome", "Seoul",
             "Dakar", "Minsk"),
    "fruit": ("Apples", "Pears", "Plums", "Grapes", "Mangoes", "Cherries", "Lemons", "Kiwis",
              "Peaches", "Figs"),
    "month": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "team": ("Falcons", "Tigers", "Otters", "Wolves", "Hawks", "Bears", "Lions", "Sharks"),
    "product": ("Laptops", "Phones", "Tablets", "Monitors", "Printers", "Routers", "Cameras"),
}
_METRICS = {
    "city": ("Rainfall (mm)", "Sunny days", "Museums", "Hotel bookings (thousands)"),
    "fruit": ("Boxes sold", "Harvest (tonnes)", "Stock (crates)"),
    "month": ("Monthly sales (units)", "Website visitors (thousands)", "Orders"),
    "team": ("Points scored", "Goals this season", "Fans (thousands)"),
    "product": ("Units shipped", "Returns", "Orders this week"),
}
_NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Greta", "Hugo", "Ines", "Jonas",
          "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya")
_SUBJECTS = ("Math", "Science", "English", "History", "Art", "Music")


@dataclass
class _Built:
    """What a task builder produces, before the multiple-choice wrapper and the store."""
    task: str
    kind: str
    question: str
    answer: str
    images: list[bytes]
    meta: dict
    pool: list[str] = field(default_factory=list)       # multiple-choice distractors, best first
    perturb: Callable | None = None                      # (rng, answer) -> another distractor


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def generate_samples(start: int, count: int, seed: int, store: ImageStore) -> Iterator[Sample]:
    """Samples `start .. start+count-1` of the generated pool for `seed`, images put in `store`."""
    if start < 0 or count < 0 or seed < 0:
        raise ValueError(f"start, count and seed must be >= 0 (got {start}, {count}, {seed})")
    for i in range(start, start + count):
        yield _sample(seed, i, store)


def _sample(seed: int, i: int, store: ImageStore) -> Sample:
    key, variant = _schedule(seed, i)
    rng = np.random.default_rng([seed, i])
    built = _BUILDERS[key](rng)
    assert built.task in TASKS, built.task
    meta = {"generator": GENERATOR, "kind": built.kind, "variant": variant, **built.meta}
    question, answer = built.question, built.answer
    if variant == "mc":
        options, letter = _options(rng, built)
        question = _with_options(rng, question, options)
        meta["options"] = options
        meta["answer_text"] = built.answer
        answer = letter
    images = [store.put(data)[0] for data in built.images]
    return Sample(question=question, images=images, source=SOURCE,
                  origin_file=f"generated/seed={seed}", origin_row=i, answer=answer,
                  task=built.task, meta=meta)


@lru_cache(maxsize=64)
def _block_order(seed: int, block: int) -> tuple[str, ...]:
    perm = np.random.default_rng([seed, block, 0x5107]).permutation(BLOCK)
    return tuple(_SLOTS[j] for j in perm)


def _schedule(seed: int, i: int) -> tuple[str, str]:
    """(builder key, "mc" | "open") of index i: exact mix per block, MC alternating by block."""
    block, pos = divmod(i, BLOCK)
    order = _block_order(seed, block)
    key = order[pos]
    nth = order[:pos].count(key)
    return key, ("mc" if (nth + block) % 2 == 0 else "open")


# ---------------------------------------------------------------------------------------------
# Small helpers: random choices, encoding, multiple choice
# ---------------------------------------------------------------------------------------------

def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample_distinct(rng, seq, n):
    return [seq[j] for j in rng.choice(len(seq), size=n, replace=False)]


def _randint(rng, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], inclusive."""
    return int(rng.integers(lo, hi + 1))


def _jitter(rng, rgb, amount=12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _muted(rng, lo=60, hi=200) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _lum(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _ink(rgb) -> tuple[int, int, int]:
    """A readable text colour on a ground of colour rgb."""
    return (20, 20, 25) if _lum(rgb) > 140 else (245, 245, 240)


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def _code(rng, pattern: str) -> str:
    """L = letter, D = digit, anything else literal."""
    return "".join(_pick(rng, _LETTERS) if c == "L" else _pick(rng, _DIGITS) if c == "D" else c
                   for c in pattern)


def _perturb_text(rng, text: str) -> str:
    """The same text with one letter or digit changed: a near-miss multiple-choice distractor."""
    spots = [k for k, c in enumerate(text) if c.isalnum()]
    if not spots:
        return text + "1"
    k = _pick(rng, spots)
    pool = _DIGITS if text[k].isdigit() else _LETTERS if text[k].isupper() else "abcdefghkmnprstuvwxyz"
    choices = [c for c in pool if c != text[k]]
    return text[:k] + _pick(rng, choices) + text[k + 1:]


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "jpg":
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _options(rng, built: _Built) -> tuple[list[str], str]:
    """Four options (two for a two-way choice): the answer and distinct distractors, shuffled."""
    answer = built.answer
    chosen: list[str] = []
    for text in built.pool:
        if text != answer and text not in chosen and len(chosen) < 3:
            chosen.append(text)
    perturb = built.perturb or _perturb_text
    for _ in range(50):
        if len(chosen) >= 3 or built.kind == "left_right":
            break
        text = perturb(rng, answer)
        if text != answer and text not in chosen:
            chosen.append(text)
    texts = [answer, *chosen]
    order = rng.permutation(len(texts))
    letters = "ABCDE"
    options = [f"{letters[k]}. {texts[j]}" for k, j in enumerate(order)]
    letter = letters[int(np.flatnonzero(order == 0)[0])]
    return options, letter


_MC_TAILS = ("Answer with the option's letter.", "Answer with the letter of the correct option.",
             "Choose the correct option and reply with its letter.")


def _with_options(rng, question: str, options: list[str]) -> str:
    return f"{question}\nOptions:\n" + "\n".join(options) + "\n" + _pick(rng, _MC_TAILS)


# ---------------------------------------------------------------------------------------------
# Exact arithmetic
# ---------------------------------------------------------------------------------------------

def _evaluate(expression: str, values: dict) -> Fraction:
    local = {name: sympy.Rational(str(v)) for name, v in values.items()}
    result = sympy.sympify(expression, locals=local)
    if not result.is_Rational:
        raise ValueError(f"{expression!r} is not rational: {result}")
    return Fraction(int(result.p), int(result.q))


def _is_tie(value: Fraction, fmt: str) -> bool:
    if not fmt.startswith("decimal:"):
        return False
    scaled = value * 10 ** int(fmt.split(":")[1]) * 2
    return scaled.denominator == 1 and scaled.numerator % 2 == 1


def _format(value: Fraction, fmt: str) -> str:
    if fmt == "integer":
        if value.denominator != 1:
            raise ValueError(f"{value} is not an integer")
        return str(value.numerator)
    if fmt == "fraction":
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    places = int(fmt.split(":")[1])
    n = math.floor(value * 10 ** places + Fraction(1, 2))        # round half up
    sign, n = ("-" if n < 0 else ""), abs(n)
    if places == 0:
        return f"{sign}{n}"
    whole, frac = divmod(n, 10 ** places)
    return f"{sign}{whole}.{frac:0{places}d}"


def _num_text(x) -> str:
    """A number as a question shows it: 2.5, 12, 0.75."""
    f = Fraction(str(x))
    if f.denominator == 1:
        return str(f.numerator)
    return format(float(f), "g")


def _numeric_perturb(fmt: str) -> Callable:
    def perturb(rng, answer: str) -> str:
        if fmt == "fraction" and "/" in answer:
            p, q = (int(t) for t in answer.split("/"))
            p2, q2 = (p + _pick(rng, (-1, 1, 2)), q) if rng.random() < 0.5 else (p, q + _pick(rng, (-1, 1, 2)))
            return _format(Fraction(max(p2, 1), max(q2, 2)), fmt)
        value = Fraction(answer)
        if rng.random() < 0.5:
            step = Fraction(1) if fmt in ("integer", "fraction") else Fraction(1, 10 ** int(fmt.split(":")[1]))
            delta = _pick(rng, (-3, -2, -1, 1, 2, 3, 10, -10)) * step * max(1, int(abs(value) // 20) or 1)
            other = value + delta
        else:
            other = value * Fraction(_pick(rng, (70, 80, 90, 110, 120, 125, 150)), 100)
        if fmt in ("integer", "fraction"):
            other = Fraction(round(other))
        if value >= 0 > other:
            other = -other
        return _format(other, "integer" if fmt == "fraction" else fmt)
    return perturb


def _count_perturb(rng, answer: str) -> str:
    n = int(answer)
    return str(max(0, n + _pick(rng, (-2, -1, 1, 2, 3))))


# ---------------------------------------------------------------------------------------------
# Drawing: text, shapes, backgrounds
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


def _style(rng, slant: bool = True) -> dict:
    """A text style: face (Pillow regular/bold, OpenCV sans/italic/uni), weight, stretch, slant."""
    return {"face": int(rng.integers(N_FACES)), "weight": float(rng.uniform(0.8, 1.5)),
            "stretch": float(rng.uniform(0.85, 1.2)),
            "slant": float(_pick(rng, (0.0, 0.0, 0.0, 0.18))) if slant else 0.0}


def _text_mask(text: str, cap: float, style: dict) -> np.ndarray:
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


def _place_mask(canvas, mask, colour, x, y, anchor="lt") -> list[int]:
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


def _put_text(canvas, text, cap, style, colour, x, y, anchor="lt") -> list[int]:
    return _place_mask(canvas, _text_mask(text, cap, style), colour, x, y, anchor)


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


def _shape_area(kind: str, r: float) -> float:
    if kind == "circle":
        return math.pi * r * r
    pts = _polygon(kind, 0.0, 0.0, r)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _draw_shape(canvas, kind, cx, cy, r, colour, rot=0.0) -> list[int]:
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


def _union(boxes) -> list[int]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _overlaps(a, b, pad=0) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


def _spot(rng, W, H, w, h, taken, pad=0, margin=0, tries=80):
    """Top-left corner for a w x h item that overlaps nothing in `taken`, or None."""
    if w + 2 * margin >= W or h + 2 * margin >= H:
        return None
    for _ in range(tries):
        x = _randint(rng, margin, W - w - margin)
        y = _randint(rng, margin, H - h - margin)
        if not any(_overlaps((x, y, x + w, y + h), t, pad) for t in taken):
            return x, y
    return None


def _local_mean(img, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return img[y1:y2:2, x1:x2:2].reshape(-1, 3).mean(axis=0)


def _contrasting(rng, names, local, min_dist=90.0) -> str:
    good = [n for n in names if _dist(COLOURS[n], local) >= min_dist]
    if good:
        return _pick(rng, good)
    return max(names, key=lambda n: _dist(COLOURS[n], local))


def _vgrad(h, w, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top = np.asarray(top, np.float32)
    return np.broadcast_to(top + (np.asarray(bottom, np.float32) - top) * t, (h, w, 3)).copy()


def _gradient(rng, h, w, c1, c2) -> np.ndarray:
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.ogrid[0:h, 0:w]
    t = (xx * math.cos(ang) + yy * math.sin(ang)).astype(np.float32)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c1, c2 = np.asarray(c1, np.float32), np.asarray(c2, np.float32)
    return c1 + (c2 - c1) * t[..., None]


def _field(rng, h, w, amp, cells=6) -> np.ndarray:
    """Smooth low-frequency colour variation."""
    small = rng.uniform(-amp, amp, (_randint(rng, 2, cells), _randint(rng, 2, cells), 3))
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


_SKIES = ((120, 170, 225), (170, 195, 220), (200, 205, 210), (235, 190, 150), (150, 185, 235))


def _backdrop(rng, w: int, h: int, kind: str) -> np.ndarray:
    """A low-resolution scene (street, interior, park, texture or plain), uint8 RGB."""
    if kind == "street":
        horizon = int(h * rng.uniform(0.45, 0.7))
        sky = _jitter(rng, _pick(rng, _SKIES), 15)
        img = _vgrad(h, w, sky, _jitter(rng, sky, 30))
        img[horizon:] = _vgrad(h - horizon, w, _muted(rng, 70, 130), _muted(rng, 90, 160))
        img = _to_u8(img + _field(rng, h, w, 14))
        x = -_randint(rng, 0, w // 20)
        while x < w:
            bw = _randint(rng, max(4, w // 14), max(5, w // 4))
            top = _randint(rng, h // 12, max(h // 12, horizon - h // 8))
            cv2.rectangle(img, (x, top), (x + bw - 1, horizon + 2), _muted(rng, 50, 210), -1)
            win = max(2, bw // _randint(rng, 6, 10))
            glass = _pick(rng, ((40, 45, 55), (215, 205, 150), (90, 110, 135), (160, 190, 210)))
            for yy in range(top + win, horizon - win, 2 * win):
                for xx in range(x + win, x + bw - win, 2 * win):
                    cv2.rectangle(img, (xx, yy), (xx + win - 1, yy + win - 1), _jitter(rng, glass, 20), -1)
            x += bw + _randint(rng, 0, w // 30)
        for _ in range(_randint(rng, 0, 3)):   # road markings
            y = _randint(rng, horizon + 2, h - 2)
            cv2.line(img, (0, y), (w, y + _randint(rng, -h // 10, h // 10)), (225, 225, 215), max(1, h // 150))
    elif kind == "interior":
        wall = _muted(rng, 120, 230)
        img = _to_u8(_vgrad(h, w, wall, [c * 0.85 for c in wall]) + _field(rng, h, w, 12))
        floor = int(h * rng.uniform(0.7, 0.85))
        img[floor:] = _to_u8(_vgrad(h - floor, w, _muted(rng, 80, 150), _muted(rng, 60, 120)))
        for s in range(_randint(rng, 2, 4)):
            y = int(h * (0.2 + 0.55 * s / 4 + rng.uniform(-0.03, 0.03)))
            cv2.rectangle(img, (0, y), (w, y + max(2, h // 60)), _muted(rng, 70, 150), -1)
            x = _randint(rng, 0, w // 20)
            while x < w:
                bw, bh = _randint(rng, max(3, w // 40), max(4, w // 10)), _randint(rng, max(3, h // 20), max(4, h // 7))
                cv2.rectangle(img, (x, y - bh), (x + bw, y - 1), _muted(rng, 40, 230), -1)
                x += bw + _randint(rng, 0, w // 25)
    elif kind == "park":
        horizon = int(h * rng.uniform(0.3, 0.55))
        sky = _jitter(rng, _pick(rng, _SKIES), 15)
        img = _vgrad(h, w, sky, _jitter(rng, sky, 25))
        grass = (int(rng.integers(50, 110)), int(rng.integers(110, 170)), int(rng.integers(40, 90)))
        img[horizon:] = _vgrad(h - horizon, w, grass, _jitter(rng, grass, 30))
        img = _to_u8(img + _field(rng, h, w, 20, cells=10))
        for _ in range(_randint(rng, 3, 10)):
            cx, base = _randint(rng, 0, w), _randint(rng, horizon, h)
            th = _randint(rng, max(4, h // 8), max(5, h // 3))
            tw = max(2, th // 10)
            cv2.rectangle(img, (cx - tw, base - th), (cx + tw, base), _jitter(rng, (95, 65, 40), 15), -1)
            cv2.ellipse(img, (cx, base - th), (th // 2, th // 3), 0, 0, 360,
                        _jitter(rng, (40, 100, 45), 25), -1, cv2.LINE_AA)
    else:   # "texture" (wood, tiles, fabric) or "plain"
        c1 = _muted(rng, 90, 230)
        img = _gradient(rng, h, w, c1, _jitter(rng, c1, 40)) + _field(rng, h, w, 15)
        style = "plain" if kind == "plain" else _pick(rng, ("wood", "tiles", "fabric"))
        if style == "wood":
            ang, freq = rng.uniform(0, math.pi), rng.uniform(0.05, 0.25)
            yy, xx = np.ogrid[0:h, 0:w]
            t = xx * math.cos(ang) + yy * math.sin(ang)
            img = img * (1 + 0.08 * np.sin(t[..., None] * freq + 3 * _field(rng, h, w, 1.0)[..., :1]))
        img = _to_u8(img)
        if style == "tiles":
            step = _randint(rng, max(6, w // 30), max(7, w // 8))
            line = _jitter(rng, (90, 90, 90), 40)
            for x in range(0, w, step):
                cv2.line(img, (x, 0), (x, h), line, 1)
            for y in range(0, h, step):
                cv2.line(img, (0, y), (w, y), line, 1)
        elif style == "fabric":
            for _ in range(_randint(rng, 10, 40)):
                y = _randint(rng, 0, h)
                cv2.line(img, (0, y), (w, y), _jitter(rng, c1, 25), 1)
    # clutter: rectangles, ellipses and lines (never the polygons the tasks ask about)
    for _ in range(_randint(rng, 3 if kind == "plain" else 6, 8 if kind == "plain" else 18)):
        colour = _muted(rng, 40, 220)
        x, y = _randint(rng, 0, w), _randint(rng, 0, h)
        s = _randint(rng, max(2, min(w, h) // 40), max(3, min(w, h) // 8))
        what = int(rng.integers(3))
        if what == 0:
            cv2.rectangle(img, (x, y), (x + s, y + _randint(rng, 1, s)), colour, -1)
        elif what == 1:
            # elongated, so that clutter never passes for a circle
            cv2.ellipse(img, (x, y), (s, _randint(rng, 1, max(1, s * 3 // 5))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.line(img, (x, y), (x + _randint(rng, -s * 3, s * 3), y + _randint(rng, -s * 3, s * 3)),
                     colour, max(1, s // 8), cv2.LINE_AA)
    if kind != "plain" and rng.random() < 0.7:   # uneven lighting and a colour cast
        yy, xx = np.ogrid[0:h, 0:w]
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        d2 = ((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2
        light = (1.0 - rng.uniform(0.2, 0.6) * d2).astype(np.float32)[..., None]
        cast = (1.0 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
        img = _to_u8(img * light * cast)
    return img


def _add_noise(rng, img: np.ndarray, amp: int) -> np.ndarray:
    """Grey sensor-like grain (2x2 cells), +-amp levels."""
    H, W = img.shape[:2]
    grain = rng.integers(0, 2 * amp + 1, ((H + 1) // 2, (W + 1) // 2), dtype=np.uint8)
    grain = cv2.resize(grain, (W, H), interpolation=cv2.INTER_NEAREST)
    grain = cv2.merge([grain, grain, grain])
    return cv2.subtract(cv2.add(img, grain), (amp, amp, amp, 0))


def _scene(rng, W, H, kind=None, scale=3, noise=4) -> np.ndarray:
    kind = kind or _pick(rng, ("street", "street", "interior", "park"))
    low = _backdrop(rng, max(8, W // scale), max(8, H // scale), kind)
    img = cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)
    return _add_noise(rng, img, noise) if noise else img


def _plate(text_lines, caps, style, plate_rgb, ink_rgb, border_rgb=None, pad=(0.55, 0.45)):
    """An opaque sign/tag patch with centred lines of text; returns (patch, line boxes)."""
    masks = [_text_mask(t, c, style) for t, c in zip(text_lines, caps, strict=True)]
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
        boxes.append(_place_mask(patch, m, ink_rgb, (pw - m.shape[1]) // 2, y))
        y += m.shape[0] + gap
    return patch, boxes


def _sign_text(rng) -> str:
    r = rng.random()
    if r < 0.5:
        return _pick(rng, _SIGN_WORDS)
    if r < 0.8:
        return f"{_pick(rng, _PLACE_PREFIX)} {_code(rng, _pick(rng, ('D', 'DD', 'LD', 'DDD', 'LDD')))}"
    return f"{_pick(rng, _SIGN_WORDS)} {_randint(rng, 2, 99)}"


def _price(rng, lo=49, hi=4999) -> str:
    cents = _randint(rng, lo, hi)
    return f"${cents // 100}.{cents % 100:02d}"


def _store_name(rng) -> str:
    return f"{_pick(rng, _STORE_A)} {_pick(rng, _STORE_B)}"


# ---------------------------------------------------------------------------------------------
# crop: a small detail in a large high-resolution scene
# ---------------------------------------------------------------------------------------------

_CROP_KINDS = ("sign", "sign", "plate", "price", "badge", "count", "attribute")


def _build_crop(rng) -> _Built:
    L = _randint(rng, 1600, 3000)
    aspect = rng.uniform(1.2, 1.8)
    W, H = (L, int(L / aspect)) if rng.random() < 0.75 else (int(L / aspect), L)
    img = _scene(rng, W, H)
    cap = max(12.0, L * rng.uniform(0.0045, 0.0075))   # capital height: needs zooming
    margin = int(0.03 * min(W, H))
    kind = _pick(rng, _CROP_KINDS)
    taken: list[list[int]] = []
    texts: list[str] = []            # multiple-choice distractors (texts drawn elsewhere first)
    sign_exclude: set[str] = set()   # sign colours the distractors must not use
    perturb = None

    if kind in ("sign", "price"):
        style = _style(rng)
        if kind == "sign":
            lines, caps = [_sign_text(rng)], [cap]
        else:
            item = _pick(rng, _ITEMS)
            lines, caps = [item, _price(rng)], [max(10.0, cap * 0.75), cap]
        probe, _ = _plate(lines, caps, style, (0, 0, 0), (255, 255, 255), None)
        x, y = _spot(rng, W, H, probe.shape[1], probe.shape[0], taken, margin=margin)
        names = _SIGN_COLOURS if kind == "sign" else ("white", "yellow", "orange", "pink", "cyan")
        colour = _contrasting(rng, names, _local_mean(img, (x, y, x + probe.shape[1], y + probe.shape[0])))
        rgb = _jitter(rng, COLOURS[colour], 10)
        patch, _ = _plate(lines, caps, style, rgb, _ink(rgb), _jitter(rng, (60, 60, 60), 40))
        img[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        box = [x, y, x + patch.shape[1], y + patch.shape[0]]
        if kind == "sign":
            sign_exclude.add(colour)
            answer = lines[0]
            target = f"small {colour} sign reading {answer!r}"
            question = _pick(rng, (
                f"What is written on the small {colour} sign?",
                f"What text appears on the little {colour} sign in the image?",
                f"Read the text on the small {colour} sign.",
                f"The picture contains a small {colour} sign. What does it say?",
                f"What does the {colour} sign in this photo say?",
            ))
        else:
            answer = lines[1]
            target = f"small {colour} price tag for {lines[0]} reading {answer}"
            texts_prices = [_price(rng) for _ in range(3)]
            texts.extend(texts_prices)
            item = lines[0].lower()
            question = _pick(rng, (
                f"What price is shown on the small tag for {item}?",
                f"How much do the {item} cost according to the small price tag?",
                f"According to its price tag, what is the price of the {item}?",
                f"What is the price written on the {item} tag?",
            ))
            for other in _sample_distinct(rng, [t for t in _ITEMS if t != lines[0]], _randint(rng, 2, 5)):
                price = _price(rng)
                orgb = _jitter(rng, COLOURS[_pick(rng, ("white", "yellow", "orange", "pink", "cyan"))], 10)
                tag, _ = _plate([other, price], caps, _style(rng), orgb, _ink(orgb), (60, 60, 60))
                _paste(rng, img, tag, taken + [box], W, H, margin, taken)
                texts.insert(0, price)
        taken.append(box)
    elif kind == "plate":
        style = _style(rng, slant=False)
        answer = _code(rng, _pick(rng, ("LL DD LLL", "LLL DDDD", "DLLL DDD", "LL-DDDD", "LLL-DDD")))
        plate_rgb = _pick(rng, ((240, 240, 235), (245, 200, 35)))
        patch, _ = _plate([answer], [cap], style, plate_rgb, (20, 20, 25), (30, 30, 30), pad=(0.4, 0.35))
        ph, pw = patch.shape[:2]
        cw = int(pw * rng.uniform(3.2, 4.2))
        ch = int(cw * rng.uniform(0.45, 0.6))
        x, y = _spot(rng, W, H, cw, ch, taken, margin=margin)
        body = _jitter(rng, COLOURS[_pick(rng, ("red", "blue", "white", "black", "grey", "green"))], 15)
        cv2.rectangle(img, (x + cw // 10, y), (x + cw - cw // 10, y + ch // 2), body, -1)
        cv2.rectangle(img, (x + cw // 6, y + ch // 12), (x + cw - cw // 6, y + ch // 2 - ch // 12),
                      (55, 65, 80), -1)
        cv2.rectangle(img, (x, y + ch // 3), (x + cw, y + ch * 7 // 8), body, -1)
        for wx in (x + cw // 5, x + cw - cw // 5):
            cv2.circle(img, (wx, y + ch * 7 // 8), ch // 7, (25, 25, 25), -1, cv2.LINE_AA)
        for lx in (x + cw // 40, x + cw - cw // 40 - cw // 10):
            cv2.rectangle(img, (lx, y + ch * 4 // 9), (lx + cw // 10, y + ch * 5 // 9), (200, 30, 30), -1)
        px, py = x + (cw - pw) // 2, y + ch * 3 // 5 - ph // 2
        img[py:py + ph, px:px + pw] = patch
        box = [px, py, px + pw, py + ph]
        taken.append([x, y, x + cw, y + ch + ch // 7])
        target = f"licence plate reading {answer!r} on a car"
        question = _pick(rng, (
            "What is the licence plate number of the car?",
            "Read the registration number on the car's number plate.",
            "What is written on the car's licence plate?",
            "What registration number does the car in the image have?",
        ))
        perturb = _perturb_text
    elif kind == "badge":
        style = _style(rng, slant=False)
        r = cap * rng.uniform(1.2, 1.6)
        number = str(_randint(rng, 2, 999))
        side = int(2 * r + 4)
        x, y = _spot(rng, W, H, side, side, taken, margin=margin)
        colour = _contrasting(rng, _OBJECT_COLOURS, _local_mean(img, (x, y, x + side, y + side)))
        box = _badge(img, x + side / 2, y + side / 2, r, colour, number, style, rng)
        taken.append(box)
        answer = number
        target = f"small {colour} circle with the number {number}"
        question = _pick(rng, (
            f"What number is written on the small {colour} circle?",
            f"Which number appears inside the little {colour} circle?",
            f"What is the number on the {colour} round badge?",
        ))
        for other in _sample_distinct(rng, [c for c in _OBJECT_COLOURS if c != colour], _randint(rng, 2, 5)):
            pos = _spot(rng, W, H, side, side, taken, pad=int(cap), margin=margin)
            if pos:
                n2 = str(_randint(rng, 2, 999))
                taken.append(_badge(img, pos[0] + side / 2, pos[1] + side / 2, r, other, n2, _style(rng, False), rng))
                texts.append(n2)
        perturb = _perturb_text
    elif kind == "count":
        shape = _pick(rng, ("star", "triangle", "diamond", "hexagon"))
        n = _randint(rng, 2, 7)
        rs = cap * rng.uniform(0.6, 0.9)
        cell = 2.7 * rs
        cols = math.ceil(math.sqrt(n * 1.6))
        rows = math.ceil(n * 1.6 / cols)
        cw, ch = int(cols * cell) + 4, int(rows * cell) + 4
        x, y = _spot(rng, W, H, cw, ch, taken, margin=margin)
        colour = _contrasting(rng, _OBJECT_COLOURS, _local_mean(img, (x, y, x + cw, y + ch)))
        box = _union(_cluster(rng, img, x, y, cols, rows, cell, rs, n, shape, colour))
        taken.append([x, y, x + cw, y + ch])
        other_colour = _pick(rng, [c for c in _OBJECT_COLOURS if c != colour])
        other_shape = _pick(rng, [s for s in ("star", "triangle", "diamond", "hexagon") if s != shape])
        for s2, c2 in ((shape, other_colour), (other_shape, colour)):
            n2 = _pick(rng, [k for k in range(2, 8) if k != n])
            pos = _spot(rng, W, H, cw, ch, taken, pad=int(2 * cap), margin=margin)
            if pos:
                _cluster(rng, img, pos[0], pos[1], cols, rows, cell, rs, n2, s2, c2)
                taken.append([pos[0], pos[1], pos[0] + cw, pos[1] + ch])
        answer = str(n)
        target = f"{n} small {colour} {shape}s"
        question = _pick(rng, (
            f"How many {colour} {shape}s are there in the image?",
            f"Count the small {colour} {shape}s in the picture.",
            f"How many small {colour} {shape}s can be seen?",
            f"What is the number of {colour} {shape}s in this image?",
        ))
        texts = [str(k) for k in (n - 1, n + 1, n + 2, n - 2) if k >= 1]
        perturb = _count_perturb
    else:   # attribute
        shape = _pick(rng, ("star", "triangle", "diamond", "hexagon"))
        rs = cap * rng.uniform(0.9, 1.4)
        side = int(2.4 * rs) + 4
        x, y = _spot(rng, W, H, side, side, taken, margin=margin)
        colour = _contrasting(rng, _ATTR_COLOURS, _local_mean(img, (x, y, x + side, y + side)), 110)
        box = _draw_shape(img, shape, x + side / 2, y + side / 2, rs, _jitter(rng, COLOURS[colour], 8),
                          rng.uniform(-0.15, 0.15))
        taken.append([x, y, x + side, y + side])
        for s2 in _sample_distinct(rng, [s for s in ("star", "triangle", "diamond", "hexagon", "circle")
                                         if s != shape], _randint(rng, 2, 4)):
            pos = _spot(rng, W, H, side, side, taken, pad=int(2 * cap), margin=margin)
            if pos:
                c2 = _pick(rng, _ATTR_COLOURS)
                _draw_shape(img, s2, pos[0] + side / 2, pos[1] + side / 2, rs, COLOURS[c2])
                taken.append([pos[0], pos[1], pos[0] + side, pos[1] + side])
        answer = colour
        target = f"small {colour} {shape}"
        question = _pick(rng, (
            f"What colour is the small {shape} in the image?",
            f"What is the colour of the little {shape}?",
            f"Which colour does the small {shape} have?",
        ))
        texts = [c for c in _ATTR_COLOURS if c != colour]
        texts = [texts[j] for j in rng.permutation(len(texts))]

    # Distractors: other signs (never the target's colour), big readable banners, loose text.
    for _ in range(_randint(rng, 3, 7)):
        words = _sign_text(rng)
        if words == answer:
            continue
        c = _pick(rng, [n for n in _SIGN_COLOURS if n not in sign_exclude])
        rgb = _jitter(rng, COLOURS[c], 10)
        patch, _ = _plate([words], [cap * rng.uniform(0.9, 1.2)], _style(rng), rgb, _ink(rgb),
                          _jitter(rng, (60, 60, 60), 40))
        if _paste(rng, img, patch, taken, W, H, margin, taken) and kind == "sign":
            texts.insert(0, words)
    for _ in range(_randint(rng, 1, 2)):
        words = _pick(rng, (_store_name(rng), _pick(rng, _SIGN_WORDS), f"{_pick(rng, _STORE_A)} HOTEL"))
        rgb = _jitter(rng, COLOURS[_pick(rng, _SIGN_COLOURS)], 10)
        patch, _ = _plate([words], [cap * rng.uniform(2.5, 4.0)], _style(rng), rgb, _ink(rgb), None)
        _paste(rng, img, patch, taken, W, H, margin, taken)
    for _ in range(_randint(rng, 2, 5)):
        words = _pick(rng, (_pick(rng, _SIGN_WORDS), str(_randint(rng, 1, 250)), f"EST. {_randint(rng, 1890, 2020)}"))
        mask = _text_mask(words, cap * rng.uniform(0.8, 1.5), _style(rng))
        pos = _spot(rng, W, H, mask.shape[1], mask.shape[0], taken, pad=int(cap), margin=margin)
        if pos:
            b = [pos[0], pos[1], pos[0] + mask.shape[1], pos[1] + mask.shape[0]]
            _place_mask(img, mask, _ink(_local_mean(img, b)), pos[0], pos[1])
            taken.append(b)

    area = (box[2] - box[0]) * (box[3] - box[1])
    assert 0 < area <= 0.05 * W * H, (kind, box, W, H)
    meta = {"box": [int(v) for v in box], "target": target, "image_size": [W, H],
            "area_fraction": round(area / (W * H), 6)}
    return _Built("crop", kind, question, answer, [_encode(img, "jpg")], meta, texts, perturb)


def _paste(rng, img, patch, avoid, W, H, margin, taken) -> bool:
    h, w = patch.shape[:2]
    pos = _spot(rng, W, H, w, h, avoid, pad=int(min(W, H) * 0.01), margin=margin)
    if pos is None:
        return False
    x, y = pos
    img[y:y + h, x:x + w] = patch
    taken.append([x, y, x + w, y + h])
    return True


def _badge(img, cx, cy, r, colour, number, style, rng) -> list[int]:
    rgb = _jitter(rng, COLOURS[colour], 8)
    box = _draw_shape(img, "circle", cx, cy, r, rgb)
    mask = _text_mask(number, r * 0.75, style)
    if mask.shape[1] > 1.5 * r:    # keep the number inside the circle
        scale = 1.5 * r / mask.shape[1]
        mask = cv2.resize(mask, (max(1, int(mask.shape[1] * scale)), max(1, int(mask.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    _place_mask(img, mask, _ink(rgb), cx, cy, "mm")
    return box


def _cluster(rng, img, x, y, cols, rows, cell, rs, n, shape, colour) -> list[list[int]]:
    boxes = []
    for k in rng.permutation(cols * rows)[:n]:
        r, c = divmod(int(k), cols)
        cx = x + 2 + (c + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        cy = y + 2 + (r + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        boxes.append(_draw_shape(img, shape, cx, cy, rs, _jitter(rng, COLOURS[colour], 8),
                                 rng.uniform(-0.2, 0.2)))
    return boxes


# ---------------------------------------------------------------------------------------------
# rotate: a document, receipt or sign turned by 30-335 degrees
# ---------------------------------------------------------------------------------------------

def _paper(rng, w, h, base=(246, 244, 236)) -> np.ndarray:
    c = _jitter(rng, base, 8)
    return _to_u8(_gradient(rng, h, w, c, _jitter(rng, c, 10)))


def _receipt(rng):
    style = _style(rng, slant=False)
    cap = rng.uniform(13, 18)
    w = _randint(rng, 380, 520)
    n = _randint(rng, 3, 7)
    items = _sample_distinct(rng, _ITEMS, n)
    cents = [_randint(rng, 49, 2499) for _ in items]
    money = [f"{c // 100}.{c % 100:02d}" for c in cents]
    total = f"{sum(cents) // 100}.{sum(cents) % 100:02d}"
    store = _store_name(rng)
    step = cap * 2.0
    h = int(step * (n + 8) + 2 * cap)
    doc = _paper(rng, w, h)
    ink = _jitter(rng, (45, 45, 55), 15)
    mx, y = int(w * 0.08), cap * 1.2
    boxes = {"store": _put_text(doc, store, cap * 1.35, style, ink, w // 2, y, "mt")}
    y += step * 1.4
    _put_text(doc, f"2024-{_randint(rng, 1, 12):02d}-{_randint(rng, 1, 28):02d} "
                   f"{_randint(rng, 8, 21):02d}:{_randint(rng, 0, 59):02d}", cap * 0.8, style, ink, w // 2, y, "mt")
    y += step
    for item, m in zip(items, money, strict=True):
        boxes[item] = _put_text(doc, m, cap, style, ink, w - mx, y, "rt")
        _put_text(doc, item, cap, style, ink, mx, y, "lt")
        y += step
    cv2.line(doc, (mx, int(y)), (w - mx, int(y)), ink, 1)
    y += cap * 0.8
    boxes["total"] = _put_text(doc, total, cap * 1.15, style, ink, w - mx, y, "rt")
    _put_text(doc, "TOTAL", cap * 1.15, style, ink, mx, y, "lt")
    y += step * 1.3
    _put_text(doc, "THANK YOU", cap * 0.9, style, ink, w // 2, y, "mt")
    which = _pick(rng, ("total", "total", "store", "item"))
    if which == "total":
        q = _pick(rng, ("What is the total amount on the receipt?", "What total does this receipt show?",
                        "How much was paid in total according to the receipt?"))
        return doc, q, total, "receipt total", boxes["total"], money, _numeric_perturb("decimal:2")
    if which == "store":
        q = _pick(rng, ("What is the name of the store on the receipt?", "Which shop issued this receipt?"))
        others = [_store_name(rng) for _ in range(4)]
        return doc, q, store, "store name", boxes["store"], others, None
    k = int(rng.integers(n))
    q = f"How much did the {items[k].lower()} cost according to the receipt?"
    return (doc, q, money[k], f"price of {items[k]}", boxes[items[k]],
            [m for j, m in enumerate(money) if j != k] + [total], _numeric_perturb("decimal:2"))


def _document(rng):
    style = _style(rng, slant=False)
    w = _randint(rng, 560, 800)
    h = int(w * rng.uniform(1.2, 1.4))
    doc = _paper(rng, w, h, (248, 248, 245))
    ink = _jitter(rng, (30, 30, 40), 15)
    cap = max(12.0, w * rng.uniform(0.018, 0.024))
    title = _pick(rng, _TITLES)
    ref = _code(rng, _pick(rng, ("LL-DDDD", "DDDD-LL", "LLL-DDDDD", "DD/DDDD")))
    mx = int(w * 0.09)
    y = h * 0.07
    title_box = _put_text(doc, title, w * rng.uniform(0.04, 0.05), style, ink, w // 2, y, "mt")
    y = title_box[3] + cap * 2
    ref_label = _put_text(doc, "Ref. No.", cap, style, ink, mx, y, "lt")
    ref_box = _put_text(doc, ref, cap, style, ink, ref_label[2] + cap, y, "lt")
    y += cap * 2.2
    _put_text(doc, f"Date: {_randint(rng, 1, 28)}/{_randint(rng, 1, 12)}/2024", cap, style, ink, mx, y, "lt")
    y += cap * 3
    while y < h * 0.9:
        _place_mask(doc, _body_line(rng, cap * 0.9, style, w - 2 * mx), ink, mx, y)
        y += cap * 2
    if rng.random() < 0.5:
        q = _pick(rng, ("What is the title of the document?", "What heading is printed at the top of the page?"))
        return doc, q, title, "document title", title_box, [t for t in _TITLES if t != title][:6], None
    q = _pick(rng, ("What is the reference number on the document?", "Which reference number is printed on this page?"))
    return doc, q, ref, "reference number", ref_box, [], _perturb_text


def _board(rng):
    style = _style(rng)
    lines = [_pick(rng, _SIGN_WORDS)]
    if rng.random() < 0.5:
        lines.append(_pick(rng, ("AHEAD", "ONLY", "HERE", "TODAY", f"{_randint(rng, 50, 900)} M",
                                 "NEXT LEFT", "OPEN 24H", f"FLOOR {_randint(rng, 1, 9)}")))
    colour = _pick(rng, _SIGN_COLOURS)
    rgb = _jitter(rng, COLOURS[colour], 10)
    w_target = _randint(rng, 500, 900)
    cap = w_target / (max(len(t) for t in lines) * 0.75 + 2)
    cap = min(cap, 110.0)
    patch, boxes = _plate(lines, [cap] * len(lines), style, rgb, _ink(rgb), _jitter(rng, (50, 50, 50), 30))
    answer = " ".join(lines)
    q = _pick(rng, ("What does the sign say?", "What text is written on the sign?",
                    "Read the sign in the image."))
    others = [w for w in _SIGN_WORDS if w != lines[0]]
    pool = [" ".join([o, *lines[1:]]) for o in _sample_distinct(rng, others, 4)]
    return patch, q, answer, f"{colour} sign", _union(boxes), pool, None


def _body_line(rng, cap, style, max_width) -> np.ndarray:
    """The mask of a line of filler words that fits in max_width."""
    words = [_pick(rng, _BODY) for _ in range(_randint(rng, 4, 9))]
    while True:
        mask = _text_mask(" ".join(words).capitalize(), cap, style)
        if mask.shape[1] <= max_width or len(words) == 1:
            return mask[:, :max_width]
        words.pop()


def _build_rotate(rng) -> _Built:
    kind = _pick(rng, ("receipt", "document", "sign"))
    doc, question, answer, target, tbox, pool, perturb = {
        "receipt": _receipt, "document": _document, "sign": _board}[kind](rng)
    angle = _randint(rng, 30, 335)
    h, w = doc.shape[:2]
    # Positive angle = counter-clockwise (cv2.getRotationMatrix2D, like PIL's Image.rotate).
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = math.ceil(h * sin + w * cos), math.ceil(h * cos + w * sin)
    left, top, right, bottom = (int(v) for v in rng.integers(30, 180, 4))
    W, H = nw + left + right, nh + top + bottom
    M[0, 2] += nw / 2 - w / 2 + left
    M[1, 2] += nh / 2 - h / 2 + top
    canvas = _scene(rng, W, H, kind=_pick(rng, ("texture", "texture", "interior")), noise=0)
    canvas = cv2.warpAffine(doc, M, (W, H), dst=canvas, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)
    canvas = _add_noise(rng, canvas, 3)
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) @ M.T
    meta = {"angle": angle, "target": target, "upright_size": [w, h],
            "upright_box": [int(v) for v in tbox],
            "corners": [[round(float(x), 1), round(float(y), 1)] for x, y in corners],
            "image_size": [W, H]}
    return _Built("rotate", kind, question, answer, [_encode(canvas, "jpg")], meta, list(pool), perturb)


# ---------------------------------------------------------------------------------------------
# contrast: faint text that needs enhancement
# ---------------------------------------------------------------------------------------------

def _rms_contrast(img, box) -> float:
    x1, y1, x2, y2 = box
    grey = img[y1:y2, x1:x2].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return round(float(grey.std() / 255.0), 4)


def _build_contrast(rng) -> _Built:
    kind = _pick(rng, ("faded_document", "dark_photo", "grey_panel"))
    delta = _randint(rng, 12, 24)
    style = _style(rng, slant=False)
    if kind == "faded_document":
        W = _randint(rng, 700, 1100)
        H = int(W * rng.uniform(1.2, 1.4))
        paper = np.array(_jitter(rng, (205, 200, 185), 25), np.float32)
        img = _to_u8(_gradient(rng, H, W, paper, paper + rng.uniform(-12, 12, 3)) + _field(rng, H, W, 5))
        ink = tuple(int(c) for c in np.clip(paper - delta, 0, 255))
        cap = max(12.0, W * rng.uniform(0.02, 0.026))
        mx = int(W * 0.1)
        _put_text(img, _pick(rng, _TITLES), W * 0.04, style, ink, W // 2, H * 0.07, "mt")
        y, answer, box = H * 0.18, "", None
        ref_row = _randint(rng, 1, 5)
        row = 0
        while y < H * 0.9:
            if row == ref_row:
                answer = _code(rng, _pick(rng, ("LL-DDDD", "DDDD-LL", "LLL-DDDDD")))
                label = _put_text(img, "Ref. No.", cap, style, ink, mx, y, "lt")
                box = _put_text(img, answer, cap, style, ink, label[2] + cap, y, "lt")
            else:
                _place_mask(img, _body_line(rng, cap * 0.9, style, W - 2 * mx), ink, mx, y)
            y += cap * 2.1
            row += 1
        img = _add_noise(rng, img, 3)
        question = _pick(rng, ("What is the reference number on this faded document?",
                               "The print on this page is very faint. What reference number does it give?",
                               "Which reference number is written on the faded page?"))
        target = f"faint reference number {answer}"
        pool: list[str] = []
    elif kind == "dark_photo":
        W = _randint(rng, 900, 1500)
        H = int(W * rng.uniform(0.6, 0.8))
        low = _backdrop(rng, W // 3, H // 3, _pick(rng, ("street", "interior")))
        low = _to_u8(low.astype(np.float32) * rng.uniform(0.08, 0.16))
        img = cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)
        answer = _pick(rng, _SIGN_WORDS)
        plate = np.array(_jitter(rng, (40, 38, 45), 12), np.float32)
        ink = tuple(int(c) for c in plate + delta)
        cap = W * rng.uniform(0.04, 0.06)
        patch, boxes = _plate([answer], [cap], style, tuple(int(c) for c in plate), ink, None)
        taken: list[list[int]] = []
        x, y = _spot(rng, W, H, patch.shape[1], patch.shape[0], taken, margin=int(W * 0.04))
        img[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        box = [x + boxes[0][0], y + boxes[0][1], x + boxes[0][2], y + boxes[0][3]]
        taken.append([x, y, x + patch.shape[1], y + patch.shape[0]])
        pool = []
        for _ in range(_randint(rng, 1, 2)):
            label = _pick(rng, [w for w in _SIGN_WORDS if w != answer])
            small, _ = _plate([label], [cap * 0.45], _style(rng, False), tuple(int(c) for c in plate), ink, None)
            if _paste(rng, img, small, taken, W, H, int(W * 0.04), taken):
                pool.append(label)
        img = _add_noise(rng, img, 3)
        question = _pick(rng, ("What is written on the large sign in this dark photo?",
                               "This photo is very dark. What does the big sign say?",
                               "Read the text on the largest sign in this dim image."))
        target = f"dark sign reading {answer!r}"
    else:   # grey_panel
        W = _randint(rng, 800, 1300)
        H = int(W * rng.uniform(0.5, 0.8))
        grey = float(rng.uniform(95, 170))
        base = np.array([grey, grey, grey], np.float32) + rng.uniform(-6, 6, 3)
        img = _to_u8(_gradient(rng, H, W, base, base + rng.uniform(-10, 10, 3)) + _field(rng, H, W, 4))
        sign = 1 if rng.random() < 0.5 else -1
        ink = tuple(int(c) for c in np.clip(base + sign * delta, 0, 255))
        cap = W * rng.uniform(0.03, 0.045)
        model = _code(rng, "LLL-DDD")
        answer = _code(rng, _pick(rng, ("LDD-DDDD", "DDLL-DDDD", "LLDDDDDD")))
        mx, y = int(W * 0.1), H * 0.15
        _put_text(img, f"MODEL {model}", cap, style, ink, mx, y, "lt")
        y += cap * 2.4
        label = _put_text(img, "S/N", cap, style, ink, mx, y, "lt")
        box = _put_text(img, answer, cap, style, ink, label[2] + cap, y, "lt")
        y += cap * 2.4
        _put_text(img, f"{_pick(rng, ('230', '120', '24', '12'))}V  {_randint(rng, 1, 20)}A  50Hz", cap * 0.8, style, ink, mx, y, "lt")
        y += cap * 2.2
        _put_text(img, f"MADE IN {_pick(rng, ('EU', 'JAPAN', 'CANADA', 'KOREA', 'MEXICO'))}", cap * 0.8, style, ink, mx, y, "lt")
        img = _add_noise(rng, img, 2)
        question = _pick(rng, ("What is the serial number printed on the panel?",
                               "The label is hard to read. What serial number (S/N) does it show?",
                               "Which serial number is written on this grey label?"))
        target = f"low-contrast serial number {answer}"
        pool = [model]
    meta = {"box": [int(v) for v in box], "target": target, "contrast": _rms_contrast(img, box),
            "delta": delta, "image_size": [W, H]}
    return _Built("contrast", kind, question, answer, [_encode(img, "jpg")], meta, pool, _perturb_text)


# ---------------------------------------------------------------------------------------------
# computation with an image: bar charts and tables
# ---------------------------------------------------------------------------------------------

def _ident(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower())


def _nice_step(top: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500):
        if top / step <= 8:
            return step
    return 1000


def _finish_computation(values, expression, fmt) -> str | None:
    value = _evaluate(expression, values)
    if _is_tie(value, fmt):
        return None
    return _format(value, fmt)


def _bar_chart(rng):
    cat = _pick(rng, tuple(_CATEGORY_SETS))
    n = _randint(rng, 3, 7)
    pool = _CATEGORY_SETS[cat]
    if cat == "month":
        s = _randint(rng, 0, len(pool) - n)
        labels = list(pool[s:s + n])
    else:
        labels = _sample_distinct(rng, pool, n)
    hi = 999 if rng.random() < 0.3 else 99
    nums = [int(v) for v in rng.choice(np.arange(5, hi + 1), size=n, replace=False)]
    idents = [_ident(t) for t in labels]
    values = dict(zip(idents, nums, strict=True))
    metric = _pick(rng, _METRICS[cat])
    W, H = _randint(rng, 720, 1100), _randint(rng, 520, 800)
    bg = _jitter(rng, (250, 250, 248), 5)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = bg
    style = _style(rng, slant=False)
    ink = (40, 40, 45)
    cap = rng.uniform(12, 16)
    _put_text(img, metric, cap * 1.4, style, ink, W // 2, int(H * 0.04), "mt")
    horizontal = rng.random() < 0.35
    left, right, top, bottom = int(W * (0.2 if horizontal else 0.1)), int(W * 0.05), int(H * 0.15), int(H * 0.13)
    px1, py1, px2, py2 = left, top, W - right, H - bottom
    step = _nice_step(max(nums))
    vmax = math.ceil(max(nums) * 1.1 / step) * step
    same = rng.random() < 0.5
    base_colour = _jitter(rng, COLOURS[_pick(rng, _OBJECT_COLOURS)], 15)
    grid = (215, 215, 215)
    for t in range(0, vmax + 1, step):
        if horizontal:
            gx = px1 + (px2 - px1) * t / vmax
            cv2.line(img, (int(gx), py1), (int(gx), py2), grid, 1)
            _put_text(img, str(t), cap * 0.8, style, ink, gx, py2 + cap * 0.6, "mt")
        else:
            gy = py2 - (py2 - py1) * t / vmax
            cv2.line(img, (px1, int(gy)), (px2, int(gy)), grid, 1)
            _put_text(img, str(t), cap * 0.8, style, ink, px1 - cap * 0.6, gy, "rm")
    cv2.line(img, (px1, py1), (px1, py2), ink, 2)
    cv2.line(img, (px1, py2), (px2, py2), ink, 2)
    slot = ((py2 - py1) if horizontal else (px2 - px1)) / n
    label_cap = min(cap, slot * 0.9 / (0.62 * max(len(t) for t in labels))) if not horizontal else cap
    for k, (label, v) in enumerate(zip(labels, nums, strict=True)):
        colour = base_colour if same else _jitter(rng, COLOURS[_OBJECT_COLOURS[k % len(_OBJECT_COLOURS)]], 10)
        if horizontal:
            y1 = int(py1 + slot * (k + 0.2))
            y2 = int(py1 + slot * (k + 0.8))
            x2 = int(px1 + (px2 - px1) * v / vmax)
            cv2.rectangle(img, (px1 + 1, y1), (x2, y2), colour, -1)
            _put_text(img, str(v), cap * 0.9, style, ink, x2 + cap * 0.5, (y1 + y2) / 2, "lm")
            _put_text(img, label, cap, style, ink, px1 - cap * 0.6, (y1 + y2) / 2, "rm")
        else:
            x1 = int(px1 + slot * (k + 0.2))
            x2 = int(px1 + slot * (k + 0.8))
            y1 = int(py2 - (py2 - py1) * v / vmax)
            cv2.rectangle(img, (x1, y1), (x2, py2 - 1), colour, -1)
            _put_text(img, str(v), cap * 0.9, style, ink, (x1 + x2) / 2, y1 - cap * 0.5, "mb")
            _put_text(img, label, max(9.0, label_cap), style, ink, (x1 + x2) / 2, py2 + cap * 0.7, "mt")
    what = _pick(rng, ("sum2", "diff", "mean", "pct", "sum_all"))
    if what == "sum2":
        a, b = _sample_distinct(rng, range(n), 2)
        expr, fmt = f"{idents[a]} + {idents[b]}", "integer"
        q = _pick(rng, (f"What is the sum of the values for {labels[a]} and {labels[b]}?",
                        f"What do {labels[a]} and {labels[b]} add up to in this chart?"))
    elif what == "diff":
        hi_k, lo_k = int(np.argmax(nums)), int(np.argmin(nums))
        expr, fmt = f"{idents[hi_k]} - {idents[lo_k]}", "integer"
        q = _pick(rng, ("What is the difference between the highest and the lowest value in the chart?",
                        "By how much does the largest bar exceed the smallest one?"))
    elif what == "mean":
        expr, fmt = f"({' + '.join(idents)}) / {n}", "decimal:2"
        q = f"What is the average of all {n} values in the chart? Round to two decimal places."
    elif what == "pct":
        a = int(rng.integers(n))
        expr, fmt = f"100 * {idents[a]} / ({' + '.join(idents)})", "decimal:1"
        q = (f"What percentage of the total does {labels[a]} account for? "
             "Round to one decimal place.")
    else:
        expr, fmt = " + ".join(idents), "integer"
        q = _pick(rng, ("What is the total of all the values shown in the chart?",
                        "What is the sum of all the bars?"))
    meta = {"chart": "bar", "orientation": "horizontal" if horizontal else "vertical",
            "labels": dict(zip(idents, labels, strict=True))}
    return img, q, values, expr, fmt, meta


def _table(rng):
    style = _style(rng, slant=False)
    cap = rng.uniform(13, 17)
    ink = (30, 30, 35)
    if rng.random() < 0.5:
        n = _randint(rng, 3, 6)
        items = [t.capitalize() for t in _sample_distinct(rng, _ITEMS, n)]
        qty = [_randint(rng, 1, 12) for _ in items]
        cents = [_randint(rng, 50, 1999) for _ in items]
        header = ["Item", "Qty", "Unit price"]
        rows = [[t, str(q), f"{c // 100}.{c % 100:02d}"] for t, q, c in zip(items, qty, cents, strict=True)]
        values = {}
        for t, q, c in zip(items, qty, cents, strict=True):
            values[f"{_ident(t)}_qty"] = q
            values[f"{_ident(t)}_price"] = float(Fraction(c, 100))
        if rng.random() < 0.6:
            expr = " + ".join(f"{_ident(t)}_qty * {_ident(t)}_price" for t in items)
            q = _pick(rng, ("What is the total cost of all the items in the table (quantity times unit price)? "
                            "Give the answer with two decimal places.",
                            "Using the table, how much do all the items cost together? Answer with two decimals."))
        else:
            a, b = _sample_distinct(rng, range(n), 2)
            if qty[a] * cents[a] < qty[b] * cents[b]:
                a, b = b, a
            ia, ib = _ident(items[a]), _ident(items[b])
            expr = f"{ia}_qty * {ia}_price - {ib}_qty * {ib}_price"
            q = (f"How much more is spent on {items[a].lower()} than on {items[b].lower()} "
                 "(quantity times unit price)? Give the answer with two decimal places.")
        fmt = "decimal:2"
    else:
        n = _randint(rng, 3, 6)
        names = _sample_distinct(rng, _NAMES, n)
        subjects = _sample_distinct(rng, _SUBJECTS, _randint(rng, 3, 4))
        scores = [[_randint(rng, 40, 100) for _ in subjects] for _ in names]
        header = ["Student", *subjects]
        rows = [[nm, *(str(s) for s in sc)] for nm, sc in zip(names, scores, strict=True)]
        values = {f"{_ident(nm)}_{_ident(sb)}": scores[i][j]
                  for i, nm in enumerate(names) for j, sb in enumerate(subjects)}
        what = _pick(rng, ("avg", "total", "range"))
        if what == "avg":
            k = int(rng.integers(n))
            expr = f"({' + '.join(f'{_ident(names[k])}_{_ident(sb)}' for sb in subjects)}) / {len(subjects)}"
            fmt = "decimal:1"
            q = f"What is {names[k]}'s average score across the {len(subjects)} subjects? Round to one decimal place."
        elif what == "total":
            j = int(rng.integers(len(subjects)))
            expr = " + ".join(f"{_ident(nm)}_{_ident(subjects[j])}" for nm in names)
            fmt = "integer"
            q = f"What is the total {subjects[j]} score of all the students in the table?"
        else:
            j = int(rng.integers(len(subjects)))
            col = [scores[i][j] for i in range(n)]
            hi_k, lo_k = int(np.argmax(col)), int(np.argmin(col))
            expr = f"{_ident(names[hi_k])}_{_ident(subjects[j])} - {_ident(names[lo_k])}_{_ident(subjects[j])}"
            fmt = "integer"
            q = f"What is the difference between the highest and the lowest {subjects[j]} score?"
    masks = [[_text_mask(c, cap, style) for c in r] for r in [header, *rows]]
    ncol = len(header)
    pad = int(cap * 0.9)
    colw = [max(masks[r][c].shape[1] for r in range(len(masks))) + 2 * pad for c in range(ncol)]
    rowh = int(cap * 2.4)
    mx, my = _randint(rng, 30, 90), _randint(rng, 30, 90)
    W, H = sum(colw) + 2 * mx, rowh * len(masks) + 2 * my
    img = np.empty((H, W, 3), np.uint8)
    img[:] = _jitter(rng, (252, 252, 250), 3)
    head_rgb = _jitter(rng, COLOURS[_pick(rng, ("blue", "green", "grey", "purple"))], 10)
    light = tuple(int(200 + (255 - 200) * (c / 255)) for c in head_rgb)
    cv2.rectangle(img, (mx, my), (W - mx, my + rowh), light, -1)
    stripe = rng.random() < 0.5
    for r in range(len(masks)):
        y = my + r * rowh
        if stripe and r > 0 and r % 2 == 0:
            cv2.rectangle(img, (mx, y), (W - mx, y + rowh), (240, 240, 240), -1)
        x = mx
        for c in range(ncol):
            anchor = "lm" if c == 0 else "rm"
            tx = x + pad if c == 0 else x + colw[c] - pad
            _place_mask(img, masks[r][c], ink, tx, y + rowh / 2, anchor)
            x += colw[c]
    line = (120, 120, 120)
    for r in range(len(masks) + 1):
        cv2.line(img, (mx, my + r * rowh), (W - mx, my + r * rowh), line, 1)
    x = mx
    for c in range(ncol + 1):
        cv2.line(img, (x, my), (x, H - my), line, 1)
        x += colw[c] if c < ncol else 0
    return img, q, values, expr, fmt, {"chart": "table", "header": header}


def _build_chart(rng) -> _Built:
    for _ in range(20):
        img, q, values, expr, fmt, extra = (_bar_chart if rng.random() < 0.6 else _table)(rng)
        answer = _finish_computation(values, expr, fmt)
        if answer is not None:
            break
    assert answer is not None
    meta = {"values": values, "expression": expr, "answer_format": fmt,
            "image_size": [int(img.shape[1]), int(img.shape[0])], **extra}
    return _Built("computation", extra["chart"] if extra["chart"] == "table" else "bar_chart", q, answer,
                  [_encode(img, "png")], meta, [], _numeric_perturb(fmt))


# ---------------------------------------------------------------------------------------------
# computation without an image: word problems
# ---------------------------------------------------------------------------------------------

def _signed(x: int) -> str:
    return f"+ {x}" if x >= 0 else f"- {-x}"


def _wp_speed(rng):
    hours = Fraction(_randint(rng, 3, 20), 4)
    d = _randint(rng, 40, 650)
    vehicle = _pick(rng, ("train", "car", "bus", "cyclist", "ferry"))
    q = (f"A {vehicle} travels {d} km in {_num_text(float(hours))} hours at a constant speed. "
         "What is its speed in km/h? Round to one decimal place.")
    return q, {"distance": d, "hours": float(hours)}, "distance / hours", "decimal:1"


def _wp_discount(rng):
    p, d, t = _randint(rng, 20, 500), _pick(rng, (5, 10, 15, 20, 25, 30, 35, 40)), _pick(rng, (5, 6, 7, 8, 9, 10, 12))
    thing = _pick(rng, ("jacket", "bicycle", "lamp", "pair of boots", "backpack", "blender"))
    q = (f"A {thing} costs ${p}. It is discounted by {d}%, and then a {t}% sales tax is added to "
         "the discounted price. What is the final price in dollars? Round to two decimal places.")
    return q, {"price": p, "discount": d, "tax": t}, "price * (1 - discount/100) * (1 + tax/100)", "decimal:2"


def _wp_fraction(rng):
    while True:
        a = Fraction(_randint(rng, 1, 4), _randint(rng, 2, 9))
        b = Fraction(_randint(rng, 1, 4), _randint(rng, 2, 9))
        if a < 1 and b < 1 and a + b < 1:
            break
    n1, n2 = _sample_distinct(rng, _NAMES, 2)
    food = _pick(rng, ("pizza", "cake", "pie", "chocolate bar"))
    q = (f"{n1} eats {a} of a {food} and {n2} eats {b} of it. What fraction of the {food} is left? "
         "Give the answer as a fraction in lowest terms.")
    values = {"first_num": a.numerator, "first_den": a.denominator,
              "second_num": b.numerator, "second_den": b.denominator}
    return q, values, "1 - first_num/first_den - second_num/second_den", "fraction"


def _wp_linear(rng):
    x = _randint(rng, -12, 15)
    a, c = _sample_distinct(rng, range(2, 10), 2)
    b = _randint(rng, -20, 20)
    d = a * x + b - c * x
    q = f"Solve for x: {a}x {_signed(b)} = {c}x {_signed(d)}. What is x?"
    return q, {"a": a, "b": b, "c": c, "d": d}, "(d - b) / (a - c)", "integer"


def _wp_interest(rng):
    p = _randint(rng, 5, 50) * 100
    r = _pick(rng, (2, 2.5, 3, 3.5, 4, 4.5, 5, 6))
    n = _randint(rng, 2, 5)
    q = (f"${p} is invested at {_num_text(r)}% interest per year, compounded annually. "
         f"How much is the investment worth after {n} years? Round to two decimal places.")
    return q, {"principal": p, "rate": r, "years": n}, "principal * (1 + rate/100)**years", "decimal:2"


def _wp_series(rng):
    a = _randint(rng, 1, 60)
    b = a + _randint(rng, 5, 120)
    q = f"What is the sum of all integers from {a} to {b} inclusive?"
    return q, {"first": a, "last": b}, "(first + last) * (last - first + 1) / 2", "integer"


def _wp_choose(rng):
    n, k = _randint(rng, 5, 16), _randint(rng, 2, 4)
    group = _pick(rng, ("people", "students", "players", "volunteers"))
    q = f"In how many ways can a team of {k} be chosen from {n} {group}, if order does not matter?"
    return q, {"n": n, "k": k}, "binomial(n, k)", "integer"


def _wp_system(rng):
    x, y = _randint(rng, 2, 40), _randint(rng, 1, 30)
    x, y = max(x, y), min(x, y)
    q = (f"Two numbers add up to {x + y} and their difference is {x - y}. "
         "What is their product?")
    return q, {"total": x + y, "gap": x - y}, "((total + gap) / 2) * ((total - gap) / 2)", "integer"


def _wp_mean(rng):
    n = _randint(rng, 4, 7)
    scores = [_randint(rng, 50, 100) for _ in range(n)]
    names = [f"s{k + 1}" for k in range(n)]
    q = (f"A student's test scores are {', '.join(map(str, scores[:-1]))} and {scores[-1]}. "
         "What is the mean score? Round to one decimal place.")
    return q, dict(zip(names, scores, strict=True)), f"({' + '.join(names)}) / {n}", "decimal:1"


def _wp_work(rng):
    a, b = _sample_distinct(rng, range(2, 13), 2)
    q = (f"Pipe A fills a tank in {a} hours and pipe B fills it in {b} hours. Working together, "
         "how many hours do they need to fill the tank? Give the answer as a fraction in lowest terms.")
    return q, {"a": a, "b": b}, "a * b / (a + b)", "fraction"


def _wp_change(rng):
    old = _randint(rng, 20, 500)
    new = old + _pick(rng, (-1, 1)) * _randint(rng, 1, old // 2)
    direction = "increase" if new > old else "decrease"
    q = (f"A price changes from ${old} to ${new}. By what percent did it {direction}? "
         "Round to one decimal place.")
    expr = "100 * (new - old) / old" if new > old else "100 * (old - new) / old"
    return q, {"old": old, "new": new}, expr, "decimal:1"


def _wp_area(rng):
    length, width = _randint(rng, 8, 40), _randint(rng, 6, 30)
    s = _randint(rng, 2, min(length, width) - 1)
    q = (f"A rectangular garden is {length} m long and {width} m wide. A square pond with sides of "
         f"{s} m is dug in it. What area of the garden, in square metres, is not covered by the pond?")
    return q, {"length": length, "width": width, "side": s}, "length * width - side**2", "integer"


_WORD_PROBLEMS = (_wp_speed, _wp_discount, _wp_fraction, _wp_linear, _wp_interest, _wp_series,
                  _wp_choose, _wp_system, _wp_mean, _wp_work, _wp_change, _wp_area)


def _build_word_problem(rng) -> _Built:
    for _ in range(20):
        make = _pick(rng, _WORD_PROBLEMS)
        q, values, expr, fmt = make(rng)
        answer = _finish_computation(values, expr, fmt)
        if answer is not None:
            break
    meta = {"values": values, "expression": expr, "answer_format": fmt}
    return _Built("computation", make.__name__.removeprefix("_wp_"), q, answer, [], meta, [],
                  _numeric_perturb(fmt))


# ---------------------------------------------------------------------------------------------
# no_code: a glance answers it
# ---------------------------------------------------------------------------------------------

def _build_no_code(rng) -> _Built:
    L = _randint(rng, 640, 1024)
    aspect = rng.uniform(1.0, 1.6)
    W, H = (L, int(L / aspect)) if rng.random() < 0.7 else (int(L / aspect), L)
    S = min(W, H)
    low = _backdrop(rng, W // 2, H // 2, _pick(rng, ("plain", "plain", "texture")))
    low = _to_u8(low.astype(np.float32) * 0.45 + 140)      # light and desaturated: shapes stand out
    img = _add_noise(rng, cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR), 3)
    kind = _pick(rng, ("dominant_colour", "count_circles", "largest_shape", "big_word", "left_right"))
    shapes: list[dict] = []
    taken: list[list[int]] = []

    def add(shape, colour, r, pad=0.0, rot=None):
        side = int(2.5 * r) + 4
        pos = _spot(rng, W, H, side, side, taken, pad=int(pad), margin=int(S * 0.02))
        if pos is None:
            return None
        box = _draw_shape(img, shape, pos[0] + side / 2, pos[1] + side / 2, r,
                          _jitter(rng, COLOURS[colour], 10),
                          rng.uniform(-0.15, 0.15) if rot is None else rot)
        taken.append([pos[0], pos[1], pos[0] + side, pos[1] + side])
        shapes.append({"shape": shape, "colour": colour, "box": box,
                       "area": round(_shape_area(shape, r), 1)})
        return box

    pool: list[str] = []
    perturb = None
    box = None
    if kind == "dominant_colour":
        shape = _pick(rng, SHAPES)
        colour = _pick(rng, _GLANCE_COLOURS)
        box = add(shape, colour, S * rng.uniform(0.22, 0.32))
        for _ in range(_randint(rng, 2, 4)):
            add(_pick(rng, SHAPES), _pick(rng, [c for c in _GLANCE_COLOURS if c != colour]),
                S * rng.uniform(0.04, 0.07), pad=S * 0.02)
        answer = colour
        question = _pick(rng, (f"What colour is the large {shape}?",
                               f"What is the colour of the big {shape} in the picture?",
                               "What colour is the biggest shape in the image?"))
        pool = [c for c in _GLANCE_COLOURS if c != colour]
        pool = [pool[j] for j in rng.permutation(len(pool))]
    elif kind == "count_circles":
        n = _randint(rng, 1, 6)
        r = S * rng.uniform(0.06, 0.09)
        for _ in range(n):
            if add("circle", _pick(rng, _GLANCE_COLOURS), r, pad=S * 0.02) is None:
                break
        n = sum(1 for s in shapes if s["shape"] == "circle")
        for _ in range(_randint(rng, 1, 4)):
            add(_pick(rng, ("square", "triangle", "star", "hexagon")), _pick(rng, _GLANCE_COLOURS), r,
                pad=S * 0.02)
        answer = str(n)
        question = _pick(rng, ("How many circles are in the image?", "Count the circles in the picture.",
                               "How many round shapes (circles) can you see?"))
        pool = [str(k) for k in (n + 1, n - 1, n + 2, n + 3) if k >= 0]
        perturb = _count_perturb
    elif kind == "largest_shape":
        kinds = _sample_distinct(rng, SHAPES, _randint(rng, 3, 4))
        big = int(rng.integers(len(kinds)))
        r_small = S * rng.uniform(0.06, 0.08)
        box = add(kinds[big], _pick(rng, _GLANCE_COLOURS), r_small * rng.uniform(2.0, 2.4))
        for k, shape in enumerate(kinds):
            if k != big:
                add(shape, _pick(rng, _GLANCE_COLOURS), r_small * rng.uniform(0.8, 1.0), pad=S * 0.02)
        answer = kinds[big]
        question = _pick(rng, ("Which shape is the largest in the image?",
                               "What kind of shape is the biggest one in the picture?",
                               "Name the largest shape in the image."))
        pool = [s for s in kinds if s != answer] + [s for s in SHAPES if s not in kinds]
    elif kind == "big_word":
        word = _pick(rng, _SIGN_WORDS)
        style = _style(rng)
        mask = _text_mask(word, S * rng.uniform(0.09, 0.14), style)
        if mask.shape[1] > W * 0.9:
            scale = W * 0.9 / mask.shape[1]
            mask = cv2.resize(mask, (int(mask.shape[1] * scale), max(1, int(mask.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        colour = _pick(rng, _GLANCE_COLOURS)
        box = _place_mask(img, mask, _jitter(rng, COLOURS[colour], 10), W // 2,
                          H * rng.uniform(0.35, 0.6), "mm")
        taken.append(box)
        caption = _pick(rng, [w for w in _SIGN_WORDS if w != word])
        _put_text(img, caption.lower(), S * 0.025, _style(rng), (60, 60, 60), W // 2, H * 0.9, "mm")
        answer = word
        question = _pick(rng, ("What word is written in large letters?",
                               "What does the big text in the image say?"))
        pool = [caption] + [w for w in _sample_distinct(rng, _SIGN_WORDS, 4) if w != word]
    else:   # left_right
        (s1, s2), (c1, c2) = _sample_distinct(rng, SHAPES, 2), _sample_distinct(rng, _GLANCE_COLOURS, 2)
        r = S * rng.uniform(0.08, 0.12)
        y1, y2 = H * rng.uniform(0.25, 0.75), H * rng.uniform(0.25, 0.75)
        xa, xb = W * rng.uniform(0.12, 0.35), W * rng.uniform(0.65, 0.88)
        first_left = rng.random() < 0.5
        (x1, x2) = (xa, xb) if first_left else (xb, xa)
        box = _draw_shape(img, s1, x1, y1, r, _jitter(rng, COLOURS[c1], 10))
        b2 = _draw_shape(img, s2, x2, y2, r, _jitter(rng, COLOURS[c2], 10))
        shapes = [{"shape": s1, "colour": c1, "box": box, "area": round(_shape_area(s1, r), 1)},
                  {"shape": s2, "colour": c2, "box": b2, "area": round(_shape_area(s2, r), 1)}]
        answer = "left" if first_left else "right"
        question = f"Is the {c1} {s1} to the left or to the right of the {c2} {s2}?"
        pool = ["right" if first_left else "left"]
    meta = {"shapes": shapes, "image_size": [W, H]}
    if box is not None:
        meta["box"] = [int(v) for v in box]
    return _Built("no_code", kind, question, answer, [_encode(img, "jpg")], meta, pool, perturb)


_BUILDERS: dict[str, Callable[[np.random.Generator], _Built]] = {
    "crop": _build_crop, "no_code": _build_no_code, "rotate": _build_rotate,
    "contrast": _build_contrast, "chart": _build_chart, "word_problem": _build_word_problem,
}
