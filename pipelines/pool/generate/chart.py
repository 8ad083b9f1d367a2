"""computation with an image: a bar chart (vertical or horizontal) or a table (shopping list,
class scores) whose printed numbers feed an exact expression; `meta` holds the values, the
expression and the answer format (see `numbers`)."""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.draw import (
    COLOURS,
    OBJECT_COLOURS,
    encode,
    jitter,
    place_mask,
    put_text,
    text_mask,
    text_style,
)
from pipelines.pool.generate.numbers import finish_computation, numeric_perturb
from pipelines.pool.generate.rand import pick, randint, sample_distinct
from pipelines.pool.generate.words import ITEMS, NAMES

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
_SUBJECTS = ("Math", "Science", "English", "History", "Art", "Music")


def build_chart(rng) -> Built:
    for _ in range(20):
        img, q, values, expr, fmt, extra = (_bar_chart if rng.random() < 0.6 else _table)(rng)
        answer = finish_computation(values, expr, fmt)
        if answer is not None:
            break
    assert answer is not None
    meta = {"values": values, "expression": expr, "answer_format": fmt,
            "image_size": [int(img.shape[1]), int(img.shape[0])], **extra}
    return Built("computation", extra["chart"] if extra["chart"] == "table" else "bar_chart", q, answer,
                 [encode(img, "png")], meta, [], numeric_perturb(fmt))


