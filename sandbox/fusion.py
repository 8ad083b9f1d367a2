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

Files, as SandboxFusion's runners treat them (sandbox/runners/base.py: restore_files, and the
fetch loop of run_commands): `files` maps a path relative to the folder the code runs in to
its base64 content, written before the code runs (folders made as needed; a null content, or
a name containing IGNORE_THIS_FILE, is skipped); `fetch_files` lists paths read back after the
run, whatever its outcome, into the response's `files` under the name as asked. A fetched path
with no regular file there is left out of `files`, with no error (SandboxFusion's
`os.path.isfile` test). Departures, for the sandbox's guarantees (sandbox/call_files.py):
absolute paths and `..` are refused (SandboxFusion writes and reads them anywhere), as are NUL,
over-long names and more than the limits of files and bytes; base64 is checked (whitespace
allowed; SandboxFusion drops any other stray character); a request refused for these is
answered `SandboxError` naming the file, as SandboxFusion answers one whose files it cannot
write. A fetched name that the code made a link, FIFO, folder or hard link, or that is over
the fetch budget, is left out (SandboxFusion would follow the link) and `message` says why.
"""

from __future__ import annotations

from sandbox import call_files
from sandbox import result as R
from sandbox.result import Result

LANGUAGES = ("python",)
SKIPPED_FILE_MARK = "IGNORE_THIS_FILE"  # SandboxFusion's restore_files writes no such file


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
    for path, content in files.items():
        if content is not None and not isinstance(content, str):
            raise FusionRequestError(f"`files[{path!r}]` must be a base64 string or null")
    for i, path in enumerate(fetch):
        if not isinstance(path, str):
            raise FusionRequestError(f"`fetch_files[{i}]` must be a string")
    return {"code": body["code"], "language": body["language"], "stdin": stdin,
            "timeout": min(timeout, max_timeout), "repairs": body.get("repairs") is True,
            "files": files, "fetch_files": fetch}


def request_files(request: dict) -> tuple[dict[str, bytes], list[str]]:
    """The files to write ({path: bytes}) and the paths to fetch, checked; FileRequestError
    (naming the file) for what this sandbox refuses."""
    files = {path: content for path, content in request["files"].items()
             if content is not None and SKIPPED_FILE_MARK not in path}
    return call_files.from_json(files, request["fetch_files"])


def unsupported(request: dict) -> str | None:
    """Why this service cannot run a valid request (answered as `SandboxError`), or None."""
    if request["language"] not in LANGUAGES:
        return (f"language {request['language']!r} is not served here: this sandbox runs "
                f"Python only")
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
    return {"status": status, "message": _unfetched_message(result), "compile_result": None,
            "run_result": run, "executor_pod_name": None, "files": result.fetched}


def _unfetched_message(result: Result) -> str:
    """Fetched paths that exist but were not returned, and why (a missing one is simply left
    out of `files`, as SandboxFusion leaves it)."""
    why = [f"{path!r} ({reason})" for path, reason in result.unfetched.items()
           if reason != call_files.NOT_FOUND]
    return f"fetch_files not returned: {'; '.join(why)}" if why else ""


def _command(status: str, result: Result, return_code: int | None, stderr: str) -> dict:
    return {"status": status, "execution_time": round(result.wall_s, 6),
            "return_code": return_code, "stdout": result.stdout, "stderr": stderr}
