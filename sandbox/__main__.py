"""Command line: `python -m sandbox {run,bench,demo}`.

    python -m sandbox run FILE.py --input IMG [--input IMG2] [--timeout S] [--json]
    python -m sandbox bench [--jobs N] [--workers N] [--out docs/benchmarks.md]
    python -m sandbox demo       # the bundled Thyme-style snippets, printed as the model sees them
    python -m sandbox serve --host 0.0.0.0 --port 8080 --token-file FILE   # the HTTP service
        [--certfile CERT.pem --keyfile KEY.pem]                             # ... as HTTPS
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources

from sandbox import Sandbox, SandboxUnavailable
from sandbox.policy import ENV_VAR, normalize, summary
from sandbox.protocol import render_output


def _cmd_run(args: argparse.Namespace) -> int:
    with open(args.file, encoding="utf-8") as f:
        code = f.read()
    results_dir = os.path.abspath(args.results_dir)
    os.makedirs(results_dir, exist_ok=True)
    with Sandbox(workers=1, results_dir=results_dir, isolation=args.isolation) as sb:
        print(summary(sb.isolation_report), file=sys.stderr)  # (stdout may be the JSON result)
        result = sb.run(code, inputs=args.input, timeout=args.timeout)
    if args.json:
        payload = result.to_dict()
        payload["images"] = [os.path.relpath(p) for p in result.images]
        print(json.dumps(payload, indent=2))
    else:
        _print_result(os.path.basename(args.file), result)
    return 0 if result.ok else 1


def _print_result(name: str, result) -> None:
    status = "ok" if result.ok else f"error: {result.error.kind}"
    print(f"== {name}: {status}  ({result.wall_s * 1000:.0f} ms wall, "
          f"{result.cpu_s * 1000:.0f} ms CPU)")
    if result.repairs:
        print(f"   repairs: {', '.join(result.repairs)}")
    for path in result.images:
        print(f"   image: {os.path.relpath(path)}")
    for note in result.notes:
        print(f"   note: {note}")
    print(f"   {render_output(result)}")


def _cmd_demo(args: argparse.Namespace) -> int:
    examples = resources.files("sandbox") / "examples"
    image = str(examples / "street.jpg")
    results_dir = os.path.abspath(args.results_dir)
    os.makedirs(results_dir, exist_ok=True)
    print(f"Thyme sandbox demo: bundled snippets on {os.path.relpath(image)}; images go to "
          f"{os.path.relpath(results_dir)}/\n")
    with Sandbox(results_dir=results_dir, isolation=args.isolation) as sb:
        print(f"{sb.workers} pre-warmed workers (zlib {sb.zlib}); {summary(sb.isolation_report)}\n")
        for name in ("crop_zoom.py", "rotate.py", "contrast.py", "compute.py"):
            code = (examples / name).read_text()
            _print_result(name, sb.run(code, inputs=[image]))
        print("\n-- one trajectory, two code blocks (variables persist, as in a Thyme rollout)")
        with sb.session(inputs=[image]) as s:
            _print_result("block 1", s.run(
                "import cv2\nimg = cv2.imread(image_path)\nprint(img.shape)"))
            _print_result("block 2", s.run(
                # a wrong, unclamped box and the `cv` typo: both auto-corrected
                "crop = img[520:580, 700:860]\nbig = cv.resize(crop, None, fx=3, fy=3)\n"
                "cv2.imwrite('/mnt/data/temp_processed_images/sign_x3.png', big)\n"
                "print('/mnt/data/temp_processed_images/sign_x3.png')"))
        print("\n-- hostile code is stopped by the kernel, not by scanning it")
        for label, code in (
            ("read a host file", "print(open('/etc/hostname').read())"),
            ("open a socket", "import socket\ns = socket.create_connection(('127.0.0.1', 22))"),
            ("start a program", "import subprocess\nprint(subprocess.run(['id']))"),
            ("loop forever, swallowing errors", "while True:\n    try:\n        pass\n    except Exception:\n        pass"),
        ):
            _print_result(label, sb.run(code, timeout=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one file of Python in the sandbox")
    run.add_argument("file")
    run.add_argument("--input", action="append", default=[], help="an input image (repeatable)")
    run.add_argument("--timeout", type=float, default=10.0)
    run.add_argument("--results-dir", default="out/sandbox")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.set_defaults(func=_cmd_run)
    bench = sub.add_parser("bench", help="in-process vs fresh interpreter vs this sandbox")
    bench.add_argument("--jobs", type=int, default=200)
    bench.add_argument("--workers", type=int, default=None)
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians kept")
    bench.add_argument("--out", default=None, help="append the table to this markdown file")
    bench.set_defaults(func=lambda a: __import__("sandbox.bench").bench.main(a))
    demo = sub.add_parser("demo", help="run the bundled example snippets")
    demo.add_argument("--results-dir", default="out/sandbox-demo")
    demo.set_defaults(func=_cmd_demo)
    serve = sub.add_parser("serve", help="serve the sandbox over HTTP (docs/sandbox.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    serve.add_argument("--token-file", default=None, help="file whose first line is the access "
                       "token (default: $THYME_SANDBOX_TOKEN)")
    serve.add_argument("--no-token", action="store_true", help="serve without a token")
    serve.add_argument("--workers", type=int, default=None, help="default: one per core")
    serve.add_argument("--timeout", type=float, default=10.0, help="default seconds per block")
    serve.add_argument("--max-timeout", type=float, default=60.0, help="cap on a request's timeout")
    serve.add_argument("--memory-mb", type=int, default=1024, help="memory budget per block")
    serve.add_argument("--namespace", choices=("compat", "strict"), default="compat")
    serve.add_argument("--max-queue", type=int, default=None, help="requests that may wait for "
                       "a worker (default: 8 per worker, at least 64); beyond them: 429")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="larger bodies: 413")
    serve.add_argument("--max-sessions", type=int, default=None, help="default: 32 per worker")
    serve.add_argument("--session-idle-s", type=float, default=600.0,
                       help="close a session unused this long")
    serve.add_argument("--certfile", default=None, help="PEM certificate (chain): serve HTTPS "
                       "only, so the token is not sent in clear")
    serve.add_argument("--keyfile", default=None, help="its private key (if not in --certfile)")
    serve.set_defaults(func=lambda a: __import__("sandbox.service").service.serve(a))
    for command in (run, demo, serve):
        command.add_argument("--isolation", default=None, metavar="POLICY",
                             help="isolation policy: strict (default) or the minimum to run "
                                  "with, e.g. landlock+seccomp+rlimits (docs/sandbox.md); "
                                  f"default: ${ENV_VAR}, else strict")
    args = parser.parse_args(argv)
    if getattr(args, "isolation", None) is not None:
        try:
            normalize(args.isolation)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        return args.func(args)
    except SandboxUnavailable as exc:  # a mechanism the policy requires is missing here
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
