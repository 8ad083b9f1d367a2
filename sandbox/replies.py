"""The worker's side of the pipes to its children: bounded frame I/O and the checks that turn
whatever a child wrote into a reply the worker can use, or a reason to stop the child.

A child runs model code, which can write anything into its pipes, close them, or die: every
function here is bounded in time (a deadline) and size (a limit), and nothing a child writes
can raise anything but the exceptions named in each docstring.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import time

from sandbox import result as R
from sandbox import runner

# A child exits with this status when its reply could not be sent (see fork_server._child_main).
REPLY_LOST_STATUS = 121
# The error kinds a child may report itself; any other claim is a runtime error.
CHILD_ERROR_KINDS = (R.SYNTAX, R.RUNTIME, R.MEMORY, R.OUTPUT_LIMIT, R.FORBIDDEN)


def read_frame(fd: int, limit: int, deadline: float) -> bytes | None:
    """A frame from an untrusted writer, bounded in size (ValueError) and in time
    (TimeoutError); None at end of file, EOFError if the frame is cut short."""
    buf = bytearray()
    need = runner.HEADER.size
    size = None
    while True:
        while len(buf) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            try:
                chunk = os.read(fd, min(need - len(buf), 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                if not buf:
                    return None
                raise EOFError("truncated frame")
            buf += chunk
        if size is not None:
            return bytes(buf[runner.HEADER.size:])
        (size,) = runner.HEADER.unpack(buf)
        if size > limit:
            raise ValueError(f"the code's output exceeded {limit} bytes")
        need = runner.HEADER.size + size


def write_frame(fd: int, payload: bytes, deadline: float) -> None:
    """Write a frame to a non-blocking pipe whose reader may never read (TimeoutError)."""
    view = memoryview(runner.HEADER.pack(len(payload)) + payload)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            raise TimeoutError
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def drain(fd: int, limit: int = 1 << 20) -> None:
    """Discard what is waiting in a non-blocking pipe (a stopped writer cannot add more)."""
    while limit > 0:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            return
        if not chunk:
            return
        limit -= len(chunk)


def valid_text(text: str) -> str:
    """`text` with lone surrogates (which no encoder accepts) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def parse_reply(frame: bytes, nonce: str) -> dict | str:
    """The child's reply to the block sent with `nonce`, with every field checked and its text
    valid Unicode; or, as a string, why the frame is not such a reply."""
    try:
        reply = json.loads(frame)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
        return "not a reply"
    if not isinstance(reply, dict) or reply.get("nonce") != nonce:
        return "not the reply to this block"
    stdout, processed = reply.get("stdout"), reply.get("processed_path")
    error, cpu = reply.get("error"), reply.get("cpu_s")
    if not isinstance(stdout, str) or not isinstance(processed, (str, type(None))):
        return "malformed reply"
    if error is not None and not (isinstance(error, list) and len(error) == 2
                                  and all(isinstance(e, str) for e in error)):
        return "malformed reply"
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu):
        return "malformed reply"
    if error is not None:
        kind = error[0] if error[0] in CHILD_ERROR_KINDS else R.RUNTIME
        error = (kind, valid_text(error[1]))
    return {"stdout": valid_text(stdout), "error": error, "cpu_s": max(float(cpu), 0.0),
            "processed_path": None if processed is None else valid_text(processed)}


def death_reason(status: int | None) -> tuple[str, str]:
    """(error kind, message) for a child that ended mid-block with wait status `status`."""
    if status is None:
        return R.RUNTIME, "the interpreter died before finishing"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return R.TIMEOUT, "the code used up its CPU time budget"
        if sig == signal.SIGKILL:
            return R.RUNTIME, "the process was killed (SIGKILL: out of memory, or by itself)"
        return R.RUNTIME, f"the interpreter crashed ({name})"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    if code == REPLY_LOST_STATUS:
        return R.RUNTIME, ("the code left its interpreter unable to send the result (it closed or "
                           "replaced the sandbox's pipes, changed a module the sandbox uses, or "
                           "exhausted a limit the reply needs)")
    return R.RUNTIME, f"the code terminated the interpreter (exit status {code}) before finishing"


def unfit_code(code: str, max_chars: int) -> str | None:
    """Why `code` cannot even be handed to the parser, or None."""
    if len(code) > max_chars:
        return f"the code is {len(code)} characters long; at most {max_chars} are accepted"
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = code.count("\n", 0, exc.start) + 1
        return (f"line {line}: the code contains U+{ord(code[exc.start]):04X}, a lone surrogate, "
                "which is not a valid character")
    return None
