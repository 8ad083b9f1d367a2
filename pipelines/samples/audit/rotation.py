"""Is a rotated output upright? `rotation_verdict` tests residual-angle hypotheses by locating the
output's centre (`locate`) in the input turned back, and names what a wrong output looks like
(not rotated, rotated the wrong way, 90/180/270 off, tilted). `angle` follows the generator:
degrees counter-clockwise the upright page was turned (`Image.rotate(-angle, expand=True)`
restores it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.samples.audit.config import AuditConfig
from pipelines.samples.audit.locate import Pyramid, confirm, locate, usable_needle
from pipelines.samples.audit.rotation_hints import RotationHint, turn

ROTATION_STEP = 3.0         # degrees between residual hypotheses


def _rotate(grey: np.ndarray, degrees: float) -> np.ndarray:
    """`grey` turned counter-clockwise by `degrees` on an enlarged canvas (PIL's expand=True),
    filled with black."""
    h, w = grey.shape
    M = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = math.ceil(h * sin + w * cos), math.ceil(h * cos + w * sin)
    M[0, 2] += nw / 2 - w / 2
    M[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(grey, M, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)


def reduced(grey: np.ndarray, side: int) -> np.ndarray:
    """`grey` reduced (INTER_AREA) to a long side of `side` px, or itself where it is smaller:
    the scale every rotation hypothesis is scored at."""
    a = min(1.0, side / max(grey.shape))
    return cv2.resize(grey, None, fx=a, fy=a, interpolation=cv2.INTER_AREA) if a < 1 else grey


@dataclass
class RotationVerdict:
    """Upright or not, and the reason a person reads in the audit."""

    ok: bool
    reason: str


def _wrap(d: float) -> float:
    return (d + 180.0) % 360.0 - 180.0


def _residual_label(d: float, angle: float) -> str:
    if abs(_wrap(d - angle)) < 1e-6:
        return "not rotated at all"
    if abs(_wrap(d - 2 * angle)) < 1e-6:
        return "rotated the wrong way"
    return f"off by {_wrap(d):+.0f} deg"


def rotation_verdict(grey: np.ndarray, out: np.ndarray, angle: float,
                     cfg: AuditConfig, hint: RotationHint | None = None,
                     small: np.ndarray | None = None) -> RotationVerdict:
    """Is `out` the input turned upright? A residual hypothesis d says the output is the upright
    image turned d degrees further counter-clockwise; it scores how well the output's central
    half is located (`locate`) in the input turned by d - angle, all at ~rotation_side px,
    where a hypothesis 1.5 deg off still scores > 0.9 and a wrong one < 0.8.

    The code's claim first (`hint`, rotation_hints.py): where the rotation the code names leaves
    the output within ROTATION_STEP of upright, that hypothesis is scored at the place and zoom
    the code implies (one refinement, no search); >= rotation_fast_score: upright. Otherwise, or
    where the pixels do not confirm it, the search below runs as if there were no hint.

    Fast path: d = 0 scores >= rotation_fast_score: upright.
    Otherwise residuals -tol-2step .. tol+2step (step ROTATION_STEP) and the far alternatives
    (90, 180, 270, not rotated, rotated the wrong way) are all scored; the best must be a near
    one, score >= rotation_min_score, and its interpolated residual lie within the tolerance.

    `small`: `reduced(grey, cfg.rotation_side)` where the caller keeps it (the candidates of one
    sample share their input)."""
    a = min(1.0, cfg.rotation_side / max(grey.shape))
    if small is None:
        small = reduced(grey, cfg.rotation_side)
    oh, ow = out.shape
    centre = out[oh // 4: oh - oh // 4, ow // 4: ow - ow // 4]
    # Output px per small-input px is zoom / a; shrink the needle once so zoom_min maps to 1:1.
    f = min(1.0, a / cfg.zoom_min)
    if f < 1:
        centre = cv2.resize(centre, (max(1, round(centre.shape[1] * f)), max(1, round(centre.shape[0] * f))),
                            interpolation=cv2.INTER_AREA)
    lo, hi = cfg.zoom_min * f / a, cfg.rotation_zoom_max * f / a
    needle = Pyramid(centre)      # one for all hypotheses: its templates are made once
    haystacks: dict[float, Pyramid] = {}

    def haystack(d: float) -> Pyramid:
        d = round(d, 6)
        if d not in haystacks:
            haystacks[d] = Pyramid(_rotate(small, d - angle))
        return haystacks[d]

    if hint is not None and usable_needle(centre):
        claim = _code_claim(hint, angle, haystack, grey.shape, small.shape, out.shape, needle, cfg, lo, hi)
        if claim is not None:
            d, found = claim
            return RotationVerdict(True, f"upright: the code turns the input by {hint.angle:+g} deg "
                                         f"({d:+g} from upright) and the pixels agree (match "
                                         f"{found.score:.2f} >= {cfg.rotation_fast_score:g})")
    scores: dict[float, float] = {}

    def score(d: float) -> float:
        d = round(d, 6)
        if d not in scores:
            found = locate(needle, haystack(d), cfg, lo, hi,
                           max_scale=1.0, early_exit=1.01, keep=2)
            scores[d] = found.score if found is not None else -1.0
        return scores[d]

    tol, step = cfg.rotation_tolerance_deg, ROTATION_STEP

    def residual_at(d: float) -> float:                  # parabola through d and its neighbours
        s, left, right = score(d), score(d - step), score(d + step)
        denom = left - 2 * s + right
        return d + (step * 0.5 * (left - right) / denom if denom < 0 else 0.0)

    if score(0.0) >= cfg.rotation_fast_score:
        return RotationVerdict(True, f"upright: matches the input turned by {-angle:+g} deg "
                                     f"(match {score(0.0):.2f} >= {cfg.rotation_fast_score:g}, "
                                     "residual < 2 deg)")
    n = math.ceil(tol / step) + 2
    near = [k * step for k in range(-n, n + 1)]
    far: list[float] = []
    for d in (90.0, 180.0, 270.0, angle, 2 * angle):
        if all(abs(_wrap(d - e)) > step for e in near + far):
            far.append(d)
    best_near = max(near, key=score)
    s_up = score(best_near)
    s_far, d_far = max(((score(d), d) for d in far), default=(-1.0, None))
    if s_far > s_up and s_far >= cfg.rotation_min_score:
        return RotationVerdict(False, f"the output looks {_residual_label(d_far, angle)} "
                                      f"(match {s_far:.2f}) rather than upright (best {s_up:.2f})")
    if s_up < cfg.rotation_min_score:
        return RotationVerdict(False, "the output matches neither the input turned upright nor "
                                      f"any tested angle (best {max(s_up, s_far):.2f} < "
                                      f"{cfg.rotation_min_score:g})")
    residual = residual_at(best_near) if abs(best_near) < n * step else best_near
    if abs(residual) > tol:
        return RotationVerdict(False, f"the output is tilted ~{residual:+.1f} deg from upright "
                                      f"(> {tol:g}; match {s_up:.2f})")
    return RotationVerdict(True, f"upright within {tol:g} deg (residual ~{residual:+.1f} deg, "
                                 f"match {s_up:.2f})")


def _code_claim(hint: RotationHint, angle: float, haystack, full_shape: tuple[int, int],
                small_shape: tuple[int, int], out_shape: tuple[int, int], needle: Pyramid,
                cfg: AuditConfig, lo: float, hi: float):
    """(residual, Found) where the code's rotation leaves the output within ROTATION_STEP of
    upright and the output's centre is found where the code puts it, scoring >=
    rotation_fast_score; else None (the search decides). The box: the input point the code puts
    at the output's centre, carried into the small input turned by the code's angle, spanning
    the share of the code's region that the needle (the output's central half) shows."""
    d = _wrap(angle + hint.angle)
    if abs(d) > ROTATION_STEP:
        return None
    H, W = full_shape
    sh, sw = small_shape
    hay = haystack(d)
    kx, ky = sw / W, sh / H
    cx, cy = turn((hint.source[0] * kx, hint.source[1] * ky), (sw / 2, sh / 2), d - angle,
                  (hay.full.shape[1] / 2, hay.full.shape[0] / 2))
    oh, ow = out_shape
    region_w, region_h = hint.size if hint.size is not None else (ow / hint.zoom, oh / hint.zoom)
    # the needle is the output's central half (oh // 4 cut from each side): that share of the region
    bw = (ow - 2 * (ow // 4)) / ow * region_w * kx
    bh = (oh - 2 * (oh // 4)) / oh * region_h * ky
    if min(bw, bh) < 1 or not (0 <= cx <= hay.full.shape[1] and 0 <= cy <= hay.full.shape[0]):
        return None     # a claim that puts the output off the turned input is not one to refine
    found = confirm(needle, hay, cfg, (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), lo, hi,
                    enough=cfg.rotation_fast_score)
    if found is None or found.score < cfg.rotation_fast_score:
        return None
    return d, found
