"""What a sandbox child pays on the first call of a common operation: the warm-up's blind spots.

Every code block runs in a fresh fork of a warmed worker, so whatever a library initialises on
first use (tables, lazy imports, caches) is paid again by every child that uses it, unless
the warm-up (`sandbox.warm`) did it before the zygote forked. This forks a process warmed the same way
once per operation and times the operation's first and second call in that child (a small input,
so the first call's extra is initialisation, not page faults on big buffers). Rows whose first
call costs more than `--flag-ms` over the second are marked. Sympy caches what it computes: its
calls get new numbers each time, yet a second call still reuses the first one's subexpressions,
so its rows stay ~2x on first use whatever the warm-up does (what the warm-up removes there is
the lazy imports: `sympy integrate` took ~30 ms more before).

    python benchmarks/sandbox_first_calls.py [--flag-ms 2]
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def operations() -> dict:
    """name -> a call on a small input; what model code in this domain commonly runs."""
    import cv2
    import numpy as np
    import sympy as sp
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    grey = img[..., 0].copy()
    pil = Image.fromarray(img)
    x = sp.symbols("x")

    def encoded(fmt: str) -> bytes:
        out = io.BytesIO()
        pil.save(out, format=fmt)
        return out.getvalue()

    jpeg, png = encoded("JPEG"), encoded("PNG")
    k = itertools.count(2)   # sympy caches results: each of its calls gets new numbers
    return {
        "cv2 BGR2LAB / LAB2BGR": lambda: cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2LAB),
                                                      cv2.COLOR_LAB2BGR),
        "cv2 BGR2LUV": lambda: cv2.cvtColor(img, cv2.COLOR_BGR2LUV),
        "cv2 BGR2HSV / HSV2BGR": lambda: cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2HSV),
                                                      cv2.COLOR_HSV2BGR),
        "cv2 BGR2YCrCb": lambda: cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb),
        "cv2 BGR2GRAY": lambda: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY),
        "cv2 CLAHE": lambda: cv2.createCLAHE(2.0, (8, 8)).apply(grey),
        "cv2 equalizeHist": lambda: cv2.equalizeHist(grey),
        "cv2 resize cubic": lambda: cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
        "cv2 resize lanczos": lambda: cv2.resize(img, None, fx=2, fy=2,
                                                 interpolation=cv2.INTER_LANCZOS4),
        "cv2 resize area": lambda: cv2.resize(img, None, fx=0.5, fy=0.5,
                                              interpolation=cv2.INTER_AREA),
        "cv2 warpAffine": lambda: cv2.warpAffine(img, cv2.getRotationMatrix2D((32, 24), 30, 1),
                                                 (64, 48)),
        "cv2 rotate": lambda: cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE),
        "cv2 GaussianBlur": lambda: cv2.GaussianBlur(img, (5, 5), 0),
        "cv2 filter2D": lambda: cv2.filter2D(img, -1, np.ones((3, 3), np.float32) / 9),
        "cv2 normalize": lambda: cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX),
        "cv2 LUT": lambda: cv2.LUT(img, np.arange(256, dtype=np.uint8)),
        "cv2 threshold Otsu": lambda: cv2.threshold(grey, 0, 255,
                                                    cv2.THRESH_BINARY | cv2.THRESH_OTSU),
        "cv2 Canny": lambda: cv2.Canny(grey, 50, 150),
        "cv2 findContours": lambda: cv2.findContours((grey > 128).astype(np.uint8),
                                                     cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE),
        "cv2 rectangle": lambda: cv2.rectangle(img.copy(), (1, 1), (10, 10), (0, 255, 0), 2),
        "cv2 putText": lambda: cv2.putText(img.copy(), "x", (5, 20), cv2.FONT_HERSHEY_SIMPLEX,
                                           0.5, (255, 255, 255)),
        "cv2 imdecode jpeg": lambda: cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
        "cv2 imencode png": lambda: cv2.imencode(".png", img),
        "np percentile": lambda: np.percentile(img, (1, 99)),
        "np histogram": lambda: np.histogram(grey, 256, (0, 256)),
        "np unique": lambda: np.unique(grey),
        "np fft": lambda: np.fft.fft2(grey),
        "np linalg": lambda: np.linalg.lstsq(np.eye(4), np.ones(4), rcond=None),
        "PIL open jpeg": lambda: Image.open(io.BytesIO(jpeg)).load(),
        "PIL open png": lambda: Image.open(io.BytesIO(png)).load(),
        "PIL resize lanczos": lambda: pil.resize((128, 96), Image.LANCZOS),
        "PIL rotate expand": lambda: pil.rotate(30, expand=True, resample=Image.BICUBIC),
        "PIL enhance contrast": lambda: ImageEnhance.Contrast(pil).enhance(1.5),
        "PIL enhance sharpness": lambda: ImageEnhance.Sharpness(pil).enhance(2),
        "PIL autocontrast": lambda: ImageOps.autocontrast(pil),
        "PIL equalize": lambda: ImageOps.equalize(pil),
        "PIL unsharp mask": lambda: pil.filter(ImageFilter.UnsharpMask(2, 150, 3)),
        "PIL draw text": lambda: ImageDraw.Draw(pil.copy()).text((1, 1), "x", fill="red"),
        "PIL save jpeg": lambda: pil.save(io.BytesIO(), format="JPEG", quality=95),
        "PIL save png": lambda: pil.save(io.BytesIO(), format="PNG"),
        "sympy solve": lambda n=k: sp.solve(sp.Eq(x**2 - (next(n) + 1) * x, -next(n)), x),
        "sympy integrate": lambda: sp.integrate(x**3 - next(k) * x, (x, 0, 2)),
        "sympy simplify": lambda: sp.simplify((x**2 - next(k) ** 2) / (x + next(k))),
        "sympy nsimplify": lambda: sp.nsimplify(1 / next(k)),
        "sympy Rational": lambda: sp.Rational(3, next(k)) + sp.Integer(2),
        "import statistics": lambda: __import__("statistics").median([3, 1, 2]),
        "import fractions": lambda: __import__("fractions").Fraction(1, 3),
    }


def first_and_second(call) -> tuple[float, float]:
    """Seconds of `call`'s first and second run in a fresh fork of this process."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        call()
        t2 = time.perf_counter()
        os.write(write, f"{t1 - t0} {t2 - t1}".encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    first, second = (float(v) for v in os.read(read, 100).split())
    os.close(read)
    return first, second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flag-ms", type=float, default=2.0)
    args = parser.parse_args()
    from sandbox import warm
    warm.warm_up()
    warm.warm_up_sympy()   # (the sympy zygote's: its operations are timed here too)
    ops = operations()
    gc.collect()
    gc.freeze()   # as the worker does before its zygote forks
    print("| operation | first call ms | second call ms | first-call extra ms |")
    print("|---|---:|---:|---:|")
    flagged = []
    for name, call in ops.items():
        first, second = first_and_second(call)
        extra = (first - second) * 1000
        mark = " **<-**" if extra > args.flag_ms else ""
        if mark:
            flagged.append(name)
        print(f"| {name} | {first * 1000:.2f} | {second * 1000:.2f} | {extra:.2f}{mark} |")
    print(f"\n{len(flagged)} of {len(ops)} operations cost a child more than {args.flag_ms:g} ms "
          f"on first use: {', '.join(flagged) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
