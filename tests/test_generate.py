"""The generated source pool (pipelines.pool.generate): deterministic, sharded by index, every task and
variant present, and every answer checkable from the ground truth in `meta` (no OCR: geometry,
pixels and exact arithmetic only)."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal, localcontext

import numpy as np
import pytest
import sympy
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.schema import TASKS, samples_table
from pipelines.pool.generate import generate_samples

SEED = 11
N = 60


def _run(root, start, count, seed=SEED):
    store = ImageStore(root)
    return store, list(generate_samples(start, count, seed, store))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("gen-a"), 0, N)


def _pixels(store, ref) -> np.ndarray:
    return np.asarray(Image.open(store.path(ref)).convert("RGB"), dtype=np.float64)


def _answer_text(s) -> str:
    return s.meta["answer_text"] if s.meta["variant"] == "mc" else s.answer


# --- determinism and sharding -----------------------------------------------------------------

def test_same_seed_gives_identical_rows_and_bytes(pool, tmp_path):
    store_a, a = pool
    store_b, b = _run(tmp_path / "b", 0, N)
    assert [s.to_row() for s in a] == [s.to_row() for s in b]
    for sa, sb in zip(a, b, strict=True):
        for ra, rb in zip(sa.images, sb.images, strict=True):
            data = store_a.path(ra).read_bytes()
            assert data == store_b.path(rb).read_bytes()
            assert hashlib.sha256(data).hexdigest() == ra.hash


def test_shard_equals_slice_of_bigger_run(pool, tmp_path):
    _, full = pool
    _, shard = _run(tmp_path / "shard", 23, 14)
    assert [s.to_row() for s in shard] == [s.to_row() for s in full[23:37]]
    assert [s.origin_row for s in shard] == list(range(23, 37))


def test_different_seed_differs(pool, tmp_path):
    _, a = pool
    _, other = _run(tmp_path / "other", 0, 10, seed=SEED + 1)
    assert not {s.id for s in a[:10]} & {s.id for s in other}
    assert [s.question for s in other] != [s.question for s in a[:10]]


def test_sizes_and_arguments(tmp_path):
    for start, count in ((0, 10), (5000, 13)):
        _, rows = _run(tmp_path / f"s{start}", start, count)
        assert len(rows) == count and len({s.id for s in rows}) == count
        assert [s.origin_row for s in rows] == list(range(start, start + count))
    assert list(generate_samples(3, 0, SEED, ImageStore(tmp_path / "none"))) == []
    for bad in ((-1, 5, 0), (0, -1, 0), (0, 5, -1)):
        with pytest.raises(ValueError):
            list(generate_samples(*bad, ImageStore(tmp_path / "bad")))


# --- coverage ---------------------------------------------------------------------------------

def test_every_task_and_variant(pool):
    _, rows = pool
    assert {(s.task, s.meta["variant"]) for s in rows} >= {
        (t, v) for t in ("crop", "rotate", "contrast", "computation", "no_code") for v in ("mc", "open")}
    comp = [s for s in rows if s.task == "computation"]
    assert {bool(s.images) for s in comp} == {True, False}
    for with_image in (True, False):
        assert {s.meta["variant"] for s in comp if bool(s.images) == with_image} == {"mc", "open"}
    # the mix is exact per block of 20: 6 crop, 6 no_code, 3 rotate, 2 contrast, 3 computation
    assert Counter(s.task for s in rows) == {"crop": 18, "no_code": 18, "rotate": 9, "contrast": 6,
                                             "computation": 9}
    assert len({s.meta["kind"] for s in rows}) >= 12


def test_rows_are_well_formed(pool):
    _, rows = pool
    assert len({s.id for s in rows}) == len(rows)
    table = samples_table(rows)          # the Arrow schema accepts them; meta is JSON
    assert table.num_rows == len(rows)
    for k, s in enumerate(rows):
        assert s.task in TASKS and s.source == "generated"
        assert s.origin_file == f"generated/seed={SEED}" and s.origin_row == k
        assert s.question.strip() and s.answer.strip()
        assert s.meta["variant"] in ("mc", "open")


def test_multiple_choice(pool):
    _, rows = pool
    for s in rows:
        if s.meta["variant"] == "open":
            assert "options" not in s.meta and "answer_text" not in s.meta
            continue
        options = s.meta["options"]
        assert 2 <= len(options) <= 5
        letters = [o.split(". ", 1)[0] for o in options]
        texts = [o.split(". ", 1)[1] for o in options]
        assert letters == list("ABCDE"[:len(options)])
        assert len(set(texts)) == len(texts), options
        assert s.answer in letters
        assert texts[letters.index(s.answer)] == s.meta["answer_text"]
        assert all(o in s.question for o in options)


# --- checkability -----------------------------------------------------------------------------

def test_images_pass_the_store(pool):
    store, rows = pool
    for s in rows:
        assert (len(s.images) == 0) == (s.task == "computation" and "chart" not in s.meta)
        for ref in s.images:
            data = store.path(ref).read_bytes()
            _, ext, size = store.normalise(data)     # raises ImageRejected if outside the limits
            assert (ext, size) == (ref.ext, (ref.width, ref.height))
            assert Image.open(io.BytesIO(data)).format == {"jpg": "JPEG", "png": "PNG"}[ext]
            assert list(size) == s.meta.get("image_size", list(size))


def _box_ok(box, ref):
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= ref.width and 0 <= y1 < y2 <= ref.height, (box, ref)
    return (x2 - x1) * (y2 - y1) / (ref.width * ref.height)


def test_crop_boxes_are_small_and_hold_the_detail(pool):
    store, rows = pool
    crops = [s for s in rows if s.task == "crop"]
    for s in crops:
        ref = s.images[0]
        assert max(ref.width, ref.height) >= 1600
        assert s.meta["target"]
        frac = _box_ok(s.meta["box"], ref)
        assert frac <= 0.05
        img = _pixels(store, ref)
        x1, y1, x2, y2 = s.meta["box"]
        crop = img[y1:y2, x1:x2]
        assert crop.std() > 10, s.meta            # not blank
        pw, ph = max(8, (x2 - x1) // 2), max(8, (y2 - y1) // 2)
        X1, Y1 = max(0, x1 - pw), max(0, y1 - ph)
        around = img[Y1:y2 + ph, X1:x2 + pw].copy()
        inside = np.zeros(around.shape[:2], bool)
        inside[y1 - Y1:y2 - Y1, x1 - X1:x2 - X1] = True
        ring = around[~inside]
        diff = np.abs(crop.reshape(-1, 3).mean(axis=0) - ring.mean(axis=0)).max()
        assert diff > 5, s.meta                   # the detail differs from its surroundings


def test_rotate_angles(pool):
    _, rows = pool
    for s in (s for s in rows if s.task == "rotate"):
        angle = s.meta["angle"]
        assert isinstance(angle, int) and 30 <= angle <= 335
        ref = s.images[0]
        w, h = s.meta["upright_size"]
        corners = np.array(s.meta["corners"])
        assert (corners >= -1).all() and (corners[:, 0] <= ref.width + 1).all() and (corners[:, 1] <= ref.height + 1).all()
        # the corners are the upright page turned counter-clockwise by `angle` (y points down)
        top_edge = corners[1] - corners[0]
        assert np.hypot(*top_edge) == pytest.approx(w, abs=1)
        turned = np.degrees(np.arctan2(-top_edge[1], top_edge[0])) % 360
        assert turned == pytest.approx(angle, abs=0.5)
        assert np.hypot(*(corners[3] - corners[0])) == pytest.approx(h, abs=1)


def test_contrast_regions_are_faint_but_not_empty(pool):
    store, rows = pool
    for s in (s for s in rows if s.task == "contrast"):
        ref = s.images[0]
        _box_ok(s.meta["box"], ref)
        assert 0 < s.meta["contrast"] < 0.1
        x1, y1, x2, y2 = s.meta["box"]
        grey = _pixels(store, ref)[y1:y2, x1:x2] @ np.array([0.299, 0.587, 0.114])
        assert 0.005 < grey.std() / 255 < 0.1


def _format(value: sympy.Rational, fmt: str) -> str:
    if fmt == "integer":
        assert value.q == 1
        return str(value.p)
    if fmt == "fraction":
        return str(value.p) if value.q == 1 else f"{value.p}/{value.q}"
    places = int(fmt.split(":")[1])
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(int(value.p)) / Decimal(int(value.q))
        return str(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def test_computation_answers_re_evaluate(pool):
    _, rows = pool
    comp = [s for s in rows if s.task == "computation"]
    assert comp
    for s in comp:
        values = {k: sympy.Rational(str(v)) for k, v in s.meta["values"].items()}
        assert all(isinstance(v, int | float) for v in s.meta["values"].values())
        value = sympy.sympify(s.meta["expression"], locals=values)
        assert value.is_Rational, s.meta
        assert _format(value, s.meta["answer_format"]) == _answer_text(s), s.meta
        if s.images:
            assert s.meta["chart"] in ("bar", "table")


def test_no_code_ground_truth(pool):
    _, rows = pool
    for s in (s for s in rows if s.task == "no_code"):
        ref = s.images[0]
        assert max(ref.width, ref.height) <= 1024
        shapes = s.meta.get("shapes", [])
        for shape in shapes:
            _box_ok(shape["box"], ref)
        kind, answer = s.meta["kind"], _answer_text(s)
        if kind == "count_circles":
            assert int(answer) == sum(1 for sh in shapes if sh["shape"] == "circle")
        elif kind == "dominant_colour":
            assert answer == shapes[0]["colour"]
        elif kind == "largest_shape":
            areas = sorted(shapes, key=lambda sh: sh["area"], reverse=True)
            assert areas[0]["shape"] == answer and areas[0]["area"] > 2 * areas[1]["area"]
            assert s.meta["box"] == areas[0]["box"]
        elif kind == "left_right":
            a, b = shapes
            assert answer == ("left" if a["box"][0] < b["box"][0] else "right")
