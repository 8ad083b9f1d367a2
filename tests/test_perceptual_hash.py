"""Perceptual hashes for decontamination (pipelines.core.images.perceptual_hash): imagehash's
phash, robust to re-encoding, resizing and small colour changes, and far apart for different
pictures."""

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from pipelines.core.images import ImageRejected, hash_distance, perceptual_hash


def _picture(seed: int, size=(640, 480)) -> Image.Image:
    """A smooth random field with a few shapes: structure at several scales, like a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    img = coarse.resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, size[0] - 120), rng.integers(0, size[1] - 120)
        w, h = rng.integers(30, 120, 2)
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


@pytest.fixture
def pictures(tmp_path):
    paths = {}
    original = _picture(1)
    original.save(paths.setdefault("png", tmp_path / "a.png"))
    original.save(paths.setdefault("jpeg", tmp_path / "a.jpg"), quality=70)
    original.resize((320, 240), Image.LANCZOS).save(paths.setdefault("half", tmp_path / "a_half.png"))
    ImageEnhance.Brightness(original).enhance(1.1).save(paths.setdefault("brighter", tmp_path / "a_b.png"))
    for seed in (2, 3, 4):
        _picture(seed).save(paths.setdefault(f"other{seed}", tmp_path / f"o{seed}.png"))
    return paths


def test_the_same_picture_hashes_close_and_others_far(pictures):
    h = {name: perceptual_hash(path) for name, path in pictures.items()}
    assert all(len(v) == 16 for v in h.values())           # 64 bits as hex
    for variant in ("jpeg", "half", "brighter"):
        assert hash_distance(h["png"], h[variant]) <= 6, variant
    for other in ("other2", "other3", "other4"):
        assert hash_distance(h["png"], h[other]) >= 16, other


def test_it_is_imagehash_phash(pictures):
    with Image.open(pictures["png"]) as img:               # what another tool computes
        assert perceptual_hash(pictures["png"]) == str(imagehash.phash(img))
    assert len(perceptual_hash(pictures["png"], hash_size=16)) == 64


def test_transparency_is_flattened_on_white(tmp_path):
    rgb = _picture(5)
    rgba = rgb.convert("RGBA")
    alpha = Image.new("L", rgb.size, 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 200, 480), fill=0)    # the left third transparent
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "t.png")
    flat = rgb.copy()
    ImageDraw.Draw(flat).rectangle((0, 0, 200, 480), fill=(255, 255, 255))
    flat.save(tmp_path / "flat.png")
    assert perceptual_hash(tmp_path / "t.png") == perceptual_hash(tmp_path / "flat.png")


def test_a_broken_file_is_named(tmp_path):
    good = tmp_path / "good.jpg"
    _picture(6).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    for path in (truncated, not_image):
        with pytest.raises(ImageRejected, match=path.name) as info:
            perceptual_hash(path)
        assert info.value.reason == "undecodable_image"
    with pytest.raises(FileNotFoundError):
        perceptual_hash(tmp_path / "missing.png")
