"""The child process behind pipelines.core.mathverify: runs math-verify on one (given, truth) pair
at a time. One JSON request per line on stdin, one JSON reply per line on stdout.

It imports nothing of ours, so it starts by path (`python mathverify_worker.py`) whatever the
parent's sys.path. math-verify runs with its own signal-based timeouts off (they only work in a
main thread, and cannot stop a long integer operation in C anyway): the parent bounds each check
by killing this process, and the address-space limit below turns a runaway allocation into a
MemoryError here rather than a swapping machine.

    request  {"given": "$\\pi/2$", "truth": "$1.5707963$", "float_rounding": 6, "cpu_limit_s": 6}
    reply    {"correct": true, "parsed": true, "given_value": "1.5707963267948966192313216916",
              "given_parsed": "pi/2", "truth_parsed": "1.57079630000000", "error": null}

`parsed`: both sides became sympy objects (not math-verify's string fallback), so a `false`
means the values differ. `given_value`: the given side's numeric value (30 significant digits)
when it is one real number, else null.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys

MEMORY_LIMIT_BYTES = 4 << 30
SHOWN_CHARS = 200


def _numeric_value(expr) -> str | None:
    import sympy

    try:
        if isinstance(expr, sympy.Expr) and expr.is_number:
            value = sympy.N(expr, 30)
            if value.is_real and value.is_finite:
                return str(value)
    except Exception:  # noqa: BLE001  sympy raises many kinds on odd input
        pass
    return None


def _limit_cpu(seconds: float) -> None:
    """Let this check use `seconds` more of CPU time, then SIGXCPU ends the process: the bound
    holds even inside a C loop, and for a worker whose parent is gone."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _check(request: dict, parse, verify) -> dict:
    import sympy

    if request.get("cpu_limit_s"):
        _limit_cpu(float(request["cpu_limit_s"]))
    truth = parse(request["truth"], parsing_timeout=None)
    given = parse(request["given"], parsing_timeout=None)
    correct = bool(verify(truth, given, float_rounding=int(request.get("float_rounding", 6)),
                          timeout_seconds=None))

    def symbolic(parsed) -> bool:
        return bool(parsed) and isinstance(parsed[0], (sympy.Basic, sympy.MatrixBase))

    return {"correct": correct, "parsed": symbolic(truth) and symbolic(given),
            "given_value": _numeric_value(given[0]) if symbolic(given) else None,
            "given_parsed": str(given[0])[:SHOWN_CHARS] if given else None,
            "truth_parsed": str(truth[0])[:SHOWN_CHARS] if truth else None, "error": None}


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout = sys.stderr            # a stray print can never corrupt the protocol
    logging.disable(logging.CRITICAL)  # math-verify logs every failed parse as a warning
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ValueError, OSError):
        pass                           # a lower hard limit is already in force
    try:
        from importlib.metadata import version

        from math_verify import parse, verify
        # One check before "ready": math-verify and sympy load their parsers and simplifiers on
        # first use (~0.15 s idle, seconds on a busy machine), which would otherwise count against
        # the first real check's timeout, e.g. the check after a timed-out worker was replaced.
        _check({"given": "$\\frac{x^2}{2}$", "truth": "$0.5 x^2$"}, parse, verify)
        ready = {"ready": True, "version": version("math-verify")}
    except Exception as exc:  # noqa: BLE001  reported to the parent, which raises it
        replies.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    replies.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        try:
            reply = _check(json.loads(line), parse, verify)
        except MemoryError:
            reply = {"correct": False, "parsed": False, "error": "out of memory"}
        except Exception as exc:  # noqa: BLE001  a bad pair must not end the worker
            reply = {"correct": False, "parsed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
