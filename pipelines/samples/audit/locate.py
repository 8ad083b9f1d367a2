"""Where is one image inside another? Multi-scale template matching on band-passed grey: the
crop check locates the produced image in the input, the contrast check an enhanced crop, the
rotation check the output's centre in the input turned by each hypothesis.

    locate(needle, Pyramid(haystack), config, zoom_lo, zoom_hi) -> Found(score, box, zoom) | None

A coarse search over a geometric grid of zooms on an image pyramid, then local refinement of
the best distinct peaks at up to full resolution (`locate` says how).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.samples.audit.config import AuditConfig


class Pyramid:
    """A grey image's INTER_AREA reductions by powers of sqrt(2), built on demand (even levels
    by halving, odd ones one sqrt(2) step below the even level above), each also kept
    band-passed for matching (`_band`)."""

    STEP = 2 ** -0.5

    def __init__(self, grey: np.ndarray):
        self.full = grey
        self._raw: dict[int, np.ndarray] = {0: grey}
        self._shapes: dict[int, tuple[int, int]] = {0: grey.shape[:2]}
        self._band: dict[tuple[int, float | None], np.ndarray] = {}
        # As a needle: its templates by (width, height, clip). The refinement of neighbouring
        # peaks asks for the same sizes again (about 5 times each).
        self.templates: dict[tuple[int, int, float | None], tuple[np.ndarray, int] | None] = {}

    def index(self, scale: float) -> int:
        """The coarsest level whose scale is still >= `scale`."""
        if scale >= 1.0:
            return 0
        return max(0, int(math.floor(math.log(scale) / math.log(self.STEP) + 1e-9)))

    def shape(self, k: int) -> tuple[int, int]:
        """Level k's (height, width), known without building it."""
        if k not in self._shapes:
            h, w = self.shape(self._source(k))
            f = 0.5 if k % 2 == 0 else self.STEP
            self._shapes[k] = (max(1, round(h * f)), max(1, round(w * f)))
        return self._shapes[k]

    @staticmethod
    def _source(k: int) -> int:
        return k - 2 if k % 2 == 0 else k - 1

    def raw(self, k: int) -> np.ndarray:
        if k not in self._raw:
            h, w = self.shape(k)
            self._raw[k] = cv2.resize(self.raw(self._source(k)), (w, h), interpolation=cv2.INTER_AREA)
        return self._raw[k]

    def level(self, k: int, clip: float | None = None) -> tuple[np.ndarray, float, float]:
        """Level k band-passed for matching, and its actual x and y scales relative to the
        full image."""
        if (k, clip) not in self._band:
            self._band[k, clip] = _band(self.raw(k), clip, dither=True)
        img = self._band[k, clip]
        return img, img.shape[1] / self.full.shape[1], img.shape[0] / self.full.shape[0]

    def resized(self, w: int, h: int) -> np.ndarray:
        """The image resized to w x h, by INTER_AREA from the smallest level still that big
        (cheap for the many template sizes one needle is asked for)."""
        k = 0
        while True:
            nh, nw = self.shape(k + 1)      # (not built: only the chosen level is)
            if nw < w or nh < h or min(nh, nw) < 2:
                break
            k += 1
        src = self.raw(k)
        if src.shape == (h, w):
            return src
        return cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)


# Matching runs on band-passed grey (3x3 box minus 9x9 box means): edges and shapes count, not
# the smooth gradients that make any two backdrops correlate nor the pixel noise that
# decorrelates at a slightly wrong zoom. Crops (same grey levels as the input) are matched with
# the band also clipped at +-crop_band_clip grey levels: a long high-contrast edge then cannot
# outweigh the small details (a few stars, a digit) that tell look-alike places apart. Enhanced
# or rotated outputs are matched unclipped (clipping is not invariant to their gain change).
_BAND_INNER, _BAND_OUTER = 3, 9
_TEMPLATE_MARGIN = _BAND_OUTER // 2     # px cut from each side of a template: its filter saw the border
_DITHER = 0.01   # +- checkerboard added to haystacks: a flat fill would otherwise make the
                 # normalisation divide rounding noise by rounding noise (a fake perfect match)
_CHECKER = np.zeros((0, 0), np.float32)


