"""The audit funnel (pipelines.samples.audit): each check accepts a good case and rejects a crafted bad
one. Samples come from the generated pool in a temporary store; trajectories are written by hand
and their "produced" images saved under the store root (no sandbox needed)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.schema import Sample
from pipelines.core.trajectory import FAIL, PASS, SKIP, Result, Trajectory, Turn
from pipelines.pool.generate import generate_samples
from pipelines.samples.audit import CHECKS, audit

# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """(store root, samples by task) for the first 60 generated samples of seed 0."""
    root = tmp_path_factory.mktemp("audit-store")
    store = ImageStore(root)
    by_task: dict[str, list[Sample]] = {}
    for s in generate_samples(0, 60, 0, store):
        by_task.setdefault(s.task, []).append(s)
    return root, by_task


def _rgb(root: Path, sample: Sample) -> Image.Image:
    return Image.open(root / sample.images[0].relpath).convert("RGB")


def _save(root: Path, img, name: str) -> str:
    """Write a produced image under the store root; returns its store-relative path."""
    rel = f"produced/{name}"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img.save(path, quality=92) if name.endswith(".jpg") else img.save(path)
    return rel


def _traj(sample: Sample, results: list[Result], answer: str | None = None,
          kind: str = "single") -> Trajectory:
    turns = [Turn(f"step {i}", f"# code {i}", r) for i, r in enumerate(results)]
    turns.append(Turn("So the answer follows."))
    return Trajectory(sample_id=sample.id, teacher="test", kind=kind, task=sample.task,
                      turns=turns, answer=sample.answer if answer is None else answer)


def _image(*rels: str) -> Result:
    return Result("image", "", list(rels))


def _verdicts(t: Trajectory) -> dict[str, str]:
    return {c.name: c.verdict for c in t.audit}


def _check(t: Trajectory, name: str):
    return next(c for c in t.audit if c.name == name)


def _text_sample(answer: str, meta: dict, task: str = "computation", question: str = "q") -> Sample:
    return Sample(question=question, images=[], source="test", origin_file="test", origin_row=0,
                  answer=answer, task=task, meta=meta)


def _margin_crop(img: Image.Image, box, margin: float, zoom: float) -> Image.Image:
    """The box grown by `margin` x its larger side on each side, clipped, zoomed."""
    x1, y1, x2, y2 = box
    g = margin * max(x2 - x1, y2 - y1)
    c = (max(0, int(x1 - g)), max(0, int(y1 - g)), min(img.width, int(x2 + g)), min(img.height, int(y2 + g)))
    crop = img.crop(c)
    return crop.resize((round(crop.width * zoom), round(crop.height * zoom)), Image.LANCZOS)


def _elsewhere(img: Image.Image, box, size, rng) -> tuple[int, int, int, int]:
    """A region of `size` that does not touch the box."""
    w, h = size
    x1, y1, x2, y2 = box
    for _ in range(200):
        ox, oy = int(rng.integers(0, img.width - w)), int(rng.integers(0, img.height - h))
        if ox > x2 + 20 or ox + w < x1 - 20 or oy > y2 + 20 or oy + h < y1 - 20:
            return ox, oy, ox + w, oy + h
    raise AssertionError("no free region")


# ---------------------------------------------------------------------------------------------
# The funnel's shape
# ---------------------------------------------------------------------------------------------

def test_every_check_runs_in_order_and_passed_means_no_failure(pool):
    root, by_task = pool
    s = by_task["crop"][0]
    rel = _save(root, _margin_crop(_rgb(root, s), s.meta["box"], 0.5, 2), "order.png")
    t = _traj(s, [_image(rel)])
    done = audit(t, s, root)
    assert [c.name for c in done.audit] == list(CHECKS)
    assert all(c.reason for c in done.audit)
    assert done.passed is True, done.audit
    assert t.audit == [] and t.passed is None             # the input is left alone
    # a failure anywhere still runs (and reports) every later check
    bad = audit(_traj(s, [_image(rel)], answer="certainly not"), s, root)
    assert [c.name for c in bad.audit] == list(CHECKS)
    assert bad.passed is False and _verdicts(bad)["answer"] == FAIL
    assert _verdicts(bad)["crop_semantics"] == PASS


# ---------------------------------------------------------------------------------------------
# executed / result_kind
# ---------------------------------------------------------------------------------------------

def test_executed(pool):
    root, by_task = pool
    s = by_task["crop"][0]
    good = _save(root, _margin_crop(_rgb(root, s), s.meta["box"], 0.5, 2), "exec.png")
    error = Result("error", "NameError: name 'croped' is not defined", error_kind="name_error")

    t = audit(_traj(s, [error]), s, root)
    assert _check(t, "executed").verdict == FAIL and "name_error" in _check(t, "executed").reason
    assert _check(t, "result_kind").verdict == FAIL
    assert t.passed is False

    t = audit(_traj(s, [error, _image(good)], kind="error_correction"), s, root)
    assert _check(t, "executed").verdict == PASS, _check(t, "executed").reason
    assert t.passed is True, t.audit

    t = audit(_traj(s, [_image(good), error], kind="error_correction"), s, root)
    assert _check(t, "executed").verdict == FAIL            # the fix must be the last turn

    t = audit(_traj(s, [error], kind="error_correction"), s, root)
    assert _check(t, "executed").verdict == FAIL            # a correction needs two rounds

    t = audit(_traj(s, [error, _image(good)], kind="single"), s, root)
    assert _check(t, "executed").verdict == FAIL            # only error_correction may fail first

    unexecuted = _traj(s, [_image(good)])
    unexecuted.turns[0].result = None
    assert _check(audit(unexecuted, s, root), "executed").verdict == FAIL

    direct = Trajectory(sample_id=s.id, teacher="test", kind="direct", task=s.task,
                        turns=[Turn("I can read it directly.")], answer=s.answer)
    t = audit(direct, s, root)
    assert _verdicts(t)["executed"] == SKIP
    assert all(_verdicts(t)[n] == SKIP for n in ("result_kind", "crop_semantics", "image_sanity"))
    no_code = Trajectory(sample_id=s.id, teacher="test", kind="single", task=s.task,
                         turns=[Turn("No code.")], answer=s.answer)
    assert _verdicts(audit(no_code, s, root))["executed"] == FAIL


def test_result_kind(pool):
    root, by_task = pool
    s = by_task["crop"][0]
    t = audit(_traj(s, [Result("text", "the sign is blue")]), s, root)
    assert _check(t, "result_kind").verdict == FAIL
    comp = _text_sample("74.6", {"values": {"a": 373}, "expression": "a / 5", "answer_format": "decimal:1"})
    t = audit(_traj(comp, [Result("text", "74.6\n")]), comp, root)
    assert _check(t, "result_kind").verdict == PASS
    t = audit(_traj(comp, [_image("produced/none.png")]), comp, root)
    assert _check(t, "result_kind").verdict == FAIL


# ---------------------------------------------------------------------------------------------
# image_sanity
# ---------------------------------------------------------------------------------------------

def test_image_sanity(pool):
    root, by_task = pool
    s = by_task["crop"][1]
    img = _rgb(root, s)

    good = _save(root, _margin_crop(img, s.meta["box"], 0.5, 2), "sane.png")
    assert _check(audit(_traj(s, [_image(good)]), s, root), "image_sanity").verdict == PASS

    bad_cases = {
        "copy": _save(root, img, "copy.jpg"),                              # re-encoded input
        "copy, resized": _save(root, img.resize((img.width // 2, img.height // 2)), "half.png"),
        "blank": _save(root, Image.new("RGB", (400, 300), (128, 128, 128)), "blank.png"),
        "below 28": _save(root, img.crop((0, 0, 20, 20)), "tiny.png"),
        "aspect ratio": _save(root, img.crop((0, 0, 1000, 1)).resize((6000, 28)), "strip.png"),
    }
    for expect, rel in bad_cases.items():
        check = _check(audit(_traj(s, [_image(rel)]), s, root), "image_sanity")
        assert check.verdict == FAIL and expect.split(",")[0] in check.reason, (expect, check)

    (root / "produced" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    check = _check(audit(_traj(s, [_image("produced/broken.png")]), s, root), "image_sanity")
    assert check.verdict == FAIL and "decode" in check.reason
    check = _check(audit(_traj(s, [_image("produced/missing.png")]), s, root), "image_sanity")
    assert check.verdict == FAIL and "missing" in check.reason
    for outside in ("../outside.png", "/etc/hostname", ""):        # never read outside the store
        check = _check(audit(_traj(s, [_image(outside)]), s, root), "image_sanity")
        assert check.verdict == FAIL and "inside the image store" in check.reason, (outside, check)


# ---------------------------------------------------------------------------------------------
# crop_semantics
# ---------------------------------------------------------------------------------------------

def _crop_samples(by_task, n=4):
    """Crop samples, the largest input first."""
    return sorted(by_task["crop"], key=lambda s: -s.images[0].width * s.images[0].height)[:n]


@pytest.mark.parametrize("zoom", [2, 3])
def test_crop_containing_the_box_passes(pool, zoom):
    root, by_task = pool
    for k, s in enumerate(_crop_samples(by_task)):
        img = _rgb(root, s)
        if k % 2:   # OpenCV, as teachers write it: BGR, cubic
            x1, y1, x2, y2 = s.meta["box"]
            g = max(x2 - x1, y2 - y1)
            bgr = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)[max(0, y1 - g):y2 + g, max(0, x1 - g):x2 + g]
            zoomed = cv2.resize(bgr, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
            rel = f"produced/cv2_{s.id}_{zoom}.jpg"
            cv2.imwrite(str(root / rel), zoomed)
        else:
            rel = _save(root, _margin_crop(img, s.meta["box"], 0.4, zoom), f"pil_{s.id}_{zoom}.jpg")
        t = audit(_traj(s, [_image(rel)]), s, root)
        check = _check(t, "crop_semantics")
        assert check.verdict == PASS, (s.meta, check)
        found = float(re.search(r"at ([\d.]+)x", check.reason).group(1))
        assert abs(found / zoom - 1) < 0.03, check.reason          # the zoom is recovered
        assert t.passed, t.audit


def test_crop_that_misses_the_box_fails(pool):
    root, by_task = pool
    rng = np.random.default_rng(0)
    for s in _crop_samples(by_task):
        img = _rgb(root, s)
        good = _margin_crop(img, s.meta["box"], 0.5, 1)
        region = _elsewhere(img, s.meta["box"], good.size, rng)
        miss = img.crop(region).resize((good.width * 2, good.height * 2), Image.LANCZOS)
        rel = _save(root, miss, f"miss_{s.id}.jpg")
        check = _check(audit(_traj(s, [_image(rel)]), s, root), "crop_semantics")
        assert check.verdict == FAIL, (s.meta, check)
        assert "holds 0%" in check.reason or "not found" in check.reason, check.reason


def test_crop_cutting_the_target_or_not_zooming_fails(pool):
    root, by_task = pool
    s = _crop_samples(by_task)[0]
    img = _rgb(root, s)
    x1, y1, x2, y2 = s.meta["box"]
    half = img.crop((x1 - 60, y1 - 60, (x1 + x2) // 2, y2 + 60))          # the box's left half
    rel = _save(root, half.resize((half.width * 3, half.height * 3), Image.LANCZOS), "half_box.png")
    check = _check(audit(_traj(s, [_image(rel)]), s, root), "crop_semantics")
    assert check.verdict == FAIL and "of the target box" in check.reason, check.reason

    big = img.crop((0, 0, int(img.width * 0.9), int(img.height * 0.9)) if x2 < img.width * 0.9
                   and y2 < img.height * 0.9 else (int(img.width * 0.1), int(img.height * 0.1), img.width, img.height))
    rel = _save(root, big, "not_a_zoom.png")
    check = _check(audit(_traj(s, [_image(rel)]), s, root), "crop_semantics")
    assert check.verdict == FAIL and "not a zoom-in" in check.reason, check.reason


def test_multi_round_crop_judges_the_last_image(pool):
    root, by_task = pool
    s = _crop_samples(by_task)[1]
    img = _rgb(root, s)
    wide = _save(root, _margin_crop(img, s.meta["box"], 3.0, 1), "wide.png")
    tight = _save(root, _margin_crop(img, s.meta["box"], 0.3, 3), "tight.png")
    wrong = _save(root, img.crop(_elsewhere(img, s.meta["box"], (300, 200), np.random.default_rng(1))), "wrong.png")
    t = audit(_traj(s, [_image(wide), _image(tight)], kind="further_enhancement"), s, root)
    assert t.passed, t.audit
    t = audit(_traj(s, [_image(wrong), _image(tight)], kind="error_correction"), s, root)
    assert t.passed, t.audit
    t = audit(_traj(s, [_image(tight), _image(wrong)], kind="error_correction"), s, root)
    assert _check(t, "crop_semantics").verdict == FAIL


# ---------------------------------------------------------------------------------------------
# rotation_semantics
# ---------------------------------------------------------------------------------------------

def _cv2_upright(img: Image.Image, angle: float) -> np.ndarray:
    """The teachers' OpenCV variant: warpAffine on an enlarged canvas, white border."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0)
    cos, sin = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    M[0, 2] += nw / 2 - w / 2
    M[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(a, M, (nw, nh), flags=cv2.INTER_CUBIC, borderValue=(255, 255, 255))


def test_rotation(pool):
    root, by_task = pool
    for s in by_task["rotate"][:3]:
        img, angle = _rgb(root, s), s.meta["angle"]
        good = {
            "pil": img.rotate(-angle, expand=True),
            "cv2": _cv2_upright(img, angle),
            "no expand": img.rotate(-angle, resample=Image.BICUBIC),
            "4 deg off": img.rotate(-angle + 4, expand=True),
        }
        bad = {
            "unrotated": img.copy(),
            "unrotated, smaller": img.resize((img.width * 3 // 4, img.height * 3 // 4)),
            "wrong way": img.rotate(angle, expand=True),
            "45 deg off": img.rotate(-angle + 45, expand=True),
            "90 deg off": img.rotate(-angle + 90, expand=True),
            "20 deg off": img.rotate(-angle - 20, expand=True),
        }
        for expect, cases in ((PASS, good), (FAIL, bad)):
            for name, out in cases.items():
                rel = _save(root, out, f"rot_{s.id}_{name.replace(' ', '_')}.jpg")
                check = _check(audit(_traj(s, [_image(rel)]), s, root), "rotation_semantics")
                assert check.verdict == expect, (angle, name, check)
        # the reason names what the output looks like
        rel = f"produced/rot_{s.id}_unrotated.jpg"
        assert "not rotated" in _check(audit(_traj(s, [_image(rel)]), s, root), "rotation_semantics").reason


# ---------------------------------------------------------------------------------------------
# contrast_semantics
# ---------------------------------------------------------------------------------------------

def _clahe(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lum, a, b = cv2.split(lab)
    lum = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(lum)
    return cv2.cvtColor(cv2.merge((lum, a, b)), cv2.COLOR_LAB2RGB)


def test_contrast(pool):
    root, by_task = pool
    rng = np.random.default_rng(2)
    for s in by_task["contrast"]:
        img = _rgb(root, s)
        rgb = np.asarray(img)
        x1, y1, x2, y2 = s.meta["box"]
        g = max(x2 - x1, y2 - y1) // 2
        c = (max(0, x1 - g), max(0, y1 - g), min(img.width, x2 + g), min(img.height, y2 + g))
        crop = np.ascontiguousarray(rgb[c[1]:c[3], c[0]:c[2]])
        other = _elsewhere(img, s.meta["box"], (c[2] - c[0], c[3] - c[1]), rng)
        good = {
            "clahe": _clahe(rgb),
            "stretched crop, 2x": cv2.resize(cv2.normalize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), None, 0, 255,
                                                           cv2.NORM_MINMAX), None, fx=2, fy=2,
                                             interpolation=cv2.INTER_CUBIC),
            "clahe crop": _clahe(crop),
        }
        bad = {
            "unchanged": img,
            "unchanged crop": Image.fromarray(crop),
            "clahe elsewhere": _clahe(np.ascontiguousarray(rgb[other[1]:other[3], other[0]:other[2]])),
        }
        for expect, cases in ((PASS, good), (FAIL, bad)):
            for name, out in cases.items():
                rel = _save(root, out, f"con_{s.id}_{name.replace(' ', '_').replace(',', '')}.png")
                t = audit(_traj(s, [_image(rel)]), s, root)
                check = _check(t, "contrast_semantics")
                assert check.verdict == expect, (s.meta["kind"], name, check)
                if expect == PASS:
                    assert t.passed, t.audit
        rel = f"produced/con_{s.id}_unchanged.png"
        t = audit(_traj(s, [_image(rel)]), s, root)
        assert "x1.00" in _check(t, "contrast_semantics").reason
        assert _check(t, "image_sanity").verdict == FAIL               # and a copy of the input


def test_contrast_equalised_document(pool):
    root, by_task = pool
    s = next(s for s in by_task["contrast"] if s.meta["kind"] != "dark_photo")
    grey = np.asarray(_rgb(root, s).convert("L"))
    rel = _save(root, cv2.equalizeHist(grey), f"eq_{s.id}.png")
    check = _check(audit(_traj(s, [_image(rel)]), s, root), "contrast_semantics")
    assert check.verdict == PASS, check


# ---------------------------------------------------------------------------------------------
# computation / consistency
# ---------------------------------------------------------------------------------------------

MEAN = {"values": {"s1": 92, "s2": 77, "s3": 69, "s4": 70, "s5": 65},
        "expression": "(s1 + s2 + s3 + s4 + s5) / 5", "answer_format": "decimal:1"}   # 74.6
RATIO = {"values": {"a": 3, "b": 4}, "expression": "a / b", "answer_format": "fraction"}  # 3/4
THIRDS = {"values": {"a": 2, "b": 3}, "expression": "a / b", "answer_format": "decimal:2"}  # 0.67


@pytest.mark.parametrize("meta, answer, printed, ok", [
    (MEAN, "74.6", "74.6", True),
    (MEAN, "74.6", "74.60000000000001\n", True),
    (MEAN, "74.6", "The average score is 74.6", True),
    (MEAN, "74.6", "373/5", True),
    (MEAN, "74.6", "75.2", False),
    (MEAN, "74.6", "74", False),
    (RATIO, "3/4", "0.75", True),
    (RATIO, "3/4", "3/4", True),
    (RATIO, "3/4", "0.7", False),
    (THIRDS, "0.67", "0.6666666666666666", True),
    (THIRDS, "0.67", "0.67", True),
    (THIRDS, "0.67", "0.66", False),
    ({}, "118", "118", True),                       # no expression: the answer is the truth
    ({}, "118", "117", False),
])
def test_computation(pool, meta, answer, printed, ok):
    root, _ = pool
    s = _text_sample(answer, meta)
    t = audit(_traj(s, [Result("text", printed)], answer=answer), s, root)
    check = _check(t, "computation")
    assert check.verdict == (PASS if ok else FAIL), check
    assert t.passed is ok, t.audit


def test_computation_needs_a_printed_number(pool):
    root, _ = pool
    s = _text_sample("74.6", MEAN)
    for result in (Result("text", "done"), Result("error", "division by zero", error_kind="runtime_error")):
        t = audit(_traj(s, [result]), s, root)
        assert _check(t, "computation").verdict == FAIL
        assert _check(t, "consistency").verdict == FAIL


def test_generated_computation_multiple_choice(pool):
    root, by_task = pool
    for s in by_task["computation"]:
        printed = s.meta.get("answer_text", s.answer)
        t = audit(_traj(s, [Result("text", f"{printed}\n")]), s, root)
        assert t.passed, (s.meta, t.audit)
        assert _check(t, "consistency").verdict == PASS
        if s.meta.get("options"):
            wrong = next(line[0] for line in s.meta["options"] if line[0] != s.answer)
            t = audit(_traj(s, [Result("text", printed)], answer=wrong), s, root)
            assert _verdicts(t)["answer"] == FAIL and _verdicts(t)["consistency"] == FAIL
            assert _verdicts(t)["computation"] == PASS


@pytest.mark.parametrize("answer, printed, ok", [
    ("74.6", "74.6", True),
    ("74.6", "74.60000000000001", True),
    ("0.67", "0.6666666666666666", True),          # the answer rounds the printed value
    ("75", "74.6", False),
    ("74.6", "74.5", False),
    ("seventy-four point six", "74.6", False),
])
def test_consistency(pool, answer, printed, ok):
    root, _ = pool
    s = _text_sample("", {})                          # consistency needs no ground truth
    t = audit(_traj(s, [Result("text", printed)], answer=answer), s, root)
    assert _check(t, "consistency").verdict == (PASS if ok else FAIL), _check(t, "consistency")


def test_consistency_skips_image_results(pool):
    root, by_task = pool
    s = by_task["crop"][0]
    rel = _save(root, _margin_crop(_rgb(root, s), s.meta["box"], 0.5, 2), "cons.png")
    check = _check(audit(_traj(s, [_image(rel)]), s, root), "consistency")
    assert check.verdict == SKIP and "OCR" in check.reason


# ---------------------------------------------------------------------------------------------
# answer
# ---------------------------------------------------------------------------------------------

OPTIONS = ["A. STOP 35", "B. STOP 34", "C. SLOW 34", "D. STOP 43"]


@pytest.mark.parametrize("given, ok", [
    ("B", True), ("B.", True), ("(B)", True), ("B. STOP 34", True), ("B) STOP 34", True),
    ("b", True), ("Answer: B", True), ("The answer is (B).", True), ("\\boxed{B}", True),
    ("<answer>B</answer>", True), ("**B**", True), ("STOP 34", True), ("stop 34.", True),
    ("C", False), ("A. STOP 34", False), ("STOP 35", False), ("Bread", False), ("", False),
])
def test_answer_multiple_choice(pool, given, ok):
    root, _ = pool
    s = _text_sample("B", {"options": OPTIONS, "answer_text": "STOP 34"}, task="no_code")
    direct = Trajectory(sample_id=s.id, teacher="test", kind="direct", task=s.task,
                        turns=[Turn("Looking at it.")], answer=given)
    check = _check(audit(direct, s, root), "answer")
    assert check.verdict == (PASS if ok else FAIL), check


@pytest.mark.parametrize("truth, given, ok", [
    ("STOP 34", "stop 34.", True), ("GN-4885", "gn 4885", True), ("left", "Left.", True),
    ("red", "The red", True), ("$26.52", "26.52", True), ("373.50", "373.5", True),
    ("3/4", "0.75", True), ("5705", "5,705", True), ("96.52", "The total is $96.52.", True),
    ("\\frac{1}{2}", "0.5", True), ("2\\sqrt{2}", "sqrt(8)", True), ("x^2+2x+1", "(x+1)^2", True),
    ("74.6", "\\boxed{74.6}", True),
    ("STOP 34", "STOP 35", False), ("5", "-5", False), ("left", "right", False),
    ("74.6", "74.7", False), ("5", "5 or 6", False), ("2\\sqrt{2}", "sqrt(7)", False),
])
def test_answer_open(pool, truth, given, ok):
    root, _ = pool
    s = _text_sample(truth, {}, task="no_code")
    direct = Trajectory(sample_id=s.id, teacher="test", kind="direct", task=s.task,
                        turns=[Turn("Looking at it.")], answer=given)
    check = _check(audit(direct, s, root), "answer")
    assert check.verdict == (PASS if ok else FAIL), check


def test_hostile_math_is_not_evaluated(pool):
    root, _ = pool
    s = _text_sample("0", {}, task="no_code")
    for given in ("__import__('os').system('false')", "9^9^9^9", "(lambda: 1)()", "x" * 5000):
        direct = Trajectory(sample_id=s.id, teacher="test", kind="direct", task=s.task,
                            turns=[Turn("x")], answer=given)
        assert _check(audit(direct, s, root), "answer").verdict == FAIL


# ---------------------------------------------------------------------------------------------
# Missing ground truth: semantic checks SKIP and say why
# ---------------------------------------------------------------------------------------------

def test_missing_ground_truth_skips_what_needs_it(pool):
    """Without a box or an angle, crop and contrast still check what needs none (the output must
    be found in the input: a turned page is not), rotation skips, the answer check skips."""
    root, by_task = pool
    for task, source, verdict, words in (("crop", "crop", FAIL, "not found in the input"),
                                         ("rotate", "rotate", SKIP, "angle"),
                                         ("contrast", "contrast", FAIL, "neither the input nor a crop")):
        real = by_task[source][0]
        s = Sample(question=real.question, images=real.images, source="real", origin_file="r",
                   origin_row=0, answer="", task=task, meta={})
        out = _rgb(root, real).rotate(90, expand=True).resize((300, 200))
        rel = _save(root, out, f"nogt_{task}.png")
        t = audit(_traj(s, [_image(rel)], answer="whatever"), s, root)
        check = _check(t, f"{ {'crop': 'crop', 'rotate': 'rotation', 'contrast': 'contrast'}[task]}_semantics")
        assert check.verdict == verdict and words in check.reason, check
        assert _check(t, "answer").verdict == SKIP and "ground-truth" in _check(t, "answer").reason
        assert t.passed == (verdict == SKIP), t.audit
    s = _text_sample("", {})
    t = audit(_traj(s, [Result("text", "42")], answer="42"), s, root)
    assert _check(t, "computation").verdict == SKIP and "ground truth" in _check(t, "computation").reason
    assert _check(t, "consistency").verdict == PASS


def test_checks_that_do_not_apply_skip(pool):
    root, by_task = pool
    s = by_task["no_code"][0]
    direct = Trajectory(sample_id=s.id, teacher="test", kind="direct", task=s.task,
                        turns=[Turn("A glance is enough.")], answer=s.answer)
    t = audit(direct, s, root)
    assert {n: v for n, v in _verdicts(t).items() if v != SKIP} == {"answer": PASS}
    assert t.passed


# ---------------------------------------------------------------------------------------------
# Throughput on crop samples (1600-3000 px inputs)
# ---------------------------------------------------------------------------------------------

def test_crop_audit_on_large_images(pool):
    """Crops of 1600-3000 px inputs at several zooms and margins are located and accepted.
    (Speed lives in benchmarks/teacher_bench.py, not here.)"""
    root, by_task = pool
    cases = []
    for k, s in enumerate(by_task["crop"]):
        zoom = (2, 3, 2.5, 4)[k % 4]
        rel = _save(root, _margin_crop(_rgb(root, s), s.meta["box"], 0.3 + 0.2 * (k % 3), zoom),
                    f"large_{s.id}.jpg")
        cases.append((_traj(s, [_image(rel)]), s))
    sizes = [max(s.images[0].width, s.images[0].height) for _, s in cases]
    assert min(sizes) >= 1600 and max(sizes) <= 3000 and len(cases) >= 10
    for t, s in cases:
        done = audit(t, s, root)
        assert done.passed, done.audit


def test_audit_many_in_threads_matches_one_at_a_time(pool):
    from pipelines.samples.audit import AuditConfig, audit_many

    root, by_task = pool
    rng = np.random.default_rng(1)
    trajectories, samples = [], {}
    for s in _crop_samples(by_task):
        img = _rgb(root, s)
        good = _margin_crop(img, s.meta["box"], 0.4, 2)
        miss = img.crop(_elsewhere(img, s.meta["box"], good.size, rng))
        trajectories += [_traj(s, [_image(_save(root, good, f"many_good_{s.id}.png"))]),
                         _traj(s, [_image(_save(root, miss, f"many_miss_{s.id}.png"))])]
        samples[s.id] = s
    one_at_a_time = [audit(t, samples[t.sample_id], root) for t in trajectories]
    threaded = audit_many(trajectories, samples, root, AuditConfig(workers=2))
    assert [t.audit for t in threaded] == [t.audit for t in one_at_a_time]   # same order, verdicts
    assert [t.passed for t in threaded] == [True, False] * len(samples)
    with pytest.raises(ValueError, match="workers"):
        audit_many(trajectories, samples, root, AuditConfig(workers=0))
