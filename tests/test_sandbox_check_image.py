"""The image checker's verdicts (sandbox.outputs.check_image): a JPEG is decoded at 1/8 scale
(every entropy-coded block, no full-size inverse DCT), a PNG's rows are inflated but not
unfiltered; either way its verdicts must be a full decode's."""

from __future__ import annotations

import io
import random
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from sandbox import outputs
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


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, colour: int, idats: list[bytes], between: bytes = b"") -> bytes:
    """A PNG of 8-bit samples from deflated data, every chunk's CRC valid (what `verify`
    checks passes: the verdict is the image data's)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
    body = [_chunk(b"IDAT", idats[0]), between, *(_chunk(b"IDAT", d) for d in idats[1:])]
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(body) + _chunk(b"IEND", b"")


def _decoded_whole(data: bytes, monkeypatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(outputs, "_png_rows_problem", lambda data: outputs.DECODE_WHOLE)
        return check_image(data, MAX_PIXELS)


@pytest.mark.parametrize("colour, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_png_verdicts_without_unfiltering_are_a_full_decodes(colour, channels, monkeypatch):
    """Whole, cut short, with unknown filter types, with corrupt deflate data, with extra data
    or an IDAT run broken by another chunk: inflating the rows says what decoding them says."""
    rng, pick = np.random.default_rng(colour), random.Random(colour)
    width, height = 37, 23
    pixels = np.cumsum(rng.integers(-5, 6, (height, width * channels)), axis=1).astype(np.uint8)
    raw = b"".join(bytes([pick.randrange(5)]) + row.tobytes() for row in pixels)
    z = zlib.compress(raw)
    cases = [[z], [z[i:i + 50] for i in range(0, len(z), 50)], [zlib.compress(raw + bytes(50))]]
    cases += [[zlib.compress(raw[:-cut])] for cut in (1, 10, len(raw) // 2)]   # rows missing
    cases += [[z[:-cut]] for cut in (1, 5, 20, len(z) // 2)]                   # stream cut short
    for bad in (5, 17, 255):                                                    # unknown filter
        rows = bytearray(raw)
        rows[(1 + width * channels) * pick.randrange(height)] = bad
        cases.append([zlib.compress(bytes(rows))])
    for _ in range(60):                                                         # corrupt stream
        flipped = bytearray(z)
        flipped[pick.randrange(len(z))] = pick.randrange(256)
        cases.append([bytes(flipped)])
    pngs = [_png(width, height, colour, idats) for idats in cases]
    pngs.append(_png(width, height, colour, [z[:40], z[40:]], between=_chunk(b"tEXt", b"k\x00v")))
    verdicts = [check_image(data, MAX_PIXELS) for data in pngs]
    assert verdicts == [_decoded_whole(data, monkeypatch) for data in pngs]
    assert {v["problem"] for v in verdicts} == {None, "truncated", "corrupt"}
    assert all(outputs._png_rows_problem(data) != outputs.DECODE_WHOLE for data in pngs)


def test_pngs_that_code_writes_are_checked_without_unfiltering(monkeypatch):
    """PIL's and OpenCV's PNGs (grey, grey+alpha, RGB, RGBA) take the inflate-only check;
    a palette or 16-bit PNG is decoded whole. All pass, as a full decode says."""
    rng = np.random.default_rng(1)
    rgba = np.cumsum(rng.integers(-3, 4, (120, 160, 4)), axis=1).clip(0, 255).astype(np.uint8)
    fast, whole = [], []
    for mode in ("L", "LA", "RGB", "RGBA"):
        buf = io.BytesIO()
        Image.fromarray(rgba).convert(mode).save(buf, "PNG")
        fast.append(buf.getvalue())
    for image in (rgba[..., :3], rgba, rgba[..., 0]):
        fast.append(cv2.imencode(".png", image)[1].tobytes())
    for image in (Image.fromarray(rgba[..., :3]).convert("P"),
                  Image.fromarray(rgba[..., 0].astype(np.uint16) * 257)):   # palette, 16-bit
        buf = io.BytesIO()
        image.save(buf, "PNG")
        whole.append(buf.getvalue())
    assert [outputs._png_rows_problem(data) for data in fast] == [None] * len(fast)
    assert [outputs._png_rows_problem(data) for data in whole] == [outputs.DECODE_WHOLE] * 2
    for data in fast + whole:
        assert check_image(data, MAX_PIXELS) == _decoded_whole(data, monkeypatch) == \
            {"ext": "png", "problem": None}
