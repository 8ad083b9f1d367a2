"""The service over HTTPS (`python -m sandbox serve --certfile --keyfile`), started as a user
starts it, with a self-signed certificate made here: our client verifies it against the CA it
is given and refuses it otherwise (also a different CA); a plain-HTTP client gets a clear 400,
not a hang or a reset; a stalled or broken handshake holds only its own connection; verl's own
client works through `requests` once told to trust the CA; a certificate that cannot be used
stops the server at start, naming it."""

from __future__ import annotations

import base64
import http.client
import os
import socket
import subprocess
import sys

import pytest
from self_signed import make_certificate
from test_sandbox_service import ROOT, TOKEN, Server, load_vendored

from sandbox import wire
from sandbox.client import SandboxClient, SandboxServiceError, open_sandbox


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(folder)
    server = Server(folder, "--timeout", "5", "--certfile", str(cert), "--keyfile", str(key))
    server.cert = cert
    yield server
    server.stop()
    assert server.proc.returncode == 0, "the server did not shut down cleanly on SIGTERM"


def test_our_client_verifies_the_server(tls_server, tmp_path, monkeypatch):
    assert tls_server.url.startswith("https://127.0.0.1:")
    monkeypatch.delenv(wire.CA_FILE_ENV, raising=False)
    with SandboxClient(tls_server.url, TOKEN, ca_file=tls_server.cert) as client, \
            client.session(files={"data/n.txt": b"20"}) as s:
        r = s.run("n = int(open('data/n.txt').read())\nopen('twice.txt', 'w').write(str(2 * n))"
                  "\nprint(n)", fetch_files=["twice.txt"])
        assert r.ok and r.text == "20" and r.fetched == {"twice.txt": base64.b64encode(b"40").decode()}
        assert s.run("print(n + 1)").text == "21"
    monkeypatch.setenv(wire.CA_FILE_ENV, str(tls_server.cert))      # how the CLIs are told
    with open_sandbox(tls_server.url, tls_server.token_file) as remote:
        assert remote.run("print(6 * 7)").text == "42"
    monkeypatch.delenv(wire.CA_FILE_ENV)
    with pytest.raises(SandboxServiceError, match=rf"{tls_server.url} cannot be reached.*"
                                                  "CERTIFICATE_VERIFY_FAILED"):
        SandboxClient(tls_server.url, TOKEN)                        # the system's CAs only
    impostor, _ = make_certificate(tmp_path, "impostor")
    with pytest.raises(SandboxServiceError, match="CERTIFICATE_VERIFY_FAILED"):
        SandboxClient(tls_server.url, TOKEN, ca_file=impostor)      # another CA
    with pytest.raises(ValueError, match="plain HTTP"):
        SandboxClient(tls_server.url.replace("https://", "http://"), TOKEN, ca_file=tls_server.cert)
    with pytest.raises(FileNotFoundError, match="missing.pem"):
        SandboxClient(tls_server.url, TOKEN, ca_file=tmp_path / "missing.pem")


def test_plain_http_and_broken_handshakes_fail_cleanly(tls_server):
    plain_url = tls_server.url.replace("https://", "http://")
    with pytest.raises(SandboxServiceError, match=rf"{plain_url} answered .*HTTP 400.*use an https:// URL"):
        SandboxClient(plain_url, TOKEN)
    conn = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=30)
    conn.request("POST", "/v1/run", '{"code": "print(1)"}', {"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 400 and b"speaks HTTPS" in response.read()
    conn.close()
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=30) as broken:
        broken.sendall(b"\x16\x03\x01\x00\x05hello")                # not a ClientHello
        answer = b"".join(iter(lambda: broken.recv(4096), b""))    # until the server closes
        assert answer == b"" or answer.startswith(b"\x15"), answer  # nothing, or a TLS alert
    # a client that connects and never finishes its handshake holds only its own connection
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=30), \
            SandboxClient(tls_server.url, TOKEN, ca_file=tls_server.cert) as client:
        assert client.run("print('served')").text == "served"
    assert tls_server.proc.poll() is None


def test_verls_client_scores_over_https(tls_server, monkeypatch):
    """verl's sandbox_fusion client (vendored verbatim) posts with `requests`, which verifies
    against REQUESTS_CA_BUNDLE; the token travels in the URL, now encrypted."""
    verl = load_vendored("verl_sandbox_fusion_utils")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_server.cert))
    url = f"{tls_server.url}/run_code?access_token={TOKEN}"
    results, meta = verl.check_correctness(
        url, {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3", "8"]},
        "a, b = map(int, input().split())\nprint(a + b)", timeout=5)
    assert results == [True, False], meta


def test_an_unusable_certificate_stops_the_server_at_start(tmp_path):
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "other")
    (tmp_path / "token").write_text(TOKEN)
    run = subprocess.run(
        [sys.executable, "-m", "sandbox", "serve", "--port", "0", "--token-file",
         str(tmp_path / "token"), "--certfile", str(cert), "--keyfile", str(other_key)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2 and f"the certificate {cert}" in run.stderr, run.stderr
    assert "cannot be used" in run.stderr and "serving" not in run.stdout
