"""The sandbox as an HTTP service: one `Sandbox` (its workers, isolation, limits, repairs and
health rule unchanged) behind a small JSON API, for rollout and evaluation workers on other
machines and for other trainers.

    python -m sandbox serve --host 0.0.0.0 --port 8080 --token-file sandbox.token \
        [--certfile server.pem --keyfile server.key]      # HTTPS: the token is not sent in clear

Endpoints (all but /health need the token: `Authorization: Bearer <token>`, or
`?access_token=<token>` on the URL for clients that cannot set a header, e.g. verl):

    GET    /health                      liveness, no token
    POST   /run_code                    SandboxFusion's run_code (sandbox/fusion.py)
    GET    /v1/info                     workers, timeout, namespace, limits, load
    POST   /v1/run                      one code block: {code, inputs, timeout, stdin, repairs,
                                        files, fetch_files}
    POST   /v1/sessions                 a trajectory: {inputs, timeout, files} -> {session}
    POST   /v1/sessions/<id>/run        a block in it (variables persist): {code, timeout,
                                        fetch_files}
    DELETE /v1/sessions/<id>            close it

Inputs and produced images travel as base64 files (sandbox/wire.py); `files` ({relative path:
base64}, written into the folder the code runs in before its interpreter exists) and
`fetch_files` (read back into the result's `fetched`/`unfetched` once it cannot run: after a
one-shot call, after each block of a session) follow sandbox/call_files.py. Bounded: at most
`workers + max_queue` code requests are admitted at once (they wait for a worker in order);
more get 429 with Retry-After. A body over `max_body_mb` gets 413 before it is read.
Sessions idle for `session_idle_s` are closed (a client that died must not hold a worker's
scratch forever); at most `max_sessions` are open.

With a certificate (`--certfile`, `--keyfile`) it serves HTTPS only (stdlib `ssl`, TLS 1.2 or
later); each connection's handshake runs in its own thread, and a client speaking plain HTTP
to it gets a plain 400 that says to use https.
"""

from __future__ import annotations

import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from sandbox import call_files, fusion, wire
from sandbox.core import Sandbox
from sandbox.policy import summary

SESSION_REAP_EVERY_S = 10.0
TLS_HANDSHAKE_S = 30.0      # a client that has not finished its TLS handshake by then is dropped
_PLAIN_HTTP_ERROR = b'{"error": "this sandbox service speaks HTTPS: use an https:// URL"}'


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Admission:
    """Counts code requests in the building (running or waiting for a worker)."""

    def __init__(self, limit: int):
        self.limit, self.inside, self.lock = limit, 0, threading.Lock()

    def __enter__(self):
        with self.lock:
            if self.inside >= self.limit:
                raise HTTPError(HTTPStatus.TOO_MANY_REQUESTS,
                                f"the sandbox is busy ({self.inside} requests running or queued, "
                                f"the limit); retry later", {"Retry-After": "1"})
            self.inside += 1

    def __exit__(self, *exc):
        with self.lock:
            self.inside -= 1


class _OpenSession:
    def __init__(self, session, folder: str):
        self.session, self.folder = session, folder
        self.lock = threading.Lock()  # one block at a time per trajectory
        self.last_used = time.monotonic()
        self.closed = False


