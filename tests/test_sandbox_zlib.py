"""The zlib the sandbox's workers load (sandbox/deflate.py): the zlib-ng that `make` builds into
the environment by default, the system's on request, and a clear refusal of one that does not
load. The code's PNGs have the same pixels either way."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from sandbox import Sandbox, SandboxUnavailable, deflate

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
