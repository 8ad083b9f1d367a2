"""`files` and `fetch_files` on our own /v1 endpoints, through our client (sandbox/client.py)
over loopback HTTPS: files go in before the code's interpreter exists and come back after a
one-shot call and after each block of a session (the interpreter frozen); hostile names are
refused by name, by the client and by the server; links, FIFOs and hard links the code plants
under fetched names, even while a signal handler of its own keeps swapping them, are never
followed; the server serves the next request after each. SandboxFusion's own SDK verifies the
HTTPS server through `requests` (REQUESTS_CA_BUNDLE).

The server runs in this process on a simulated host with none of namespaces, Landlock and
seccomp (as in tests/test_sandbox_fusion_files.py), so the code can make the links and FIFOs
the reader must not follow; under the full isolation it cannot make them at all."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import requests
import sandbox_fusion
from PIL import Image
from self_signed import make_certificate
from test_sandbox_fusion_files import NOTHING_BUT_RLIMITS

from sandbox import fork_server
from sandbox import result as R
from sandbox.call_files import FileRequestError
from sandbox.client import SandboxClient
from sandbox.core import Sandbox
from sandbox.service import make_server, tls_context


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service-files")
    cert, key = make_certificate(folder)
    with Sandbox(workers=1, timeout=5, isolation="rlimits", launcher=NOTHING_BUT_RLIMITS) as sb:
        # no token: SandboxFusion's SDK cannot send one
        server, state = make_server(sb, "127.0.0.1", 0, None, tls_context(str(cert), str(key)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield SimpleNamespace(url=f"https://127.0.0.1:{server.server_address[1]}",
                                  port=server.server_address[1], cert=cert, folder=folder,
                                  sandbox=sb)
        finally:
            server.shutdown()
            server.server_close()
            state.shutdown()
            thread.join(10)


@pytest.fixture(scope="module")
def client(service):
    with SandboxClient(service.url, ca_file=service.cert, isolation="rlimits",
                       results_dir=service.folder / "results") as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decoded(fetched: dict) -> dict:
    return {path: base64.b64decode(data) for path, data in fetched.items()}


def post(service, path: str, body) -> tuple[int, dict]:
    """A request straight to the server, bypassing the client's own checks."""
    conn = http.client.HTTPSConnection("127.0.0.1", service.port, timeout=60,
                                       context=ssl.create_default_context(cafile=service.cert))
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    reply = json.loads(response.read())
    conn.close()
    return response.status, reply


def test_files_go_in_and_come_back_one_shot_and_per_session_block(service, client, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo)
    table = b"city,population\nParis,2102650\nLyon,522250\n"
    r = client.run("import csv, json, os\nrows = list(csv.DictReader(open('data/cities.csv')))\n"
                   "os.makedirs('out', exist_ok=True)\n"
                   "json.dump([r['city'] for r in rows], open('out/cities.json', 'w'))\n"
                   "print(Image.open(image_path).size, len(rows))",
                   inputs=[photo], files={"data/cities.csv": table},
                   fetch_files=["out/cities.json", "data/cities.csv", "never_written.txt"])
    assert r.ok and r.text == "(64, 48) 2", r
    assert decoded(r.fetched) == {"out/cities.json": b'["Paris", "Lyon"]', "data/cities.csv": table}
    assert r.unfetched == {"never_written.txt": "not found"}

    with client.session(files={"notes/start.txt": b"1"}) as s:
        r = s.run("total = int(open('notes/start.txt').read())\n"
                  "for i in range(1, 4):\n    total *= 2\n"
                  "    open(f'notes/step{i}.txt', 'w').write(str(total))\nprint(total)",
                  fetch_files=["notes/step3.txt"])
        assert r.ok and r.text == "8" and decoded(r.fetched) == {"notes/step3.txt": b"8"}, r
        r = s.run("total += 1\nopen('notes/step3.txt', 'w').write(str(total))\nprint(total)",
                  fetch_files=["notes/step3.txt", "notes/step1.txt"])   # read after this block
        assert r.ok and decoded(r.fetched) == {"notes/step3.txt": b"9", "notes/step1.txt": b"2"}
        r = s.run("open('partial.txt', 'w').write('so far')\nwhile True:\n    pass", timeout=1,
                  fetch_files=["partial.txt"])
        assert r.error.kind == R.TIMEOUT and decoded(r.fetched) == {"partial.txt": b"so far"}, r
        # the fresh interpreter after a lost state starts from the session's files again
        r = s.run("import os\nprint(sorted(os.listdir('.')), open('notes/start.txt').read())")
        assert r.ok and r.text == "['notes'] 1", r
        assert any("state was lost" in note for note in r.notes), r.notes
        # and so does one on a fresh worker, which never saw them (it asks the Sandbox)
        os.kill(service.sandbox._handles[0].pid, signal.SIGKILL)
        assert s.run("print(1)").error.kind == R.INTERNAL      # the dead worker's block
        r = s.run("print(open('notes/start.txt').read())", fetch_files=["notes/start.txt"])
        assert r.ok and r.text == "1" and decoded(r.fetched) == {"notes/start.txt": b"1"}, r


