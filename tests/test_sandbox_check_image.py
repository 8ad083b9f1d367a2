"""The image checker's verdicts (sandbox.outputs.check_image): a JPEG is decoded at 1/8 scale
(every entropy-coded block, no full-size inverse DCT), so its verdicts must be a full decode's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sandbox.outputs import check_image

MAX_PIXELS = 1 << 24


def _jpeg(mode: str = "RGB", **save) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **save)
    return buf.getvalue()


def _full_decode_fails(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception:  # noqa: BLE001
        return True
    return False


@pytest.mark.parametrize("mode, save", [("RGB", {}), ("L", {}), ("CMYK", {}), ("RGB", {"progressive": True}),
                                        ("RGB", {"subsampling": 0})])
def test_whole_jpegs_pass_and_cut_ones_fail_as_a_full_decode_says(mode, save):
    data = _jpeg(mode, **save)
    assert check_image(data, MAX_PIXELS) == {"ext": "jpg", "problem": None}
    for keep in (0.3, 0.6, 0.9, 0.98):
        cut = data[: int(len(data) * keep)]
        verdict = check_image(cut, MAX_PIXELS)
        assert _full_decode_fails(cut) and verdict["problem"] == "truncated", (keep, verdict)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, below 2x the budget
def test_a_jpeg_over_the_pixel_budget_is_refused_before_decoding():
    assert check_image(_jpeg(), 300 * 400 - 1)["problem"] == "pixels"
