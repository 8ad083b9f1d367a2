"""Executing trajectories: sessions per trajectory, results into the store, the cache."""

import pytest
from conftest import make_image

from pipelines.core.images import ImageStore
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory, Turn
from pipelines.samples.execute import ExecutionCache, execute

OUT = "/mnt/data/temp_processed_images"


@pytest.fixture
def pool(tmp_path):
    store = ImageStore(tmp_path / "images")
    ref, _ = store.put_file(make_image(tmp_path / "in.jpg", 640, 480))
    sample = Sample(question="What is in the corner?", images=[ref], source="test",
                    origin_file="t", origin_row=0, answer="x", task="crop")
    return store, sample


def crop_trajectory(sample) -> Trajectory:
    return Trajectory(sample.id, "test", "further_enhancement", "crop", [
        Turn("Load and crop a large region first.",
             f"import cv2\nimg = cv2.imread(image_path)\ncrop = img[0:240, 0:320]\n"
             f"cv2.imwrite('{OUT}/a.png', crop)\nprint('{OUT}/a.png')"),
        Turn("Still small: zoom into the top-left of that crop.",
             f"zoom = cv2.resize(crop[0:100, 0:100], None, fx=2, fy=2)\n"
             f"cv2.imwrite('{OUT}/b.png', zoom)\nprint('{OUT}/b.png')"),
        Turn("Now it is readable."),
    ], answer="x")


def test_blocks_share_a_session_and_images_land_in_the_store(sandbox, pool):
    store, sample = pool
    (t,) = execute([crop_trajectory(sample)], {sample.id: sample}, store, sandbox)
    first, second = t.turns[0].result, t.turns[1].result
    assert first.kind == "image" and second.kind == "image"  # block 2 saw `crop` from block 1
    assert (store.root / second.images[0]).is_file()
    from PIL import Image
    assert Image.open(store.root / second.images[0]).size == (200, 200)
    assert t.turns[2].result is None  # no code, nothing executed
    assert "<sandbox_output><image></sandbox_output>" in t.render()


def test_errors_and_text_results(sandbox, pool):
    store, sample = pool
    t = Trajectory(sample.id, "test", "error_correction", "computation", [
        Turn("Compute.", "print(totl)"),
        Turn("Typo; fix it.", "total = 3 + 4\nprint(total)"),
        Turn("So 7."),
    ], answer="7")
    execute([t], {sample.id: sample}, store, sandbox)
    assert t.turns[0].result.kind == "error" and t.turns[0].result.error_kind == "runtime"
    assert "NameError" in t.turns[0].result.text
    assert t.turns[1].result.kind == "text" and t.turns[1].result.text == "7"


def test_cache_makes_reruns_free(sandbox, pool, tmp_path):
    store, sample = pool
    cache = ExecutionCache(tmp_path / "cache")
    (first,) = execute([crop_trajectory(sample)], {sample.id: sample}, store, sandbox, cache)
    assert (cache.hits, cache.misses) == (0, 2)
    (again,) = execute([crop_trajectory(sample)], {sample.id: sample}, store, sandbox, cache)
    assert cache.hits == 2
    assert [t.result for t in again.turns] == [t.result for t in first.turns]
    # a different input image is a different cache entry
    other, _ = store.put_file(make_image(tmp_path / "other.jpg", 640, 480, seed=9))
    sample2 = Sample(question="q", images=[other], source="test", origin_file="t", origin_row=1)
    execute([crop_trajectory(sample2)], {sample2.id: sample2}, store, sandbox, cache)
    assert cache.misses == 4
