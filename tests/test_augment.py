"""Augmentations on real photographs (scikit-image's sample photos): rotated copies with the
angle recorded, low-contrast copies with the transform recorded, lineage to the source, what is
dropped and why, shards written once and atomically."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from real_photos import PHOTOS, photo_bytes

from pipelines.core.images import ImageStore
from pipelines.core.schema import SAMPLE_SCHEMA, Sample, samples_table
from pipelines.pool.augment import (
    AugmentConfig,
    augment_samples,
    augment_shard,
    rms_contrast,
    rotated_corners,
)

BOTH = AugmentConfig(rotate_share=1.0, contrast_share=1.0)


def make_sample(store: ImageStore, name: str, with_box: bool = True, **kw) -> Sample:
    question, answer, box, category, target = PHOTOS[name]
    ref, _ = store.put(photo_bytes(name, "PNG" if name in ("camera", "page") else "JPEG"))
    meta = {"category": category, "target": target, **({"box": box} if with_box else {})}
    return Sample(**{"question": question, "images": [ref], "source": "photos",
                     "origin_file": "photos.jsonl", "origin_row": list(PHOTOS).index(name),
                     "answer": answer, "task": "crop", "meta": meta, **kw})


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "images")


def test_rotated_copies_record_the_angle_and_turn_back_to_the_source(store):
    sources = [make_sample(store, n) for n in ("astronaut", "coffee", "camera")]
    out = augment_samples(sources, store, AugmentConfig(rotate_share=1.0))
    assert out.drops["rotate"] == {"kept": 3} and not out.quarantine
    for src, copy in zip(sources, out.samples, strict=True):
        meta = copy.meta
        angle = meta["angle"]
        assert 30 <= angle <= 335 and copy.task == "rotate"
        assert meta["augmentation"]["kind"] == "rotate" and meta["augmentation"]["angle"] == angle
        assert meta["lineage"] == {"sample_id": src.id, "source": "photos", "image": src.images[0].hash,
                                   "origin": {"file": "photos.jsonl", "row": src.origin_row}}
        assert "box" not in meta and meta["upright_box"] == src.meta["box"]
        assert meta["upright_size"] == [src.images[0].width, src.images[0].height]
        assert copy.question == src.question and copy.answer == src.answer and copy.id != src.id
        assert meta["category"] == src.meta["category"]         # other ground truth carried over
        assert copy.images[0].ext == src.images[0].ext
        rotated = Image.open(store.path(copy.images[0]))
        assert list(rotated.size) == meta["image_size"]
        # the recorded convention: Image.rotate(-angle, expand=True) restores the source
        back = rotated.rotate(-angle, resample=Image.BICUBIC, expand=True)
        w, h = src.images[0].width, src.images[0].height
        left, top = (back.width - w) // 2, (back.height - h) // 2
        restored = np.asarray(back.crop((left, top, left + w, top + h)).convert("L"), np.float32)
        original = np.asarray(Image.open(store.path(src.images[0])).convert("L"), np.float32)
        inner = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
        assert np.abs(restored[inner] - original[inner]).mean() < 12      # interpolation only
        # the corners land where rotated_corners says (the canvas's bounding box)
        xs, ys = zip(*meta["corners"], strict=True)
        assert min(xs) == 0 and min(ys) == 0
        assert max(xs) == pytest.approx(rotated.width, abs=1.5)
        assert max(ys) == pytest.approx(rotated.height, abs=1.5)


def test_rotated_corners_follow_pil():
    image = Image.new("RGB", (300, 200))
    image.putpixel((0, 0), (255, 0, 0))
    image.putpixel((299, 199), (0, 0, 255))
    for angle in (30, 100, 200, 335):
        turned = np.asarray(image.rotate(angle, expand=True, resample=Image.NEAREST))
        corners = rotated_corners(300, 200, angle)
        red = np.argwhere(turned[..., 0] > 0)[0][::-1]
        blue = np.argwhere(turned[..., 2] > 0)[0][::-1]
        assert np.abs(red - corners[0]).max() <= 1.5 and np.abs(blue - corners[2]).max() <= 1.5


def test_low_contrast_copies_record_the_transform(store):
    with_box = make_sample(store, "coffee")
    whole = make_sample(store, "chelsea", with_box=False)
    out = augment_samples([with_box, whole], store, AugmentConfig(contrast_share=1.0))
    assert out.drops["low_contrast"] == {"kept": 2}
    boxed, flat = out.samples
    assert boxed.task == "contrast" and boxed.meta["box"] == with_box.meta["box"]
    assert "box_is_whole_image" not in boxed.meta
    assert flat.meta["box"] == [0, 0, 451, 300] and flat.meta["box_is_whole_image"] is True
    for src, copy in ((with_box, boxed), (whole, flat)):
        aug = copy.meta["augmentation"]
        assert 0.15 <= aug["factor"] <= 0.35 and -40 <= aug["offset"] <= 40
        grey_src = np.asarray(Image.open(store.path(src.images[0])).convert("L"), np.float32)
        grey_copy = np.asarray(Image.open(store.path(copy.images[0])).convert("L"), np.float32)
        box = copy.meta["box"]
        assert aug["rms_before"] == pytest.approx(rms_contrast(grey_src, box), abs=1e-3)
        assert aug["rms_after"] == pytest.approx(rms_contrast(grey_copy, box), abs=2e-3)
        # the tones were squeezed by the factor (JPEG and rounding aside)
        assert aug["rms_after"] == pytest.approx(aug["factor"] * aug["rms_before"], rel=0.15)
        assert copy.meta["lineage"]["sample_id"] == src.id


def test_what_gets_no_copy_is_counted_by_reason(store):
    pool = [make_sample(store, "page"),                                       # 384x191
            make_sample(store, "rocket", answer=""),
            make_sample(store, "coffee", task="rotate", meta={"angle": 90}),
            Sample(question="Only text?", images=[], source="photos", origin_file="f",
                   origin_row=9, answer="yes"),
            make_sample(store, "astronaut")]
    two = make_sample(store, "camera")
    two.images = two.images * 2
    pool.append(Sample(**{**two.__dict__, "id": ""}))
    out = augment_samples(pool, store, BOTH)
    assert out.drops["rotate"] == {"too_small": 1, "no_answer": 1, "already_rotated": 1,
                                   "no_image": 1, "kept": 1, "multi_image": 1}
    assert out.drops["low_contrast"] == {"too_small": 1, "no_answer": 1, "no_image": 1, "kept": 2,
                                         "multi_image": 1}
    again = augment_samples(out.samples, store, BOTH)       # copies are not copied again
    assert again.drops["rotate"] == {"augmented": 3} and not again.samples


def test_shares_and_filters_are_deterministic(store):
    pool = [make_sample(store, n) for n in ("astronaut", "coffee", "rocket", "chelsea", "camera")]
    half = AugmentConfig(rotate_share=0.5, contrast_share=0.5, seed=3)
    a, b = augment_samples(pool, store, half), augment_samples(pool, store, half)
    assert [s.id for s in a.samples] == [s.id for s in b.samples]
    assert a.drops["rotate"]["kept"] + a.drops["rotate"].get("not_drawn", 0) == 5
    only = augment_samples(pool, store, AugmentConfig(rotate_share=1.0, sources=("other",)))
    assert only.drops["rotate"] == {"excluded_source": 5}
    tasks = augment_samples(pool, store, AugmentConfig(rotate_share=1.0, tasks=("no_code",)))
    assert tasks.drops["rotate"] == {"excluded_task": 5}
    flat = augment_samples(pool[:1], store, AugmentConfig(contrast_share=1.0, min_contrast=0.9))
    assert flat.drops["low_contrast"] == {"too_flat": 1}


def test_bad_configurations_are_refused():
    for bad in (dict(rotate_share=1.5), dict(angle_min=0), dict(angle_min=200, angle_max=100),
                dict(contrast_factor=(0.5, 1.2))):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_a_shard_is_written_once_and_a_missing_image_is_quarantined(store, tmp_path):
    pool = [make_sample(store, n) for n in ("astronaut", "coffee")]
    lost = make_sample(store, "rocket")
    store.path(lost.images[0]).unlink()
    shard = tmp_path / "pool" / "samples" / "shard-00000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(samples_table(pool + [lost]), shard)
    out = tmp_path / "augmented"
    report = augment_shard(shard, out, store, BOTH)
    assert report["copies"] == 4 and report["samples_in"] == 3 and not report["skipped"]
    assert report["quarantined_by_reason"] == {"missing_image_file": 2}      # both transforms
    rows = pq.read_table(out / "samples" / "shard-00000.parquet")
    assert rows.schema.remove_metadata().equals(SAMPLE_SCHEMA) and rows.num_rows == 4
    quarantine = pq.read_table(out / "quarantine" / "shard-00000.parquet").to_pylist()
    assert {q["origin"]["row"] for q in quarantine} == {lost.origin_row}
    assert all(lost.id in q["detail"] for q in quarantine)
    assert augment_shard(shard, out, store, BOTH)["skipped"]
    changed = augment_shard(shard, out, store, AugmentConfig(rotate_share=1.0))
    assert not changed["skipped"] and changed["copies"] == 2
    off = augment_shard(shard, out, store, AugmentConfig())
    assert off["copies"] == 0 and off["by_transform"] == {}
