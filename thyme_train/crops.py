"""Tool-use quality: what each code block did to the image, and whether a crop holds the target.

    operations(code) -> ["crop", "resize"]           what the code does (rules on the code text)
    locate_crop("input.jpg", "crop.png") -> Located(box, score)   where a produced image lies
    coverage(target_xywh, box) -> 0.83               share of the target's area inside the crop

A crop is *faithful* when it covers at least FAITHFUL_COVERAGE of one target's box (V* gives the
boxes). The crop's box is not taken from the code (models compute boxes in many ways) but
found in the input image: the produced image is matched against the input by normalised
cross-correlation over a grid of zooms (grey, the input at most WORK_SIDE pixels on its long
side), then the best zoom is refined; a match below MIN_SCORE is no crop of the input (a
rotation, a drawing, an unrelated image) and is reported as unlocated.

(The audit's locator, pipelines/samples/audit/locate.py, solves a harder problem — rotated and
enhanced crops at exact positions — and lives in a stage thyme_train may not import; this one is
the small case the evaluation needs.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

FAITHFUL_COVERAGE = 0.5
MIN_SCORE = 0.8
WORK_SIDE = 1024
MIN_TEMPLATE = 8           # pixels: smaller templates match noise
TEMPLATE_SIDE = 24         # pixels a template's short side keeps on the level it is tried on

_OPS = (
    ("rotate", re.compile(r"\.rotate\(|\.transpose\(|cv2\.rotate\(|warpAffine|getRotationMatrix2D|"
                          r"np\.rot90|ImageOps\.(?:mirror|flip|exif_transpose)", re.I)),
    ("contrast", re.compile(r"ImageEnhance\.(?:Contrast|Brightness|Sharpness)|equalizeHist|"
                            r"createCLAHE|autocontrast|ImageOps\.equalize|convertScaleAbs|"
                            r"\.point\(", re.I)),
    ("crop", re.compile(r"\.crop\(|\w\[\s*[\w+\-*/(). ]*:[\w+\-*/(). ]*,\s*[\w+\-*/(). ]*:", re.I)),
    ("resize", re.compile(r"\.resize\(|cv2\.resize\(|\.thumbnail\(|ImageOps\.fit", re.I)),
)
OPERATIONS = tuple(name for name, _ in _OPS) + ("other",)


def operations(code: str) -> list[str]:
    """The image operations a code block performs, by rules on its text (OPERATIONS order);
    ["other"] when none is recognised (drawing, a computation)."""
    found = [name for name, pattern in _OPS if pattern.search(code or "")]
    return found or ["other"]


@dataclass(frozen=True)
class Located:
    box: tuple[float, float, float, float]     # x0, y0, x1, y1 in the input's pixels
    score: float                               # normalised cross-correlation of the match

    def area_share(self, width: int, height: int) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(width * height)


def locate_crop(original: str, produced: str, min_score: float = MIN_SCORE) -> Located | None:
    """Where `produced` (a crop of `original`, perhaps resized) lies in `original`, or None when
    no zoom matches at `min_score` (or the image is flat: nothing to match). Each zoom is tried
    on the coarsest level of the input's pyramid where the template keeps TEMPLATE_SIDE pixels;
    the best is refined at the finest level in a window around it."""
    import cv2

    full, needle = _grey(original), _grey(produced)
    if needle.std() < 1e-3 or full.std() < 1e-3:
        return None
    top = min(1.0, WORK_SIDE / max(full.shape))
    levels = [top / 2 ** i for i in range(8) if max(full.shape) * top / 2 ** i >= 64]
    pyramid = {f: _scaled(full, f) for f in levels}
    best: tuple[float, float, float, tuple[float, float]] | None = None  # score, zoom, level, xy

    def trial(zoom: float, f: float, window=None) -> None:
        nonlocal best
        hay = pyramid[f] if f in pyramid else pyramid.setdefault(f, _scaled(full, f))
        w, h = round(needle.shape[1] * f / zoom), round(needle.shape[0] * f / zoom)
        x0 = y0 = 0
        if window is not None:                    # (x, y) at level f: search around it
            x0, y0 = max(0, int(window[0] - w)), max(0, int(window[1] - h))
            hay = hay[y0:int(window[1] + 2 * h), x0:int(window[0] + 2 * w)]
        if min(w, h) < MIN_TEMPLATE or w > hay.shape[1] or h > hay.shape[0]:
            return
        template = cv2.resize(needle, (w, h), interpolation=cv2.INTER_AREA)
        if template.std() < 1e-3:
            return
        _, score, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(hay, template, cv2.TM_CCOEFF_NORMED))
        if math.isfinite(score) and (best is None or score > best[0]):
            best = (score, zoom, f, (x + x0, y + y0))

    for k in range(-8, 33):                   # zooms 1/4 .. 256 in steps of 2^(1/4)
        zoom = 2 ** (k / 4)
        side = min(needle.shape) / zoom       # the crop's short side in the input's pixels
        usable = [f for f in levels if side * f >= TEMPLATE_SIDE] or levels[:1]
        trial(zoom, usable[-1])
    if best is None or best[0] < min_score / 2:
        return None
    _, coarse, f, (x, y) = best
    fine = levels[0]
    for k in range(-3, 4):                    # refine to steps of 2^(1/16) at the finest level
        trial(coarse * 2 ** (k / 16), fine, window=(x * fine / f, y * fine / f))
    score, zoom, f, (x, y) = best
    if score < min_score:
        return None
    w, h = needle.shape[1] / zoom, needle.shape[0] / zoom
    return Located((x / f, y / f, x / f + w, y / f + h), float(score))


def _scaled(grey: np.ndarray, f: float) -> np.ndarray:
    import cv2

    if f >= 1:
        return grey
    size = (max(1, round(grey.shape[1] * f)), max(1, round(grey.shape[0] * f)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def coverage(target_xywh, box) -> float:
    """The share of the target box [x, y, w, h] that lies inside `box` (x0, y0, x1, y1)."""
    tx, ty, tw, th = target_xywh
    if tw <= 0 or th <= 0:
        return 0.0
    ix = max(0.0, min(tx + tw, box[2]) - max(tx, box[0]))
    iy = max(0.0, min(ty + th, box[3]) - max(ty, box[1]))
    return ix * iy / (tw * th)


def _grey(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)
