"""crop: a small detail (sign, price tag, licence plate, numbered badge, a few shapes to count, a
shape's colour) in a large high-resolution scene, among distractor signs and loose text; the
detail is at `meta["box"]` and covers at most 5 % of the image."""

from __future__ import annotations

import math

import cv2

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.draw import (
    COLOURS,
    OBJECT_COLOURS,
    SIGN_COLOURS,
    contrasting,
    draw_shape,
    encode,
    ink_on,
    jitter,
    local_mean,
    paste,
    place_mask,
    spot,
    text_mask,
    text_plate,
    text_style,
    union,
)
from pipelines.pool.generate.numbers import count_perturb
from pipelines.pool.generate.rand import pick, randint, sample_distinct
from pipelines.pool.generate.scene import scene
from pipelines.pool.generate.words import ITEMS, SIGN_WORDS, STORE_A, code, perturb_text, store_name

_CROP_KINDS = ("sign", "sign", "plate", "price", "badge", "count", "attribute")
_ATTR_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white")
_PLACE_PREFIX = ("GATE", "PLATFORM", "ROOM", "LEVEL", "BAY", "DOCK", "ZONE", "AISLE", "EXIT",
                 "UNIT", "BLOCK", "HALL")


def build_crop(rng) -> Built:
    L = randint(rng, 1600, 3000)
    aspect = rng.uniform(1.2, 1.8)
    W, H = (L, int(L / aspect)) if rng.random() < 0.75 else (int(L / aspect), L)
    img = scene(rng, W, H)
    cap = max(12.0, L * rng.uniform(0.0045, 0.0075))   # capital height: needs zooming
    margin = int(0.03 * min(W, H))
    kind = pick(rng, _CROP_KINDS)
    taken: list[list[int]] = []
    texts: list[str] = []            # multiple-choice distractors (texts drawn elsewhere first)
    sign_exclude: set[str] = set()   # sign colours the distractors must not use
    perturb = None

    if kind in ("sign", "price"):
        style = text_style(rng)
        if kind == "sign":
            lines, caps = [_sign_text(rng)], [cap]
        else:
            item = pick(rng, ITEMS)
            lines, caps = [item, _price(rng)], [max(10.0, cap * 0.75), cap]
        probe, _ = text_plate(lines, caps, style, (0, 0, 0), (255, 255, 255), None)
        x, y = spot(rng, W, H, probe.shape[1], probe.shape[0], taken, margin=margin)
        names = SIGN_COLOURS if kind == "sign" else ("white", "yellow", "orange", "pink", "cyan")
        colour = contrasting(rng, names, local_mean(img, (x, y, x + probe.shape[1], y + probe.shape[0])))
        rgb = jitter(rng, COLOURS[colour], 10)
        patch, _ = text_plate(lines, caps, style, rgb, ink_on(rgb), jitter(rng, (60, 60, 60), 40))
        img[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        box = [x, y, x + patch.shape[1], y + patch.shape[0]]
        if kind == "sign":
            sign_exclude.add(colour)
            answer = lines[0]
            target = f"small {colour} sign reading {answer!r}"
            question = pick(rng, (
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
            question = pick(rng, (
                f"What price is shown on the small tag for {item}?",
                f"How much do the {item} cost according to the small price tag?",
                f"According to its price tag, what is the price of the {item}?",
                f"What is the price written on the {item} tag?",
            ))
            for other in sample_distinct(rng, [t for t in ITEMS if t != lines[0]], randint(rng, 2, 5)):
                price = _price(rng)
                orgb = jitter(rng, COLOURS[pick(rng, ("white", "yellow", "orange", "pink", "cyan"))], 10)
                tag, _ = text_plate([other, price], caps, text_style(rng), orgb, ink_on(orgb), (60, 60, 60))
                paste(rng, img, tag, taken + [box], W, H, margin, taken)
                texts.insert(0, price)
        taken.append(box)
    elif kind == "plate":
        style = text_style(rng, slant=False)
        answer = code(rng, pick(rng, ("LL DD LLL", "LLL DDDD", "DLLL DDD", "LL-DDDD", "LLL-DDD")))
        plate_rgb = pick(rng, ((240, 240, 235), (245, 200, 35)))
        patch, _ = text_plate([answer], [cap], style, plate_rgb, (20, 20, 25), (30, 30, 30), pad=(0.4, 0.35))
        ph, pw = patch.shape[:2]
        cw = int(pw * rng.uniform(3.2, 4.2))
        ch = int(cw * rng.uniform(0.45, 0.6))
        x, y = spot(rng, W, H, cw, ch, taken, margin=margin)
        body = jitter(rng, COLOURS[pick(rng, ("red", "blue", "white", "black", "grey", "green"))], 15)
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
        question = pick(rng, (
            "What is the licence plate number of the car?",
            "Read the registration number on the car's number plate.",
            "What is written on the car's licence plate?",
            "What registration number does the car in the image have?",
        ))
        perturb = perturb_text
    elif kind == "badge":
        style = text_style(rng, slant=False)
        r = cap * rng.uniform(1.2, 1.6)
        number = str(randint(rng, 2, 999))
        side = int(2 * r + 4)
        x, y = spot(rng, W, H, side, side, taken, margin=margin)
        colour = contrasting(rng, OBJECT_COLOURS, local_mean(img, (x, y, x + side, y + side)))
        box = _badge(img, x + side / 2, y + side / 2, r, colour, number, style, rng)
        taken.append(box)
        answer = number
        target = f"small {colour} circle with the number {number}"
        question = pick(rng, (
            f"What number is written on the small {colour} circle?",
            f"Which number appears inside the little {colour} circle?",
            f"What is the number on the {colour} round badge?",
        ))
        for other in sample_distinct(rng, [c for c in OBJECT_COLOURS if c != colour], randint(rng, 2, 5)):
            pos = spot(rng, W, H, side, side, taken, pad=int(cap), margin=margin)
            if pos:
                n2 = str(randint(rng, 2, 999))
                taken.append(_badge(img, pos[0] + side / 2, pos[1] + side / 2, r, other, n2, text_style(rng, False), rng))
                texts.append(n2)
        perturb = perturb_text
    elif kind == "count":
        shape = pick(rng, ("star", "triangle", "diamond", "hexagon"))
        n = randint(rng, 2, 7)
        rs = cap * rng.uniform(0.6, 0.9)
        cell = 2.7 * rs
        cols = math.ceil(math.sqrt(n * 1.6))
        rows = math.ceil(n * 1.6 / cols)
        cw, ch = int(cols * cell) + 4, int(rows * cell) + 4
        x, y = spot(rng, W, H, cw, ch, taken, margin=margin)
        colour = contrasting(rng, OBJECT_COLOURS, local_mean(img, (x, y, x + cw, y + ch)))
        box = union(_cluster(rng, img, x, y, cols, rows, cell, rs, n, shape, colour))
        taken.append([x, y, x + cw, y + ch])
        other_colour = pick(rng, [c for c in OBJECT_COLOURS if c != colour])
        other_shape = pick(rng, [s for s in ("star", "triangle", "diamond", "hexagon") if s != shape])
        for s2, c2 in ((shape, other_colour), (other_shape, colour)):
            n2 = pick(rng, [k for k in range(2, 8) if k != n])
            pos = spot(rng, W, H, cw, ch, taken, pad=int(2 * cap), margin=margin)
            if pos:
                _cluster(rng, img, pos[0], pos[1], cols, rows, cell, rs, n2, s2, c2)
                taken.append([pos[0], pos[1], pos[0] + cw, pos[1] + ch])
        answer = str(n)
        target = f"{n} small {colour} {shape}s"
        question = pick(rng, (
            f"How many {colour} {shape}s are there in the image?",
            f"Count the small {colour} {shape}s in the picture.",
            f"How many small {colour} {shape}s can be seen?",
            f"What is the number of {colour} {shape}s in this image?",
        ))
        texts = [str(k) for k in (n - 1, n + 1, n + 2, n - 2) if k >= 1]
        perturb = count_perturb
    else:   # attribute
        shape = pick(rng, ("star", "triangle", "diamond", "hexagon"))
        rs = cap * rng.uniform(0.9, 1.4)
        side = int(2.4 * rs) + 4
        x, y = spot(rng, W, H, side, side, taken, margin=margin)
        colour = contrasting(rng, _ATTR_COLOURS, local_mean(img, (x, y, x + side, y + side)), 110)
        box = draw_shape(img, shape, x + side / 2, y + side / 2, rs, jitter(rng, COLOURS[colour], 8),
                         rng.uniform(-0.15, 0.15))
        taken.append([x, y, x + side, y + side])
        for s2 in sample_distinct(rng, [s for s in ("star", "triangle", "diamond", "hexagon", "circle")
                                        if s != shape], randint(rng, 2, 4)):
            pos = spot(rng, W, H, side, side, taken, pad=int(2 * cap), margin=margin)
            if pos:
                c2 = pick(rng, _ATTR_COLOURS)
                draw_shape(img, s2, pos[0] + side / 2, pos[1] + side / 2, rs, COLOURS[c2])
                taken.append([pos[0], pos[1], pos[0] + side, pos[1] + side])
        answer = colour
        target = f"small {colour} {shape}"
        question = pick(rng, (
            f"What colour is the small {shape} in the image?",
            f"What is the colour of the little {shape}?",
            f"Which colour does the small {shape} have?",
        ))
        texts = [c for c in _ATTR_COLOURS if c != colour]
        texts = [texts[j] for j in rng.permutation(len(texts))]

    # Distractors: other signs (never the target's colour), big readable banners, loose text.
    for _ in range(randint(rng, 3, 7)):
        words = _sign_text(rng)
        if words == answer:
            continue
        c = pick(rng, [n for n in SIGN_COLOURS if n not in sign_exclude])
        rgb = jitter(rng, COLOURS[c], 10)
        patch, _ = text_plate([words], [cap * rng.uniform(0.9, 1.2)], text_style(rng), rgb, ink_on(rgb),
                              jitter(rng, (60, 60, 60), 40))
        if paste(rng, img, patch, taken, W, H, margin, taken) and kind == "sign":
            texts.insert(0, words)
    for _ in range(randint(rng, 1, 2)):
        words = pick(rng, (store_name(rng), pick(rng, SIGN_WORDS), f"{pick(rng, STORE_A)} HOTEL"))
        rgb = jitter(rng, COLOURS[pick(rng, SIGN_COLOURS)], 10)
        patch, _ = text_plate([words], [cap * rng.uniform(2.5, 4.0)], text_style(rng), rgb, ink_on(rgb), None)
        paste(rng, img, patch, taken, W, H, margin, taken)
    for _ in range(randint(rng, 2, 5)):
        words = pick(rng, (pick(rng, SIGN_WORDS), str(randint(rng, 1, 250)), f"EST. {randint(rng, 1890, 2020)}"))
        mask = text_mask(words, cap * rng.uniform(0.8, 1.5), text_style(rng))
        pos = spot(rng, W, H, mask.shape[1], mask.shape[0], taken, pad=int(cap), margin=margin)
        if pos:
            b = [pos[0], pos[1], pos[0] + mask.shape[1], pos[1] + mask.shape[0]]
            place_mask(img, mask, ink_on(local_mean(img, b)), pos[0], pos[1])
            taken.append(b)

    area = (box[2] - box[0]) * (box[3] - box[1])
    assert 0 < area <= 0.05 * W * H, (kind, box, W, H)
    meta = {"box": [int(v) for v in box], "target": target, "image_size": [W, H],
            "area_fraction": round(area / (W * H), 6)}
    return Built("crop", kind, question, answer, [encode(img, "jpg")], meta, texts, perturb)


def _sign_text(rng) -> str:
    r = rng.random()
    if r < 0.5:
        return pick(rng, SIGN_WORDS)
    if r < 0.8:
        return f"{pick(rng, _PLACE_PREFIX)} {code(rng, pick(rng, ('D', 'DD', 'LD', 'DDD', 'LDD')))}"
    return f"{pick(rng, SIGN_WORDS)} {randint(rng, 2, 99)}"


def _price(rng, lo=49, hi=4999) -> str:
    cents = randint(rng, lo, hi)
    return f"${cents // 100}.{cents % 100:02d}"


def _badge(img, cx, cy, r, colour, number, style, rng) -> list[int]:
    rgb = jitter(rng, COLOURS[colour], 8)
    box = draw_shape(img, "circle", cx, cy, r, rgb)
    mask = text_mask(number, r * 0.75, style)
    if mask.shape[1] > 1.5 * r:    # keep the number inside the circle
        scale = 1.5 * r / mask.shape[1]
        mask = cv2.resize(mask, (max(1, int(mask.shape[1] * scale)), max(1, int(mask.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    place_mask(img, mask, ink_on(rgb), cx, cy, "mm")
    return box


def _cluster(rng, img, x, y, cols, rows, cell, rs, n, shape, colour) -> list[list[int]]:
    boxes = []
    for k in rng.permutation(cols * rows)[:n]:
        r, c = divmod(int(k), cols)
        cx = x + 2 + (c + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        cy = y + 2 + (r + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        boxes.append(draw_shape(img, shape, cx, cy, rs, jitter(rng, COLOURS[colour], 8),
                                rng.uniform(-0.2, 0.2)))
    return boxes
