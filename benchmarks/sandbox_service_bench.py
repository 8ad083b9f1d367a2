"""The sandbox over HTTP (loopback) vs in process: calls per second for a trivial snippet, one
caller and all workers busy, and for a session block that returns an image. Same number of
workers on both sides, rounds interleaved, medians kept; the server is `python -m sandbox serve`
in its own process, as deployed.

    python benchmarks/sandbox_service_bench.py [--calls 200] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIVIAL = "print(1)"
CROP = ("img = Image.open(image_path)\nout = '/mnt/data/temp_processed_images/crop.png'\n"
        "img.crop((100, 100, 356, 356)).save(out)\nprint(out)")


def rates(sb, calls: int, image: str) -> dict[str, float]:
    """Calls per second: sequential, concurrent (2 callers per worker), session image blocks."""
    out = {}
    t0 = time.perf_counter()
    for _ in range(calls):
        assert sb.run(TRIVIAL).ok
    out["one caller"] = calls / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2 * sb.workers) as pool:
        assert all(r.ok for r in pool.map(lambda _: sb.run(TRIVIAL), range(calls)))
    out["all workers"] = calls / (time.perf_counter() - t0)
    blocks = max(calls // 5, 4)
    t0 = time.perf_counter()
    with sb.session(inputs=[image]) as s:
        for _ in range(blocks):
            r = s.run(CROP)
            assert r.ok and r.images, r
    out["session image block"] = blocks / (time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from PIL import Image

    from sandbox import Sandbox
    from sandbox.client import SandboxClient

    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "photo.jpg")
        Image.new("RGB", (1280, 960), (90, 140, 200)).save(image)
        token = os.path.join(tmp, "token")
        Path(token).write_text("bench-token\n")
        server = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--port", "0", "--token-file", token,
             "--workers", str(args.workers)], stdout=subprocess.PIPE, text=True, cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            url = server.stdout.readline().split("serving on ")[1].split()[0]
            remote = SandboxClient(url, "bench-token", results_dir=os.path.join(tmp, "remote"))
            with Sandbox(workers=args.workers, results_dir=os.path.join(tmp, "local")) as local:
                rates(local, 20, image)
                rates(remote, 20, image)          # warm both: connections, checkers
                runs = {"in process": [], "HTTP loopback": []}
                for _ in range(args.rounds):
                    runs["in process"].append(rates(local, args.calls, image))
                    runs["HTTP loopback"].append(rates(remote, args.calls, image))
        finally:
            server.terminate()
            server.wait(30)
    keys = list(runs["in process"][0])
    median = {side: {k: statistics.median(r[k] for r in rs) for k in keys} for side, rs in runs.items()}
    print(f"{args.workers} workers, {args.calls} calls per measure, median of {args.rounds} "
          f"interleaved rounds, {os.cpu_count()} cores\n")
    print("| calls/s | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for side, values in median.items():
        print(f"| {side} | " + " | ".join(f"{values[k]:.0f}" for k in keys) + " |")
    print("| HTTP / in process | " + " | ".join(
        f"{median['HTTP loopback'][k] / median['in process'][k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
