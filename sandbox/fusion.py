"""SandboxFusion's `run_code` request and response (github.com/bytedance/SandboxFusion,
sandbox/server/sandbox_api.py: RunCodeRequest, RunCodeResponse; sandbox/runners/types.py:
CommandRunResult), mapped onto one `Sandbox.run`, so clients written for it (verl's
sandbox_fusion reward and tool, its SDK) can point at our service.

Mapping: a clean run is `Success` with return code 0 (also code that printed nothing: for
SandboxFusion that is a clean run); a timeout is `Failed` with the run `TimeLimitExceeded`;
any other error of the code is `Failed`, return code 1, our error (kind and the code's own
traceback lines) as stderr; a failure of the sandbox itself (`internal`) is `SandboxError`.
Python only. Code runs as written unless the request asks for the Thyme repairs (`"repairs":
true`, or `?repairs=1` on the URL for clients that cannot add a field): SandboxFusion runs
code verbatim, and a repair such as `:.2f` -> `:.8f` would fail an output-matching test case.
"""

from __future__ import annotations

from sandbox import result as R
from sandbox.result import Result

LANGUAGES = ("python",)


class FusionRequestError(ValueError):
    """A request SandboxFusion would refuse with 422 (the message names the field)."""


def parse_request(body, max_timeout: float) -> dict:
    """The fields of a run_code request we use, checked as SandboxFusion's model checks them."""
    if not isinstance(body, dict):
        raise FusionRequestError("the body must be a JSON object")
    if not isinstance(body.get("code"), str):
        raise FusionRequestError("`code` is required and must be a string")
    if not isinstance(body.get("language"), str):
        raise FusionRequestError("`language` is required and must be a string")
    stdin = body.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise FusionRequestError("`stdin` must be a string or null")
    try:
        timeout = float(body.get("run_timeout", 10))
    except (TypeError, ValueError):
        raise FusionRequestError("`run_timeout` must be a number") from None
    if not timeout > 0:
        raise FusionRequestError("`run_timeout` must be positive")
    files, fetch = body.get("files") or {}, body.get("fetch_files") or []
    if not isinstance(files, dict) or not isinstance(fetch, list):
        raise FusionRequestError("`files` must be an object and `fetch_files` a list")
    return {"code": body["code"], "language": body["language"], "stdin": stdin,
            "timeout": min(timeout, max_timeout), "repairs": body.get("repairs") is True,
            "files": {k: v for k, v in files.items() if isinstance(v, str)}, "fetch_files": fetch}


def unsupported(request: dict) -> str | None:
    """Why this service cannot run a valid request (answered as `SandboxError`), or None."""
    if request["language"] not in LANGUAGES:
        return (f"language {request['language']!r} is not served here: this sandbox runs "
                f"Python only")
    if request["files"] or request["fetch_files"]:
        return ("`files` and `fetch_files` are not supported by this sandbox (inputs and "
                "produced images go through its /v1 endpoints)")
    return None


def sandbox_error(message: str) -> dict:
    return {"status": "SandboxError", "message": message, "compile_result": None,
            "run_result": None, "executor_pod_name": None, "files": {}}


def response(result: Result) -> dict:
    """A `Result` as SandboxFusion's RunCodeResponse."""
    error = result.error
    if error is not None and error.kind == R.INTERNAL:
        return {**sandbox_error(error.message),
                "run_result": _command("Error", result, None, error.message)}
    if error is None or error.kind == R.NO_OUTPUT:
        status, run = "Success", _command("Finished", result, 0, "")
    elif error.kind == R.TIMEOUT:
        status, run = "Failed", _command("TimeLimitExceeded", result, None, error.message)
    else:
        status, run = "Failed", _command("Finished", result, 1,
                                         f"Error ({error.kind}): {error.message}\n")
    return {"status": status, "message": "", "compile_result": None, "run_result": run,
            "executor_pod_name": None, "files": {}}


def _command(status: str, result: Result, return_code: int | None, stderr: str) -> dict:
    return {"status": status, "execution_time": round(result.wall_s, 6),
            "return_code": return_code, "stdout": result.stdout, "stderr": stderr}