def _band(img: np.ndarray, clip: float | None = None, dither: bool = False) -> np.ndarray:
    global _CHECKER
    f = img.astype(np.float32)
    band = cv2.blur(f, (_BAND_INNER, _BAND_INNER)) - cv2.blur(f, (_BAND_OUTER, _BAND_OUTER))
    if clip:
        np.clip(band, -clip, clip, out=band)
    if dither:
        h, w = band.shape
        if _CHECKER.shape[0] < h or _CHECKER.shape[1] < w:
            ys, xs = np.indices((max(h, _CHECKER.shape[0]), max(w, _CHECKER.shape[1])))
            _CHECKER = np.where((ys + xs) % 2 == 0, _DITHER, -_DITHER).astype(np.float32)
        band += _CHECKER[:h, :w]
    return band


def _template(needle: Pyramid, tw: int, th: int, clip: float | None) -> tuple[np.ndarray, int] | None:
    """The needle resized to tw x th and band-passed, minus the margin whose filter saw the
    border; returns it and the margin (None when too small or featureless). Made once per size
    (`Pyramid.templates`)."""
    key = (tw, th, clip)
    if key not in needle.templates:
        needle.templates[key] = _make_template(needle, tw, th, clip)
    return needle.templates[key]


def _make_template(needle: Pyramid, tw: int, th: int, clip: float | None) -> tuple[np.ndarray, int] | None:
    m = _TEMPLATE_MARGIN if min(tw, th) >= 2 * _TEMPLATE_MARGIN + 10 else 0
    if min(tw, th) - 2 * m < 6:
        return None
    tpl = _band(needle.resized(tw, th), clip)
    if m:
        tpl = tpl[m:th - m, m:tw - m]
    if float(cv2.meanStdDev(tpl)[1][0, 0]) < 0.2:   # (numpy's std: 3x the time, same answer)
        return None
    return np.ascontiguousarray(tpl), m


@dataclass
class Found:
    score: float                                # TM_CCOEFF_NORMED (band-passed) at the best place
    box: tuple[float, float, float, float]      # x1, y1, x2, y2 in full-resolution pixels
    zoom: float                                 # needle pixels per haystack pixel


def _zoom_grid(lo: float, hi: float, step: float) -> list[float]:
    n = max(1, math.ceil(math.log(hi / lo) / math.log(step)))
    return [lo * (hi / lo) ** (i / n) for i in range(n + 1)]


def usable_needle(needle: np.ndarray) -> bool:
    """Big and textured enough to be located: `locate` finds nothing for smaller or flatter ones."""
    return min(needle.shape) >= 8 and mean_std(needle, exact_below=1.0)[1] >= 1.0


# How far OpenCV's one-pass std may be trusted to lie on the same side of a threshold as
# numpy's two-pass one: both are within ~1e-9 of the true figure for up to max_pixels grey
# levels (a std this close to a threshold gets numpy's own figure instead).
STD_SLACK = 1e-4


def mean_std(grey: np.ndarray, exact_below: float) -> tuple[float, float]:
    """The mean and std of a grey image in one pass (cv2.meanStdDev: ~30x faster than numpy's
    std on a megapixel). The std is numpy's own (`grey.std()`, bit for bit) wherever it comes
    within STD_SLACK of `exact_below` or under it: there a threshold at `exact_below` compares
    it and a reason may print it; above, the one-pass figure lies on the same side."""
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(grey))
    if std <= exact_below + STD_SLACK:
        std = float(grey.std())
    return mean, std


