"""What the sandbox service and its client send each other (one encoding, used by both).

Files travel inside the JSON body as base64: inputs as `{"name", "data"}` (the file name the
code sees, the bytes), produced images the same way. A result is `Result.to_dict()` with its
`images` replaced by such files; the client stores them and puts its own paths back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile

from sandbox.result import Result

TOKEN_ENV = "THYME_SANDBOX_TOKEN"
CA_FILE_ENV = "THYME_SANDBOX_CA_FILE"   # the CA an https:// client verifies the service with
API = "/v1"


class WireError(ValueError):
    """A request or reply that does not follow this encoding (the message says where)."""


def read_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The access token: the first line of `token_file`, else $THYME_SANDBOX_TOKEN, else None."""
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"the token file {os.fspath(token_file)} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def encode_file(path: str | os.PathLike) -> dict:
    with open(path, "rb") as f:
        return {"name": os.path.basename(os.fspath(path)), "data": base64.b64encode(f.read()).decode()}


def decode_files(items, what: str) -> list[tuple[str, bytes]]:
    """(safe file name, bytes) for each `{"name", "data"}`; WireError names the bad item."""
    if not isinstance(items, list):
        raise WireError(f"{what} must be a list of {{name, data}} objects")
    files = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise WireError(f"{what}[{i}] must be an object with a base64 string `data`")
        try:
            data = base64.b64decode(item["data"], validate=True)
        except (binascii.Error, ValueError):
            raise WireError(f"{what}[{i}] ({item.get('name')!r}): `data` is not valid base64") from None
        files.append((safe_name(item.get("name"), i), data))
    return files


def safe_name(name, index: int) -> str:
    """A plain file name (no folders, no hidden or odd characters): what the code is shown."""
    base = os.path.basename(str(name or "")).strip()
    if not base or base.startswith(".") or any(c in base for c in "\0\n\r\\") or len(base) > 200:
        return f"input{index}.bin"
    return base


def write_inputs(files: list[tuple[str, bytes]], folder: str) -> list[str]:
    """Each file in a sub-folder of its own (two inputs may share a name); readable by the
    workers. Returns the paths, in order."""
    paths = []
    for i, (name, data) in enumerate(files):
        sub = os.path.join(folder, str(i))
        os.makedirs(sub, mode=0o755, exist_ok=True)
        path = os.path.join(sub, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        paths.append(path)
    return paths


def result_payload(result: Result) -> dict:
    """A result as sent: its images as files (read from the server's results folder)."""
    payload = result.to_dict()
    payload["images"] = [encode_file(p) for p in result.images]
    return payload


def result_from_payload(payload: dict, results_dir: str) -> Result:
    """A result as received: its images stored in `results_dir` by content (atomically)."""
    try:
        images = decode_files(payload.get("images", []), "images")
        payload = {**payload, "images": [store(data, name, results_dir) for name, data in images]}
        return Result.from_dict(payload)
    except (TypeError, KeyError) as exc:
        raise WireError(f"not a sandbox result ({type(exc).__name__}: {exc})") from None


def store(data: bytes, name: str, folder: str) -> str:
    """`data` at <folder>/<sha256>.<ext of name>, written once, atomically."""
    ext = os.path.splitext(name)[1].lower()[:8]
    path = os.path.join(folder, hashlib.sha256(data).hexdigest()[:32] + ext)
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path
