"""no_code: questions a glance answers (the dominant colour, how many circles, the largest shape,
a big word, left or right) on a light, plain background; `meta["shapes"]` lists what was drawn."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.draw import (
    COLOURS,
    draw_shape,
    encode,
    jitter,
    place_mask,
    put_text,
    shape_area,
    spot,
    text_mask,
    text_style,
)
from pipelines.pool.generate.numbers import count_perturb
from pipelines.pool.generate.rand import pick, randint, sample_distinct
from pipelines.pool.generate.scene import add_noise, backdrop, to_u8
from pipelines.pool.generate.words import SIGN_WORDS

_GLANCE_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
                   "cyan")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "pentagon", "hexagon")


def build_no_code(rng) -> Built:
    L = randint(rng, 640, 1024)
    aspect = rng.uniform(1.0, 1.6)
    W, H = (L, int(L / aspect)) if rng.random() < 0.7 else (int(L / aspect), L)
    S = min(W, H)
    low = backdrop(rng, W // 2, H // 2, pick(rng, ("plain", "plain", "texture")))
    low = to_u8(low.astype(np.float32) * 0.45 + 140)      # light and desaturated: shapes stand out
    img = add_noise(rng, cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR), 3)
    kind = pick(rng, ("dominant_colour", "count_circles", "largest_shape", "big_word", "left_right"))
    shapes: list[dict] = []
    taken: list[list[int]] = []

    def add(shape, colour, r, pad=0.0, rot=None):
        side = int(2.5 * r) + 4
        pos = spot(rng, W, H, side, side, taken, pad=int(pad), margin=int(S * 0.02))
        if pos is None:
            return None
        box = draw_shape(img, shape, pos[0] + side / 2, pos[1] + side / 2, r,
                         jitter(rng, COLOURS[colour], 10),
                         rng.uniform(-0.15, 0.15) if rot is None else rot)
        taken.append([pos[0], pos[1], pos[0] + side, pos[1] + side])
        shapes.append({"shape": shape, "colour": colour, "box": box,
                       "area": round(shape_area(shape, r), 1)})
        return box

    pool: list[str] = []
    perturb = None
    box = None
    if kind == "dominant_colour":
        shape = pick(rng, SHAPES)
        colour = pick(rng, _GLANCE_COLOURS)
        box = add(shape, colour, S * rng.uniform(0.22, 0.32))
        for _ in range(randint(rng, 2, 4)):
            add(pick(rng, SHAPES), pick(rng, [c for c in _GLANCE_COLOURS if c != colour]),
                S * rng.uniform(0.04, 0.07), pad=S * 0.02)
        answer = colour
        question = pick(rng, (f"What colour is the large {shape}?",
                              f"What is the colour of the big {shape} in the picture?",
                              "What colour is the biggest shape in the image?"))
        pool = [c for c in _GLANCE_COLOURS if c != colour]
        pool = [pool[j] for j in rng.permutation(len(pool))]
    elif kind == "count_circles":
        n = randint(rng, 1, 6)
        r = S * rng.uniform(0.06, 0.09)
        for _ in range(n):
            if add("circle", pick(rng, _GLANCE_COLOURS), r, pad=S * 0.02) is None:
                break
        n = sum(1 for s in shapes if s["shape"] == "circle")
        for _ in range(randint(rng, 1, 4)):
            add(pick(rng, ("square", "triangle", "star", "hexagon")), pick(rng, _GLANCE_COLOURS), r,
                pad=S * 0.02)
        answer = str(n)
        question = pick(rng, ("How many circles are in the image?", "Count the circles in the picture.",
                              "How many round shapes (circles) can you see?"))
        pool = [str(k) for k in (n + 1, n - 1, n + 2, n + 3) if k >= 0]
        perturb = count_perturb
    elif kind == "largest_shape":
        kinds = sample_distinct(rng, SHAPES, randint(rng, 3, 4))
        big = int(rng.integers(len(kinds)))
        r_small = S * rng.uniform(0.06, 0.08)
        box = add(kinds[big], pick(rng, _GLANCE_COLOURS), r_small * rng.uniform(2.0, 2.4))
        for k, shape in enumerate(kinds):
            if k != big:
                add(shape, pick(rng, _GLANCE_COLOURS), r_small * rng.uniform(0.8, 1.0), pad=S * 0.02)
        answer = kinds[big]
        question = pick(rng, ("Which shape is the largest in the image?",
                              "What kind of shape is the biggest one in the picture?",
                              "Name the largest shape in the image."))
        pool = [s for s in kinds if s != answer] + [s for s in SHAPES if s not in kinds]
    elif kind == "big_word":
        word = pick(rng, SIGN_WORDS)
        style = text_style(rng)
        mask = text_mask(word, S * rng.uniform(0.09, 0.14), style)
        if mask.shape[1] > W * 0.9:
            scale = W * 0.9 / mask.shape[1]
            mask = cv2.resize(mask, (int(mask.shape[1] * scale), max(1, int(mask.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        colour = pick(rng, _GLANCE_COLOURS)
        box = place_mask(img, mask, jitter(rng, COLOURS[colour], 10), W // 2,
                         H * rng.uniform(0.35, 0.6), "mm")
        taken.append(box)
        caption = pick(rng, [w for w in SIGN_WORDS if w != word])
        put_text(img, caption.lower(), S * 0.025, text_style(rng), (60, 60, 60), W // 2, H * 0.9, "mm")
        answer = word
        question = pick(rng, ("What word is written in large letters?",
                              "What does the big text in the image say?"))
        pool = [caption] + [w for w in sample_distinct(rng, SIGN_WORDS, 4) if w != word]
    else:   # left_right
        (s1, s2), (c1, c2) = sample_distinct(rng, SHAPES, 2), sample_distinct(rng, _GLANCE_COLOURS, 2)
        r = S * rng.uniform(0.08, 0.12)
        y1, y2 = H * rng.uniform(0.25, 0.75), H * rng.uniform(0.25, 0.75)
        xa, xb = W * rng.uniform(0.12, 0.35), W * rng.uniform(0.65, 0.88)
        first_left = rng.random() < 0.5
        (x1, x2) = (xa, xb) if first_left else (xb, xa)
        box = draw_shape(img, s1, x1, y1, r, jitter(rng, COLOURS[c1], 10))
        b2 = draw_shape(img, s2, x2, y2, r, jitter(rng, COLOURS[c2], 10))
        shapes = [{"shape": s1, "colour": c1, "box": box, "area": round(shape_area(s1, r), 1)},
                  {"shape": s2, "colour": c2, "box": b2, "area": round(shape_area(s2, r), 1)}]
        answer = "left" if first_left else "right"
        question = f"Is the {c1} {s1} to the left or to the right of the {c2} {s2}?"
        pool = ["right" if first_left else "left"]
    meta = {"shapes": shapes, "image_size": [W, H]}
    if box is not None:
        meta["box"] = [int(v) for v in box]
    return Built("no_code", kind, question, answer, [encode(img, "jpg")], meta, pool, perturb)
