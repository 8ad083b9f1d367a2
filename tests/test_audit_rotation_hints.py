"""The rotation a trajectory's code names, as the hypothesis the rotation check scores first
(pipelines.samples.audit.rotation_hints, `rotation_verdict(hint=...)`): a claim the pixels confirm
spares the search; a claim that lies, or code that does not parse, costs one refinement at most,
and every verdict is the one the search alone gives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.trajectory import FAIL, PASS, Result, Trajectory, Turn
from pipelines.pool.generate import generate_samples
from pipelines.samples.audit import AuditConfig, audit
from pipelines.samples.audit.hints import MAX_CODE_CHARS
from pipelines.samples.audit.rotation import rotation_verdict
from pipelines.samples.audit.rotation_hints import RotationHint, code_rotation
from pipelines.samples.execute import execute
from pipelines.samples.teachers import TemplateTeacher

# ---------------------------------------------------------------------------------------------
# Reading the rotation from code (never running it)
# ---------------------------------------------------------------------------------------------

W, H = 1000, 2000
OPEN = "from PIL import Image\nimg = Image.open(image_path).convert('RGB')\n"
CV_OPEN = "import cv2\nimg = cv2.imread(image_path)\n"
SAVE = "\nout.save('/mnt/data/temp_processed_images/out.png')\n"
CV_SAVE = "\ncv2.imwrite('/mnt/data/temp_processed_images/out.png', out)\n"


@pytest.mark.parametrize("code, angle, source, size", [
    # PIL: counter-clockwise degrees; expand=True grows the canvas, else it keeps the input's
    (OPEN + "out = img.rotate(-30, expand=True, fillcolor=(255, 255, 255))" + SAVE, -30, (500, 1000), (1866, 2232)),
    (OPEN + "out = img.rotate(90, resample=Image.BICUBIC)" + SAVE, 90, (500, 1000), (1000, 2000)),
    (OPEN + "img.rotate(45, Image.BILINEAR, True).save('o.png')", 45, (500, 1000), (2121, 2121)),
    # names bound once, and arithmetic on them
    ("angle = -30\n" + OPEN + "out = img.rotate(360 + angle, expand=True)" + SAVE, 330, (500, 1000), (1866, 2232)),
    # OpenCV's codes (by name or number), numpy, PIL's transpose, scipy, skimage
    (CV_OPEN + "out = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)" + CV_SAVE, -90, (500, 1000), (2000, 1000)),
    (CV_OPEN + "out = cv2.rotate(img, 2)" + CV_SAVE, 90, (500, 1000), (2000, 1000)),
    ("import numpy as np\n" + OPEN + "out = Image.fromarray(np.rot90(np.array(img), k=3))" + SAVE,
     270, (500, 1000), (2000, 1000)),
    ("import numpy as np\n" + OPEN + "out = Image.fromarray(np.rot90(np.array(img), 1, axes=(1, 0)))" + SAVE,
     -90, (500, 1000), (2000, 1000)),
    (OPEN + "out = img.transpose(Image.Transpose.ROTATE_270)" + SAVE, 270, (500, 1000), (2000, 1000)),
    ("from scipy import ndimage\nimport imageio\n" + OPEN + "out = ndimage.rotate(np.asarray(img), 30)\n"
     "imageio.imwrite('o.png', out)", 30, (500, 1000), (1866, 2232)),
    ("from skimage.transform import rotate\nout = rotate(np.asarray(img), 30, resize=True)\n"
     "plt.imsave('o.png', out)", 30, (500, 1000), (1866, 2232)),
    # warpAffine with getRotationMatrix2D: the canvas is whatever dsize says (size unknown)
    (CV_OPEN + "h, w = img.shape[:2]\nM = cv2.getRotationMatrix2D((w / 2, h / 2), -52, 1.0)\n"
     "cos, sin = abs(M[0, 0]), abs(M[0, 1])\nnew_w = int(h * sin + w * cos)\nnew_h = int(h * cos + w * sin)\n"
     "M[0, 2] += new_w / 2 - w / 2\nM[1, 2] += new_h / 2 - h / 2\n"
     "out = cv2.warpAffine(img, M, (new_w, new_h), borderValue=(255, 255, 255))" + CV_SAVE, -52, (500, 1000), None),
    # crops before and after: the output's centre is where the crop's centre came from
    (OPEN + "part = img.crop((100, 200, 300, 400))\nout = part.rotate(90, expand=True)" + SAVE, 90, (200, 300), (200, 200)),
    (OPEN + "r = img.rotate(90, expand=True)\nout = r.crop((0, 0, 500, 1000))" + SAVE, 90, (500, 250), (500, 1000)),
    (CV_OPEN + "r = cv2.rotate(img, cv2.ROTATE_180)\nout = r[0:1000, 0:1000]" + CV_SAVE, 180, (500, 1500), (1000, 1000)),
    # chained calls; an EXIF transpose passes the image through; the image saved last counts
    (OPEN + "img.crop((0, 0, 1000, 1000)).rotate(180).save('o.png')", 180, (500, 500), (1000, 1000)),
    ("from PIL import ImageOps\nimg = ImageOps.exif_transpose(Image.open(image_path))\n"
     "out = img.rotate(-90, expand=True)" + SAVE, -90, (500, 1000), (2000, 1000)),
    (OPEN + "a = img.rotate(90, expand=True)\nb = img.rotate(-90, expand=True)\na.save('a.png')\nb.save('b.png')",
     -90, (500, 1000), (2000, 1000)),
    # as the sandbox ran it: re-indented, `cv.` as `cv2.`, a literal box grown to 64 px
    ("  img = Image.open(image_path)\n  out = img.rotate(180)\n  out.save('o.png')", 180, (500, 1000), (1000, 2000)),
    ("img = cv.imread(image_path)\nout = cv.rotate(img, cv.ROTATE_180)\ncv.imwrite('o.png', out)",
     180, (500, 1000), (1000, 2000)),
    (OPEN + "box = (100, 100, 130, 120)\nout = img.crop(box).rotate(90, expand=True)" + SAVE, 90, (132, 132), (64, 64)),
])
def test_code_rotation_reads_what_the_code_does(code, angle, source, size):
    hint = code_rotation(code, W, H)
    assert hint is not None
    assert (hint.angle - angle) % 360 == pytest.approx(0, abs=1e-6) or \
        (hint.angle - angle) % 360 == pytest.approx(360, abs=1e-6), hint
    assert hint.source == pytest.approx(source, abs=1e-6), hint
    if size is None:
        assert hint.size is None and hint.zoom == 1.0
    else:
        assert hint.size == pytest.approx(size, abs=1), hint


@pytest.mark.parametrize("code", [
    None, "", "def f(:\n  pass", "(" * 100_000, "x = 1\x00",
    OPEN + "out = img.rotate(30, expand=True)\n",                               # nothing saved
    OPEN + "img.save('o.png')",                                                   # nothing rotated
    OPEN + "out = img.rotate(detect_angle(img), expand=True)" + SAVE,           # a computed angle
    OPEN + "for a in (90, 180):\n    img.rotate(a).save(f'{a}.png')",           # a loop's angle
    OPEN + "out = img.rotate(30, center=(0, 0))" + SAVE,                        # another centre
    OPEN + "out = img.transpose(Image.FLIP_LEFT_RIGHT).rotate(90)" + SAVE,      # a mirror
    CV_OPEN + "out = cv2.flip(cv2.rotate(img, 0), 1)" + CV_SAVE,
    CV_OPEN + "M = np.float32([[1, 0, 5], [0, 1, 5]])\nout = cv2.warpAffine(img, M, (9, 9))" + CV_SAVE,
    CV_OPEN + "M = cv2.getRotationMatrix2D((5, 5), 30, 0)\nout = cv2.warpAffine(img, M, (9, 9))" + CV_SAVE,
    OPEN + "r = img.rotate(90, expand=True)\nout = r.crop((x, 0, 50, 50))" + SAVE,  # a computed box
    OPEN + "s = img.resize((100, 200))\nout = s.rotate(90).crop((0, 0, 50, 50))" + SAVE,  # crop after resize
    OPEN + "out = img.rotate(1e999)" + SAVE, OPEN + f"out = img.rotate({10 ** 400})" + SAVE,
    "import os; os.system('rm -rf /')  # only text here",
    OPEN + "out = img.rotate(90)" + SAVE + "#" * MAX_CODE_CHARS,
])
def test_code_rotation_gives_no_hint_for_what_it_cannot_follow(code):
    assert code_rotation(code, W, H) is None


# ---------------------------------------------------------------------------------------------
# The rotation check with hints: searches spared, verdicts unchanged
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rotate_case(tmp_path_factory):
    """(store, a generated rotation sample, its input in RGB, its upright page)."""
    root = tmp_path_factory.mktemp("rotation-hints-store")
    store = ImageStore(root)
    s = next(s for s in generate_samples(0, 8, 0, store, mix=(("rotate", 1),)) if 20 < s.meta["angle"] < 160)
    img = Image.open(root / s.images[0].relpath).convert("RGB")
    return store, s, img, img.rotate(-s.meta["angle"], expand=True, fillcolor=(255, 255, 255))


def _produce(root: Path, img: Image.Image, name: str) -> str:
    rel = f"produced/{name}.png"
    (root / "produced").mkdir(exist_ok=True)
    img.save(root / rel, compress_level=1)
    return rel


def _check(s, code: str | None, rel: str, root: Path, config: AuditConfig | None = None):
    turns = [Turn("Let me turn it upright.", code, Result("image", "", [rel])), Turn("So the answer follows.")]
    t = Trajectory(sample_id=s.id, teacher="test", kind="single", task=s.task, turns=turns, answer=s.answer)
    return next(c for c in audit(t, s, root, config or AuditConfig()).audit if c.name == "rotation_semantics")


def test_the_rotation_the_code_names_is_confirmed_without_a_search(rotate_case, searches, monkeypatch):
    """... and without a refinement: the claim's place is matched first on a window aligned to
    it (`locate.confirm(enough=...)`), which an exact turn reaches."""
    from pipelines.samples.audit import locate as locate_module

    refinements = []
    refine = locate_module._refine
    monkeypatch.setattr(locate_module, "_refine", lambda *a: refinements.append(a) or refine(*a))
    store, s, img, _ = rotate_case
    a = -s.meta["angle"]
    w, h = img.size
    cx, cy = (v // 2 for v in img.rotate(a, expand=True).size)
    after = (cx - 300, cy - 200, cx + 200, cy + 250)    # off the canvas's centre, inside the page
    before = (w // 5, h // 5, w // 5 + w // 2, h // 5 + h // 2)
    cases = {   # code -> the image it makes (as the sandbox would)
        OPEN + f"out = img.rotate({a}, expand=True)" + SAVE: img.rotate(a, expand=True),
        OPEN + f"out = img.rotate({360 + a})" + SAVE: img.rotate(a),
        OPEN + f"out = img.rotate({a + 2}, expand=True)" + SAVE: img.rotate(a + 2, expand=True),  # 2 deg off
        OPEN + f"r = img.rotate({a}, expand=True)\nout = r.crop({after})" + SAVE:
            img.rotate(a, expand=True).crop(after),
        OPEN + f"part = img.crop({before})\nout = part.rotate({a}, expand=True)" + SAVE:
            img.crop(before).rotate(a, expand=True),
    }
    for i, (code, out) in enumerate(cases.items()):
        check = _check(s, code, _produce(store.root, out, f"named_{i}"), store.root)
        assert check.verdict == PASS and "the code turns the input" in check.reason, (code, check.reason)
    assert searches == [] and refinements == []
    # the search alone says the same
    for i, code in enumerate(cases):
        rel = f"produced/named_{i}.png"
        assert _check(s, code, rel, store.root, AuditConfig(code_rotation_hints=False)).verdict == PASS
    assert len(searches) >= len(cases)


def test_a_lying_rotation_falls_back_to_the_search(rotate_case, searches):
    """The code says it turned the page upright (90 deg); the pixels show it turned 270: the claim
    is refined once, rejected, and the search finds the page upside down, as without hints."""
    store, s, _, upright = rotate_case
    turned = upright.rotate(270, expand=True)          # a page turned 270 deg: rotate(90) restores it
    ref, _ = store.put_file(store.root / _produce(store.root, turned, "turned_270"))
    sample = dataclasses.replace(s, images=[ref], meta={**s.meta, "angle": 270}, id=s.id + "-270")
    rel = _produce(store.root, turned.rotate(270, expand=True), "said_90_did_270")
    code = OPEN + "out = img.rotate(90, expand=True)" + SAVE
    assert code_rotation(code, turned.width, turned.height).angle == 90
    with_hint = _check(sample, code, rel, store.root)
    assert with_hint.verdict == FAIL and "rotated the wrong way" in with_hint.reason, with_hint.reason
    assert len(searches) >= 5                    # the whole search ran
    assert with_hint == _check(sample, code, rel, store.root, AuditConfig(code_rotation_hints=False))
    # the right output with the same code: confirmed, no search
    searches.clear()
    good = _produce(store.root, turned.rotate(90, expand=True), "said_90_did_90")
    assert _check(sample, code, good, store.root).verdict == PASS and searches == []


def test_a_claim_of_a_wrong_angle_or_place_costs_no_verdict(rotate_case, searches):
    store, s, img, _ = rotate_case
    a = -s.meta["angle"]
    rel = _produce(store.root, img.rotate(a, expand=True), "upright")
    # the code claims a rotation 90 deg off (not near upright: not tried) or a crop it did not make
    for code in (OPEN + f"out = img.rotate({a + 90}, expand=True)" + SAVE,
                 OPEN + f"r = img.rotate({a}, expand=True)\nout = r.crop((0, 0, 200, 200))" + SAVE):
        searches.clear()
        check = _check(s, code, rel, store.root)
        assert check.verdict == PASS and "the code turns" not in check.reason, check.reason
        assert len(searches) == 1                # the fast path's one search


def test_unparseable_code_falls_back_to_the_search(rotate_case, searches):
    store, s, img, _ = rotate_case
    rel = _produce(store.root, img.rotate(-s.meta["angle"], expand=True), "unparsed")
    for code in ("def f(:", "(" * 100_000, "out = img.rotate(1e999)\x00", "print('no rotation named')"):
        searches.clear()
        check = _check(s, code, rel, store.root)
        assert check.verdict == PASS and "the code turns" not in check.reason, check.reason
        assert len(searches) == 1


def test_a_claim_off_the_image_or_degenerate_is_not_refined(rotate_case):
    """Hints are built by hand here: whatever a claim says, the verdict is the search's."""
    store, s, img, _ = rotate_case
    grey = np.asarray(img.convert("L"))
    out = np.asarray(img.rotate(-s.meta["angle"], expand=True).convert("L"))
    cfg = AuditConfig()
    alone = rotation_verdict(grey, out, s.meta["angle"], cfg)
    for hint in (RotationHint(-s.meta["angle"], (-5000.0, 9000.0), (400.0, 300.0)),
                 RotationHint(-s.meta["angle"], (100.0, 100.0), (0.01, 0.01)),
                 RotationHint(-s.meta["angle"], (100.0, 100.0), None, zoom=1e-9)):
        assert rotation_verdict(grey, out, s.meta["angle"], cfg, hint) == alone


