"""What runs inside a confined child: the exec loop of one trajectory.

The child reads JSON requests from its pipe, runs each code block in one namespace (so functions
and comprehensions see top-level names, and variables persist across blocks) that starts with
the names the original Thyme sandbox pre-bound ("compat") or only `image_path` ("strict"), and
writes a JSON reply. Everything it reports is treated as untrusted by the worker.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import linecache
import os
import struct
import sys
import time
import traceback

from sandbox import result as R

HEADER = struct.Struct("!I")
MAX_ERROR_CHARS = 4000
# Bound before any model code runs: code that reassigns json.dumps/json.loads (its own business)
# must not break the replies of its block and the next.
_json_dumps, _json_loads = json.dumps, json.loads


def read_frame(fd: int, limit: int) -> bytes | None:
    """One length-prefixed frame from `fd`; None at end of file. Raises ValueError over limit."""
    head = _read_exact(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > limit:
        raise ValueError(f"frame of {size} bytes exceeds the {limit}-byte limit")
    body = _read_exact(fd, size)
    if body is None:
        raise EOFError("truncated frame")
    return body


def write_frame(fd: int, payload: bytes) -> None:
    data = HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            if got == 0:
                return None
            raise EOFError("truncated frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class OutputLimitExceeded(BaseException):
    """Raised when the code prints more than allowed; a BaseException so `except Exception`
    in model code cannot swallow it."""


class CappedWriter(io.TextIOBase):
    def __init__(self, limit: int, strict: bool = True):
        self.limit, self.parts, self.size = limit, [], 0
        self.strict = strict  # False: drop what is over the limit instead of raising

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.limit - self.size
        if len(s) > room:
            self.parts.append(s[:max(room, 0)])
            self.size = self.limit
            if not self.strict:
                return len(s)
            raise OutputLimitExceeded(f"printed more than {self.limit} characters")
        self.parts.append(s)
        self.size += len(s)
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _model_traceback(exc: BaseException) -> str:
    """The last lines of the traceback, frames of the model's code only (no host paths)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<code>"]
    lines = [f"  line {f.lineno}: {f.line}" for f in frames[-3:] if f.line]
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "\n".join([*lines, detail]) if lines else detail


def classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, OutputLimitExceeded):
        return R.OUTPUT_LIMIT, str(exc)
    if isinstance(exc, MemoryError):
        return R.MEMORY, _model_traceback(exc) or "MemoryError: out of memory"
    if isinstance(exc, SyntaxError):
        return R.SYNTAX, "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES):
        return R.FORBIDDEN, _model_traceback(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return R.OUTPUT_LIMIT, _model_traceback(exc)
    text = str(exc)
    if type(exc).__name__ == "error" and ("Insufficient memory" in text or "Failed to allocate" in text):
        return R.MEMORY, _model_traceback(exc)
    return R.RUNTIME, _model_traceback(exc)


# Names the original Thyme sandbox bound for every snippet (its globals, and the modules it put
# among the builtins): released checkpoints write code that uses them without importing.
COMPAT_MODULES = {"os": "os", "random": "random", "string": "string", "math": "math",
                  "json": "json", "re": "re", "cv2": "cv2", "np": "numpy", "numpy": "numpy",
                  "shutil": "shutil", "itertools": "itertools", "time": "time",
                  "datetime": "datetime", "cmath": "cmath", "collections": "collections",
                  "PIL": "PIL"}
NAMESPACES = ("compat", "strict")


def initial_namespace(image_path: str | None, output_dir: str | None, mode: str) -> dict:
    """A trajectory's globals. "strict": `image_path` only; "compat" (the default): also what
    the original pre-bound. The modules are already imported by the worker before it forks, so
    this is a handful of dictionary lookups."""
    if mode not in NAMESPACES:
        raise ValueError(f"namespace must be one of {NAMESPACES}, not {mode!r}")
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    if mode == "compat":
        import importlib

        from PIL import Image, UnidentifiedImageError
        for name, module in COMPAT_MODULES.items():
            namespace[name] = importlib.import_module(module)
        namespace.update(Image=Image, UnidentifiedImageError=UnidentifiedImageError)
        if output_dir is not None:
            namespace["temp_output_dir"] = output_dir
    if image_path is not None:
        namespace["image_path"] = image_path
    return namespace


def serve(fd_in: int, fd_out: int, image_path: str | None, stdout_limit: int,
          output_dir: str | None = None, namespace_mode: str = "compat") -> None:
    """Run requests until the pipe closes. Never returns normally to the caller's frames: the
    worker treats this process as disposable."""
    namespace = initial_namespace(image_path, output_dir, namespace_mode)
    while True:
        os.set_blocking(fd_in, True)  # the code may have made its pipes non-blocking
        frame = read_frame(fd_in, 1 << 24)
        if frame is None:
            return
        request = _json_loads(frame)
        _make_dirs(request.get("make_dirs", ()))
        reply = run_block(request["code"], namespace, stdout_limit, request.get("stdin"))
        reply["nonce"] = request.get("nonce")  # the worker takes no other frame as this reply
        os.set_blocking(fd_out, True)
        # surrogatepass: printed lone surrogates reach the worker, which replaces them
        write_frame(fd_out, _json_dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _make_dirs(paths) -> None:
    """Sub-folders of the output directory the code names (the original created them too).
    Created here, under the child's confinement, since the paths come from model code."""
    for path in paths:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            pass  # e.g. a file of that name: the code's own save then reports the problem


_UNSET = object()


def run_block(code: str, namespace: dict, stdout_limit: int, stdin: str | None = None) -> dict:
    out = CappedWriter(stdout_limit)
    warnings_out = CappedWriter(stdout_limit, strict=False)  # stderr: not part of the result
    error = None
    processed_before = namespace.get("processed_path", _UNSET)
    cpu0 = time.process_time()
    sys.stdout, sys.stderr = out, warnings_out
    sys.stdin = io.StringIO(stdin or "")  # the child's own descriptor 0 is closed
    # so tracebacks can quote the model's own lines
    linecache.cache["<code>"] = (len(code), None, code.splitlines(True), "<code>")
    try:
        exec(compile(code, "<code>", "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = (R.RUNTIME, f"SystemExit: the code exited with status {exc.code}")
    except BaseException as exc:  # noqa: BLE001 - everything the code raises is a result
        kind, message = classify(exc)
        error = (kind, message[:MAX_ERROR_CHARS])
    finally:
        sys.stdout, sys.stderr, sys.stdin = sys.__stdout__, sys.__stderr__, sys.__stdin__
    # Only a `processed_path` this block (re)bound names its image: a later block that just
    # prints a result must not return the earlier block's image again.
    processed = namespace.get("processed_path")
    if processed is processed_before:
        processed = None
    return {
        "stdout": out.getvalue(),
        "processed_path": processed if isinstance(processed, str) else None,
        "error": error,
        "cpu_s": time.process_time() - cpu0,
    }
