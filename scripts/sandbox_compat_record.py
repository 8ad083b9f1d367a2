"""Record the original Thyme sandbox's outcomes on the side-by-side corpus (issue 15).

Runs every case of tests/sandbox_compat_corpus.py through the original module's
`execute_code_in_sandbox`, the way its RL trainer calls it (a fresh output directory per code
block; between blocks the execution context loses the values that do not pickle), and writes
tests/data/sandbox_compat_original.json, which tests/test_sandbox_compat.py compares ours with.

The original is not part of this repository. Run this in an environment that has what it
imports (autopep8, timeout_decorator, opencv-python-headless, pillow, numpy), e.g.

    python -m venv /tmp/thyme-orig && /tmp/thyme-orig/bin/pip install -c constraints.txt \
        autopep8 timeout_decorator opencv-python-headless pillow numpy
    /tmp/thyme-orig/bin/python scripts/sandbox_compat_record.py \
        --original THYME_CHECKOUT/swift/trainers/sandbox.py \
        --source github.com/yfzhang114/Thyme@COMMIT:swift/trainers/sandbox.py

Each case runs in a forked process with its own working directory, so what one snippet does to
the interpreter (or the original's timer) cannot reach the next.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import platform
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "tests", "data", "sandbox_compat_original.json")


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


corpus = _load("sandbox_compat_corpus", os.path.join(ROOT, "tests", "sandbox_compat_corpus.py"))


def _picklable_only(context: dict | None) -> dict | None:
    """What the original trainer keeps between blocks (its `_remove_unpickable_values`)."""
    if context is None:
        return None
    for part in context.values():
        for key in [k for k, v in part.items() if not _pickles(v)]:
            del part[key]
    return context


def _pickles(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # noqa: BLE001 - anything that fails to pickle is dropped
        return False


def _normalise(text: str, out_dir: str, image_path: str) -> str:
    text = text.replace(out_dir.rstrip("/"), corpus.OUT)
    return text.replace(image_path, corpus.INPUT_NAME)


def outcome(paths: list, stdout, error, out_dir: str, image_path: str) -> tuple[dict, str]:
    """What the model is shown (the trainer's rendering), and the original's message."""
    message = _normalise(str(error or ""), out_dir, image_path)
    if not paths:
        return {"status": "error"}, message or "no output captured"
    first = paths[0]
    if not os.path.exists(first):
        return {"status": "text", "text": _normalise(first, out_dir, image_path)}, message
    try:  # the trainer's check_aspect_ratio: whatever does not open as an image fails it
        images = [corpus.image_entry(p) for p in paths if os.path.exists(p)]
    except OSError:
        images = [[0, 0, 0.0]]
    if any(min(w, h) == 0 or max(w, h) / min(w, h) > corpus.ASPECT_LIMIT for w, h, _ in images):
        return {"status": "error"}, "the generated img has invalid aspect_ratio"
    return {"status": "images", "images": images}, message


def run_case(original, case, work: str) -> dict:
    image_path = os.path.join(work, "input", corpus.INPUT_NAME)
    os.makedirs(os.path.dirname(image_path))
    corpus.make_input(image_path)
    cwd = os.path.join(work, "cwd")
    os.makedirs(cwd)
    os.chdir(cwd)
    context, outcomes, messages = None, [], []
    for k, code in enumerate(case.blocks):
        out_dir = os.path.join(work, f"out_rnd{k}")
        os.makedirs(out_dir)
        try:
            paths, stdout, error, context = original.execute_code_in_sandbox(
                code, image_path, item_id=case.id, temp_output_dir=out_dir,
                previous_execution_context=context)
        except BaseException as exc:  # noqa: BLE001 - e.g. SystemExit escapes the original
            outcomes.append({"status": "error"})
            messages.append(f"escaped the original's handler: {type(exc).__name__}: {exc}")
            context = None
            continue
        context = _picklable_only(context)
        result, message = outcome(paths, stdout, error, out_dir, image_path)
        outcomes.append(result)
        messages.append(message)
    return {"digest": corpus.case_digest(case), "outcomes": outcomes, "messages": messages}


def run_isolated(original, case) -> dict:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        status = 0
        try:
            with tempfile.TemporaryDirectory(prefix="thyme-orig-") as work:
                payload = json.dumps(run_case(original, case, work)).encode()
            with os.fdopen(write, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            status = 1
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status or not data:
        raise RuntimeError(f"{case.id}: the recording process failed (status {status})")
    return json.loads(data)


def _versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True,
                        help="the original Thyme sandbox module (swift/trainers/sandbox.py)")
    parser.add_argument("--source", default="",
                        help="where the module came from, recorded as is (repository@commit:path)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", help="case ids to run (default: all)")
    args = parser.parse_args()
    with open(args.original, "rb") as f:
        module_digest = hashlib.sha256(f.read()).hexdigest()
    original = _load("thyme_original_sandbox", args.original)
    cases = [c for c in corpus.CASES if not args.only or c.id in args.only]
    recorded = {}
    for case in cases:
        recorded[case.id] = run_isolated(original, case)
        print(f"{case.id:45s} {[o['status'] for o in recorded[case.id]['outcomes']]}",
              flush=True)
    document = {
        "about": "Outcomes of the original Thyme sandbox module on tests/sandbox_compat_corpus.py "
                 "(regenerate with scripts/sandbox_compat_record.py)",
        "original_source": args.source,
        "original_sha256": module_digest,
        "python": platform.python_version(),
        "packages": _versions("autopep8", "timeout-decorator", "opencv-python-headless", "pillow",
                              "numpy"),
        "cases": recorded,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"{len(recorded)} cases recorded in {os.path.relpath(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