def test_verdicts_with_and_without_hints_are_identical_on_the_generated_pool(tmp_path, sandbox):
    """The template teacher's trajectories for generated rotation samples, executed in the
    sandbox, plus two outputs turned 180 deg (the code still claims upright): every rotation
    verdict is the search's, and the hints confirm every upright one."""
    store = ImageStore(tmp_path)
    pool = {s.id: s for s in generate_samples(0, 6, 0, store, mix=(("rotate", 1),))}
    trajectories = execute([t for s in pool.values() for t in TemplateTeacher(seed=0).candidates(s)],
                           pool, store, sandbox)
    flipped = []
    for t in trajectories[:2]:          # a wrong output costs the whole search: a few suffice
        rel = t.code_turns[-1].result.images[-1]
        out = Image.open(store.root / rel).rotate(180)
        new = _produce(store.root, out, f"flipped_{t.id}")
        turns = [dataclasses.replace(x, result=dataclasses.replace(x.result, images=[new]))
                 if x is t.code_turns[-1] else x for x in t.turns]
        flipped.append(dataclasses.replace(t, id=t.id + "-flipped", turns=turns))
    assert len(trajectories) == 6
    verdicts = {}
    for hints in (True, False):
        cfg = AuditConfig(code_rotation_hints=hints)
        verdicts[hints] = [next(c for c in audit(t, pool[t.sample_id], store.root, cfg).audit
                                if c.name == "rotation_semantics") for t in trajectories + flipped]
    assert [c.verdict for c in verdicts[True]] == [c.verdict for c in verdicts[False]]
    n = len(trajectories)
    assert all(c.verdict == PASS and "the code turns" in c.reason for c in verdicts[True][:n])
    assert all(c.verdict == FAIL for c in verdicts[True][n:])
    assert [c.reason for c in verdicts[True][n:]] == [c.reason for c in verdicts[False][n:]]
