"""The client of the sandbox service (sandbox/service.py), with the interface of the in-process
`Sandbox` the rollout loop, inference, evaluation and the pipeline use:

    with SandboxClient("https://sandbox-host:8443", token=..., ca_file="ca.pem") as sb:
        r = sb.run(code, inputs=["img.jpg"])            # the input's bytes are sent
        r = sb.run(code, files={"data.csv": b"..."}, fetch_files=["out.json"])  # r.fetched
        with sb.session(inputs=["img.jpg"], files={...}) as s:  # variables persist
            r1 = s.run(code1); r2 = s.run(code2, fetch_files=["table.csv"])
        sb.map(jobs)

Produced images are stored in `results_dir` (by content) and `Result.images` names them there,
as with `Sandbox`. A server that cannot be reached, or that answers with an error, raises
`SandboxServiceError` naming the URL; a busy server (429) is retried for `busy_wait_s`.
`files` and `fetch_files` are checked here as the server checks them (sandbox.call_files), so a
refused path raises `FileRequestError` before anything is sent. An https:// URL is verified
against `ca_file` (else $THYME_SANDBOX_CA_FILE, else the system's CAs), host name included.
`open_sandbox(url=...)` gives a client when a URL is configured, else a local `Sandbox`.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

from sandbox import call_files, policy, wire
from sandbox.core import Job, SandboxUnavailable
from sandbox.result import Result

# Seconds an HTTP call may take beyond the code's own timeout (queueing for a worker, images).
HTTP_GRACE_S = 120.0
# A reused keep-alive connection the server has closed fails before any reply: sent again.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class SandboxServiceError(OSError):
    """The sandbox service failed a call (unreachable, refused, an error reply). An OSError, so
    the CLIs report it as they report other I/O failures."""


class SandboxClient:
    """A remote `Sandbox` (see the module doc). Thread-safe: one connection per thread."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float | None = None,
                 results_dir: str | os.PathLike | None = None, busy_wait_s: float = 600.0,
                 isolation: str | None = None, ca_file: str | os.PathLike | None = None):
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a sandbox service URL: {url!r} (expected http://host:port)")
        if ca_file and parts.scheme != "https":
            raise ValueError(f"a CA file verifies an https:// URL; {url!r} is plain HTTP")
        self._tls = _tls_context(ca_file) if parts.scheme == "https" else None
        self.url, self.token, self.busy_wait_s = url.rstrip("/"), token, busy_wait_s
        self._parts, self._local = parts, threading.local()
        self._own_results = results_dir is None
        self.results_dir = os.path.abspath(results_dir or tempfile.mkdtemp(prefix="thyme-remote-results-"))
        os.makedirs(self.results_dir, exist_ok=True)
        info = self._call("GET", "/info", None, 30.0)
        self.info = info
        self.workers: int = info["workers"]
        self.namespace: str = info["namespace"]
        self.degraded = tuple(info.get("degraded", ()))
        self.timeout: float = info["timeout"] if timeout is None else timeout
        # the service's mechanisms; the caller's policy holds there as it would here
        self.isolation_report: dict = info["isolation"]
        # the service's workers' zlib (sandbox.deflate); a service older than that does not say
        self.zlib: str = info.get("zlib", "unknown")
        self.png_level: int | None = info.get("png_level")  # PIL's PNG level there (sandbox.deflate)
        refused = policy.refusal(policy.resolve(isolation), self.isolation_report["missing"])
        if refused:
            self.close()
            raise SandboxUnavailable(f"the sandbox service at {self.url}: {refused}")

    # ------------------------------------------------------------ the Sandbox interface
    def run(self, code: str, inputs: Sequence[str | os.PathLike] = (),
            timeout: float | None = None, *, stdin: str | None = None,
            repairs: bool = True, files: Mapping[str, bytes] | None = None,
            fetch_files: Sequence[str] = ()) -> Result:
        timeout = self.timeout if timeout is None else timeout
        body = {"code": code, "inputs": _encode_inputs(inputs), "timeout": timeout,
                "stdin": stdin, "repairs": repairs, **call_files.to_json(files, fetch_files)}
        return self._result(self._call("POST", "/run", body, timeout + HTTP_GRACE_S))

    def session(self, inputs: Sequence[str | os.PathLike] = (), timeout: float | None = None,
                *, files: Mapping[str, bytes] | None = None) -> RemoteSession:
        timeout = self.timeout if timeout is None else timeout
        body = {"inputs": _encode_inputs(inputs), "timeout": timeout,
                **call_files.to_json(files, ())}
        reply = self._call("POST", "/sessions", body, HTTP_GRACE_S)
        return RemoteSession(self, reply["session"], timeout)

    def map(self, jobs: Iterable[Job | dict], progress: bool = False) -> list[Result]:
        jobs = [j if isinstance(j, Job) else Job(**j) for j in jobs]
        with ThreadPoolExecutor(2 * self.workers) as pool:  # a request waits while one runs
            results = pool.map(lambda j: self.run(j.code, j.inputs, j.timeout), jobs)
            if progress:
                from tqdm import tqdm
                results = tqdm(results, total=len(jobs), desc="sandbox", unit="job")
            return list(results)

    def close(self) -> None:
        if self._own_results:
            shutil.rmtree(self.results_dir, ignore_errors=True)

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP
    def _result(self, payload: dict) -> Result:
        try:
            return wire.result_from_payload(payload, self.results_dir)
        except wire.WireError as exc:
            raise SandboxServiceError(f"the sandbox service at {self.url} sent a bad result: "
                                      f"{exc}") from None

    def _call(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        """One API call; waits out 429 (busy) up to `busy_wait_s`, else raises with the URL."""
        data = None if body is None else json.dumps(body).encode()
        limit = getattr(self, "info", {}).get("max_body_bytes")
        if limit and data is not None and len(data) > limit:
            raise SandboxServiceError(f"the request to the sandbox service at {self.url} has "
                                      f"{len(data)} bytes; the server takes at most {limit}")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        target = f"{self._parts.path}{wire.API}{path}"
        give_up = time.monotonic() + self.busy_wait_s
        delay = 0.05
        while True:
            status, reply, retry_after = self._send(method, target, data, headers, timeout)
            if status != 429 or time.monotonic() + delay > give_up:
                break
            time.sleep(max(delay, min(retry_after, 5.0)))
            delay = min(delay * 2, 2.0)
        if status == 200 and isinstance(reply, dict):
            return reply
        message = reply.get("error") if isinstance(reply, dict) else None
        raise SandboxServiceError(f"the sandbox service at {self.url} answered {method} "
                                  f"{wire.API}{path} with HTTP {status}: {message or reply!r}")

    def _send(self, method, target, data, headers, timeout) -> tuple[int, object, float]:
        for attempt in (0, 1):
            conn, reused = self._connection(timeout)
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except _STALE as exc:
                self._drop()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection: once more on a fresh one
                raise self._unreachable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self._unreachable(exc) from None
            if response.getheader("Connection", "").lower() == "close":
                self._drop()
            try:
                reply = json.loads(raw) if raw else None
            except ValueError:
                reply = raw[:200].decode("utf-8", "replace")
            return response.status, reply, float(response.getheader("Retry-After") or 1)
        raise AssertionError("unreachable")

    def _unreachable(self, exc: BaseException) -> SandboxServiceError:
        return SandboxServiceError(f"the sandbox service at {self.url} cannot be reached "
                                   f"({type(exc).__name__}: {exc})")

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            if self._tls is not None:
                conn = http.client.HTTPSConnection(self._parts.hostname, self._parts.port,
                                                   timeout=timeout, context=self._tls)
            else:
                conn = http.client.HTTPConnection(self._parts.hostname, self._parts.port,
                                                  timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, reused

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None


class RemoteSession:
    """One trajectory on the server (see `SandboxClient.session`)."""

    def __init__(self, client: SandboxClient, session_id: str, timeout: float):
        self.client, self.id, self.timeout = client, session_id, timeout
        self._path = f"/sessions/{quote(session_id, safe='')}"

    def run(self, code: str, timeout: float | None = None, *,
            fetch_files: Sequence[str] = ()) -> Result:
        """One block; `fetch_files` are read back after it (the interpreter frozen)."""
        timeout = self.timeout if timeout is None else timeout
        body = {"code": code, "timeout": timeout, **call_files.to_json(None, fetch_files)}
        reply = self.client._call("POST", f"{self._path}/run", body, timeout + HTTP_GRACE_S)
        return self.client._result(reply)

    def close(self) -> None:
        self.client._call("DELETE", self._path, None, HTTP_GRACE_S)

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode_inputs(inputs: Sequence[str | os.PathLike]) -> list[dict]:
    files = []
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sandbox input not found: {os.fspath(path)}")
        files.append(wire.encode_file(path))
    return files


def _tls_context(ca_file: str | os.PathLike | None) -> ssl.SSLContext:
    """Verifies the server (certificate and host name) against `ca_file`, else
    $THYME_SANDBOX_CA_FILE, else the system's CAs."""
    ca_file = ca_file or os.environ.get(wire.CA_FILE_ENV) or None
    if ca_file is None:
        return ssl.create_default_context()
    if not os.path.isfile(ca_file):
        raise FileNotFoundError(f"the sandbox service's CA file {os.fspath(ca_file)} does not exist")
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except ssl.SSLError as exc:
        raise ValueError(f"the CA file {os.fspath(ca_file)} holds no usable certificate "
                         f"({exc})") from None


def open_sandbox(url: str | None = None, token_file: str | os.PathLike | None = None, *,
                 timeout: float = 10.0, isolation: str | None = None,
                 ca_file: str | os.PathLike | None = None, **local):
    """The sandbox a stage uses: a `SandboxClient` of the service at `url` (token from
    `token_file`, else $THYME_SANDBOX_TOKEN; an https:// URL verified against `ca_file`, else
    $THYME_SANDBOX_CA_FILE, else the system's CAs), or, without a URL, a local
    `Sandbox(**local)`. Either way the `isolation` policy (sandbox.policy) must hold, or
    SandboxUnavailable."""
    if url:
        return SandboxClient(url, wire.read_token(token_file), timeout=timeout,
                             isolation=isolation, ca_file=ca_file)
    from sandbox.core import Sandbox
    return Sandbox(timeout=timeout, isolation=isolation, **local)
