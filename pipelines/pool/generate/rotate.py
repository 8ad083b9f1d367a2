"""rotate: a receipt, document or sign turned by 30-335 degrees counter-clockwise on a textured
background; `meta` holds the angle, the target's box in the upright document and the corners."""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.draw import (
    COLOURS,
    SIGN_COLOURS,
    body_line,
    encode,
    ink_on,
    jitter,
    place_mask,
    put_text,
    text_plate,
    text_style,
    union,
)
from pipelines.pool.generate.numbers import numeric_perturb
from pipelines.pool.generate.rand import pick, randint, sample_distinct
from pipelines.pool.generate.scene import add_noise, gradient, scene, to_u8
from pipelines.pool.generate.words import ITEMS, SIGN_WORDS, TITLES, code, perturb_text, store_name


def build_rotate(rng) -> Built:
    kind = pick(rng, ("receipt", "document", "sign"))
    doc, question, answer, target, tbox, pool, perturb = {
        "receipt": _receipt, "document": _document, "sign": _board}[kind](rng)
    angle = randint(rng, 30, 335)
    h, w = doc.shape[:2]
    # Positive angle = counter-clockwise (cv2.getRotationMatrix2D, like PIL's Image.rotate).
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = math.ceil(h * sin + w * cos), math.ceil(h * cos + w * sin)
    left, top, right, bottom = (int(v) for v in rng.integers(30, 180, 4))
    W, H = nw + left + right, nh + top + bottom
    M[0, 2] += nw / 2 - w / 2 + left
    M[1, 2] += nh / 2 - h / 2 + top
    canvas = scene(rng, W, H, kind=pick(rng, ("texture", "texture", "interior")), noise=0)
    canvas = cv2.warpAffine(doc, M, (W, H), dst=canvas, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)
    canvas = add_noise(rng, canvas, 3)
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) @ M.T
    meta = {"angle": angle, "target": target, "upright_size": [w, h],
            "upright_box": [int(v) for v in tbox],
            "corners": [[round(float(x), 1), round(float(y), 1)] for x, y in corners],
            "image_size": [W, H]}
    return Built("rotate", kind, question, answer, [encode(canvas, "jpg")], meta, list(pool), perturb)


