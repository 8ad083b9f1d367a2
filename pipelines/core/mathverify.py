"""math-verify (huggingface/Math-Verify), the math stage of the answer cascade, run in worker
processes so that every check is bounded in time and memory, from any thread.

    check = math_check("\\pi/2", "1.5707963")     # MathCheck(correct=True, decided=True, ...)

Why processes: math-verify bounds its work with `signal.alarm`, which only works in the main
thread (the audit checks answers in a thread pool; a trainer may score rewards in threads) and
cannot interrupt a long integer operation in C anyway. Here math-verify runs with its timeouts
off, in a child process (`mathverify_worker.py`) that is killed and replaced when a check
outlives `timeout_s`: that check comes back undecided ("timed out"), and nothing is left stuck.
The worker also limits its own address space and CPU time, so even an orphaned worker stops.

Workers start on first use (about 1 s each: sympy and the LaTeX parser), at most `workers` at
once, and serve checks one at a time; verdicts are memoised per (given, truth, rounding). The
same answer pair gets the same verdict in the main thread, in a thread pool, or in a forked
child (which starts workers of its own).

math-verify is called as its README shows: `verify(parse(truth), parse(given))`, the ground
truth first (the comparison is not symmetric), with its default extraction (LaTeX, then plain
expressions). An answer outside any LaTeX delimiters is put inside `$…$` first, because
math-verify only reads LaTeX between delimiters (`latex_input`).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

WORKER = Path(__file__).with_name("mathverify_worker.py")
DEFAULT_TIMEOUT_S = 5.0                 # math-verify's own default for one comparison
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
STARTUP_TIMEOUT_S = 120.0               # importing sympy on a loaded 2-core machine
MEMO_SIZE = 8192


class MathVerifyUnavailable(RuntimeError):
    """The worker could not start: math-verify (or its LaTeX parser) is not installed or broken."""


@dataclass(frozen=True)
class MathCheck:
    correct: bool
    decided: bool                       # both sides parsed as math: a False means they differ
    given_value: Fraction | None = None  # the given side's value, when it is one real number
    note: str = ""                      # why undecided: "timed out after 5 s", a worker error

    @property
    def undecided(self) -> bool:
        return not self.correct and not self.decided


# ---------------------------------------------------------------------------------------------
# What math-verify is given
# ---------------------------------------------------------------------------------------------

_DELIMITED = re.compile(r"\\boxed\s*\{|\\\(|\\\[|\$[^$]+\$")
_PLAIN_SQRT = re.compile(r"(?<!\\)\bsqrt\s*\(([^()]*)\)")
_PLAIN_NAMES = re.compile(r"(?<![\\A-Za-z])(pi|sqrt|sin|cos|tan|cot|sec|csc|log|ln|exp)(?![A-Za-z])")


def latex_input(text: str) -> str:
    """`text` as math-verify reads it best: inside `$…$` unless already delimited, plain-text
    names as LaTeX commands (`sqrt(2)` -> `\\sqrt{2}`, `pi/2` -> `\\pi/2`), `**` as `^`, and a
    lone currency sign dropped."""
    s = (text or "").strip()
    if _DELIMITED.search(s):
        return s
    s = s.replace("$", "").replace("**", "^")
    s = _PLAIN_SQRT.sub(r"\\sqrt{\1}", s)
    s = _PLAIN_NAMES.sub(r"\\\1", s)
    return f"${s}$"


def float_rounding(tol: float) -> int:
    """math-verify's `float_rounding` (decimal places) for our relative tolerance: 1e-6 -> 6."""
    if tol <= 0:
        return 15
    return max(0, min(15, round(-math.log10(tol))))


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------

class _WorkerGone(Exception):
    pass