def _bar_chart(rng):
    cat = pick(rng, tuple(_CATEGORY_SETS))
    n = randint(rng, 3, 7)
    pool = _CATEGORY_SETS[cat]
    if cat == "month":
        s = randint(rng, 0, len(pool) - n)
        labels = list(pool[s:s + n])
    else:
        labels = sample_distinct(rng, pool, n)
    hi = 999 if rng.random() < 0.3 else 99
    nums = [int(v) for v in rng.choice(np.arange(5, hi + 1), size=n, replace=False)]
    idents = [_ident(t) for t in labels]
    values = dict(zip(idents, nums, strict=True))
    metric = pick(rng, _METRICS[cat])
    W, H = randint(rng, 720, 1100), randint(rng, 520, 800)
    bg = jitter(rng, (250, 250, 248), 5)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = bg
    style = text_style(rng, slant=False)
    ink = (40, 40, 45)
    cap = rng.uniform(12, 16)
    put_text(img, metric, cap * 1.4, style, ink, W // 2, int(H * 0.04), "mt")
    horizontal = rng.random() < 0.35
    left, right, top, bottom = int(W * (0.2 if horizontal else 0.1)), int(W * 0.05), int(H * 0.15), int(H * 0.13)
    px1, py1, px2, py2 = left, top, W - right, H - bottom
    step = _nice_step(max(nums))
    vmax = math.ceil(max(nums) * 1.1 / step) * step
    same = rng.random() < 0.5
    base_colour = jitter(rng, COLOURS[pick(rng, OBJECT_COLOURS)], 15)
    grid = (215, 215, 215)
    for t in range(0, vmax + 1, step):
        if horizontal:
            gx = px1 + (px2 - px1) * t / vmax
            cv2.line(img, (int(gx), py1), (int(gx), py2), grid, 1)
            put_text(img, str(t), cap * 0.8, style, ink, gx, py2 + cap * 0.6, "mt")
        else:
            gy = py2 - (py2 - py1) * t / vmax
            cv2.line(img, (px1, int(gy)), (px2, int(gy)), grid, 1)
            put_text(img, str(t), cap * 0.8, style, ink, px1 - cap * 0.6, gy, "rm")
    cv2.line(img, (px1, py1), (px1, py2), ink, 2)
    cv2.line(img, (px1, py2), (px2, py2), ink, 2)
    slot = ((py2 - py1) if horizontal else (px2 - px1)) / n
    label_cap = min(cap, slot * 0.9 / (0.62 * max(len(t) for t in labels))) if not horizontal else cap
    for k, (label, v) in enumerate(zip(labels, nums, strict=True)):
        colour = base_colour if same else jitter(rng, COLOURS[OBJECT_COLOURS[k % len(OBJECT_COLOURS)]], 10)
        if horizontal:
            y1 = int(py1 + slot * (k + 0.2))
            y2 = int(py1 + slot * (k + 0.8))
            x2 = int(px1 + (px2 - px1) * v / vmax)
            cv2.rectangle(img, (px1 + 1, y1), (x2, y2), colour, -1)
            put_text(img, str(v), cap * 0.9, style, ink, x2 + cap * 0.5, (y1 + y2) / 2, "lm")
            put_text(img, label, cap, style, ink, px1 - cap * 0.6, (y1 + y2) / 2, "rm")
        else:
            x1 = int(px1 + slot * (k + 0.2))
            x2 = int(px1 + slot * (k + 0.8))
            y1 = int(py2 - (py2 - py1) * v / vmax)
            cv2.rectangle(img, (x1, y1), (x2, py2 - 1), colour, -1)
            put_text(img, str(v), cap * 0.9, style, ink, (x1 + x2) / 2, y1 - cap * 0.5, "mb")
            put_text(img, label, max(9.0, label_cap), style, ink, (x1 + x2) / 2, py2 + cap * 0.7, "mt")
    what = pick(rng, ("sum2", "diff", "mean", "pct", "sum_all"))
    if what == "sum2":
        a, b = sample_distinct(rng, range(n), 2)
        expr, fmt = f"{idents[a]} + {idents[b]}", "integer"
        q = pick(rng, (f"What is the sum of the values for {labels[a]} and {labels[b]}?",
                       f"What do {labels[a]} and {labels[b]} add up to in this chart?"))
    elif what == "diff":
        hi_k, lo_k = int(np.argmax(nums)), int(np.argmin(nums))
        expr, fmt = f"{idents[hi_k]} - {idents[lo_k]}", "integer"
        q = pick(rng, ("What is the difference between the highest and the lowest value in the chart?",
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
        q = pick(rng, ("What is the total of all the values shown in the chart?",
                       "What is the sum of all the bars?"))
    meta = {"chart": "bar", "orientation": "horizontal" if horizontal else "vertical",
            "labels": dict(zip(idents, labels, strict=True))}
    return img, q, values, expr, fmt, meta


def _table(rng):
    style = text_style(rng, slant=False)
    cap = rng.uniform(13, 17)
    ink = (30, 30, 35)
    if rng.random() < 0.5:
        n = randint(rng, 3, 6)
        items = [t.capitalize() for t in sample_distinct(rng, ITEMS, n)]
        qty = [randint(rng, 1, 12) for _ in items]
        cents = [randint(rng, 50, 1999) for _ in items]
        header = ["Item", "Qty", "Unit price"]
        rows = [[t, str(q), f"{c // 100}.{c % 100:02d}"] for t, q, c in zip(items, qty, cents, strict=True)]
        values = {}
        for t, q, c in zip(items, qty, cents, strict=True):
            values[f"{_ident(t)}_qty"] = q
            values[f"{_ident(t)}_price"] = float(Fraction(c, 100))
        if rng.random() < 0.6:
            expr = " + ".join(f"{_ident(t)}_qty * {_ident(t)}_price" for t in items)
            q = pick(rng, ("What is the total cost of all the items in the table (quantity times unit price)? "
                           "Give the answer with two decimal places.",
                           "Using the table, how much do all the items cost together? Answer with two decimals."))
        else:
            a, b = sample_distinct(rng, range(n), 2)
            if qty[a] * cents[a] < qty[b] * cents[b]:
                a, b = b, a
            ia, ib = _ident(items[a]), _ident(items[b])
            expr = f"{ia}_qty * {ia}_price - {ib}_qty * {ib}_price"
            q = (f"How much more is spent on {items[a].lower()} than on {items[b].lower()} "
                 "(quantity times unit price)? Give the answer with two decimal places.")
        fmt = "decimal:2"
    else:
        n = randint(rng, 3, 6)
        names = sample_distinct(rng, NAMES, n)
        subjects = sample_distinct(rng, _SUBJECTS, randint(rng, 3, 4))
        scores = [[randint(rng, 40, 100) for _ in subjects] for _ in names]
        header = ["Student", *subjects]
        rows = [[nm, *(str(s) for s in sc)] for nm, sc in zip(names, scores, strict=True)]
        values = {f"{_ident(nm)}_{_ident(sb)}": scores[i][j]
                  for i, nm in enumerate(names) for j, sb in enumerate(subjects)}
        what = pick(rng, ("avg", "total", "range"))
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
    masks = [[text_mask(c, cap, style) for c in r] for r in [header, *rows]]
    ncol = len(header)
    pad = int(cap * 0.9)
    colw = [max(masks[r][c].shape[1] for r in range(len(masks))) + 2 * pad for c in range(ncol)]
    rowh = int(cap * 2.4)
    mx, my = randint(rng, 30, 90), randint(rng, 30, 90)
    W, H = sum(colw) + 2 * mx, rowh * len(masks) + 2 * my
    img = np.empty((H, W, 3), np.uint8)
    img[:] = jitter(rng, (252, 252, 250), 3)
    head_rgb = jitter(rng, COLOURS[pick(rng, ("blue", "green", "grey", "purple"))], 10)
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
            place_mask(img, masks[r][c], ink, tx, y + rowh / 2, anchor)
            x += colw[c]
    line = (120, 120, 120)
    for r in range(len(masks) + 1):
        cv2.line(img, (mx, my + r * rowh), (W - mx, my + r * rowh), line, 1)
    x = mx
    for c in range(ncol + 1):
        cv2.line(img, (x, my), (x, H - my), line, 1)
        x += colw[c] if c < ncol else 0
    return img, q, values, expr, fmt, {"chart": "table", "header": header}


def _ident(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower())


def _nice_step(top: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500):
        if top / step <= 8:
            return step
    return 1000