class SandboxService:
    """The state behind the HTTP handler: the sandbox, its open sessions, the limits."""

    def __init__(self, sandbox: Sandbox, token: str | None, *, max_queue: int | None = None,
                 max_body_mb: float = 64.0, max_timeout: float = 60.0, max_sessions: int | None = None,
                 session_idle_s: float = 600.0):
        self.sandbox, self.token = sandbox, token
        self.max_body = int(max_body_mb * (1 << 20))
        self.max_timeout = max_timeout
        # verl posts every test case at once and retries only 504: queue generously
        queue = max(64, 8 * sandbox.workers) if max_queue is None else max_queue
        self.admission = Admission(sandbox.workers + queue)
        self.max_sessions = max_sessions or sandbox.workers * 32
        self.session_idle_s = session_idle_s
        self.root = tempfile.mkdtemp(prefix="thyme-sandbox-service-")
        os.chmod(self.root, 0o755)  # the workers read inputs from here
        self.sessions: dict[str, _OpenSession] = {}
        self.sessions_lock = threading.Lock()
        self.served = 0
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_idle, daemon=True)
        self._reaper.start()

    # ------------------------------------------------------------ endpoints
    def info(self) -> dict:
        sb = self.sandbox
        return {"workers": sb.workers, "timeout": sb.timeout, "namespace": sb.namespace,
                "degraded": list(sb.degraded), "isolation": sb.isolation_report,
                "zlib": sb.zlib, "png_level": sb.png_level,
                "max_timeout": self.max_timeout,
                "max_body_bytes": self.max_body, "max_inflight": self.admission.limit,
                "inflight": self.admission.inside, "sessions": len(self.sessions),
                "max_sessions": self.max_sessions, "served": self.served}

    def run(self, body: dict) -> dict:
        code = _field(body, "code", str)
        files, fetch = call_files.from_json(body.get("files"), body.get("fetch_files"))
        with self.admission, self._request_dir() as folder:
            inputs = wire.write_inputs(wire.decode_files(body.get("inputs", []), "inputs"),
                                       os.path.join(folder, "in"))
            result = self.sandbox.run(code, inputs, self._timeout(body), stdin=_field(
                body, "stdin", str, None), repairs=_field(body, "repairs", bool, True),
                results_dir=self._out_dir(folder), files=files, fetch_files=fetch)
            return wire.result_payload(result)

    def run_code(self, body, query: dict) -> dict:
        try:
            request = fusion.parse_request(body, self.max_timeout)
        except fusion.FusionRequestError as exc:
            raise HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        if "repairs" in query:
            request["repairs"] = query["repairs"][-1] in ("1", "true", "on", "thyme")
        problem = fusion.unsupported(request)
        if problem:
            return fusion.sandbox_error(problem)
        try:
            files, fetch = fusion.request_files(request)
        except call_files.FileRequestError as exc:
            return fusion.sandbox_error(f"the request's files were refused: {exc}")
        with self.admission, self._request_dir() as folder:
            result = self.sandbox.run(request["code"], (), request["timeout"],
                                      stdin=request["stdin"], repairs=request["repairs"],
                                      results_dir=self._out_dir(folder), files=files,
                                      fetch_files=fetch)
        return fusion.response(result)

    def open_session(self, body: dict) -> dict:
        if body.get("fetch_files"):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "`fetch_files` is asked for with each block "
                            "(POST /v1/sessions/<id>/run), not when a session is opened")
        files = wire.decode_files(body.get("inputs", []), "inputs")
        scratch_files, _ = call_files.from_json(body.get("files"), None)
        timeout = self._timeout(body)
        with self.sessions_lock:
            if len(self.sessions) >= self.max_sessions:
                raise HTTPError(HTTPStatus.TOO_MANY_REQUESTS,
                                f"{len(self.sessions)} sessions are open (the limit); close "
                                "finished ones", {"Retry-After": "1"})
            sid = uuid.uuid4().hex
            folder = os.path.join(self.root, sid)
            os.mkdir(folder, 0o755)
            inputs = wire.write_inputs(files, folder)
            self.sessions[sid] = _OpenSession(
                self.sandbox.session(inputs, timeout, files=scratch_files), folder)
        return {"session": sid}

    def run_in_session(self, sid: str, body: dict) -> dict:
        code = _field(body, "code", str)
        timeout = self._timeout(body) if "timeout" in body else None
        if body.get("files"):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "`files` are sent when the session is opened "
                            "(POST /v1/sessions): they are written before its interpreter exists")
        _, fetch = call_files.from_json(None, body.get("fetch_files"))
        entry = self._session(sid)
        with self.admission, entry.lock, self._request_dir() as folder:
            if entry.closed:  # closed or expired while this request waited
                raise HTTPError(HTTPStatus.NOT_FOUND, f"session {sid!r} was closed")
            entry.last_used = time.monotonic()
            result = entry.session.run(code, timeout, results_dir=self._out_dir(folder),
                                       fetch_files=fetch)
            entry.last_used = time.monotonic()
            return wire.result_payload(result)

    def close_session(self, sid: str) -> dict:
        with self.sessions_lock:
            entry = self.sessions.pop(sid, None)
        if entry is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no open session {sid!r}")
        self._close(entry)
        return {"ok": True}

    def shutdown(self) -> None:
        self._stop.set()
        with self.sessions_lock:
            entries, self.sessions = list(self.sessions.values()), {}
        for entry in entries:
            self._close(entry)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ helpers
    def _session(self, sid: str) -> _OpenSession:
        with self.sessions_lock:
            entry = self.sessions.get(sid)
        if entry is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no open session {sid!r} (closed, expired "
                            f"after {self.session_idle_s:g} s idle, or the server restarted)")
        return entry

    def _close(self, entry: _OpenSession) -> None:
        with entry.lock:
            entry.closed = True
            try:
                entry.session.close()
            finally:
                shutil.rmtree(entry.folder, ignore_errors=True)

    def _reap_idle(self) -> None:
        while not self._stop.wait(min(SESSION_REAP_EVERY_S, self.session_idle_s)):
            now = time.monotonic()
            with self.sessions_lock:
                idle = [sid for sid, e in self.sessions.items()
                        if now - e.last_used > self.session_idle_s and not e.lock.locked()]
                entries = [self.sessions.pop(sid) for sid in idle]
            for entry in entries:
                self._close(entry)

    def _timeout(self, body: dict) -> float:
        timeout = _field(body, "timeout", (int, float), None)
        if timeout is None:
            return self.sandbox.timeout
        if not timeout > 0:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "`timeout` must be positive")
        return min(float(timeout), self.max_timeout)

    def _request_dir(self):
        folder = tempfile.TemporaryDirectory(dir=self.root, prefix="r-")
        os.chmod(folder.name, 0o755)  # the workers read inputs from here
        return folder

    @staticmethod
    def _out_dir(folder: str) -> str:
        out = os.path.join(folder, "out")
        os.makedirs(out, exist_ok=True)
        return out


