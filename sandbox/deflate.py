"""Which zlib the workers load: the system's, or a faster drop-in build such as zlib-ng.

A PNG is a zlib stream: a snippet that saves its crop as PNG spends most of its time in deflate,
and the image checker decoding it, in inflate. zlib-ng built in compat mode
(`scripts/zlib_ng.sh`) exports the same ABI (libz.so.1) and compression levels and deflates about
2x faster (docs/benchmarks.md). The pixels are the same; the bytes are not (it finds other
matches), so a PNG's size differs by a few percent, and so does its content-addressed name.

A worker is started with the library in LD_PRELOAD (its children are forks: they have it too),
then checks that it is the zlib in use: the dynamic loader skips a library it cannot load with
one line on a stderr nobody reads.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "THYME_SANDBOX_ZLIB"
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
