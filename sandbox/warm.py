"""What a worker does before it forks its zygotes: load and exercise everything model code and
the image checker use (so a child pays a fork, not an import), and list what children may read.
sympy is warmed apart, for the zygote of the code that names it (`needs_sympy`).
"""

from __future__ import annotations

import functools
import io
import os
import sys
import sysconfig

from sandbox import outputs, replies, runner


@functools.cache
def library_paths() -> list[str]:
    """What confined code may read: the interpreter, its libraries, shared objects."""
    paths = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {sysconfig.get_path(k, vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
              for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {os.path.join(sys.base_prefix, "lib"), os.path.realpath(sys.executable)}
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/usr/share/zoneinfo",
              "/etc/ld.so.cache", "/dev/null", "/dev/zero", "/dev/urandom"}
    return sorted(p for p in paths if p and os.path.exists(p))


# What only the "sympy" zygote has warmed (mpmath comes with sympy). sympy is over half the
# warmed heap: code that does not name it runs in a child forked without it, whose fork and
# exit cost less (0.2-0.7 ms of CPU per call). A name in a comment or string only picks the
# larger zygote.
SYMPY_MODULES = ("sympy", "mpmath")


def needs_sympy(code: str) -> bool:
    """Whether `code` names a module only the sympy zygote has loaded (a plain substring test:
    code that imports it some other way imports it in its child, once)."""
    return any(name in code for name in SYMPY_MODULES)


def warm_up() -> None:
    """Import and exercise what model code uses (sympy aside: `warm_up_sympy`), so children pay
    a fork, not an import; and load every decoder the image checker accepts."""
    import cv2
    import numpy as np
    from PIL import (  # noqa: F401
        BmpImagePlugin,
        GifImagePlugin,
        Image,
        ImageEnhance,
        ImageFilter,
        ImageOps,
        JpegImagePlugin,
        MpoImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    cv2.setNumThreads(1)
    img = (np.arange(96 * 128 * 3) % 251).astype(np.uint8).reshape(96, 128, 3)
    ok, buf = cv2.imencode(".jpg", img)
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    dec = cv2.resize(dec[10:80, 20:100], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    cv2.createCLAHE(2.0, (8, 8)).apply(cv2.cvtColor(dec, cv2.COLOR_BGR2GRAY))
    # OpenCV builds its Lab/Luv tables (~4.6 MB) on the first such conversion: ~75 ms in every
    # child that enhances contrast in Lab (CLAHE on lightness), unless built here once.
    cv2.cvtColor(cv2.cvtColor(dec, cv2.COLOR_BGR2LAB), cv2.COLOR_LAB2BGR)
    cv2.rotate(dec, cv2.ROTATE_90_CLOCKWISE)
    pil = Image.fromarray(img).rotate(33, expand=True).crop((0, 0, 64, 64))
    ImageEnhance.Contrast(pil).enhance(1.5).resize((128, 128), Image.BICUBIC)
    for fmt in ("JPEG", "PNG", "WEBP"):
        encoded = io.BytesIO()
        pil.save(encoded, format=fmt)
        outputs.check_image(encoded.getvalue(), 1 << 20)
    runner.initial_namespace(None, None, "compat")  # imports what compat children pre-bind
    np.linalg.solve(np.eye(3), np.ones(3))
    np.percentile(img, (1, 99))  # imports numpy.ma (~15 ms): a percentile stretch needs it
    import statistics  # noqa: F401  (not pre-bound, but model code imports it)
    replies.valid_text("\ud800")  # the codec that replaces lone surrogates


def warm_up_sympy() -> None:
    """Import and exercise sympy, for the zygote of the code that names it."""
    import sympy

    x = sympy.symbols("x")
    sympy.solve(sympy.Eq(x**2 - 2 * x, 3), x)
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    sympy.integrate(x**2 - 7 * x + 12, (x, 3, 4))  # imports sympy.integrals' methods (~30 ms)
    sympy.nsimplify(0.25)