def _field(body: dict, name: str, kind, default=...):
    if name not in body or body[name] is None:
        if default is ...:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"`{name}` is required")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"`{name}` has the wrong type "
                                                f"({type(value).__name__})")
    return value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: a client reuses its connection
    server_version = "thyme-sandbox"
    timeout = 120                      # a client silent this long mid-request is dropped
    disable_nagle_algorithm = True     # headers and body go out as two writes: no 40 ms stall
    service: SandboxService            # set on the subclass `serve` makes

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self._body_read = False
        parts = [p for p in url.path.split("/") if p]
        try:
            if method == "GET" and parts == ["health"]:
                return self._reply(HTTPStatus.OK, {"ok": True})
            self._authorize(query)
            body = self._body() if method == "POST" else {}
            reply = self._route(method, parts, body, query)
        except HTTPError as exc:
            if method == "POST" and not self._body_read:
                self.close_connection = True  # its body is still in the stream
            return self._reply(exc.status, {"error": exc.message, "detail": exc.message}, exc.headers)
        except wire.WireError as exc:
            return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except call_files.FileRequestError as exc:
            return self._reply(HTTPStatus.BAD_REQUEST,
                               {"error": f"the request's files were refused: {exc}"})
        except FileNotFoundError as exc:
            return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001  a bug here must not take the server down
            self.log_error("internal error on %s: %s: %s", url.path, type(exc).__name__, exc)
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR,
                               {"error": f"internal error ({type(exc).__name__})"})
        with self.service.admission.lock:
            self.service.served += 1
        self._reply(HTTPStatus.OK, reply)

    def _route(self, method: str, parts: list[str], body, query: dict) -> dict:
        svc = self.service
        if method == "POST" and parts == ["run_code"]:
            return svc.run_code(body, query)
        if parts[:1] == [wire.API.strip("/")]:
            rest = parts[1:]
            if method == "GET" and rest == ["info"]:
                return svc.info()
            if not isinstance(body, dict):
                raise HTTPError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            if method == "POST" and rest == ["run"]:
                return svc.run(body)
            if method == "POST" and rest == ["sessions"]:
                return svc.open_session(body)
            if method == "POST" and len(rest) == 3 and rest[0] == "sessions" and rest[2] == "run":
                return svc.run_in_session(rest[1], body)
            if method == "DELETE" and len(rest) == 2 and rest[0] == "sessions":
                return svc.close_session(rest[1])
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no endpoint {method} /{'/'.join(parts)}")

    def _authorize(self, query: dict) -> None:
        token = self.service.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        given = given[7:].strip() if given[:7].lower() == "bearer " else ""
        given = given or (query.get("access_token") or [""])[-1]
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPError(HTTPStatus.UNAUTHORIZED,
                            "a valid token is required (Authorization: Bearer <token>)"
                            if not given else "the token is not valid",
                            {"WWW-Authenticate": 'Bearer realm="thyme-sandbox"'})

    def _body(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if int(length) > self.service.max_body:
            self.close_connection = True  # the body stays unread
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the request body has {int(length)} bytes; this server takes at "
                            f"most {self.service.max_body}")
        data = self.rfile.read(int(length))
        self._body_read = True
        try:
            return json.loads(data or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({exc})") from None

    def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-") -> None:
        if isinstance(code, HTTPStatus):
            code = code.value
        if int(code) >= 400:   # the path only: a token in the query must not reach the log
            self.log_message('"%s %s" %s', self.command, urlsplit(self.path).path, code)


class TLSServer(ThreadingHTTPServer):
    """HTTPS. The handshake runs in the connection's own thread, not in the accept loop, so a
    client that stalls it holds only its own thread (for `TLS_HANDSHAKE_S`)."""

    tls: ssl.SSLContext

    def finish_request(self, request, client_address):
        tls = self._handshake(request, client_address)
        if tls is None:
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)

    def _handshake(self, sock: socket.socket, client_address) -> ssl.SSLSocket | None:
        sock.settimeout(TLS_HANDSHAKE_S)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if first and first != b"\x16":  # not a TLS handshake record: plain HTTP, most likely
                sys.stderr.write(f"{client_address[0]} - plain HTTP on the HTTPS port: 400\n")
                _refuse_plain_http(sock)
                return None
            return self.tls.wrap_socket(sock, server_side=True) if first else None
        except OSError as exc:  # (ssl.SSLError is one) a bad handshake ends its connection only
            sys.stderr.write(f"{client_address[0]} - TLS handshake failed: {exc}\n")
            return None


