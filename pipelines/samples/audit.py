"""The audit (THYME.md §3): a funnel of named, rule-based checks that keeps only trajectories
whose code ran AND whose result actually helps answer — the rule-based stand-in for the paper's
72B VLM audit.

    audit(trajectory, sample, store_root, config=AuditConfig()) -> Trajectory
    audit_many(trajectories, samples_by_id, store_root, config, judge=None) -> [Trajectory]
    CHECKS   the rule checks' names, in the order every audit lists them (for funnel counts)
    JUDGE    the optional judge check's name, listed after them when a judge is given

`audit` returns a copy of the trajectory with `audit` = one `Check` per name in CHECKS (verdict
pass / fail / skip and a reason a person can read) and `passed` = no check failed. Every check
runs even after an earlier failure, so funnel counts see each verdict; a check that cannot apply
SKIPs and says why: the task has no such operation, the trajectory has no code, or the sample
lacks the ground truth it needs (real pools without a box or an angle).

The checks, in order:
1. executed            every code turn has a result and none is an error; an `error_correction`
                       trajectory (>= 2 code turns) may fail before, but its LAST code turn must
                       run. `direct` trajectories have no code (SKIP); other kinds must have some.
2. result_kind         crop / rotate / contrast end with an image result, computation with
                       printed text.
3. image_sanity        every produced image decodes, has sides >= min_side, aspect <= the limit,
                       is not blank (grey std) and is not a copy of the input (mean absolute
                       difference after resizing both to 128 x 128).
4. crop_semantics      the last produced image is located inside the input by multi-scale
                       template matching on band-passed grey (zooms zoom_min..zoom_max, see
                       `_locate`); the located region must hold >= crop_coverage of the
                       ground-truth box and cover at most crop_max_area of the input.
5. rotation_semantics  the last produced image is upright: its central half is located in the
                       input turned back by -angle (fast path: match >= rotation_fast_score);
                       otherwise also in the input turned by residuals up to +-(tolerance + 6)
                       deg in 3-deg steps and by the far alternatives (90, 180, 270, "not
                       rotated", "rotated the wrong way"): the best must be a near residual,
                       match >= rotation_min_score, and interpolate to within the tolerance.
6. contrast_semantics  the RMS contrast (grey std / 255) of the target box, found in the output
                       (same image, resized, or a located crop), grew by >= contrast_gain.
7. computation         the last number printed by the last code turn equals the ground truth
                       (meta `values` + `expression` evaluated exactly, else the answer), within
                       numeric_tolerance or after rounding to the answer's `decimal:N` places.
8. answer              the final answer (inside <answer> / \\boxed{} if present) equals the
                       ground truth: option letters ("B", "B.", "(B)", "B. text", "Answer: B",
                       or the option's text), numbers ($, %, commas, fractions; tolerance),
                       normalised text (case, whitespace, punctuation, a leading article), or
                       sympy-equivalent math.
9. consistency         for computation, the answer (the chosen option's text for multiple
                       choice) equals the printed value (rounding to the answer's decimals
                       allowed); image results would need OCR: SKIP.

10. judge (optional)    a VLM (`pipelines.core.judge.Judge`, any OpenAI-compatible server) sees the
                       question, the input image, each turn's reasoning, code and sandbox result
                       (produced images, printed text, errors) and the final answer, and says
                       yes or no to our question: does the result support the reasoning and help
                       answer? Only trajectories that failed no rule check are asked (a sample
                       without ground truth skips the rule checks that need it, so there the
                       judge decides); the others, direct answers (no result to judge), and
                       verdicts the judge could not give (over budget, request failed, no yes/no)
                       SKIP with the reason. Asked in batches across trajectories (judge_batch
                       at a time), through the client's disk cache (a re-run is free) and within
                       the judge's budget.

Geometry follows `pipelines.pool.generate`: `box` = [x1, y1, x2, y2] in input pixels (x2, y2
exclusive); `angle` = degrees counter-clockwise the upright page was turned, so
`Image.rotate(-angle, expand=True)` restores it. Produced images are store-relative paths.
Images are compared in grey (ITU-R 601 luma, as PIL's "L" and the generator's contrast).

Speed (this 2-core machine, one process): the crop check takes ~40 ms per trajectory on
1600-3000 px inputs when the input must be decoded (~25 ms when cached: the last few inputs'
decodes and pyramids are kept for trajectories of the same sample); a whole crop audit ~23
trajectories/s. Rotation: ~15 ms when upright, ~150-200 ms to diagnose a wrong angle.

Limitations: crops must keep the aspect ratio (one zoom for both axes), lie inside the image
(no padding beyond its border), stay within ~0.45-4.6x zoom and keep the grey-level structure
(an inverted or colour-only change is not seen); rotation is judged at ~256 px, so it cannot
verify a tiny crop of a rotated page, and outputs zoomed beyond rotation_zoom_max; contrast
needs the output aligned with, resized from, or cropped out of the input; only a sample's
first image is the input, and only the last produced image is judged; what an image shows is
never read (no OCR), so image answers are checked only against the ground truth.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image

from pipelines.core.answers import (
    agrees_with_printed,
    answers_match,
    as_number,
    choice,
    close,
    decimals,
    final_answer,
    format_number,
    last_printed_number,
    parse_options,
    round_to,
    stated_number,
)
from pipelines.core.images import ImageLimits
from pipelines.core.judge import Judge
from pipelines.core.schema import Sample
from pipelines.core.trajectory import FAIL, KINDS, PASS, SKIP, Check, Result, Trajectory

CHECKS: tuple[str, ...] = (
    "executed", "result_kind", "image_sanity", "crop_semantics", "rotation_semantics",
    "contrast_semantics", "computation", "answer", "consistency",
)
JUDGE = "judge"

# What the last code turn of each task must return.
EXPECTED_RESULT = {"crop": "image", "rotate": "image", "contrast": "image", "computation": "text"}
IMAGE_TASKS = ("crop", "rotate", "contrast")

_LIMITS = ImageLimits()


@dataclass(frozen=True)
class AuditConfig:
    """Every threshold of the audit. Grey levels are 0-255; scores are TM_CCOEFF_NORMED."""

    # crop_semantics
    crop_coverage: float = 0.9        # share of the GT box the located crop must contain (also the
                                      # share of the target an enhanced crop must keep)
    crop_max_area: float = 0.5        # the located crop may cover at most this share of the input
                                      # (or twice the box's): a larger "crop" does not zoom in
    zoom_min: float = 0.5             # zooms (output px per input px) searched when locating an
    zoom_max: float = 4.0             # output in the input; refinement reaches ~14 % beyond both
    match_min_score: float = 0.6      # correlation a located region must reach to count as found:
                                      # exact crops score > 0.9, enhanced ones > 0.7, misses < 0.5
    # contrast_semantics
    contrast_gain: float = 1.3        # the target's RMS contrast must grow by this factor
    # rotation_semantics
    rotation_tolerance_deg: float = 10.0   # largest residual tilt still called upright
    rotation_min_score: float = 0.85  # the best residual hypothesis must score this (1.5 deg off
                                      # the truth scores > 0.9, wrong angles < 0.8)
    rotation_fast_score: float = 0.9  # the exact upright hypothesis scoring this is upright
    rotation_zoom_max: float = 2.0    # rotated outputs are whole pages, rarely zoomed further
    # computation, answer, consistency
    numeric_tolerance: float = 1e-6   # relative difference allowed (absolute for |x| < 1)
    # image_sanity
    blank_std: float = 2.0            # grey std at or below this is a blank image (generated
                                      # scenes carry >= 2 levels of noise; faint text ~4)
    identical_diff: float = 0.5       # mean |difference| at 128 x 128 at or below this is a copy
                                      # of the input (a JPEG re-save or resize: <= 0.4; a 1.3x
                                      # contrast stretch of the faintest generated image: 0.7)
    min_side: int = _LIMITS.min_side              # the vision encoder's minimum side
    max_aspect_ratio: float = _LIMITS.max_aspect_ratio
    max_pixels: int = _LIMITS.max_pixels          # decompression-bomb guard, from the header
    # search internals (speed vs robustness)
    coarse_template_side: int = 24    # short side of the template in the coarse search, px
    refine_template_side: int = 64    # ... in the refinement (capped by full resolution)
    coarse_zoom_step: float = 1.2     # ratio between zooms of the coarse search
    early_exit_score: float = 0.95    # a refined match this good ends the search (look-alike
                                      # distractors refine to <= 0.93, true crops to >= 0.95)
    crop_band_clip: float = 8.0       # grey levels the band-passed images are clipped at when
                                      # locating crops (see `_band`)
    rotation_side: int = 256          # long side the input is reduced to for the rotation search
    workers: int | None = None        # trajectories audited at once by `audit_many`, in threads
                                      # (OpenCV and numpy release the GIL); None = one per core
    # judge (only with a judge: see `audit_many`)
    judge_image_side: int = 1024      # images shown to the judge are reduced to this long side
                                      # (a 3000 px page costs a VLM ~4x the tokens, sees no more)
    judge_max_images: int = 6         # produced images shown, the last ones (the final result)
    judge_text_chars: int = 3000      # each reasoning, code and printed text is cut to this
    judge_batch: int = 256            # questions built and sent together (memory: their images;
                                      # speed: enough to keep the client's concurrency busy)


def audit(trajectory: Trajectory, sample: Sample, store_root: str | Path,
          config: AuditConfig = AuditConfig(), judge: Judge | None = None) -> Trajectory:
    """Run every check (in CHECKS order, then JUDGE when a judge is given) and return a copy of
    `trajectory` with `audit` and `passed` set; the input trajectory is not modified. Many
    trajectories with a judge: `audit_many` (one batch of judge requests)."""
    if judge is not None:
        return audit_many([trajectory], {trajectory.sample_id: sample}, store_root, config, judge)[0]
    ctx = _Context(trajectory, sample, Path(store_root), config)
    checks = []
    for name, check in _CHECK_FUNCTIONS.items():
        try:
            checks.append(check(ctx))
        except Exception as exc:  # noqa: BLE001  one odd row must not stop a shard's audit
            checks.append(Check(name, FAIL, f"the check crashed: {type(exc).__name__}: {exc}"))
    return replace(trajectory, audit=checks, passed=all(c.verdict != FAIL for c in checks))


# ---------------------------------------------------------------------------------------------
# Context: what the checks share (decoded images, the last results)
# ---------------------------------------------------------------------------------------------

class _Unreadable(Exception):
    """An image that cannot be used; the message says why."""


class _Context:
    def __init__(self, trajectory: Trajectory, sample: Sample, root: Path, config: AuditConfig):
        self.t, self.sample, self.root, self.cfg = trajectory, sample, root, config
        self.task = sample.task or trajectory.task
        self.meta = sample.meta or {}
        self.code_turns = trajectory.code_turns
        self.last: Result | None = self.code_turns[-1].result if self.code_turns else None
        self._grey: dict[str, np.ndarray | _Unreadable] = {}

    # -- images --------------------------------------------------------------------------------
    def produced(self) -> list[str]:
        """Every image the code produced, in order (results that are not errors)."""
        return [p for turn in self.code_turns if turn.result is not None
                and turn.result.kind != "error" for p in turn.result.images]

    def final_image(self) -> str | None:
        images = self.produced()
        return images[-1] if images else None

    def grey(self, relpath: str) -> np.ndarray:
        if relpath not in self._grey:
            try:
                self._grey[relpath] = _load_grey(self._resolve(relpath), self.cfg.max_pixels)
            except _Unreadable as exc:
                self._grey[relpath] = exc
        value = self._grey[relpath]
        if isinstance(value, _Unreadable):
            raise value
        return value

    def input(self) -> _Input:
        if not self.sample.images:
            raise _Unreadable("the sample has no input image")
        return _input(self._resolve(self.sample.images[0].relpath), self.cfg.max_pixels)

    def _resolve(self, relpath: str) -> Path:
        try:
            return _store_path(self.root, relpath)
        except ValueError as exc:
            raise _Unreadable(str(exc)) from None

    # -- ground truth --------------------------------------------------------------------------
    def gt_box(self) -> tuple[int, int, int, int] | None:
        box = self.meta.get("box")
        if not isinstance(box, list | tuple) or len(box) != 4 or not self.sample.images:
            return None
        try:
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        except (TypeError, ValueError):
            return None
        ref = self.sample.images[0]
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(ref.width, x2), min(ref.height, y2)
        return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None

    def options(self) -> dict[str, str]:
        return parse_options(self.meta.get("options"))


def _load_grey(path: Path, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise _Unreadable(f"{im.width}x{im.height} exceeds {max_pixels} pixels")
            if im.format == "JPEG":
                im.draft("L", im.size)   # decode the luma plane only
            im.load()
            grey = im if im.mode == "L" else im.convert("L")
            return np.asarray(grey)
    except FileNotFoundError:
        raise _Unreadable(f"{path.name} is missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _Unreadable(f"{path.name} does not decode ({exc})") from None


@dataclass
class _Input:
    grey: np.ndarray
    pyramid: _Pyramid
    thumb: np.ndarray       # 128 x 128 float32, for the copy-of-the-input test


_INPUTS: OrderedDict[tuple, _Input] = OrderedDict()
_INPUTS_LOCK = threading.Lock()
_INPUTS_KEPT = 4            # trajectories of one sample usually come together


def _input(path: Path, max_pixels: int) -> _Input:
    try:
        st = path.stat()
    except OSError:
        raise _Unreadable(f"input image {path.name} is missing") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _INPUTS_LOCK:
        if key in _INPUTS:
            _INPUTS.move_to_end(key)
            return _INPUTS[key]
    grey = _load_grey(path, max_pixels)
    item = _Input(grey, _Pyramid(grey), _thumb(grey))
    with _INPUTS_LOCK:
        _INPUTS[key] = item
        while len(_INPUTS) > _INPUTS_KEPT:
            _INPUTS.popitem(last=False)
    return item


def _thumb(grey: np.ndarray) -> np.ndarray:
    return cv2.resize(grey, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------

def check_executed(c: _Context) -> Check:
    name, turns, kind = "executed", c.code_turns, c.t.kind
    if kind not in KINDS:
        return Check(name, FAIL, f"unknown trajectory kind {kind!r}")
    if kind == "direct":
        if turns:
            return Check(name, FAIL, f"a direct answer should have no code, found {len(turns)} code turn(s)")
        return Check(name, SKIP, "direct answer: no code to execute")
    if not turns:
        return Check(name, FAIL, f"a {kind} trajectory has no code turn")
    if kind in ("error_correction", "further_enhancement") and len(turns) < 2:
        return Check(name, FAIL, f"a {kind} trajectory needs at least two code turns, found 1")
    missing = [i for i, t in enumerate(turns, 1) if t.result is None]
    if missing:
        return Check(name, FAIL, f"code turn(s) {_list(missing)} were not executed")
    failed = [i for i, t in enumerate(turns, 1) if t.result.kind == "error"]
    if kind == "error_correction":
        last = turns[-1].result
        if last.kind == "error":
            return Check(name, FAIL, f"the last code turn still fails ({_error(last)})")
        return Check(name, PASS, f"the last of {len(turns)} code turns ran"
                     + (f" (turn(s) {_list(failed)} failed first, as intended)" if failed else ""))
    if failed:
        first = turns[failed[0] - 1].result
        return Check(name, FAIL, f"code turn(s) {_list(failed)} failed (turn {failed[0]}: {_error(first)})")
    return Check(name, PASS, f"all {len(turns)} code turn(s) ran")


def check_result_kind(c: _Context) -> Check:
    name = "result_kind"
    want = EXPECTED_RESULT.get(c.task)
    if want is None:
        return Check(name, SKIP, f"no expected result kind for task {c.task!r}")
    if not c.code_turns:
        return Check(name, SKIP, "no code turn")
    r = c.last
    if r is None:
        return Check(name, FAIL, "the last code turn has no result")
    got = f"{r.kind} result" + (f" with {len(r.images)} image(s)" if r.images else "")
    if want == "image":
        ok = r.kind == "image" and bool(r.images)
    else:
        ok = r.kind == "text" and bool(r.text.strip())
    verb = "ends with" if ok else f"should end with {want} output, ends with"
    return Check(name, PASS if ok else FAIL, f"a {c.task} trajectory {verb} a {got}")


def check_image_sanity(c: _Context) -> Check:
    name, cfg = "image_sanity", c.cfg
    images = c.produced()
    if not images:
        return Check(name, SKIP, "no produced images")
    try:
        reference = c.input().thumb
    except _Unreadable:
        reference = None        # text-only sample: nothing to be a copy of
    problems = []
    for rel in images:
        try:
            g = c.grey(rel)
        except _Unreadable as exc:
            problems.append(f"{rel}: {exc}")
            continue
        h, w = g.shape
        std = float(g.std())
        if min(h, w) < cfg.min_side:
            problems.append(f"{rel}: {w}x{h} has a side below {cfg.min_side} px")
        elif max(h, w) / min(h, w) > cfg.max_aspect_ratio:
            problems.append(f"{rel}: aspect ratio {max(h, w) / min(h, w):.0f} > {cfg.max_aspect_ratio:g}")
        elif std <= cfg.blank_std:
            problems.append(f"{rel}: blank (grey std {std:.2f} <= {cfg.blank_std:g})")
        elif reference is not None:
            diff = float(np.abs(_thumb(g) - reference).mean())
            if diff <= cfg.identical_diff:
                problems.append(f"{rel}: a copy of the input (mean difference {diff:.2f} <= "
                                f"{cfg.identical_diff:g} at 128x128)")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        return Check(name, FAIL, "; ".join(problems[:3]) + more)
    return Check(name, PASS, f"{len(images)} image(s) decode, are large enough, not blank and "
                             "not a copy of the input")


def _semantic_gates(c: _Context, name: str, task: str, done: str, truth, truth_name: str):
    """What the crop, rotation and contrast checks decide before looking at pixels: the task,
    a code turn, the ground truth, a produced image that loads. Returns (a Check, None) when one
    of these decides, else (None, (the produced image in grey, the input))."""
    if c.task != task:
        return Check(name, SKIP, f"not a {'rotation' if task == 'rotate' else task} task ({c.task})"), None
    if not c.code_turns:
        return Check(name, SKIP, f"no code turn: nothing was {done}"), None
    if truth is None:
        return Check(name, SKIP, f"the sample has no ground-truth {truth_name}"), None
    rel = c.final_image()
    if rel is None:
        return Check(name, FAIL, "no image was produced"), None
    try:
        return None, (c.grey(rel), c.input())
    except _Unreadable as exc:
        return Check(name, FAIL, str(exc)), None


def check_crop_semantics(c: _Context) -> Check:
    name, cfg = "crop_semantics", c.cfg
    box = c.gt_box()
    gate, loaded = _semantic_gates(c, name, "crop", "cropped", box, "box")
    if gate is not None:
        return gate
    needle, inp = loaded
    found = _locate(needle, inp.pyramid, cfg, cfg.zoom_min, cfg.zoom_max, clip=cfg.crop_band_clip)
    if found is None or found.score < cfg.match_min_score:
        best = "no usable match" if found is None else f"best match {found.score:.2f}"
        return Check(name, FAIL, f"the produced image was not found in the input ({best} < "
                                 f"{cfg.match_min_score:g})")
    H, W = inp.grey.shape
    where = f"the crop {_fmt_box(found.box)} at {found.zoom:.2f}x (match {found.score:.2f})"
    share = _area(found.box) / (W * H)
    if share > cfg.crop_max_area and share > 2 * _area(box) / (W * H):   # unless the target is huge
        return Check(name, FAIL, f"{where} covers {share:.0%} of the input (> "
                                 f"{cfg.crop_max_area:.0%}): not a zoom-in")
    cov = _coverage(found.box, box)
    ok = cov >= cfg.crop_coverage
    return Check(name, PASS if ok else FAIL, f"{where} holds {cov:.0%} of the target box "
                 f"{list(box)} ({'>=' if ok else '<'} {cfg.crop_coverage:.0%})")


def check_rotation_semantics(c: _Context) -> Check:
    name, cfg = "rotation_semantics", c.cfg
    try:
        angle = float(c.meta["angle"])
    except (KeyError, TypeError, ValueError):
        angle = None
    gate, loaded = _semantic_gates(c, name, "rotate", "rotated", angle, "angle")
    if gate is not None:
        return gate
    out, inp = loaded
    v = _rotation_verdict(inp.grey, out, angle, cfg)
    return Check(name, PASS if v.ok else FAIL, v.reason)


def check_contrast_semantics(c: _Context) -> Check:
    name, cfg = "contrast_semantics", c.cfg
    box = c.gt_box()
    gate, loaded = _semantic_gates(c, name, "contrast", "enhanced", box, "box for the target")
    if gate is not None:
        return gate
    out, inp = loaded
    grey = inp.grey
    H, W = grey.shape
    oh, ow = out.shape
    region, how = None, ""
    if abs(ow / W - oh / H) <= 0.01 * max(ow / W, oh / H):      # the whole image, maybe resized
        score = _aligned_score(grey, out, box)
        if score >= cfg.match_min_score:
            region, how = (0.0, 0.0, float(W), float(H)), "the whole image" + (
                "" if (ow, oh) == (W, H) else f" resized to {ow}x{oh}")
    if region is None:
        found = _locate(out, inp.pyramid, cfg, cfg.zoom_min, cfg.zoom_max)
        if found is None or found.score < cfg.match_min_score:
            best = "no usable match" if found is None else f"best match {found.score:.2f}"
            return Check(name, FAIL, "the output is neither the input nor a crop of it that "
                                     f"could be located ({best} < {cfg.match_min_score:g})")
        region, how = found.box, f"the crop {_fmt_box(found.box)} at {found.zoom:.2f}x"
    cov = _coverage(region, box)
    if cov < cfg.crop_coverage:
        return Check(name, FAIL, f"{how} keeps {cov:.0%} of the target box {list(box)} (< "
                                 f"{cfg.crop_coverage:.0%})")
    inter = (max(region[0], box[0]), max(region[1], box[1]),
             min(region[2], box[2]), min(region[3], box[3]))
    sx, sy = ow / (region[2] - region[0]), oh / (region[3] - region[1])
    ox1, oy1 = int(round((inter[0] - region[0]) * sx)), int(round((inter[1] - region[1]) * sy))
    ox2, oy2 = int(round((inter[2] - region[0]) * sx)), int(round((inter[3] - region[1]) * sy))
    ix1, iy1, ix2, iy2 = (int(round(v)) for v in inter)
    before = _rms(grey[iy1:iy2, ix1:ix2])
    after = _rms(out[max(0, oy1):min(oh, oy2), max(0, ox1):min(ow, ox2)])
    gain = after / before if before > 0 else math.inf
    ok = gain >= cfg.contrast_gain
    return Check(name, PASS if ok else FAIL, f"target RMS contrast {before:.3f} -> {after:.3f} "
                 f"(x{gain:.2f} {'>=' if ok else '<'} {cfg.contrast_gain:g}) in {how}")


def check_computation(c: _Context) -> Check:
    name = "computation"
    if c.task != "computation":
        return Check(name, SKIP, f"not a computation task ({c.task})")
    if not c.code_turns:
        return Check(name, SKIP, "no code turn: nothing was computed")
    truth = _computation_truth(c)
    if truth is None:
        return Check(name, SKIP, "the sample has no numeric ground truth")
    exact, shown, places = truth
    printed, why = _printed_value(c)
    if printed is None:
        return Check(name, FAIL, why)
    tol = c.cfg.numeric_tolerance
    ok = (close(printed, exact, tol) or (shown is not None and close(printed, shown, tol))
          or (places is not None and shown is not None and round_to(printed, places) == shown))
    target = format_number(exact) + (f" (shown as {format_number(shown)})" if shown is not None
                                and shown != exact else "")
    return Check(name, PASS if ok else FAIL,
                 f"printed {format_number(printed)} {'equals' if ok else 'differs from'} the ground truth {target}")


def check_answer(c: _Context) -> Check:
    name = "answer"
    truth = (c.sample.answer or "").strip()
    if not truth:
        return Check(name, SKIP, "the sample has no ground-truth answer")
    given = final_answer(c.t.answer)
    if not given:
        return Check(name, FAIL, "the answer is empty")
    ok, how = answers_match(given, truth, c.options(), c.cfg.numeric_tolerance)
    return Check(name, PASS if ok else FAIL, f"{_short(given)} {'matches' if ok else 'does not match'} "
                                             f"the ground truth {_short(truth)} ({how})")


def check_consistency(c: _Context) -> Check:
    name = "consistency"
    if c.task in IMAGE_TASKS:
        return Check(name, SKIP, "an image result: comparing the answer with it needs OCR (not done)")
    if c.task != "computation":
        return Check(name, SKIP, f"no sandbox value to compare for task {c.task!r}")
    if not c.code_turns:
        return Check(name, SKIP, "no code turn: no sandbox output to compare")
    printed, why = _printed_value(c)
    if printed is None:
        return Check(name, FAIL, why)
    given = final_answer(c.t.answer)
    options = c.options()
    letter = choice(given, options) if options else None
    stated, stated_text = stated_number(given, options)
    said = f"option {letter} ({stated_text!r})" if letter else _short(given)
    if stated is None:
        return Check(name, FAIL, f"the answer {said} is not a number; the code printed {format_number(printed)}")
    ok = agrees_with_printed(stated, stated_text, printed, c.cfg.numeric_tolerance)
    return Check(name, PASS if ok else FAIL,
                 f"the answer {said} {'agrees' if ok else 'disagrees'} with the printed {format_number(printed)}")


_CHECK_FUNCTIONS: dict[str, Callable[[_Context], Check]] = {
    "executed": check_executed, "result_kind": check_result_kind,
    "image_sanity": check_image_sanity, "crop_semantics": check_crop_semantics,
    "rotation_semantics": check_rotation_semantics,
    "contrast_semantics": check_contrast_semantics, "computation": check_computation,
    "answer": check_answer, "consistency": check_consistency,
}
assert tuple(_CHECK_FUNCTIONS) == CHECKS


# ---------------------------------------------------------------------------------------------
# The optional judge: a VLM decides what the rules passed (or could not check)
# ---------------------------------------------------------------------------------------------

JUDGE_INSTRUCTIONS = (
    "You audit training data for a vision-language model that answers questions about images by "
    "reasoning and writing Python code that a sandbox runs (cropping and zooming, rotating, "
    "enhancing contrast, computing). Below are the question, the input image, the model's "
    "reasoning and code, what the sandbox returned for each code block (the images the code "
    "produced and/or the text it printed), and the model's final answer.\n"
    "Decide whether the sandbox's result supports the reasoning and helps answer the question: a "
    "crop shows the region the reasoning is about, a rotated image is upright, an enhanced image "
    "makes the target easier to see, a printed value is the one the reasoning and the answer "
    "use. An earlier attempt may fail or miss when a later one fixes it: judge the final result. "
    "Say no when the result is irrelevant, shows the wrong region, contradicts the reasoning, or "
    "the answer does not follow from it. Do not judge style.\n"
    "Reply with exactly one word: yes or no.")
JUDGE_QUESTION = ("Does the sandbox's result support the reasoning and help answer the question? "
                  "Reply yes or no.")


def audit_many(trajectories: Sequence[Trajectory], samples: Mapping[str, Sample],
               store_root: str | Path, config: AuditConfig = AuditConfig(),
               judge: Judge | None = None) -> list[Trajectory]:
    """`audit` for each trajectory (`samples` by id); with a judge, the trajectories that failed
    no rule check are then put to it in one batch and every audit ends with a JUDGE check."""
    root = Path(store_root)
    for t in trajectories:
        if t.sample_id not in samples:
            raise KeyError(f"trajectory {t.id}: its sample {t.sample_id!r} is not among the "
                           f"{len(samples)} samples given")
    if config.workers is not None and config.workers < 1:
        raise ValueError(f"AuditConfig.workers must be >= 1 or None (got {config.workers})")
    with ThreadPoolExecutor(config.workers or os.cpu_count() or 1) as pool:
        done = list(pool.map(lambda t: audit(t, samples[t.sample_id], root, config), trajectories))
    if judge is None:
        return done
    if config.judge_batch < 1:
        raise ValueError(f"AuditConfig.judge_batch must be >= 1 (got {config.judge_batch})")
    verdicts: dict[int, Check] = {}
    eligible = []
    for i, t in enumerate(done):
        failed = [c.name for c in t.audit if c.verdict == FAIL]
        if failed:
            verdicts[i] = Check(JUDGE, SKIP, f"not asked: rule check(s) {', '.join(failed)} failed")
        elif not t.code_turns:
            verdicts[i] = Check(JUDGE, SKIP, "not asked: a direct answer has no sandbox result to judge")
        else:
            eligible.append(i)
    model = getattr(getattr(judge.client, "config", None), "model", "the judge")
    # In chunks: a question carries its images, and a real shard has thousands of trajectories.
    for start in range(0, len(eligible), config.judge_batch):
        asked, questions = [], []
        for i in eligible[start:start + config.judge_batch]:
            try:
                questions.append(judge_question(done[i], samples[done[i].sample_id], root, config))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                verdicts[i] = Check(JUDGE, SKIP, f"not asked: an image could not be shown ({exc})")
                continue
            asked.append(i)
        for i, v in zip(asked, judge.verdicts(questions), strict=True):
            if v.value is None:
                verdicts[i] = Check(JUDGE, SKIP, f"no verdict: {v.reason}")
            else:
                says = "supports the reasoning and helps answer" if v.value else \
                    "does not support the reasoning or help answer"
                verdicts[i] = Check(JUDGE, PASS if v.value else FAIL,
                                    f"{model}: the result {says} (reply {v.reason[:40]!r})")
    return [replace(t, audit=[*t.audit, verdicts[i]], passed=t.passed and verdicts[i].verdict != FAIL)
            for i, t in enumerate(done)]


def judge_question(t: Trajectory, sample: Sample, root: Path, cfg: AuditConfig) -> list:
    """What the judge is shown, in order (`pipelines.core.judge` question parts): our instructions,
    the question (and options), the input image(s), each turn's reasoning, code and sandbox
    result with its images (the last `judge_max_images` produced), the final answer."""
    n = cfg.judge_text_chars
    parts: list = [JUDGE_INSTRUCTIONS, f"\n\nQuestion: {sample.question}"]
    options = parse_options((sample.meta or {}).get("options"))
    if options and not any(f"{k}. {v}" in sample.question for k, v in options.items()):
        parts.append("\nOptions: " + "; ".join(f"{k}. {v}" for k, v in options.items()))
    if sample.images:
        parts.append("\nInput image:" if len(sample.images) == 1 else f"\nInput images ({len(sample.images)}):")
        parts += [_judge_image(root / im.relpath, cfg.judge_image_side) for im in sample.images]
    else:
        parts.append("\n(The question has no image.)")
    produced = [(k, p) for k, turn in enumerate(t.turns) if turn.result is not None
                for p in turn.result.images]
    shown = set(produced[-cfg.judge_max_images:]) if cfg.judge_max_images > 0 else set()
    for k, turn in enumerate(t.turns):
        if turn.reasoning.strip():
            parts.append(f"\n\nReasoning:\n{_cut(turn.reasoning.strip(), n)}")
        if turn.code is None:
            continue
        parts.append(f"\n\nCode:\n```python\n{_cut(turn.code, n)}\n```\nSandbox result: ")
        r = turn.result
        if r is None:
            parts.append("(not executed)")
            continue
        if r.kind == "error":
            parts.append(f"error ({r.error_kind or 'error'}): {_cut(r.text, n)}")
            continue
        parts.append(f"printed:\n{_cut(r.text, n)}" if r.text.strip() else "printed nothing")
        if r.images:
            mine = [p for p in r.images if (k, p) in shown]
            parts.append(f"\nproduced {len(r.images)} image(s)"
                         + (f", {len(r.images) - len(mine)} not shown" if len(mine) < len(r.images) else "")
                         + (":" if mine else ""))
            for p in mine:
                parts.append(_judge_image(_store_path(root, p), cfg.judge_image_side))
    parts.append(f"\n\nFinal answer: {_cut(t.answer, n)}\n\n{JUDGE_QUESTION}")
    return parts


def _judge_image(path: Path, side: int) -> bytes:
    """The image's bytes as stored, or re-encoded (JPEG) at `side` px when larger."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= side and im.format in ("JPEG", "PNG", "WEBP", "GIF"):
            return data
        im.thumbnail((side, side), Image.LANCZOS)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _store_path(root: Path, relpath: str) -> Path:
    parts = PurePosixPath(relpath).parts
    if not parts or PurePosixPath(relpath).is_absolute() or ".." in parts:
        raise ValueError(f"{relpath!r} is not a path inside the image store")
    return root / relpath


