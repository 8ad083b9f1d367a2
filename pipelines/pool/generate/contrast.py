"""contrast: faint text that needs enhancement (a faded document, a dark photo of a sign, a
low-contrast serial-number label); `meta` holds the text's box, its RMS contrast and `delta`, the
ink's distance from its ground in grey levels."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.draw import (
    body_line,
    encode,
    jitter,
    paste,
    place_mask,
    put_text,
    spot,
    text_plate,
    text_style,
)
from pipelines.pool.generate.rand import pick, randint
from pipelines.pool.generate.scene import add_noise, backdrop, gradient, smooth_field, to_u8
from pipelines.pool.generate.words import SIGN_WORDS, TITLES, code, perturb_text


def build_contrast(rng) -> Built:
    kind = pick(rng, ("faded_document", "dark_photo", "grey_panel"))
    delta = randint(rng, 12, 24)
    style = text_style(rng, slant=False)
    if kind == "faded_document":
        W = randint(rng, 700, 1100)
        H = int(W * rng.uniform(1.2, 1.4))
        paper = np.array(jitter(rng, (205, 200, 185), 25), np.float32)
        img = to_u8(gradient(rng, H, W, paper, paper + rng.uniform(-12, 12, 3)) + smooth_field(rng, H, W, 5))
        ink = tuple(int(c) for c in np.clip(paper - delta, 0, 255))
        cap = max(12.0, W * rng.uniform(0.02, 0.026))
        mx = int(W * 0.1)
        put_text(img, pick(rng, TITLES), W * 0.04, style, ink, W // 2, H * 0.07, "mt")
        y, answer, box = H * 0.18, "", None
        ref_row = randint(rng, 1, 5)
        row = 0
        while y < H * 0.9:
            if row == ref_row:
                answer = code(rng, pick(rng, ("LL-DDDD", "DDDD-LL", "LLL-DDDDD")))
                label = put_text(img, "Ref. No.", cap, style, ink, mx, y, "lt")
                box = put_text(img, answer, cap, style, ink, label[2] + cap, y, "lt")
            else:
                place_mask(img, body_line(rng, cap * 0.9, style, W - 2 * mx), ink, mx, y)
            y += cap * 2.1
            row += 1
        img = add_noise(rng, img, 3)
        question = pick(rng, ("What is the reference number on this faded document?",
                              "The print on this page is very faint. What reference number does it give?",
                              "Which reference number is written on the faded page?"))
        target = f"faint reference number {answer}"
        pool: list[str] = []
    elif kind == "dark_photo":
        W = randint(rng, 900, 1500)
        H = int(W * rng.uniform(0.6, 0.8))
        low = backdrop(rng, W // 3, H // 3, pick(rng, ("street", "interior")))
        low = to_u8(low.astype(np.float32) * rng.uniform(0.08, 0.16))
        img = cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)
        answer = pick(rng, SIGN_WORDS)
        plate = np.array(jitter(rng, (40, 38, 45), 12), np.float32)
        ink = tuple(int(c) for c in plate + delta)
        cap = W * rng.uniform(0.04, 0.06)
        patch, boxes = text_plate([answer], [cap], style, tuple(int(c) for c in plate), ink, None)
        taken: list[list[int]] = []
        x, y = spot(rng, W, H, patch.shape[1], patch.shape[0], taken, margin=int(W * 0.04))
        img[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        box = [x + boxes[0][0], y + boxes[0][1], x + boxes[0][2], y + boxes[0][3]]
        taken.append([x, y, x + patch.shape[1], y + patch.shape[0]])
        pool = []
        for _ in range(randint(rng, 1, 2)):
            label = pick(rng, [w for w in SIGN_WORDS if w != answer])
            small, _ = text_plate([label], [cap * 0.45], text_style(rng, False), tuple(int(c) for c in plate), ink, None)
            if paste(rng, img, small, taken, W, H, int(W * 0.04), taken):
                pool.append(label)
        img = add_noise(rng, img, 3)
        question = pick(rng, ("What is written on the large sign in this dark photo?",
                              "This photo is very dark. What does the big sign say?",
                              "Read the text on the largest sign in this dim image."))
        target = f"dark sign reading {answer!r}"
    else:   # grey_panel
        W = randint(rng, 800, 1300)
        H = int(W * rng.uniform(0.5, 0.8))
        grey = float(rng.uniform(95, 170))
        base = np.array([grey, grey, grey], np.float32) + rng.uniform(-6, 6, 3)
        img = to_u8(gradient(rng, H, W, base, base + rng.uniform(-10, 10, 3)) + smooth_field(rng, H, W, 4))
        sign = 1 if rng.random() < 0.5 else -1
        ink = tuple(int(c) for c in np.clip(base + sign * delta, 0, 255))
        cap = W * rng.uniform(0.03, 0.045)
        model = code(rng, "LLL-DDD")
        answer = code(rng, pick(rng, ("LDD-DDDD", "DDLL-DDDD", "LLDDDDDD")))
        mx, y = int(W * 0.1), H * 0.15
        put_text(img, f"MODEL {model}", cap, style, ink, mx, y, "lt")
        y += cap * 2.4
        label = put_text(img, "S/N", cap, style, ink, mx, y, "lt")
        box = put_text(img, answer, cap, style, ink, label[2] + cap, y, "lt")
        y += cap * 2.4
        put_text(img, f"{pick(rng, ('230', '120', '24', '12'))}V  {randint(rng, 1, 20)}A  50Hz", cap * 0.8, style, ink, mx, y, "lt")
        y += cap * 2.2
        put_text(img, f"MADE IN {pick(rng, ('EU', 'JAPAN', 'CANADA', 'KOREA', 'MEXICO'))}", cap * 0.8, style, ink, mx, y, "lt")
        img = add_noise(rng, img, 2)
        question = pick(rng, ("What is the serial number printed on the panel?",
                              "The label is hard to read. What serial number (S/N) does it show?",
                              "Which serial number is written on this grey label?"))
        target = f"low-contrast serial number {answer}"
        pool = [model]
    meta = {"box": [int(v) for v in box], "target": target, "contrast": _rms_contrast(img, box),
            "delta": delta, "image_size": [W, H]}
    return Built("contrast", kind, question, answer, [encode(img, "jpg")], meta, pool, perturb_text)


def _rms_contrast(img, box) -> float:
    x1, y1, x2, y2 = box
    grey = img[y1:y2, x1:x2].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return round(float(grey.std() / 255.0), 4)