class _Worker:
    """One child process running mathverify_worker.py; talks one JSON line each way."""

    def __init__(self):
        if not sys.executable:
            raise MathVerifyUnavailable("no Python interpreter path (sys.executable is empty)")
        self.proc = subprocess.Popen([sys.executable, "-P", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     close_fds=True)
        self._buffer = b""
        try:
            hello = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        except (_WorkerGone, TimeoutError) as exc:
            self.kill()
            raise MathVerifyUnavailable(f"the math-verify worker did not start: {exc}") from None
        if not hello.get("ready"):
            self.kill()
            raise MathVerifyUnavailable(f"the math-verify worker could not import math-verify: "
                                        f"{hello.get('error')} (pip install 'math-verify[antlr4_13_2]')")
        self.version = hello.get("version", "")

    def ask(self, request: dict, timeout_s: float) -> dict:
        """The reply to `request`; TimeoutError after `timeout_s`, _WorkerGone if it died."""
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerGone(f"cannot write to it ({exc})") from None
        return self._read_line(time.monotonic() + timeout_s)

    def _read_line(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.poll()
                raise _WorkerGone(f"it exited (code {code})" if code is not None else "it closed its output")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """Ask it to finish (end of input), then make sure it has."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class MathVerifyPool:
    """Up to `workers` math-verify processes; `check` is thread-safe and bounded by `timeout_s`
    (plus the start of a worker, about 1 s, the first time)."""

    def __init__(self, workers: int = DEFAULT_WORKERS, timeout_s: float = DEFAULT_TIMEOUT_S):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"workers must be >= 1 and timeout_s > 0 (got {workers}, {timeout_s})")
        self.workers, self.timeout_s = workers, timeout_s
        self._idle: list[_Worker] = []
        self._started = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self.timeouts = 0                   # checks that ran out of time (their worker replaced)
        self.restarts = 0                   # workers that died or were killed

    def check(self, given: str, truth: str, rounding: int = 6) -> MathCheck:
        """math-verify's verdict on two strings as given (see `latex_input` to prepare them)."""
        worker = self._acquire()
        outcome = "failed"
        try:
            reply = worker.ask({"given": given, "truth": truth, "float_rounding": rounding,
                                "cpu_limit_s": self.timeout_s + 1}, self.timeout_s)
            outcome = "ok"
        except TimeoutError:
            outcome = "timed out"
            return MathCheck(False, False, None, f"timed out after {self.timeout_s:g} s")
        except _WorkerGone as exc:
            return MathCheck(False, False, None, f"math-verify worker died: {exc}")
        finally:
            self._release(worker, outcome)
        if reply.get("error"):
            return MathCheck(False, False, None, f"math-verify error: {reply['error']}")
        return MathCheck(bool(reply["correct"]), bool(reply["correct"] or reply["parsed"]),
                         _fraction(reply.get("given_value")))

    def close(self) -> None:
        """End the idle workers (a forked child only forgets its parent's)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._started -= len(idle)
            ours = os.getpid() == self._pid
        for worker in idle if ours else ():
            worker.close()

    def _acquire(self) -> _Worker:
        with self._cond:
            if os.getpid() != self._pid:    # a forked child: those workers are the parent's
                self._idle, self._started, self._pid = [], 0, os.getpid()
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    self._started -= 1
                    self.restarts += 1      # died between checks (killed from outside)
                if self._started < self.workers:
                    self._started += 1
                    break
                self._cond.wait()
        try:
            return _Worker()
        except BaseException:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, outcome: str) -> None:
        if outcome != "ok":
            worker.kill()
        with self._cond:
            if outcome == "ok" and os.getpid() == self._pid:
                self._idle.append(worker)
            else:
                self._started -= 1
                self.restarts += outcome != "ok"
                self.timeouts += outcome == "timed out"
            self._cond.notify()


def _fraction(value: str | None) -> Fraction | None:
    if not value:
        return None
    try:
        return Fraction(Decimal(value))
    except (InvalidOperation, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The shared pool and memo
# ---------------------------------------------------------------------------------------------

_pool: MathVerifyPool | None = None
_pool_lock = threading.Lock()
_memo: OrderedDict[tuple[str, str, int], MathCheck] = OrderedDict()
_memo_lock = threading.Lock()


def pool() -> MathVerifyPool:
    """The process-wide pool (created on first use, closed at exit)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = MathVerifyPool()
        return _pool


def configure(workers: int | None = None, timeout_s: float | None = None) -> MathVerifyPool:
    """Replace the process-wide pool (e.g. a longer `timeout_s` for an offline evaluation)."""
    global _pool
    current = pool()
    new = MathVerifyPool(workers or current.workers, timeout_s or current.timeout_s)
    with _pool_lock:
        old, _pool = _pool, new
    with _memo_lock:
        _memo.clear()
    if old is not None:
        old.close()
    return new


def math_check(given: str, truth: str, rounding: int = 6) -> MathCheck:
    """math-verify's verdict on an extracted answer against the ground truth, both prepared with
    `latex_input`, through the shared pool; memoised (worker failures are not)."""
    key = (latex_input(given), latex_input(truth), rounding)
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None:
            _memo.move_to_end(key)
            return hit
    result = pool().check(*key)
    if not result.note.startswith("math-verify worker died"):
        with _memo_lock:
            _memo[key] = result
            while len(_memo) > MEMO_SIZE:
                _memo.popitem(last=False)
    return result


@atexit.register
def _close_pool() -> None:
    if _pool is not None:
        _pool.close()


def reference_verify(given: str, truth: str) -> bool:
    """math-verify as its README shows and most users call it, in this process:
    `verify(parse(truth), parse(given))` with the default extraction, each side put inside `$…$`
    unless already delimited, math-verify's own signal timeouts on (so: main thread only). The
    yardstick of the parity table (docs/answers.md); the cascade itself uses `math_check`."""
    from math_verify import parse, verify

    def delimited(text: str) -> str:
        return text if _DELIMITED.search(text) else f"${text}$"

    return bool(verify(parse(delimited(truth)), parse(delimited(given))))