def locate(needle: np.ndarray | Pyramid, pyr: Pyramid, cfg: AuditConfig, zoom_lo: float, zoom_hi: float,
           max_scale: float = 0.5, early_exit: float | None = None, keep: int = 6,
           clip: float | None = None, hints: Sequence[tuple[int, int, int, int]] = ()) -> Found | None:
    """Where `needle` (a possibly zoomed crop) lies in the pyramid's image.

    First the `hints` (boxes where the needle may come from: those its code names, `hints.py`),
    each matched at its place on an aligned window, then refined around it (`confirm`); one
    that reaches early_exit (the search's own acceptance rule) is the answer, and otherwise the
    search below runs unchanged.

    Coarse: for each zoom on a geometric grid, the needle shrunk to the region it would cover
    is matched against the coarsest pyramid level where that template keeps a short side of
    ~coarse_template_side px (never finer than `max_scale`): big regions are searched small,
    small regions finer. Zooms run from low to high, i.e. from cheap to expensive, and a peak
    that refines to >= early_exit ends the search. Refinement (`_refine`): the `keep` best
    distinct peaks are matched again in local windows of the full image at up to full
    resolution, over ever finer zooms (+-14 %, +-3 %, +-0.5 %). A needle searched in several
    haystacks is best passed as its Pyramid: its templates are then made once for all."""
    needle_pyr = needle if isinstance(needle, Pyramid) else Pyramid(needle)
    ph, pw = needle_pyr.full.shape
    H, W = pyr.full.shape
    if not usable_needle(needle_pyr.full):
        return None
    early_exit = cfg.early_exit_score if early_exit is None else early_exit
    for box in hints:
        found = confirm(needle_pyr, pyr, cfg, box, zoom_lo, zoom_hi, clip, enough=early_exit)
        if found is not None and found.score >= early_exit:
            return found
    floor = min(1.0, 128 / max(W, H))       # never search a haystack smaller than ~128 px
    peaks: list[tuple] = []         # score, zoom, cx, cy, (slack x, slack y)
    refined: dict[tuple, Found | None] = {}

    def refine(peak: tuple) -> Found | None:
        # A peak refined for an early exit that fell short is often among the chosen below.
        if peak[1:] not in refined:
            refined[peak[1:]] = _refine(needle_pyr, pyr, cfg, *peak[1:], clip)
        return refined[peak[1:]]

    for z in _zoom_grid(zoom_lo, zoom_hi, cfg.coarse_zoom_step):
        rw, rh = pw / z, ph / z
        if rw > W or rh > H:
            continue
        a = min(max(cfg.coarse_template_side / min(rw, rh), floor), max_scale)
        hay, sx, sy = pyr.level(pyr.index(a), clip)
        tw, th = round(rw * sx), round(rh * sy)
        if tw > hay.shape[1] or th > hay.shape[0] or (made := _template(needle_pyr, tw, th, clip)) is None:
            continue
        tpl, m = made
        res = cv2.matchTemplate(hay, tpl, cv2.TM_CCOEFF_NORMED)
        slack = (2.0 / sx + 0.35 * rw, 2.0 / sy + 0.35 * rh)   # closer peaks were suppressed
        found = [(score, z, (x - m + tw / 2) / sx, (y - m + th / 2) / sy, slack)
                 for score, (x, y) in _peaks(res, 2, tw, th)]
        peaks += found
        if found and early_exit <= 1.0 and found[0][0] >= early_exit - 0.15:
            best = refine(found[0])
            if best is not None and best.score >= early_exit:
                return best
    chosen: list[tuple] = []
    for p in sorted(peaks, key=lambda p: -p[0]):
        if all(math.hypot(p[2] - q[2], p[3] - q[3]) > 0.25 * pw / p[1]
               or max(p[1] / q[1], q[1] / p[1]) > 1.15 for q in chosen):
            chosen.append(p)
        if len(chosen) == keep:
            break
    results = [r for p in chosen if (r := refine(p)) is not None]
    return max(results, key=lambda r: r.score, default=None)


def confirm(needle: Pyramid, pyr: Pyramid, cfg: AuditConfig, box: tuple[float, float, float, float],
            zoom_lo: float, zoom_hi: float, clip: float | None = None,
            enough: float | None = None) -> Found | None:
    """The refinement around a hinted box, or None where its shape or zoom rules it out: the
    needle's aspect must be the box's (one zoom for both sides, as the search assumes) and the
    zoom within the searched range (a hint must not find what the search could not). With
    `enough`, the box itself is matched first, at the zoom its width implies, within 2 px and
    on a grid aligned to it (`_window`): a match there reaching `enough` is the answer."""
    ph, pw = needle.full.shape
    x1, y1, x2, y2 = box
    zoom, zoom_y = pw / (x2 - x1), ph / (y2 - y1)
    if abs(zoom_y / zoom - 1) > 0.05 or not zoom_lo <= zoom <= zoom_hi:
        return None
    if enough is not None:
        found = _match_at(needle, pyr, zoom, (x1 + x2) / 2, (y1 + y2) / 2, (2.0, 2.0),
                          cfg.refine_template_side, clip, aligned=True)
        if found is not None and found.score >= enough:
            return found
    slack = (2.0 + 0.05 * (x2 - x1), 2.0 + 0.05 * (y2 - y1))
    return _refine(needle, pyr, cfg, zoom, (x1 + x2) / 2, (y1 + y2) / 2, slack, clip)


