"""The sandbox as an HTTP service (sandbox/service.py) over loopback, the server a subprocess as
a user starts it: SandboxFusion's run_code through verl's own client, sessions and images through
ours, the token, the limits (413, 429), hostile snippets, and a killed server."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from test_rollout import ANSWER, CROP, codec, image_file, make_prompt, runner, scripted, tiny  # noqa: F401

from sandbox import deflate
from sandbox import result as R
from sandbox.client import SandboxClient, SandboxServiceError

ROOT = Path(__file__).resolve().parent.parent
VENDOR = Path(__file__).parent / "data" / "vendor"
TOKEN = "test-token-7f3a"


def load_vendored(name: str):
    spec = importlib.util.spec_from_file_location(f"vendored_{name}", VENDOR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """`python -m sandbox serve` on a free loopback port."""

    def __init__(self, tmp: Path, *extra: str, token: bool = True):
        self.token_file = token_file = tmp / "token"
        token_file.write_text(TOKEN + "\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        access = ["--token-file", str(token_file)] if token else ["--no-token"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--host", "127.0.0.1", "--port", "0",
             *access, "--workers", "1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
        line = self.proc.stdout.readline()  # printed once the workers are warm
        assert "serving on http" in line, f"the server did not start: {line!r}"  # (or https)
        self.url = line.split("serving on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def post(self, path: str, body, token: str | None = TOKEN) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        conn.close()
        return resp.status, payload, dict(resp.getheaders())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("service"), "--max-queue", "1", "--max-body-mb", "1",
               "--timeout", "5", "--session-idle-s", "3")
    yield s
    s.stop()
    assert s.proc.returncode == 0, "the server did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    with SandboxClient(server.url, TOKEN, results_dir=tmp_path_factory.mktemp("results")) as c:
        yield c


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inputs") / "street photo.png"
    Image.new("RGB", (320, 200), (200, 30, 30)).save(path)
    return str(path)


# ---------------------------------------------------------------- SandboxFusion / verl

def test_verl_scores_code_through_the_service(server):
    """verl's own sandbox_fusion client (vendored verbatim) against our /run_code: stdin test
    cases, its function-call harness, wrong answers, errors and timeouts are told apart."""
    verl = load_vendored("verl_sandbox_fusion_utils")
    url = f"{server.url}/run_code?access_token={TOKEN}"   # verl sends no headers of its own
    one = threading.Semaphore(1)                          # verl's own concurrency bound
    adder = "a, b = map(int, input().split())\nprint(f'{(a + b) / 3:.2f}')"
    results, meta = verl.check_correctness(
        url, {"inputs": ["1 2\n", "3 4\n", "5 5\n"], "outputs": ["1.00", "2.33", "9.99"]}, adder,
        timeout=5, concurrent_semaphore=one)
    assert results == [True, True, False], meta   # printed as written: no Thyme float repair
    assert meta[2]["status"] == "wrong_answer" and meta[2]["stdout"] == "3.33\n"
    results, meta = verl.check_correctness(
        url, {"fn_name": "add", "inputs": ["1\n2"], "outputs": ["3"]},
        "def add(a, b):\n    return a + b", timeout=5, concurrent_semaphore=one)
    assert results == [True], meta                # its __main__ harness reads sys.stdin
    results, meta = verl.check_correctness(
        url, {"inputs": ["", ""], "outputs": ["x", "x"]}, "raise ValueError('boom')",
        timeout=5, concurrent_semaphore=one)
    assert results == [-2, -2] and "ValueError: boom" in meta[0]["stderr"], meta
    results, meta = verl.check_correctness(url, {"inputs": [""], "outputs": ["x"]},
                                           "while True:\n    pass", timeout=1)
    assert results == [-3] and meta[0]["run_status"] == "TimeLimitExceeded", meta
    results, meta = verl.check_correctness(server.url + "/run_code", {"inputs": [""], "outputs": ["x"]},
                                           "print('x')", timeout=5)
    assert results == [-1] and "401" in meta[0]["api_request_error"], meta  # no token: refused


def test_run_code_speaks_sandboxfusions_models(server):
    models = load_vendored("sandbox_fusion_models")
    request = json.loads(models.RunCodeRequest(code="print('hi')", language="python").model_dump_json())
    status, body, _ = server.post("/run_code", request)
    reply = models.RunCodeResponse.model_validate(body)
    assert status == 200 and reply.status == models.RunStatus.Success
    assert reply.run_result.stdout == "hi\n" and reply.run_result.return_code == 0
    status, body, _ = server.post("/run_code", {"code": "x = 1", "language": "python"})
    assert models.RunCodeResponse.model_validate(body).status == "Success"  # silent code is fine
    status, body, _ = server.post("/run_code", {"code": "int main(){}", "language": "cpp"})
    reply = models.RunCodeResponse.model_validate(body)
    assert reply.status == "SandboxError" and "Python only" in reply.message
    status, body, _ = server.post("/run_code", {"code": "print(1)", "language": "python",
                                                "files": {"a.txt": 3}})
    assert status == 422 and "files['a.txt']" in body["detail"]   # as its model refuses it
    status, body, _ = server.post("/run_code", {"language": "python"})
    assert status == 422 and "code" in body["detail"]
    status, body, _ = server.post("/run_code?repairs=1", {"code": "print(f'{1/3:.2f}')",
                                                          "language": "python"})
    assert body["run_result"]["stdout"] == "0.33333333\n"   # Thyme repairs when asked


# ---------------------------------------------------------------- our endpoints

def test_sessions_keep_variables_and_images_round_trip(client, photo):
    assert client.workers == 1 and client.namespace == "compat"
    with client.session(inputs=[photo]) as s:
        r1 = s.run("img = Image.open(image_path)\nscale = lambda v: 2 * v\nprint(img.size)")
        assert r1.ok and r1.text == "(320, 200)", r1
        r2 = s.run("out = '/mnt/data/temp_processed_images/big crop.png'\n"
                   "img.crop((0, 0, 100, 80)).resize((scale(100), scale(80))).save(out)\n"
                   "print(out)")
        assert r2.ok and r2.repairs == ["output_dir"], r2
    (path,) = r2.images
    assert os.path.dirname(path) == client.results_dir
    with Image.open(path) as im:
        assert im.size == (200, 160) and im.getpixel((5, 5)) == (200, 30, 30)
    r = client.run("print(open(image_path, 'rb').read()[:4])", inputs=[photo])
    assert r.ok and r.text == r"b'\x89PNG'", r
    r = client.run("print(scale)")
    assert not r.ok and r.error.kind == R.RUNTIME and "NameError" in r.error.message
    with client.session() as s:
        assert s.run("import time\ntime.sleep(3)", timeout=0.5).error.kind == R.TIMEOUT
        r = s.run("print('after')")
        assert r.ok and any("state was lost" in n for n in r.notes), r


def test_an_abandoned_session_expires(server, client):
    """A client that never closes its session (it died) does not hold the worker for good."""
    s = client.session()
    assert s.run("x = 41\nprint(x + 1)").text == "42"
    deadline = time.monotonic() + 30
    while _info(server)["sessions"]:
        assert time.monotonic() < deadline, "the idle session was never closed"
        time.sleep(0.2)
    with pytest.raises(SandboxServiceError, match="HTTP 404.*expired after 3 s idle"):
        s.run("print(x)")


def test_the_callers_isolation_policy_holds_on_the_service(server, client, monkeypatch):
    """The client reports the service's mechanisms, and a policy the service does not meet is
    refused by name, as a local sandbox would refuse it."""
    from sandbox.client import open_sandbox
    from sandbox.core import SandboxUnavailable

    assert client.isolation_report["active"] and client.isolation_report["policy"]
    # and the zlib its workers write PNGs with (sandbox.deflate; the same environment as ours)
    assert client.zlib.endswith("zlib-ng") == (deflate.resolve(None) is not None), client.zlib
    with open_sandbox(server.url, isolation="seccomp+rlimits", token_file=server.token_file) as remote:
        assert remote.isolation_report == client.isolation_report
    weaker = {**client.info, "isolation": {**client.isolation_report,
                                           "missing": {"landlock": "kernel without Landlock"}}}
    monkeypatch.setattr(SandboxClient, "_call", lambda self, *a: weaker)
    with pytest.raises(SandboxUnavailable, match=rf"{server.url}.*requires landlock"):
        SandboxClient(server.url, TOKEN, isolation="strict")
    SandboxClient(server.url, TOKEN, isolation="seccomp+rlimits").close()      # met: runs


def test_token_is_required(server, client):
    status, body, headers = server.post("/v1/run", {"code": "print(1)"}, token=None)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, body, _ = server.post("/v1/run", {"code": "print(1)"}, token="wrong")
    assert status == 401 and "not valid" in body["error"]
    with pytest.raises(SandboxServiceError, match=f"{server.url}.*HTTP 401"):
        SandboxClient(server.url, "wrong")
    # a refused request's unread body must not be taken for the next request on the connection
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/run", json.dumps({"code": "print(1)"}))
    assert conn.getresponse().status == 401
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    assert client.run("print(1)").ok


def test_request_size_is_bounded(server, client, tmp_path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Length: 5000000\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")   # answered before the body is sent
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 << 20))
    with pytest.raises(SandboxServiceError, match="at most 1048576"):
        client.run("print(1)", inputs=[big])
    assert client.run("print(1)").ok


def test_concurrency_is_bounded(server, client):
    """One worker, one queue slot: a third request at once is refused with 429; the client
    waits such refusals out."""
    slow = {"code": "import time\ntime.sleep(1.5)\nprint('slow')"}
    threads = [threading.Thread(target=server.post, args=("/v1/run", slow)) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while _inflight(server) < 2:
        assert time.monotonic() < deadline, "the slow requests never arrived"
        time.sleep(0.02)
    status, body, headers = server.post("/v1/run", {"code": "print(1)"})
    assert status == 429 and headers["Retry-After"] and "busy" in body["error"]
    r = client.run("print('waited')")    # retried until a slot frees
    assert r.ok and r.text == "waited"
    for t in threads:
        t.join()


def _info(server) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
    info = json.loads(conn.getresponse().read())
    conn.close()
    return info


def _inflight(server) -> int:
    return _info(server)["inflight"]


def test_the_pipeline_executes_through_the_resources_url(server, tmp_path):
    """The Dagster sandbox resource given a URL: the execution stage runs its sessions on the
    service and the images land in the image store, as with a local sandbox."""
    from conftest import make_image
    from test_execute import crop_trajectory

    from assets.resources import SandboxResource
    from pipelines.core.images import ImageStore
    from pipelines.core.schema import Sample
    from pipelines.samples.execute import execute

    store = ImageStore(tmp_path / "images")
    ref, _ = store.put_file(make_image(tmp_path / "in.jpg", 640, 480))
    sample = Sample(question="q", images=[ref], source="test", origin_file="t", origin_row=0,
                    answer="x", task="crop")
    (tmp_path / "token").write_text(TOKEN)
    with SandboxResource(url=server.url, token_file=str(tmp_path / "token"), timeout=5).open() as sb:
        assert isinstance(sb, SandboxClient) and sb.timeout == 5
        (t,) = execute([crop_trajectory(sample)], {sample.id: sample}, store, sb)
    second = t.turns[1].result
    assert second.kind == "image", second     # block 2 used `crop` from block 1
    with Image.open(store.root / second.images[0]) as im:
        assert im.size == (200, 200)


# ---------------------------------------------------------------- hostile code

def test_hostile_snippets_are_contained_and_the_server_keeps_serving(server, client, tmp_path):
    from test_sandbox_hostile import EXITS, KILLS, LOOPS, MEMORY_BOMBS, START

    secret = tmp_path / "secret.txt"
    secret.write_text("THYME-SERVICE-SECRET")
    os.chmod(secret, 0o644)
    os.chmod(tmp_path, 0o755)
    marker = tmp_path / "started"
    cases = [
        (f"print(open({str(secret)!r}).read())", R.FORBIDDEN),
        (START["subprocess_run"][0].replace("@M@", str(marker)), R.FORBIDDEN),
        ("import os\nwhile True:\n    os.fork()", R.FORBIDDEN),
        (f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}))", R.FORBIDDEN),
        (MEMORY_BOMBS["bytearray_10GB"], R.MEMORY),
        (KILLS["parent"][0], R.FORBIDDEN),
        (EXITS["segfault"][0], R.RUNTIME),
        (LOOPS["signals_ignored"], R.TIMEOUT),
    ]
    for code, kind in cases:
        r = client.run(code, timeout=1.5)
        assert not r.ok and r.error.kind == kind, (code, r)
        assert "THYME-SERVICE-SECRET" not in r.stdout + r.error.message
        assert client.run("print(1)").stdout == "1\n"
    status, body, _ = server.post("/run_code", {"code": KILLS["parent_group"][0], "language": "python"})
    assert body["status"] == "Failed" and body["run_result"]["return_code"] == 1, body
    assert not marker.exists() and server.proc.poll() is None
    assert client.run("print(2)").ok and _inflight(server) == 0


# ---------------------------------------------------------------- a killed server

def test_a_killed_server_fails_its_samples_not_the_batch(tmp_path, photo, tiny, codec, image_file):  # noqa: F811
    """The rollout loop on the service: code runs remotely and its image comes back; once the
    server is killed, a sample that runs code ends `sandbox_error` naming the URL, the rest of
    the batch goes on."""
    doomed = Server(tmp_path)
    try:
        c = SandboxClient(doomed.url, TOKEN, results_dir=tmp_path / "results")
        s = c.session(inputs=[photo])
        assert s.run("x = 1\nprint(x)").ok
        prompts = [make_prompt(codec, image_file), make_prompt(codec, image_file)]
        code_then_answer, answer = scripted(codec, [CROP, ANSWER]), scripted(codec, [ANSWER])

        def force(rollout, tokens):
            return (code_then_answer if rollout.prompt_index == 0 else answer)(rollout, tokens)

        before = runner(tiny, c).run(prompts, force=force)
        assert [r.end_reason for r in before] == ["answer", "answer"], [r.error for r in before]
        assert before[0].code_calls == 1 and len(before[0].images) == 2   # the crop came back
        doomed.proc.kill()
        doomed.proc.wait()
        after = runner(tiny, c).run(prompts, force=force)
        assert [r.end_reason for r in after] == ["sandbox_error", "answer"]
        assert f"sandbox service at {doomed.url} cannot be reached" in after[0].error
        with pytest.raises(SandboxServiceError, match=f"sandbox service at {doomed.url} cannot be reached"):
            s.run("print(x)")
    finally:
        doomed.stop()
