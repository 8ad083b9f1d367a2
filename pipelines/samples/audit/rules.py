"""The audit's rule checks: one function per check, each `(Context) -> Check` with a verdict (pass /
fail / skip) and a reason a person can read. docs/audit.md states each check's rule; the order
they run in is `pipelines.samples.audit.CHECKS`."""

from __future__ import annotations

import math
import re
from fractions import Fraction

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
    round_to,
    stated_number,
)
from pipelines.core.trajectory import FAIL, KINDS, PASS, SKIP, Check, Result
from pipelines.samples.audit.context import Context, Unreadable, copy_difference
from pipelines.samples.audit.contrast import aligned_score, region_local_contrast, target_contrast
from pipelines.samples.audit.locate import area, coverage, locate, mean_std
from pipelines.samples.audit.rotation import rotation_verdict

# What the last code turn of each task must return.
EXPECTED_RESULT = {"crop": "image", "rotate": "image", "contrast": "image", "computation": "text"}
IMAGE_TASKS = ("crop", "rotate", "contrast")


def check_executed(c: Context) -> Check:
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


def check_result_kind(c: Context) -> Check:
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
    inferred = " (task inferred from the code and its output)" if c.task_inferred else ""
    return Check(name, PASS if ok else FAIL, f"a {c.task} trajectory{inferred} {verb} a {got}")


def check_image_sanity(c: Context) -> Check:
    name, cfg = "image_sanity", c.cfg
    images = c.produced()
    if not images:
        return Check(name, SKIP, "no produced images")
    try:
        reference = c.input()
    except Unreadable:
        reference = None        # text-only sample: nothing to be a copy of
    problems = []
    for rel in images:
        try:
            g = c.grey(rel)
        except Unreadable as exc:
            problems.append(f"{rel}: {exc}")
            continue
        h, w = g.shape
        if min(h, w) < cfg.min_side:
            problems.append(f"{rel}: {w}x{h} has a side below {cfg.min_side} px")
            continue
        if max(h, w) / min(h, w) > cfg.max_aspect_ratio:
            problems.append(f"{rel}: aspect ratio {max(h, w) / min(h, w):.0f} > {cfg.max_aspect_ratio:g}")
            continue
        mean, std = mean_std(g, exact_below=cfg.blank_std)
        if std <= cfg.blank_std:
            problems.append(f"{rel}: blank (grey std {std:.2f} <= {cfg.blank_std:g})")
        elif reference is not None:
            diff = copy_difference(g, mean, reference, cfg.identical_diff)
            if diff is not None and diff <= cfg.identical_diff:
                problems.append(f"{rel}: a copy of the input (mean difference {diff:.2f} <= "
                                f"{cfg.identical_diff:g} at 128x128)")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        return Check(name, FAIL, "; ".join(problems[:3]) + more)
    return Check(name, PASS, f"{len(images)} image(s) decode, are large enough, not blank and "
                             "not a copy of the input")


def _semantic_gates(c: Context, name: str, task: str, done: str, truth, truth_name: str,
                    truth_needed: bool = True):
    """What the crop, rotation and contrast checks decide before looking at pixels: the task,
    a code turn, the ground truth (unless the check has a rule without it), a produced image
    that loads. Returns (a Check, None) when one of these decides, else (None, (the produced
    image in grey, the input))."""
    if c.task != task:
        return Check(name, SKIP, f"not a {'rotation' if task == 'rotate' else task} task ({c.task})"), None
    if not c.code_turns:
        return Check(name, SKIP, f"no code turn: nothing was {done}"), None
    if truth is None and truth_needed:
        return Check(name, SKIP, f"the sample has no ground-truth {truth_name}"), None
    rel = c.final_image()
    if rel is None:
        return Check(name, FAIL, "no image was produced"), None
    try:
        return None, (c.grey(rel), c.input())
    except Unreadable as exc:
        return Check(name, FAIL, str(exc)), None


def _locate_crop(c: Context, name: str, needle, inp):
    """Where a produced image lies in the input, or (a failing Check, None)."""
    cfg = c.cfg
    H, W = inp.grey.shape
    found = locate(needle, inp.pyramid, cfg, cfg.zoom_min, cfg.zoom_max, clip=cfg.crop_band_clip,
                   hints=c.code_boxes(c.final_image(), W, H))
    if found is None or found.score < cfg.match_min_score:
        best = "no usable match" if found is None else f"best match {found.score:.2f}"
        return Check(name, FAIL, f"the produced image was not found in the input ({best} < "
                                 f"{cfg.match_min_score:g})"), None
    return None, found


def check_crop_semantics(c: Context) -> Check:
    name, cfg = "crop_semantics", c.cfg
    box = c.gt_box()
    gate, loaded = _semantic_gates(c, name, "crop", "cropped", box, "box", truth_needed=False)
    if gate is not None:
        return gate
    needle, inp = loaded
    missed, found = _locate_crop(c, name, needle, inp)
    if missed is not None:
        return missed
    H, W = inp.grey.shape
    where = f"the crop {_fmt_box(found.box)} at {found.zoom:.2f}x (match {found.score:.2f})"
    share = area(found.box) / (W * H)
    if box is None:     # a real pool: no target to hold, but a crop must lie inside and zoom in
        ok = share <= cfg.crop_max_area
        return Check(name, PASS if ok else FAIL, f"no ground-truth box: {where} lies inside the "
                     f"input and covers {share:.0%} of it ({'<=' if ok else '>'} {cfg.crop_max_area:.0%}"
                     f"{'' if ok else ': not a zoom-in'})")
    if share > cfg.crop_max_area and share > 2 * area(box) / (W * H):   # unless the target is huge
        return Check(name, FAIL, f"{where} covers {share:.0%} of the input (> "
                                 f"{cfg.crop_max_area:.0%}): not a zoom-in")
    cov = coverage(found.box, box)
    ok = cov >= cfg.crop_coverage
    return Check(name, PASS if ok else FAIL, f"{where} holds {cov:.0%} of the target box "
                 f"{list(box)} ({'>=' if ok else '<'} {cfg.crop_coverage:.0%})")