HOSTILE = [
    ("/v1/run", {"files": {"../escape.txt": "eA=="}}, "'../escape.txt': `..` is not accepted"),
    ("/v1/run", {"files": {"/etc/cron.d/evil": "eA=="}}, "'/etc/cron.d/evil': absolute paths"),
    ("/v1/run", {"fetch_files": ["/etc/passwd"]}, "'/etc/passwd': absolute paths are not accepted"),
    ("/v1/run", {"files": {"a.txt": "eA==", "b.bin": "not base64!"}}, "'b.bin': the content is not valid base64"),
    ("/v1/run", {"files": ["a.txt"]}, "`files` must be an object"),
    ("/v1/run", {"files": {f"f{i}": "" for i in range(65)}}, "65 files were sent; at most 64"),
    ("/v1/sessions", {"files": {"n" * 300: "eA=="}}, "over 255 bytes"),
    ("/v1/sessions", {"files": {"a": "eA==", "a/b": "eA=="}}, "'a': it is sent as a file and is also the folder"),
    ("/v1/sessions", {"fetch_files": ["x.txt"]}, "asked for with each block"),
    ("/v1/sessions/SID/run", {"fetch_files": ["a/../../token"]}, "`..` is not accepted"),
    ("/v1/sessions/SID/run", {"files": {"late.txt": "eA=="}}, "sent when the session is opened"),
]


def test_hostile_names_are_refused_by_the_client_and_the_server(service, client):
    for files, fetch, why in [({"../escape.txt": b"x"}, [], "`..` is not accepted"),
                              ({}, ["/etc/passwd"], "absolute paths are not accepted"),
                              ({"a\0b": b"x"}, [], "NUL")]:
        with pytest.raises(FileRequestError, match=why):    # before anything is sent
            client.run("print(1)", files=files, fetch_files=fetch)
    with pytest.raises(FileRequestError, match="`..` is not accepted"):
        client.session(files={"a/../../escape.txt": b"x"})
    with client.session() as s:
        with pytest.raises(FileRequestError, match="absolute paths"):
            s.run("print(1)", fetch_files=["/proc/self/environ"])
        for path, body, why in HOSTILE:     # a client that does not check
            status, reply = post(service, path.replace("SID", s.id), {"code": "print(1)", **body})
            assert status == 400 and why in reply["error"], (path, body, reply)
        assert s.run("x = 6 * 7\nprint(x)").text == "42"                    # it still serves
    assert client.run("print(6 * 7)").text == "42"


