"""The boxes a trajectory's code names, as hints for locating what it produced
(pipelines.samples.audit.hints, `locate(hints=...)`): a box the pixels confirm spares the full
search; a box that lies, or code that does not parse, costs nothing but the search it falls back to,
and every verdict is the one the search alone gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.trajectory import FAIL, PASS, Result, Trajectory, Turn
from pipelines.pool.generate import generate_samples
from pipelines.samples.audit import AuditConfig, audit
from pipelines.samples.audit.hints import MAX_CODE_CHARS, code_boxes

# ---------------------------------------------------------------------------------------------
# Reading boxes from code (never running it)
# ---------------------------------------------------------------------------------------------

W, H = 2000, 1500


@pytest.mark.parametrize("code, boxes", [
    ("crop = img.crop((947, 233, 1168, 377))", [(947, 233, 1168, 377)]),
    ("x_min, y_min, x_max, y_max = 947, 233, 1168, 377\ncrop = img.crop((x_min, y_min, x_max, y_max))",
     [(947, 233, 1168, 377)]),
    ("box = [947, 233, 1168, 377]  # left, top, right, bottom\ncrop = img.crop(box)", [(947, 233, 1168, 377)]),
    # cv2 / numpy: rows first, from constants or from names bound once
    ("roi = img[233:377, 947:1168]", [(947, 233, 1168, 377)]),
    ("x1 = 947\ny1 = 233\nx2 = 1168\ny2 = 377\nroi = img[y1:y2, x1:x2, :]", [(947, 233, 1168, 377)]),
    # the classic swap selects another region: that one is named too (first: it is written last)
    ("x1, y1, x2, y2 = 947, 233, 1168, 377\nroi = img[x1:x2, y1:y2]",
     [(233, 947, 377, 1168), (947, 233, 1168, 377)]),
    # clamped to the image; too small, inverted or non-numeric boxes are no hint
    ("a = img.crop((1900, 1400, 2400, 1900))", [(1900, 1400, 2000, 1500)]),
    ("a = img.crop((10, 10, 14, 14)); b = img.crop((300, 10, 100, 90)); c = (1, 2, 'x', 4)", []),
    ("a = img.crop((0.1, 0.2, 0.5, 0.6))", []),
    # as the sandbox runs it too: a literal box grown to 64 px, code re-indented until it parses
    ("x1, y1, x2, y2 = 10, 10, 40, 30\ncrop = img.crop((x1, y1, x2, y2))", [(10, 10, 74, 74), (10, 10, 40, 30)]),
    ("  x1, y1, x2, y2 = 10, 10, 100, 90\n  roi = img[y1:y2, x1:x2]", [(10, 10, 100, 90)]),
    # a name bound twice, or by a loop, is not a number we know
    ("x1 = 10\nx1 = 500\nb = img.crop((x1, 0, 700, 300))", []),
    ("for x1 in range(3):\n    b = img.crop((x1, 0, 700, 300))", []),
])
def test_code_boxes_reads_what_the_code_names(code, boxes):
    assert code_boxes(code, W, H) == boxes


def test_code_boxes_keeps_the_last_few_distinct():
    code = "\n".join(f"c{i} = img.crop(({10 * i}, 0, {10 * i + 100}, 100))" for i in range(8))
    code += "\nagain = img.crop((70, 0, 170, 100))"
    assert code_boxes(code, W, H, limit=3) == [(70, 0, 170, 100), (60, 0, 160, 100), (50, 0, 150, 100)]
    assert code_boxes(code, W, H, limit=0) == []


@pytest.mark.parametrize("code", [
    None, "", "def f(:\n  pass", "img.crop((1, 2, 3", "(" * 100_000, "[" * 5_000 + "]" * 5_000,
    "x = 1\x00", "b = img.crop((1e999, 0, float('nan'), 10))", f"b = img.crop(({10 ** 400}, 0, 50, 50))",
    "import os; os.system('rm -rf /')  # only text here", "b = (0, 0, 100, 100)\n" + "#" * MAX_CODE_CHARS,
])
def test_code_boxes_survives_hostile_or_broken_code(code):
    assert code_boxes(code, W, H) == []


# ---------------------------------------------------------------------------------------------
# The audit with hints: searches spared, verdicts unchanged
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crop_case(tmp_path_factory):
    """(store root, the largest generated crop sample, its input in RGB)."""
    root = tmp_path_factory.mktemp("hints-store")
    samples = [s for s in generate_samples(0, 16, 0, ImageStore(root)) if s.task == "crop"]
    s = max(samples, key=lambda s: s.images[0].width * s.images[0].height)
    return root, s, Image.open(root / s.images[0].relpath).convert("RGB")


def _produce(root: Path, img: Image.Image, box, zoom: int, name: str) -> str:
    crop = img.crop(box)
    rel = f"produced/{name}.png"
    (root / "produced").mkdir(exist_ok=True)
    crop.resize((crop.width * zoom, crop.height * zoom), Image.LANCZOS).save(root / rel)
    return rel


def _audit(s, code: str | None, rel: str, root: Path, config: AuditConfig | None = None):
    turns = [Turn("Let me zoom in.", code, Result("image", "", [rel])), Turn("So the answer follows.")]
    t = Trajectory(sample_id=s.id, teacher="test", kind="single", task=s.task, turns=turns, answer=s.answer)
    return next(c for c in audit(t, s, root, config or AuditConfig()).audit if c.name == "crop_semantics")


def _found_box(check) -> list[int]:
    return [int(v) for v in re.search(r"the crop \[([\d, ]+)\]", check.reason).group(1).split(", ")]


def _near(found, box, px: int = 3) -> bool:
    return max(abs(a - b) for a, b in zip(found, box, strict=True)) <= px


def _around(box, margin: int):
    x1, y1, x2, y2 = box
    return (x1 - margin, y1 - margin, x2 + margin, y2 + margin)


def test_a_box_the_code_names_is_confirmed_without_a_search(crop_case, searches):
    root, s, img = crop_case
    box = _around(s.meta["box"], 80)
    rel = _produce(root, img, box, 3, "named")
    pil = ("from PIL import Image\nimg = Image.open(image_path).convert('RGB')\n"
           "x_min, y_min, x_max, y_max = {}, {}, {}, {}\ncrop = img.crop((x_min, y_min, x_max, y_max))\n"
           "zoomed = crop.resize((crop.width * 3, crop.height * 3), Image.LANCZOS)\n").format(*box)
    cv2_literal = ("import cv2\nimg = cv2.imread(image_path)\nroi = img[{1}:{3}, {0}:{2}]\n"
                   "big = cv2.resize(roi, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)\n").format(*box)
    for code in (pil, cv2_literal):
        check = _audit(s, code, rel, root)
        assert check.verdict == PASS, check.reason
        assert "at 3.0" in check.reason or "at 2.9" in check.reason, check.reason
    assert searches == []
    # the same verdict from the search alone
    check = _audit(s, pil, rel, root, AuditConfig(code_box_hints=0))
    assert check.verdict == PASS and len(searches) == 1, check.reason


def test_a_box_the_sandbox_grew_is_confirmed(crop_case, searches):
    """The sandbox grows a literal box's short sides to 64 px (sandbox/repair.py): the crop that
    ran is the grown one, and that is the box tried first."""
    root, s, img = crop_case
    x1, y1 = s.meta["box"][:2]
    rel = _produce(root, img, (x1, y1, x1 + 64, y1 + 64), 3, "grown")
    code = f"left, top, right, bottom = {x1}, {y1}, {x1 + 40}, {y1 + 30}\ncrop = img.crop((left, top, right, bottom))"
    check = _audit(s, code, rel, root)
    assert _near(_found_box(check), (x1, y1, x1 + 64, y1 + 64)), check.reason
    assert searches == []


def test_a_lying_box_falls_back_to_the_search(crop_case, searches):
    root, s, img = crop_case
    box = _around(s.meta["box"], 80)
    rel = _produce(root, img, box, 3, "true_crop")
    bw, bh = box[2] - box[0], box[3] - box[1]
    elsewhere = (40, 40, 40 + bw, 40 + bh)                      # the right size, another place
    wider = (box[0] - bw // 2, box[1], box[2] + bw // 2, box[3])  # the right place, another shape
    check = _audit(s, f"a = img.crop({elsewhere})\nb = img.crop({wider})\n", rel, root)
    assert check.verdict == PASS and "holds 100% of the target box" in check.reason, check.reason
    assert len(searches) == 1


def test_a_box_beside_the_crop_refines_onto_where_the_pixels_are(crop_case, searches):
    root, s, img = crop_case
    box = _around(s.meta["box"], 80)
    rel = _produce(root, img, box, 3, "true_crop")
    shift = (box[2] - box[0]) // 3
    check = _audit(s, f"b = img.crop({(box[0] + shift, box[1], box[2] + shift, box[3])})", rel, root)
    assert check.verdict == PASS, check.reason
    assert _near(_found_box(check), box), check.reason
    assert searches == []


def test_a_wrong_region_crop_still_fails(crop_case, searches):
    """The code names the wrong box and crops it: confirmed there, and coverage fails."""
    root, s, img = crop_case
    x1, y1, x2, y2 = _around(s.meta["box"], 80)
    wrong = (40, 40, 40 + x2 - x1, 40 + y2 - y1)
    assert wrong[2] < s.meta["box"][0] or wrong[3] < s.meta["box"][1]
    rel = _produce(root, img, wrong, 3, "wrong_region")
    check = _audit(s, f"crop = img.crop({wrong})", rel, root)
    assert check.verdict == FAIL and "holds 0% of the target box" in check.reason, check.reason
    assert searches == []
    assert _audit(s, "", rel, root).verdict == FAIL and len(searches) == 1


@pytest.mark.parametrize("code", ["def f(:", "(" * 100_000, "b = img.crop((1e999, 0, 5, 5))\x00"])
def test_hostile_code_does_not_break_the_audit(crop_case, searches, code):
    root, s, img = crop_case
    rel = _produce(root, img, _around(s.meta["box"], 80), 2, "hostile")
    check = _audit(s, code, rel, root)
    assert check.verdict == PASS, check.reason
    assert len(searches) == 1


def test_a_right_box_is_confirmed_wherever_its_window_starts(crop_case, searches):
    """A window reduced by a factor that is not whole samples the input on a grid whose phase
    follows where the window starts: half a reduced pixel out of phase an exact crop once scored
    0.85 at its exact place, the hint fell short and the full search ran. The box the code names
    is matched first on a grid aligned to it: every exact crop, wherever it starts, is confirmed
    at its place with no search."""
    root, s, img = crop_case
    x1, y1, x2, y2 = _around(s.meta["box"], 80)
    for d in range(8):
        box = (x1 + d, y1 + 2 * d, x2 + d + d // 2, y2 + 2 * d)
        rel = _produce(root, img, box, 3, f"phase_{d}")
        check = _audit(s, f"crop = img.crop({box})", rel, root)
        assert check.verdict == PASS, check.reason
        assert _near(_found_box(check), box, px=1), check.reason
        assert float(re.search(r"\(match ([\d.]+)\)", check.reason).group(1)) >= 0.95, check.reason
    assert searches == []