def _receipt(rng):
    style = text_style(rng, slant=False)
    cap = rng.uniform(13, 18)
    w = randint(rng, 380, 520)
    n = randint(rng, 3, 7)
    items = sample_distinct(rng, ITEMS, n)
    cents = [randint(rng, 49, 2499) for _ in items]
    money = [f"{c // 100}.{c % 100:02d}" for c in cents]
    total = f"{sum(cents) // 100}.{sum(cents) % 100:02d}"
    store = store_name(rng)
    step = cap * 2.0
    h = int(step * (n + 8) + 2 * cap)
    doc = _paper(rng, w, h)
    ink = jitter(rng, (45, 45, 55), 15)
    mx, y = int(w * 0.08), cap * 1.2
    boxes = {"store": put_text(doc, store, cap * 1.35, style, ink, w // 2, y, "mt")}
    y += step * 1.4
    put_text(doc, f"2024-{randint(rng, 1, 12):02d}-{randint(rng, 1, 28):02d} "
                   f"{randint(rng, 8, 21):02d}:{randint(rng, 0, 59):02d}", cap * 0.8, style, ink, w // 2, y, "mt")
    y += step
    for item, m in zip(items, money, strict=True):
        boxes[item] = put_text(doc, m, cap, style, ink, w - mx, y, "rt")
        put_text(doc, item, cap, style, ink, mx, y, "lt")
        y += step
    cv2.line(doc, (mx, int(y)), (w - mx, int(y)), ink, 1)
    y += cap * 0.8
    boxes["total"] = put_text(doc, total, cap * 1.15, style, ink, w - mx, y, "rt")
    put_text(doc, "TOTAL", cap * 1.15, style, ink, mx, y, "lt")
    y += step * 1.3
    put_text(doc, "THANK YOU", cap * 0.9, style, ink, w // 2, y, "mt")
    which = pick(rng, ("total", "total", "store", "item"))
    if which == "total":
        q = pick(rng, ("What is the total amount on the receipt?", "What total does this receipt show?",
                       "How much was paid in total according to the receipt?"))
        return doc, q, total, "receipt total", boxes["total"], money, numeric_perturb("decimal:2")
    if which == "store":
        q = pick(rng, ("What is the name of the store on the receipt?", "Which shop issued this receipt?"))
        others = [store_name(rng) for _ in range(4)]
        return doc, q, store, "store name", boxes["store"], others, None
    k = int(rng.integers(n))
    q = f"How much did the {items[k].lower()} cost according to the receipt?"
    return (doc, q, money[k], f"price of {items[k]}", boxes[items[k]],
            [m for j, m in enumerate(money) if j != k] + [total], numeric_perturb("decimal:2"))


def _document(rng):
    style = text_style(rng, slant=False)
    w = randint(rng, 560, 800)
    h = int(w * rng.uniform(1.2, 1.4))
    doc = _paper(rng, w, h, (248, 248, 245))
    ink = jitter(rng, (30, 30, 40), 15)
    cap = max(12.0, w * rng.uniform(0.018, 0.024))
    title = pick(rng, TITLES)
    ref = code(rng, pick(rng, ("LL-DDDD", "DDDD-LL", "LLL-DDDDD", "DD/DDDD")))
    mx = int(w * 0.09)
    y = h * 0.07
    title_box = put_text(doc, title, w * rng.uniform(0.04, 0.05), style, ink, w // 2, y, "mt")
    y = title_box[3] + cap * 2
    ref_label = put_text(doc, "Ref. No.", cap, style, ink, mx, y, "lt")
    ref_box = put_text(doc, ref, cap, style, ink, ref_label[2] + cap, y, "lt")
    y += cap * 2.2
    put_text(doc, f"Date: {randint(rng, 1, 28)}/{randint(rng, 1, 12)}/2024", cap, style, ink, mx, y, "lt")
    y += cap * 3
    while y < h * 0.9:
        place_mask(doc, body_line(rng, cap * 0.9, style, w - 2 * mx), ink, mx, y)
        y += cap * 2
    if rng.random() < 0.5:
        q = pick(rng, ("What is the title of the document?", "What heading is printed at the top of the page?"))
        return doc, q, title, "document title", title_box, [t for t in TITLES if t != title][:6], None
    q = pick(rng, ("What is the reference number on the document?", "Which reference number is printed on this page?"))
    return doc, q, ref, "reference number", ref_box, [], perturb_text


def _board(rng):
    style = text_style(rng)
    lines = [pick(rng, SIGN_WORDS)]
    if rng.random() < 0.5:
        lines.append(pick(rng, ("AHEAD", "ONLY", "HERE", "TODAY", f"{randint(rng, 50, 900)} M",
                                "NEXT LEFT", "OPEN 24H", f"FLOOR {randint(rng, 1, 9)}")))
    colour = pick(rng, SIGN_COLOURS)
    rgb = jitter(rng, COLOURS[colour], 10)
    w_target = randint(rng, 500, 900)
    cap = w_target / (max(len(t) for t in lines) * 0.75 + 2)
    cap = min(cap, 110.0)
    patch, boxes = text_plate(lines, [cap] * len(lines), style, rgb, ink_on(rgb), jitter(rng, (50, 50, 50), 30))
    answer = " ".join(lines)
    q = pick(rng, ("What does the sign say?", "What text is written on the sign?",
                   "Read the sign in the image."))
    others = [w for w in SIGN_WORDS if w != lines[0]]
    pool = [" ".join([o, *lines[1:]]) for o in sample_distinct(rng, others, 4)]
    return patch, q, answer, f"{colour} sign", union(boxes), pool, None


def _paper(rng, w, h, base=(246, 244, 236)) -> np.ndarray:
    c = jitter(rng, base, 8)
    return to_u8(gradient(rng, h, w, c, jitter(rng, c, 10)))
