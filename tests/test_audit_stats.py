"""The image_sanity check's cheap statistics must decide as the full ones would: the one-pass
std (`locate.mean_std`) is numpy's own wherever a threshold could tell them apart, and the
copy-of-the-input test skips the thumbnails (`context.copy_difference`) only where the means
prove the 128x128 difference is above the limit."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.samples.audit.context import Input, copy_difference, thumbnail
from pipelines.samples.audit.locate import STD_SLACK, Pyramid, mean_std

RNG = np.random.default_rng(0)


def _image(h: int, w: int, kind: str) -> np.ndarray:
    if kind == "noise":
        return RNG.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "checker":      # the most rounding per thumbnail pixel
        return np.where((np.indices((h, w)).sum(0) % 2) == 0, 255, 0).astype(np.uint8)
    if kind == "ramp":
        return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    raise ValueError(kind)


@pytest.mark.parametrize("grey", [
    np.full((40, 50), 7, np.uint8),                                   # constant: std 0
    np.array([[200]], np.uint8),                                      # one pixel
    np.where(np.arange(64 * 64).reshape(64, 64) % 2, 102, 98).astype(np.uint8),  # std exactly 2
    # std ~1.13, where OpenCV's one-pass figure is 1.5e-12 off numpy's
    (100 + np.random.default_rng(1).integers(0, 4, (37, 53))).astype(np.uint8),
    _image(3000, 4000, "noise"),                                      # 12 MP
    _image(301, 257, "ramp")[:, 3:200],                               # a strided view
])
def test_mean_std_is_numpy_at_and_below_the_threshold_and_on_its_side_above(grey):
    mean, std = mean_std(grey, exact_below=2.0)
    assert mean == pytest.approx(float(grey.mean()), abs=1e-9)
    exact = float(grey.std())
    if exact <= 2.0 + 2 * STD_SLACK:
        assert std == exact                       # bit for bit: the figure a reason prints
    else:
        assert std > 2.0 and std == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("shape", [(128, 128), (129, 131), (130, 1000), (256, 512), (733, 967)])
@pytest.mark.parametrize("kind", ["noise", "checker", "ramp"])
def test_a_thumbnail_keeps_its_image_mean_to_half_a_grey_level(shape, kind):
    grey = _image(*shape, kind)
    assert abs(float(thumbnail(grey).mean()) - float(grey.mean())) <= 0.5 + 0.05


def test_copy_difference_skips_only_what_cannot_be_a_copy():
    base = _image(600, 800, "noise")
    base = (base // 4 + 96).astype(np.uint8)           # room to brighten and darken
    inp = Input(base, Pyramid(base))
    limit = 0.5
    for shift in (0, 1, 2, 3, 4, -5, 30):
        for out in (np.clip(base.astype(int) + shift, 0, 255).astype(np.uint8),
                    base[100:500, 200:700], np.ascontiguousarray(base[:, ::-1])):
            full = float(np.abs(thumbnail(out) - thumbnail(base)).mean())
            got = copy_difference(out, float(out.mean()), inp, limit)
            if got is None:
                assert full > limit
            else:
                assert got == full
    assert copy_difference(base, float(base.mean()), inp, limit) == 0.0    # a copy is found
    small = base[:100, :300]                              # enlarged to 128: always compared
    assert copy_difference(small, 255.0, inp, limit) is not None


def test_a_copy_whose_mean_is_almost_a_grey_level_off_is_still_found():
    """Thumbnail pixels round to whole grey levels: cells averaging 99.53 and 100.47 both become
    100, so an output ~0.94 brighter on average than the input has the same thumbnail."""
    cell = np.arange(64).reshape(8, 8)
    inp = np.tile(np.where(cell < 34, 100, 99), (128, 128)).astype(np.uint8)     # 1024 x 1024
    out = np.tile(np.where(cell < 30, 101, 100), (128, 128)).astype(np.uint8)
    assert float(out.mean()) - float(inp.mean()) == pytest.approx(0.9375)
    assert copy_difference(out, float(out.mean()), Input(inp, Pyramid(inp)), 0.5) == 0.0
