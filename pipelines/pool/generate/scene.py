"""Backgrounds: gradients, smooth colour fields, low-resolution scenes (street, interior, park,
texture, plain) with clutter and uneven light, sensor-like grain, and `scene`, which upscales a
backdrop to a full-size photo-like image."""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipelines.pool.generate.draw import jitter
from pipelines.pool.generate.rand import pick, randint


def _muted(rng, lo=60, hi=200) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _vgrad(h, w, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top = np.asarray(top, np.float32)
    return np.broadcast_to(top + (np.asarray(bottom, np.float32) - top) * t, (h, w, 3)).copy()


def gradient(rng, h, w, c1, c2) -> np.ndarray:
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.ogrid[0:h, 0:w]
    t = (xx * math.cos(ang) + yy * math.sin(ang)).astype(np.float32)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c1, c2 = np.asarray(c1, np.float32), np.asarray(c2, np.float32)
    return c1 + (c2 - c1) * t[..., None]


def smooth_field(rng, h, w, amp, cells=6) -> np.ndarray:
    """Smooth low-frequency colour variation."""
    small = rng.uniform(-amp, amp, (randint(rng, 2, cells), randint(rng, 2, cells), 3))
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


_SKIES = ((120, 170, 225), (170, 195, 220), (200, 205, 210), (235, 190, 150), (150, 185, 235))


def backdrop(rng, w: int, h: int, kind: str) -> np.ndarray:
    """A low-resolution scene (street, interior, park, texture or plain), uint8 RGB."""
    if kind == "street":
        horizon = int(h * rng.uniform(0.45, 0.7))
        sky = jitter(rng, pick(rng, _SKIES), 15)
        img = _vgrad(h, w, sky, jitter(rng, sky, 30))
        img[horizon:] = _vgrad(h - horizon, w, _muted(rng, 70, 130), _muted(rng, 90, 160))
        img = to_u8(img + smooth_field(rng, h, w, 14))
        x = -randint(rng, 0, w // 20)
        while x < w:
            bw = randint(rng, max(4, w // 14), max(5, w // 4))
            top = randint(rng, h // 12, max(h // 12, horizon - h // 8))
            cv2.rectangle(img, (x, top), (x + bw - 1, horizon + 2), _muted(rng, 50, 210), -1)
            win = max(2, bw // randint(rng, 6, 10))
            glass = pick(rng, ((40, 45, 55), (215, 205, 150), (90, 110, 135), (160, 190, 210)))
            for yy in range(top + win, horizon - win, 2 * win):
                for xx in range(x + win, x + bw - win, 2 * win):
                    cv2.rectangle(img, (xx, yy), (xx + win - 1, yy + win - 1), jitter(rng, glass, 20), -1)
            x += bw + randint(rng, 0, w // 30)
        for _ in range(randint(rng, 0, 3)):   # road markings
            y = randint(rng, horizon + 2, h - 2)
            cv2.line(img, (0, y), (w, y + randint(rng, -h // 10, h // 10)), (225, 225, 215), max(1, h // 150))
    elif kind == "interior":
        wall = _muted(rng, 120, 230)
        img = to_u8(_vgrad(h, w, wall, [c * 0.85 for c in wall]) + smooth_field(rng, h, w, 12))
        floor = int(h * rng.uniform(0.7, 0.85))
        img[floor:] = to_u8(_vgrad(h - floor, w, _muted(rng, 80, 150), _muted(rng, 60, 120)))
        for s in range(randint(rng, 2, 4)):
            y = int(h * (0.2 + 0.55 * s / 4 + rng.uniform(-0.03, 0.03)))
            cv2.rectangle(img, (0, y), (w, y + max(2, h // 60)), _muted(rng, 70, 150), -1)
            x = randint(rng, 0, w // 20)
            while x < w:
                bw, bh = randint(rng, max(3, w // 40), max(4, w // 10)), randint(rng, max(3, h // 20), max(4, h // 7))
                cv2.rectangle(img, (x, y - bh), (x + bw, y - 1), _muted(rng, 40, 230), -1)
                x += bw + randint(rng, 0, w // 25)
    elif kind == "park":
        horizon = int(h * rng.uniform(0.3, 0.55))
        sky = jitter(rng, pick(rng, _SKIES), 15)
        img = _vgrad(h, w, sky, jitter(rng, sky, 25))
        grass = (int(rng.integers(50, 110)), int(rng.integers(110, 170)), int(rng.integers(40, 90)))
        img[horizon:] = _vgrad(h - horizon, w, grass, jitter(rng, grass, 30))
        img = to_u8(img + smooth_field(rng, h, w, 20, cells=10))
        for _ in range(randint(rng, 3, 10)):
            cx, base = randint(rng, 0, w), randint(rng, horizon, h)
            th = randint(rng, max(4, h // 8), max(5, h // 3))
            tw = max(2, th // 10)
            cv2.rectangle(img, (cx - tw, base - th), (cx + tw, base), jitter(rng, (95, 65, 40), 15), -1)
            cv2.ellipse(img, (cx, base - th), (th // 2, th // 3), 0, 0, 360,
                        jitter(rng, (40, 100, 45), 25), -1, cv2.LINE_AA)
    else:   # "texture" (wood, tiles, fabric) or "plain"
        c1 = _muted(rng, 90, 230)
        img = gradient(rng, h, w, c1, jitter(rng, c1, 40)) + smooth_field(rng, h, w, 15)
        style = "plain" if kind == "plain" else pick(rng, ("wood", "tiles", "fabric"))
        if style == "wood":
            ang, freq = rng.uniform(0, math.pi), rng.uniform(0.05, 0.25)
            yy, xx = np.ogrid[0:h, 0:w]
            t = xx * math.cos(ang) + yy * math.sin(ang)
            img = img * (1 + 0.08 * np.sin(t[..., None] * freq + 3 * smooth_field(rng, h, w, 1.0)[..., :1]))
        img = to_u8(img)
        if style == "tiles":
            step = randint(rng, max(6, w // 30), max(7, w // 8))
            line = jitter(rng, (90, 90, 90), 40)
            for x in range(0, w, step):
                cv2.line(img, (x, 0), (x, h), line, 1)
            for y in range(0, h, step):
                cv2.line(img, (0, y), (w, y), line, 1)
        elif style == "fabric":
            for _ in range(randint(rng, 10, 40)):
                y = randint(rng, 0, h)
                cv2.line(img, (0, y), (w, y), jitter(rng, c1, 25), 1)
    # clutter: rectangles, ellipses and lines (never the polygons the tasks ask about)
    for _ in range(randint(rng, 3 if kind == "plain" else 6, 8 if kind == "plain" else 18)):
        colour = _muted(rng, 40, 220)
        x, y = randint(rng, 0, w), randint(rng, 0, h)
        s = randint(rng, max(2, min(w, h) // 40), max(3, min(w, h) // 8))
        what = int(rng.integers(3))
        if what == 0:
            cv2.rectangle(img, (x, y), (x + s, y + randint(rng, 1, s)), colour, -1)
        elif what == 1:
            # elongated, so that clutter never passes for a circle
            cv2.ellipse(img, (x, y), (s, randint(rng, 1, max(1, s * 3 // 5))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.line(img, (x, y), (x + randint(rng, -s * 3, s * 3), y + randint(rng, -s * 3, s * 3)),
                     colour, max(1, s // 8), cv2.LINE_AA)
    if kind != "plain" and rng.random() < 0.7:   # uneven lighting and a colour cast
        yy, xx = np.ogrid[0:h, 0:w]
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        d2 = ((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2
        light = (1.0 - rng.uniform(0.2, 0.6) * d2).astype(np.float32)[..., None]
        cast = (1.0 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
        img = to_u8(img * light * cast)
    return img


def add_noise(rng, img: np.ndarray, amp: int) -> np.ndarray:
    """Grey sensor-like grain (2x2 cells), +-amp levels."""
    H, W = img.shape[:2]
    grain = rng.integers(0, 2 * amp + 1, ((H + 1) // 2, (W + 1) // 2), dtype=np.uint8)
    grain = cv2.resize(grain, (W, H), interpolation=cv2.INTER_NEAREST)
    grain = cv2.merge([grain, grain, grain])
    return cv2.subtract(cv2.add(img, grain), (amp, amp, amp, 0))


def scene(rng, W, H, kind=None, scale=3, noise=4) -> np.ndarray:
    kind = kind or pick(rng, ("street", "street", "interior", "park"))
    low = backdrop(rng, max(8, W // scale), max(8, H // scale), kind)
    img = cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)
    return add_noise(rng, img, noise) if noise else img
