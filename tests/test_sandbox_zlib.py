"""The zlib the sandbox's workers load (sandbox/deflate.py): the zlib-ng that `make` builds into
the environment by default, the system's on request, and a clear refusal of one that does not
load. The code's PNGs have the same pixels either way; PIL writes them at the sandbox's level
when the code names none."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from sandbox import Sandbox, SandboxUnavailable, deflate
from sandbox.outputs import png_image_data

SAVE_PNG = """
import zlib
from PIL import Image
Image.open(image_path).rotate(90, expand=True).save("/mnt/data/temp_processed_images/turned.png")
print(zlib.ZLIB_RUNTIME_VERSION)
print("/mnt/data/temp_processed_images/turned.png")
"""


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(0)
    pixels = np.cumsum(rng.integers(-3, 4, (240, 320, 3)), axis=1).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("zlib") / "photo.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def _turned(sb: Sandbox, photo: str) -> tuple[str, np.ndarray, bytes]:
    r = sb.run(SAVE_PNG, inputs=[photo])
    assert r.ok, r.error
    out = os.path.join(sb.results_dir, r.images[0])
    with open(out, "rb") as f:
        data = f.read()
    return r.stdout.splitlines()[0], np.asarray(Image.open(out)), data


@pytest.mark.skipif(not os.path.isfile(deflate.BUILT),
                    reason="zlib-ng is not built in this environment (make zlib-ng)")
def test_workers_use_the_built_zlib_ng_and_the_pixels_are_the_system_zlibs(photo):
    with Sandbox(workers=1) as fast, Sandbox(workers=1, zlib="system") as system:
        assert fast.zlib.endswith("zlib-ng")
        assert system.zlib == deflate.in_use()["version"] and "zlib-ng" not in system.zlib
        seen_fast, pixels_fast, png_fast = _turned(fast, photo)
        seen_system, pixels_system, png_system = _turned(system, photo)
    assert (seen_fast, seen_system) == (fast.zlib, system.zlib)   # what the code itself calls
    assert np.array_equal(pixels_fast, pixels_system)
    assert np.array_equal(pixels_fast, np.rot90(np.asarray(Image.open(photo))))
    assert png_fast != png_system          # another deflate: same pixels, other bytes


def test_a_zlib_the_loader_refuses_stops_the_sandbox_naming_it(tmp_path):
    fake = tmp_path / "libz.so.1"
    fake.write_text("not a shared object")
    with pytest.raises(SandboxUnavailable, match=rf"zlib {fake} was not loaded"):
        Sandbox(workers=1, zlib=str(fake))


def test_the_setting_names_what_is_wrong(monkeypatch, tmp_path):
    monkeypatch.setenv(deflate.ENV, "system")
    assert deflate.resolve(None) is None
    monkeypatch.setenv(deflate.ENV, str(tmp_path / "missing.so"))
    with pytest.raises(ValueError, match=r"\$THYME_SANDBOX_ZLIB=.*missing\.so.*no such file"):
        deflate.resolve(None)
    with pytest.raises(ValueError, match=r"zlib='nowhere': no such file"):
        deflate.resolve("nowhere")


SAVE_LEVELS = """
from PIL import Image
im = Image.open(image_path)
for name, options in (("plain", {}), ("six", {"compress_level": 6}), ("small", {"optimize": True})):
    path = f"/mnt/data/temp_processed_images/{name}.png"
    im.save(path, **options)
    print(path)
"""


def _zlib_level_class(png: bytes) -> int:
    """The FLEVEL field of the image data's zlib header: 0 for level 0-1, 1 for 2-5, 2 for 6,
    3 for 7-9 (RFC 1950; zlib and zlib-ng write it from the level they were given)."""
    return png_image_data(png)[1] >> 6


@pytest.mark.parametrize("png_level, plain", [(deflate.PNG_LEVEL, 1), (None, 2), (9, 3)])
def test_pil_writes_pngs_at_the_sandboxs_level_unless_the_code_names_one(photo, png_level, plain):
    """By default PIL's PNGs are deflated at level 4 (1 in the header's class: 2-5), not zlib's 6:
    40 % less time for 3 % more bytes (sandbox.deflate). A level or `optimize` the code names
    still holds, and the pixels are the input's whatever the level."""
    with Sandbox(workers=1, png_level=png_level) as sb:
        assert sb.png_level == png_level
        r = sb.run(SAVE_LEVELS, inputs=[photo])
        assert r.ok, r.error
        files = [os.path.join(sb.results_dir, name) for name in r.images]
        pngs = [open(f, "rb").read() for f in files]
        assert [_zlib_level_class(png) for png in pngs] == [plain, 2, 3]
        for f in files:
            assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(photo)))


def test_a_png_level_outside_zlibs_is_refused():
    for wrong in (10, -1, True, "4"):
        with pytest.raises(ValueError, match="png_level must be a zlib level 0-9"):
            Sandbox(workers=1, png_level=wrong)