def _cut(text: str | None, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + f" [... {len(text) - n} more characters]"


# ---------------------------------------------------------------------------------------------
# Locating an image inside another: multi-scale template matching
# ---------------------------------------------------------------------------------------------

class _Pyramid:
    """A grey image's INTER_AREA reductions by powers of sqrt(2), built on demand (even levels
    by halving, odd ones one sqrt(2) step below the even level above), each also kept
    band-passed for matching (`_band`)."""

    STEP = 2 ** -0.5

    def __init__(self, grey: np.ndarray):
        self.full = grey
        self._raw: dict[int, np.ndarray] = {0: grey}
        self._band: dict[tuple[int, float | None], np.ndarray] = {}

    def index(self, scale: float) -> int:
        """The coarsest level whose scale is still >= `scale`."""
        if scale >= 1.0:
            return 0
        return max(0, int(math.floor(math.log(scale) / math.log(self.STEP) + 1e-9)))

    def raw(self, k: int) -> np.ndarray:
        if k not in self._raw:
            src = self.raw(k - 2 if k % 2 == 0 else k - 1)
            f = 0.5 if k % 2 == 0 else self.STEP
            size = (max(1, round(src.shape[1] * f)), max(1, round(src.shape[0] * f)))
            self._raw[k] = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
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
            nxt = self.raw(k + 1)
            if nxt.shape[1] < w or nxt.shape[0] < h or min(nxt.shape) < 2:
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


def _template(needle: _Pyramid, tw: int, th: int, clip: float | None) -> tuple[np.ndarray, int] | None:
    """The needle resized to tw x th and band-passed, minus the margin whose filter saw the
    border; returns it and the margin (None when too small or featureless)."""
    m = _TEMPLATE_MARGIN if min(tw, th) >= 2 * _TEMPLATE_MARGIN + 10 else 0
    if min(tw, th) - 2 * m < 6:
        return None
    tpl = _band(needle.resized(tw, th), clip)
    if m:
        tpl = tpl[m:th - m, m:tw - m]
    if float(tpl.std()) < 0.2:
        return None
    return np.ascontiguousarray(tpl), m


@dataclass
class _Found:
    score: float                                # TM_CCOEFF_NORMED (band-passed) at the best place
    box: tuple[float, float, float, float]      # x1, y1, x2, y2 in full-resolution pixels
    zoom: float                                 # needle pixels per haystack pixel


def _zoom_grid(lo: float, hi: float, step: float) -> list[float]:
    n = max(1, math.ceil(math.log(hi / lo) / math.log(step)))
    return [lo * (hi / lo) ** (i / n) for i in range(n + 1)]


def _locate(needle: np.ndarray, pyr: _Pyramid, cfg: AuditConfig, zoom_lo: float, zoom_hi: float,
            max_scale: float = 0.5, early_exit: float | None = None, keep: int = 6,
            clip: float | None = None) -> _Found | None:
    """Where `needle` (a possibly zoomed crop) lies in the pyramid's image.

    Coarse: for each zoom on a geometric grid, the needle shrunk to the region it would cover
    is matched against the coarsest pyramid level where that template keeps a short side of
    ~coarse_template_side px (never finer than `max_scale`): big regions are searched small,
    small regions finer. Zooms run from low to high, i.e. from cheap to expensive, and a peak
    that refines to >= early_exit ends the search. Refinement (`_refine`): the `keep` best
    distinct peaks are matched again in local windows of the full image at up to full
    resolution, over ever finer zooms (+-14 %, +-3 %, +-0.5 %)."""
    ph, pw = needle.shape
    H, W = pyr.full.shape
    if min(ph, pw) < 8 or float(needle.std()) < 1.0:
        return None
    early_exit = cfg.early_exit_score if early_exit is None else early_exit
    needle_pyr = _Pyramid(needle)
    floor = min(1.0, 128 / max(W, H))       # never search a haystack smaller than ~128 px
    peaks: list[tuple] = []         # score, zoom, cx, cy, (slack x, slack y)
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
            best = _refine(needle_pyr, pyr, cfg, *found[0][1:], clip)
            if best is not None and best.score >= early_exit:
                return best
    chosen: list[tuple] = []
    for p in sorted(peaks, key=lambda p: -p[0]):
        if all(math.hypot(p[2] - q[2], p[3] - q[3]) > 0.25 * pw / p[1]
               or max(p[1] / q[1], q[1] / p[1]) > 1.15 for q in chosen):
            chosen.append(p)
        if len(chosen) == keep:
            break
    results = [r for p in chosen if (r := _refine(needle_pyr, pyr, cfg, *p[1:], clip)) is not None]
    return max(results, key=lambda r: r.score, default=None)


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


def _refine(needle: _Pyramid, pyr: _Pyramid, cfg: AuditConfig, z0: float, cx: float, cy: float,
            slack: tuple[float, float], clip: float | None) -> _Found | None:
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


def _search_local(needle: _Pyramid, pyr: _Pyramid, zooms: list[float], cx: float, cy: float,
                  slack: tuple[float, float], side: float, clip: float | None) -> _Found | None:
    """The best match of the needle, at each zoom, for regions centred within `slack` px of
    (cx, cy); the window is cut from the full image and reduced so the template keeps a short
    side of `side` px (or full resolution)."""
    ph, pw = needle.full.shape
    full = pyr.full
    H, W = full.shape
    best = None
    for z in zooms:
        rw, rh = pw / z, ph / z
        if rw > W or rh > H:
            continue
        a = min(1.0, side / min(rw, rh))
        border = _BAND_OUTER / a                   # context for the band filter, full-res px
        X0 = max(0, int(math.floor(cx - rw / 2 - slack[0] - border)))
        Y0 = max(0, int(math.floor(cy - rh / 2 - slack[1] - border)))
        X1 = min(W, int(math.ceil(cx + rw / 2 + slack[0] + border)))
        Y1 = min(H, int(math.ceil(cy + rh / 2 + slack[1] + border)))
        win = full[Y0:Y1, X0:X1]
        if a < 1.0:
            size = (max(1, round((X1 - X0) * a)), max(1, round((Y1 - Y0) * a)))
            win = cv2.resize(win, size, interpolation=cv2.INTER_AREA)
        sx, sy = win.shape[1] / (X1 - X0), win.shape[0] / (Y1 - Y0)
        tw, th = round(rw * sx), round(rh * sy)
        if tw > win.shape[1] or th > win.shape[0] or (made := _template(needle, tw, th, clip)) is None:
            continue
        tpl, m = made
        res = cv2.matchTemplate(_band(win, clip, dither=True), tpl, cv2.TM_CCOEFF_NORMED)
        _, score, _, (lx, ly) = cv2.minMaxLoc(res)
        if not math.isfinite(score) or (best is not None and score <= best.score):
            continue
        bx, by = X0 + (lx - m) / sx, Y0 + (ly - m) / sy
        best = _Found(float(score), (bx, by, bx + rw, by + rh), pw / rw)
    return best


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _coverage(region, box) -> float:
    """The share of `box` inside `region`."""
    inter = (max(region[0], box[0]), max(region[1], box[1]), min(region[2], box[2]), min(region[3], box[3]))
    return _area(inter) / _area(box) if _area(box) > 0 else 0.0


def _fmt_box(b) -> str:
    return "[" + ", ".join(str(int(round(v))) for v in b) + "]"


# ---------------------------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------------------------

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


@dataclass
class _RotationVerdict:
    ok: bool
    reason: str


def _residual_label(d: float, angle: float) -> str:
    if abs(_wrap(d - angle)) < 1e-6:
        return "not rotated at all"
    if abs(_wrap(d - 2 * angle)) < 1e-6:
        return "rotated the wrong way"
    return f"off by {_wrap(d):+.0f} deg"


ROTATION_STEP = 3.0         # degrees between residual hypotheses


def _wrap(d: float) -> float:
    return (d + 180.0) % 360.0 - 180.0


def _rotation_verdict(grey: np.ndarray, out: np.ndarray, angle: float,
                      cfg: AuditConfig) -> _RotationVerdict:
    """Is `out` the input turned upright? A residual hypothesis d says the output is the upright
    image turned d degrees further counter-clockwise; it scores how well the output's central
    half is located (`_locate`) in the input turned by d - angle, all at ~rotation_side px,
    where a hypothesis 1.5 deg off still scores > 0.9 and a wrong one < 0.8.

    Fast path: d = 0 scores >= rotation_fast_score: upright.
    Otherwise residuals -tol-2step .. tol+2step (step ROTATION_STEP) and the far alternatives
    (90, 180, 270, not rotated, rotated the wrong way) are all scored; the best must be a near
    one, score >= rotation_min_score, and its interpolated residual lie within the tolerance."""
    a = min(1.0, cfg.rotation_side / max(grey.shape))
    small = cv2.resize(grey, None, fx=a, fy=a, interpolation=cv2.INTER_AREA) if a < 1 else grey
    oh, ow = out.shape
    centre = out[oh // 4: oh - oh // 4, ow // 4: ow - ow // 4]
    # Output px per small-input px is zoom / a; shrink the needle once so zoom_min maps to 1:1.
    f = min(1.0, a / cfg.zoom_min)
    if f < 1:
        centre = cv2.resize(centre, (max(1, round(centre.shape[1] * f)), max(1, round(centre.shape[0] * f))),
                            interpolation=cv2.INTER_AREA)
    lo, hi = cfg.zoom_min * f / a, cfg.rotation_zoom_max * f / a
    scores: dict[float, float] = {}

    def score(d: float) -> float:
        d = round(d, 6)
        if d not in scores:
            found = _locate(centre, _Pyramid(_rotate(small, d - angle)), cfg, lo, hi,
                            max_scale=1.0, early_exit=1.01, keep=2)
            scores[d] = found.score if found is not None else -1.0
        return scores[d]

    tol, step = cfg.rotation_tolerance_deg, ROTATION_STEP

    def residual_at(d: float) -> float:                  # parabola through d and its neighbours
        s, left, right = score(d), score(d - step), score(d + step)
        denom = left - 2 * s + right
        return d + (step * 0.5 * (left - right) / denom if denom < 0 else 0.0)

    if score(0.0) >= cfg.rotation_fast_score:
        return _RotationVerdict(True, f"upright: matches the input turned by {-angle:+g} deg "
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
        return _RotationVerdict(False, f"the output looks {_residual_label(d_far, angle)} "
                                       f"(match {s_far:.2f}) rather than upright (best {s_up:.2f})")
    if s_up < cfg.rotation_min_score:
        return _RotationVerdict(False, "the output matches neither the input turned upright nor "
                                       f"any tested angle (best {max(s_up, s_far):.2f} < "
                                       f"{cfg.rotation_min_score:g})")
    residual = residual_at(best_near) if abs(best_near) < n * step else best_near
    if abs(residual) > tol:
        return _RotationVerdict(False, f"the output is tilted ~{residual:+.1f} deg from upright "
                                       f"(> {tol:g}; match {s_up:.2f})")
    return _RotationVerdict(True, f"upright within {tol:g} deg (residual ~{residual:+.1f} deg, "
                                  f"match {s_up:.2f})")


# ---------------------------------------------------------------------------------------------
# Contrast
# ---------------------------------------------------------------------------------------------

def _rms(grey: np.ndarray) -> float:
    return float(grey.std()) / 255.0 if grey.size else 0.0


def _aligned_score(grey: np.ndarray, out: np.ndarray, box) -> float:
    """Correlation of the output (the whole input, maybe resized) with the input around the
    target box: does the output show the input's content where the target is?"""
    H, W = grey.shape
    oh, ow = out.shape
    bw, bh = box[2] - box[0], box[3] - box[1]
    x1, y1 = max(0, box[0] - bw // 2), max(0, box[1] - bh // 2)
    x2, y2 = min(W, box[2] + bw // 2), min(H, box[3] + bh // 2)
    a = grey[y1:y2, x1:x2].astype(np.float32)
    sx, sy = ow / W, oh / H
    b = out[int(y1 * sy):max(int(y1 * sy) + 1, int(round(y2 * sy))),
            int(x1 * sx):max(int(x1 * sx) + 1, int(round(x2 * sx)))]
    if b.shape != a.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    a, b = a - a.mean(), b.astype(np.float32) - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Computation values (answer parsing and matching live in pipelines.core.answers)
# ---------------------------------------------------------------------------------------------

def _printed_value(c: _Context) -> tuple[Fraction | None, str]:
    """The last number printed by the last code turn, or None and why not."""
    r = c.last
    if r is None:
        return None, "the last code turn has no result"
    if r.kind == "error":
        return None, f"the last code turn failed ({_error(r)}): nothing printed"
    value = last_printed_number(r.text or "")
    if value is not None:
        return value, ""
    return None, f"the code printed no number ({_short(r.text or '')})"


def _computation_truth(c: _Context) -> tuple[Fraction, Fraction | None, int | None] | None:
    """(exact value, the value as the answer shows it, decimal places of a `decimal:N` format)."""
    meta = c.meta
    fmt = str(meta.get("answer_format") or "")
    places = int(fmt.split(":")[1]) if re.fullmatch(r"decimal:\d+", fmt) else None
    shown_text = str(meta["answer_text"]) if meta.get("answer_text") is not None else (c.sample.answer or "")
    shown = as_number(shown_text)
    exact = _evaluate(meta.get("expression"), meta.get("values"))
    if exact is None:
        exact = shown
    if exact is None:
        return None
    if places is None and shown is not None and decimals(shown_text) and shown != exact:
        places = decimals(shown_text)
    return exact, shown, places


_SAFE_EXPR = re.compile(r"^[\w\s+\-*/().,^]*$")


def _evaluate(expression, values) -> Fraction | None:
    """The generator's `expression` over `values`, exactly (sympy), or None."""
    if not isinstance(expression, str) or not isinstance(values, dict) or len(expression) > 500:
        return None
    if not _SAFE_EXPR.match(expression) or "__" in expression:
        return None
    import sympy

    try:
        local = {str(k): sympy.Rational(str(v)) for k, v in values.items()}
        result = sympy.sympify(expression, locals=local)
        if result.is_Rational:
            return Fraction(int(result.p), int(result.q))
    except (sympy.SympifyError, TypeError, ValueError, SyntaxError, AttributeError):
        return None
    return None

# ---------------------------------------------------------------------------------------------
# Small formatting helpers
# ---------------------------------------------------------------------------------------------

def _list(items: list[int]) -> str:
    return ", ".join(str(i) for i in items)


def _error(r: Result) -> str:
    return f"{r.error_kind or 'error'}: {_short(r.text or '', 80)}"


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")