def test_links_planted_under_fetched_names_are_never_followed(client, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("THYME-TOKEN-SECRET")
    plant = (f"import os\nSECRET = {str(secret)!r}\n"
             "os.symlink(SECRET, 'sym.txt')\nos.symlink(os.path.dirname(SECRET), 'hostdir')\n"
             "os.link(SECRET, 'hard.txt')\nos.mkfifo('fifo.txt')\n"
             "os.mkdir('sub')\nos.symlink(SECRET, 'sub/deep.txt')\n"
             "open('plain.txt', 'w').write('fine')\nprint('planted')")
    # A timer handler of the code's own swaps flip.txt between a file and a link to the secret
    # every 0.5 ms, whenever the interpreter runs: between blocks it is frozen, and the worker
    # sees it stopped before it reads.
    racer = ("import signal\nticks = 0\n"
             "def swap(signum, frame):\n    global ticks\n    ticks += 1\n    try:\n"
             "        if ticks % 2:\n            os.symlink(SECRET, 'next')\n"
             "        else:\n            open('next', 'w').write('fine')\n"
             "        os.replace('next', 'flip.txt')\n    except OSError:\n        pass\n"
             "signal.signal(signal.SIGALRM, swap)\n"
             "signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)\nprint('racing')")
    with client.session() as s:
        r = s.run(plant, fetch_files=["sym.txt", "hostdir/token", "hard.txt", "fifo.txt",
                                      "sub/deep.txt", "plain.txt"])
        assert r.ok and r.text == "planted", r
        assert decoded(r.fetched) == {"plain.txt": b"fine"}
        assert r.unfetched == {
            "sym.txt": "a symbolic link (not followed)",
            "hostdir/token": "a symbolic link is on the path (not followed)",
            "hard.txt": "a file with 2 names (a hard link; not read)",
            "fifo.txt": "not a regular file (a FIFO, socket or device; not opened)",
            "sub/deep.txt": "a symbolic link (not followed)"}
        assert s.run(racer).text == "racing"
        outcomes = set()
        for _ in range(12):
            r = s.run("print(ticks)", fetch_files=["flip.txt"])
            assert r.ok and "THYME-TOKEN-SECRET" not in json.dumps(r.to_dict()), r
            outcomes.add((tuple(decoded(r.fetched).items()), tuple(r.unfetched.items())))
        assert outcomes <= {((("flip.txt", b"fine"),), ()),
                            ((), (("flip.txt", "a symbolic link (not followed)"),))}, outcomes
        before = int(s.run("print(ticks)").text)
        time.sleep(1.0)     # 2,000 swaps if the interpreter ran between blocks
        after = int(s.run("signal.setitimer(signal.ITIMER_REAL, 0)\nprint(ticks)").text)
        assert after - before < 400, (before, after)
    assert client.run("print(6 * 7)").text == "42"


def test_sandboxfusions_sdk_verifies_the_https_server(service, monkeypatch):
    """The SDK posts with `requests`: it refuses the server's certificate until told to trust
    it (REQUESTS_CA_BUNDLE), then its files go in and come back over HTTPS."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    request = sandbox_fusion.RunCodeRequest(
        code="print(open('in.txt').read())\nopen('out.txt', 'w').write('back')",
        language="python", files={"in.txt": b64(b"over TLS")}, fetch_files=["out.txt"])
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        sandbox_fusion.run_code(request, endpoint=service.url, max_attempts=1)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(service.cert))
    reply = sandbox_fusion.run_code(request, endpoint=service.url, max_attempts=1)
    assert reply.status == sandbox_fusion.RunStatus.Success, reply
    assert reply.run_result.stdout == "over TLS\n" and decoded(reply.files) == {"out.txt": b"back"}


def test_the_worker_reads_only_once_it_sees_the_interpreter_stopped(tmp_path, monkeypatch):
    """`_freeze`, on a real process whose name holds ") (": True once /proc shows it stopped
    (T); False, within its wait, for one never seen stopped (the worker then reads nothing)."""
    sleeper = subprocess.Popen([sys.executable, "-c", (   # a name a naive parser splits wrongly
        "import ctypes, sys, time\nctypes.CDLL(None).prctl(15, b'x) (y', 0, 0, 0)\n"
        "print('named', flush=True)\ntime.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert sleeper.stdout.readline() == "named\n"
    child = fork_server.Child(sleeper.pid, os.pidfd_open(sleeper.pid), -1, -1, str(tmp_path), [])
    try:
        assert fork_server._process_state(sleeper.pid) in ("S", "R")
        assert fork_server.ForkServer()._freeze(child) is True
        assert fork_server._process_state(sleeper.pid) == "T"
        monkeypatch.setattr(fork_server, "_process_state", lambda pid: "R")
        os.kill(sleeper.pid, signal.SIGCONT)
        start = time.monotonic()
        assert fork_server.ForkServer()._freeze(child, wait_s=0.2) is False
        assert time.monotonic() - start < 5
    finally:
        sleeper.kill()
        sleeper.wait()
        os.close(child.pidfd)