def check_rotation_semantics(c: Context) -> Check:
    name, cfg = "rotation_semantics", c.cfg
    try:
        angle = float(c.meta["angle"])
    except (KeyError, TypeError, ValueError):
        angle = None
    gate, loaded = _semantic_gates(c, name, "rotate", "rotated", angle,
                                   "angle (whether the output is upright is the judge's to say)")
    if gate is not None:
        return gate
    out, inp = loaded
    H, W = inp.grey.shape
    v = rotation_verdict(inp.grey, out, angle, cfg, hint=c.code_rotation(c.final_image(), W, H),
                         small=inp.reduced(cfg.rotation_side))
    return Check(name, PASS if v.ok else FAIL, v.reason)


def check_contrast_semantics(c: Context) -> Check:
    name, cfg = "contrast_semantics", c.cfg
    box = c.gt_box()
    gate, loaded = _semantic_gates(c, name, "contrast", "enhanced", box, "box for the target",
                                   truth_needed=False)
    if gate is not None:
        return gate
    out, inp = loaded
    grey = inp.grey
    H, W = grey.shape
    oh, ow = out.shape
    target = box if box is not None else (0, 0, W, H)   # a real pool: what the output shows
    region, how = None, ""
    if abs(ow / W - oh / H) <= 0.01 * max(ow / W, oh / H):      # the whole image, maybe resized
        score = aligned_score(grey, out, target)
        if score >= cfg.match_min_score:
            region, how = (0.0, 0.0, float(W), float(H)), "the whole image" + (
                "" if (ow, oh) == (W, H) else f" resized to {ow}x{oh}")
    if region is None:
        found = locate(out, inp.pyramid, cfg, cfg.zoom_min, cfg.zoom_max,
                       hints=c.code_boxes(c.final_image(), W, H))
        if found is None or found.score < cfg.match_min_score:
            best = "no usable match" if found is None else f"best match {found.score:.2f}"
            return Check(name, FAIL, "the output is neither the input nor a crop of it that "
                                     f"could be located ({best} < {cfg.match_min_score:g})")
        region, how = found.box, f"the crop {_fmt_box(found.box)} at {found.zoom:.2f}x"
    if box is None:
        before, after = region_local_contrast(grey, out, region)
        gain = after / before if before > 0 else math.inf
        ok = gain >= cfg.contrast_gain_no_truth
        return Check(name, PASS if ok else FAIL, f"no ground-truth box: local contrast of {how} "
                     f"{before:.3f} -> {after:.3f} (x{gain:.2f} {'>=' if ok else '<'} "
                     f"{cfg.contrast_gain_no_truth:g})")
    cov = coverage(region, box)
    if cov < cfg.crop_coverage:
        return Check(name, FAIL, f"{how} keeps {cov:.0%} of the target box {list(box)} (< "
                                 f"{cfg.crop_coverage:.0%})")
    before, after = target_contrast(grey, out, region, box)
    gain = after / before if before > 0 else math.inf
    ok = gain >= cfg.contrast_gain
    return Check(name, PASS if ok else FAIL, f"target RMS contrast {before:.3f} -> {after:.3f} "
                 f"(x{gain:.2f} {'>=' if ok else '<'} {cfg.contrast_gain:g}) in {how}")


def check_computation(c: Context) -> Check:
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


def check_answer(c: Context) -> Check:
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


def check_consistency(c: Context) -> Check:
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
        if c.task_inferred:      # code that printed a measurement on the way to a worded answer
            return Check(name, SKIP, f"the answer {said} states no number to compare with the "
                                     f"printed {format_number(printed)}")
        return Check(name, FAIL, f"the answer {said} is not a number; the code printed {format_number(printed)}")
    ok = agrees_with_printed(stated, stated_text, printed, c.cfg.numeric_tolerance)
    return Check(name, PASS if ok else FAIL,
                 f"the answer {said} {'agrees' if ok else 'disagrees'} with the printed {format_number(printed)}")


# ---------------------------------------------------------------------------------------------
# Computation values (answer parsing and matching live in pipelines.core.answers)
# ---------------------------------------------------------------------------------------------

def _printed_value(c: Context) -> tuple[Fraction | None, str]:
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


def _computation_truth(c: Context) -> tuple[Fraction, Fraction | None, int | None] | None:
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
# Small formatting helpers (for the reasons)
# ---------------------------------------------------------------------------------------------

def _fmt_box(b) -> str:
    return "[" + ", ".join(str(int(round(v))) for v in b) + "]"


def _list(items: list[int]) -> str:
    return ", ".join(str(i) for i in items)


def _error(r: Result) -> str:
    return f"{r.error_kind or 'error'}: {_short(r.text or '', 80)}"


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")