def _peaks(res: np.ndarray, n: int, tw: int, th: int) -> list[tuple[float, tuple[int, int]]]:
    """The n best positions of a match map, each at least half a template from the others."""
    out = []
    if n > 1:
        res = res.copy()
    for i in range(n):
        _, score, _, loc = cv2.minMaxLoc(res)
        if not math.isfinite(score):
            break
        out.append((float(score), loc))
        if i + 1 < n:
            x, y = loc
            res[max(0, y - th // 2):y + th // 2 + 1, max(0, x - tw // 2):x + tw // 2 + 1] = -1.0
    return out


_REFINE_PASSES = (   # (zoom ratio per step, steps each side)
    (1.07, 2),        # +-14 %: covers the coarse grid's spacing, over the whole slack
    (1.015, 2),       # +-3 %
    (1.005, 1),       # +-0.5 %: at 64 px a 2 % zoom error already costs ~0.1 of score
)


def _refine(needle: Pyramid, pyr: Pyramid, cfg: AuditConfig, z0: float, cx: float, cy: float,
            slack: tuple[float, float], clip: float | None) -> Found | None:
    """Local passes around a coarse peak, each finer in zoom and position (_REFINE_PASSES); the
    score is the last pass's, at refine_template_side px."""
    best, side = None, cfg.refine_template_side
    for ratio, steps in _REFINE_PASSES:
        if best is not None:      # centre on the last pass; position known to ~1.5 of its pixels
            x1, y1, x2, y2 = best.box
            z0, cx, cy = best.zoom, (x1 + x2) / 2, (y1 + y2) / 2
            pixel = 1.0 / min(1.0, side / min(x2 - x1, y2 - y1))
            slack = (1.5 * pixel + (ratio - 1) * (x2 - x1), 1.5 * pixel + (ratio - 1) * (y2 - y1))
        found = _search_local(needle, pyr, [z0 * ratio ** k for k in range(-steps, steps + 1)],
                              cx, cy, slack, side, clip)
        if found is None:
            return best
        best = found
    return best


def _search_local(needle: Pyramid, pyr: Pyramid, zooms: list[float], cx: float, cy: float,
                  slack: tuple[float, float], side: float, clip: float | None) -> Found | None:
    """The best match of the needle, at each zoom, for regions centred within `slack` px of
    (cx, cy); the window is cut from the full image and reduced so the template keeps a short
    side of `side` px (or full resolution)."""
    best = None
    for z in zooms:
        found = _match_at(needle, pyr, z, cx, cy, slack, side, clip)
        if found is not None and (best is None or found.score > best.score):
            best = found
    return best


def _match_at(needle: Pyramid, pyr: Pyramid, z: float, cx: float, cy: float,
              slack: tuple[float, float], side: float, clip: float | None,
              aligned: bool = False) -> Found | None:
    """`_search_local` at one zoom. `aligned`: the window's sampling grid is laid so that the
    region centred on (cx, cy) starts on a pixel boundary (`_window`)."""
    ph, pw = needle.full.shape
    H, W = pyr.full.shape
    rw, rh = pw / z, ph / z
    if rw > W or rh > H:
        return None
    a = min(1.0, side / min(rw, rh))
    border = _BAND_OUTER / a                   # context for the band filter, full-res px
    X0 = max(0, int(math.floor(cx - rw / 2 - slack[0] - border)))
    Y0 = max(0, int(math.floor(cy - rh / 2 - slack[1] - border)))
    X1 = min(W, int(math.ceil(cx + rw / 2 + slack[0] + border)))
    Y1 = min(H, int(math.ceil(cy + rh / 2 + slack[1] + border)))
    win, (ox, oy, ow, oh) = _window(pyr, X0, Y0, X1, Y1, a,
                                    (cx - rw / 2, cy - rh / 2) if aligned else None)
    sx, sy = win.shape[1] / ow, win.shape[0] / oh
    tw, th = round(rw * sx), round(rh * sy)
    if tw > win.shape[1] or th > win.shape[0] or (made := _template(needle, tw, th, clip)) is None:
        return None
    tpl, m = made
    res = cv2.matchTemplate(_band(win, clip, dither=True), tpl, cv2.TM_CCOEFF_NORMED)
    _, score, _, (lx, ly) = cv2.minMaxLoc(res)
    if not math.isfinite(score):
        return None
    bx, by = ox + (lx - m) / sx, oy + (ly - m) / sy
    return Found(float(score), (bx, by, bx + rw, by + rh), pw / rw)


# A window reduced by a factor that is not whole samples the image on a grid whose phase
# follows where the window starts, while the template's follows the needle: matching runs at
# whole-pixel offsets, and half a reduced pixel out of phase costs band-passed matching up to
# ~0.15 of score (an exact crop at its exact place: 0.99 or 0.85, by where its window starts).
# Where the region's place is known (a hinted box), the window starts where its grid meets it.
_ALIGN_SHIFT_MAX = 16       # pixels of the cut grid a window may start further out for that


def _window(pyr: Pyramid, X0: int, Y0: int, X1: int, Y1: int, a: float,
            align: tuple[float, float] | None = None):
    """The full image's pixels X0..X1 x Y0..Y1 reduced by `a` (<= 1), and the full-resolution
    rectangle (x, y, width, height) they cover. Cut from the coarsest halving of the pyramid
    (an even level: cheap to build) at least a sqrt(2) step finer than `a`, where its grid lands,
    not from the full image: reducing a big window of a large image at full resolution was most
    of the audit's time. `align`: a full-resolution point the reduced grid should meet; the
    window then starts up to _ALIGN_SHIFT_MAX pixels further left and up, where it comes closest."""
    full = pyr.full
    if a >= 1.0:
        return full[Y0:Y1, X0:X1], (X0, Y0, X1 - X0, Y1 - Y0)
    k = pyr.index(a) - 1
    k -= k % 2
    grid = full if k < 1 else pyr.raw(k)
    kx, ky = grid.shape[1] / full.shape[1], grid.shape[0] / full.shape[0]
    x0, y0 = int(math.floor(X0 * kx)), int(math.floor(Y0 * ky))
    x1 = min(grid.shape[1], int(math.ceil(X1 * kx)))
    y1 = min(grid.shape[0], int(math.ceil(Y1 * ky)))
    if align is not None:
        x0 = _aligned_start(x0, x1, kx, a, align[0])
        y0 = _aligned_start(y0, y1, ky, a, align[1])
    ow, oh = (x1 - x0) / kx, (y1 - y0) / ky
    size = (max(1, round(ow * a)), max(1, round(oh * a)))
    win = cv2.resize(grid[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    return win, (x0 / kx, y0 / ky, ow, oh)


def _aligned_start(start: int, end: int, k: float, a: float, point: float) -> int:
    """The start (start - 0.._ALIGN_SHIFT_MAX, >= 0) of a cut end - start pixels long of a grid
    at scale k, reduced as `_window` does, that puts the full-resolution `point` closest to a
    pixel boundary of the reduced window."""
    best, best_off = start, 1.0
    for s in range(start, max(-1, start - _ALIGN_SHIFT_MAX - 1), -1):
        size = max(1, round((end - s) / k * a))
        pos = (point * k - s) * size / (end - s)
        off = abs(pos - round(pos))
        if off < best_off - 1e-9:
            best, best_off = s, off
    return best


# Boxes are (x1, y1, x2, y2), x2 and y2 exclusive, as `Found.box` and the ground truth's `box`.

def area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def coverage(region, box) -> float:
    """The share of `box` inside `region`."""
    inter = (max(region[0], box[0]), max(region[1], box[1]), min(region[2], box[2]), min(region[3], box[3]))
    return area(inter) / area(box) if area(box) > 0 else 0.0
