"""Which zlib the workers load: the system's, or a faster drop-in build such as zlib-ng; and the
level PIL writes a PNG at when the code names none.

A PNG is a zlib stream: a snippet that saves its crop as PNG spends most of its time in deflate,
and the image checker decoding it, in inflate. zlib-ng built in compat mode
(`scripts/zlib_ng.sh`) exports the same ABI (libz.so.1) and compression levels and deflates about
2x faster (docs/benchmarks.md). The pixels are the same; the bytes are not (it finds other
matches), so a PNG's size differs by a few percent, and so does its content-addressed name.

A worker is started with the library in LD_PRELOAD (its children are forks: they have it too),
then checks that it is the zlib in use: the dynamic loader skips a library it cannot load with
one line on a stderr nobody reads.

PIL writes a PNG at zlib's default level, 6, unless the code passes `compress_level`. On the
code-sample funnel's crops, zlib-ng's level 4 takes 40 % less time than its level 6 for files 3 %
larger, 2 % larger than what the system zlib's level 6 writes (docs/benchmarks.md). The workers
set level 4 as PIL's PNG default (`set_png_level`; `Sandbox(png_level=None)` keeps zlib's).
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "THYME_SANDBOX_ZLIB"
PNG_LEVEL = 4
# Where scripts/zlib_ng.sh installs it: inside the environment the workers run from.
BUILT = os.path.join(sys.prefix, "lib", "zlib-ng", "libz.so.1")


def resolve(setting: str | None) -> str | None:
    """The library the workers preload, or None for the system's zlib. `setting`: "system", or
    a path to a libz.so.1 build; None: $THYME_SANDBOX_ZLIB, else the built zlib-ng if there is
    one. A path that is not a file is refused (ValueError naming it)."""
    source = "zlib"
    if setting is None:
        source, setting = f"${ENV}", os.environ.get(ENV) or None
        if setting is None:
            return BUILT if os.path.isfile(BUILT) else None
    if setting == "system":
        return None
    path = os.path.abspath(setting)
    if not os.path.isfile(path):
        raise ValueError(f"{source}={setting!r}: no such file (give a libz.so.1 build, or 'system')")
    return path


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def in_use() -> dict:
    """{"version": zlibVersion(), "library": the file `deflate` resolves to}: what every library
    in this process (PIL, OpenCV's libpng, Python's zlib module) calls."""
    # By soname: the loader hands back the libz.so.1 already loaded (a preloaded one first).
    lib = ctypes.CDLL("libz.so.1")
    version = lib.zlibVersion
    version.restype = ctypes.c_char_p
    info = _DlInfo()
    ctypes.CDLL(None).dladdr(ctypes.cast(lib.deflate, ctypes.c_void_p), ctypes.byref(info))
    return {"version": version().decode(), "library": os.path.realpath(info.dli_fname.decode())}


def check_loaded(path: str | None) -> dict:
    """`in_use()`, after checking that the preloaded `path` (if any) is that library; raises
    RuntimeError naming it otherwise."""
    found = in_use()
    if path is not None and found["library"] != os.path.realpath(path):
        raise RuntimeError(f"zlib {path} was not loaded (the dynamic loader refused it); this "
                           f"process uses {found['library']} ({found['version']})")
    return found


def check_png_level(level: int | None) -> int | None:
    """`level`, or ValueError unless it is a zlib level (0-9) or None."""
    if level is not None and (isinstance(level, bool) or level not in range(10)):
        raise ValueError(f"png_level must be a zlib level 0-9, or None for zlib's default; "
                         f"not {level!r}")
    return level


def set_png_level(level: int | None) -> None:
    """Have PIL write a PNG at zlib `level` when the code names no `compress_level` (None:
    zlib's default, 6). `optimize=True` still compresses at 9 (PIL's rule); an animated PNG's
    frames (`save_all`) keep zlib's default."""
    if check_png_level(level) is None:
        return
    from PIL import Image, PngImagePlugin

    save = PngImagePlugin._save

    def save_png(im, fp, filename, *args, **kwargs):
        im.encoderinfo.setdefault("compress_level", level)
        return save(im, fp, filename, *args, **kwargs)

    Image.register_save(PngImagePlugin.PngImageFile.format, save_png)