def _refuse_plain_http(sock: socket.socket) -> None:
    """Answer a plain-HTTP request on the HTTPS port with a plain 400, then read what it sent
    until it closes (closing on unread data would reset the connection before it reads this)."""
    try:
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(_PLAIN_HTTP_ERROR), _PLAIN_HTTP_ERROR))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2.0)
        drained = 0
        while drained < (1 << 20) and (chunk := sock.recv(65536)):
            drained += len(chunk)
    except OSError:
        pass  # it went away, or sent too much: closed either way


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or later); ValueError naming the file that cannot be
    used."""
    for path in (certfile, keyfile):
        if path and not os.path.isfile(path):
            raise ValueError(f"the TLS file {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"the certificate {certfile} (key {keyfile or 'in the same file'}) "
                         f"cannot be used: {exc}") from None
    return context


def make_server(sandbox: Sandbox, host: str, port: int, token: str | None,
                tls: ssl.SSLContext | None = None,
                **limits) -> tuple[ThreadingHTTPServer, SandboxService]:
    service = SandboxService(sandbox, token, **limits)
    handler = type("BoundHandler", (Handler,), {"service": service})
    server = (TLSServer if tls else ThreadingHTTPServer)((host, port), handler)
    if tls:
        server.tls = tls
    server.daemon_threads = True
    return server, service


def serve(args) -> int:
    """`python -m sandbox serve`: run until interrupted."""
    token = wire.read_token(args.token_file)
    if token is None and not args.no_token:
        print(f"error: give --token-file (or set ${wire.TOKEN_ENV}); --no-token serves without "
              "one (only on a trusted network)", file=sys.stderr)
        return 2
    if args.keyfile and not args.certfile:
        print("error: --keyfile needs --certfile", file=sys.stderr)
        return 2
    try:
        tls = tls_context(args.certfile, args.keyfile) if args.certfile else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Sandbox(workers=args.workers, timeout=args.timeout, memory_mb=args.memory_mb,
                 namespace=args.namespace, isolation=args.isolation) as sandbox:
        server, service = make_server(sandbox, args.host, args.port, token, tls,
                                      max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                                      max_timeout=args.max_timeout,
                                      max_sessions=args.max_sessions,
                                      session_idle_s=args.session_idle_s)
        host, port = server.server_address[:2]
        print(f"thyme sandbox serving on {'https' if tls else 'http'}://{host}:{port} ({sandbox.workers} workers, "
              f"{service.admission.limit} requests admitted at once, token "
              f"{'required' if token else 'NOT required'}); {summary(sandbox.isolation_report)}",
              flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly: sessions closed, workers ended
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            service.shutdown()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
