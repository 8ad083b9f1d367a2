"""SandboxFusion's `files` and `fetch_files` on our /run_code (sandbox/fusion.py,
sandbox/call_files.py), against a real server subprocess and checked with the other side's code:
SandboxFusion's own SDK (`sandbox_fusion` on PyPI) and its pinned response model. Hostile and
oversized requests are refused naming the file; names the code turns into links, FIFOs, folders
or hard links are never read (also on a host weak enough to let it make them); the sandbox
serves the next request after each."""

from __future__ import annotations

import base64
import functools
import io
import json

import pytest
import sandbox_fusion
from PIL import Image
from test_sandbox_service import Server, load_vendored

from sandbox import call_files
from sandbox.core import Sandbox, launch_subprocess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # SandboxFusion's SDK sends no token (it posts to <endpoint>/run_code, nothing more)
    s = Server(tmp_path_factory.mktemp("fusion-files"), "--timeout", "5", token=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def models():
    return load_vendored("sandbox_fusion_models")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(server, models, **request):
    """POST /run_code; the reply as SandboxFusion's own RunCodeResponse."""
    status, body, _ = server.post("/run_code", {"language": "python", **request}, token=None)
    assert status == 200, body
    return models.RunCodeResponse.model_validate(body)


def assert_serves(server, models):
    reply = run(server, models, code="print(6 * 7)")
    assert reply.status == "Success" and reply.run_result.stdout == "42\n", reply


def test_files_in_and_out_through_sandboxfusions_sdk(server, models):
    """A data file and an image go in; the code reads both, writes a summary and a crop into a
    sub-folder; both come back (and an input, unchanged); a path never written is left out."""
    table = b"city,population\nParis,2102650\nLyon,522250\n"
    photo = Image.new("RGB", (64, 48), (10, 200, 30))
    photo.paste((220, 20, 20), (16, 8, 48, 40))
    png = io.BytesIO()
    photo.save(png, format="PNG")
    code = ("import csv, json, os\nfrom PIL import Image\n"
            "rows = list(csv.DictReader(open('data/cities.csv')))\n"
            "os.makedirs('out', exist_ok=True)\n"
            "json.dump({'cities': [r['city'] for r in rows]}, open('out/summary.json', 'w'))\n"
            "Image.open('photo.png').crop((16, 8, 48, 40)).save('out/crop.png')\n"
            "print(len(rows), sorted(os.listdir('.')))")
    request = sandbox_fusion.RunCodeRequest(
        code=code, language="python",
        files={"data/cities.csv": b64(table), "photo.png": b64(png.getvalue())},
        fetch_files=["out/summary.json", "out/crop.png", "data/cities.csv", "never_written.txt"])
    reply = sandbox_fusion.run_code(request, endpoint=server.url, max_attempts=1)
    assert reply.status == sandbox_fusion.RunStatus.Success, reply
    assert reply.run_result.stdout.startswith("2 ['data', 'out', 'photo.png'"), reply.run_result
    assert set(reply.files) == {"out/summary.json", "out/crop.png", "data/cities.csv"}
    assert reply.message == ""                      # a missing file is simply left out
    assert json.loads(base64.b64decode(reply.files["out/summary.json"])) == {"cities": ["Paris", "Lyon"]}
    assert base64.b64decode(reply.files["data/cities.csv"]) == table
    with Image.open(io.BytesIO(base64.b64decode(reply.files["out/crop.png"]))) as crop:
        assert crop.size == (32, 32) and crop.getpixel((0, 0)) == (220, 20, 20)
    # a null content and a name with IGNORE_THIS_FILE are skipped, as SandboxFusion skips them
    reply = run(server, models, code="import os\nprint(sorted(os.listdir('.')))",
                files={"kept.txt": b64(b"k"), "none.txt": None, "a_IGNORE_THIS_FILE.txt": b64(b"i")})
    assert reply.status == "Success" and reply.run_result.stdout == "['kept.txt']\n", reply
    # files are fetched whatever the outcome (SandboxFusion fetches after a failure or a timeout)
    reply = run(server, models, code="open('partial.txt', 'w').write('so far')\nraise ValueError('x')",
                fetch_files=["partial.txt"])
    assert reply.status == "Failed" and base64.b64decode(reply.files["partial.txt"]) == b"so far"
    reply = run(server, models, code="open('partial.txt', 'w').write('before')\n"
                                     "import time\ntime.sleep(30)", run_timeout=1,
                fetch_files=["partial.txt"])
    assert reply.run_result.status == "TimeLimitExceeded", reply
    assert base64.b64decode(reply.files["partial.txt"]) == b"before"
    assert_serves(server, models)


HOSTILE_REQUESTS = [
    ({"/etc/cron.d/evil": "eA=="}, [], "'/etc/cron.d/evil': absolute paths are not accepted"),
    ({"../escape.txt": "eA=="}, [], "'../escape.txt': `..` is not accepted"),
    ({"a/../../escape.txt": "eA=="}, [], "`..` is not accepted"),
    ({"a\0b": "eA=="}, [], "NUL"),
    ({"n" * 300: "eA=="}, [], "over 255 bytes"),
    ({"d/" * 600 + "f": "eA=="}, [], "at most 1024"),
    ({"notes.txt": "eA==", "bad.bin": "not base64 at all!"}, [], "'bad.bin': the content is not valid base64"),
    ({"a": "eA==", "a/b": "eA=="}, [], "'a': it is sent as a file and is also the folder"),
    ({f"f{i}": "" for i in range(65)}, [], "65 files were sent; at most 64"),
    ({}, ["/etc/passwd"], "'/etc/passwd': absolute paths are not accepted"),
    ({}, ["../../token"], "'../../token': `..` is not accepted"),
    ({}, ["x.txt"] * 65, "at most 64 are fetched"),
]


@pytest.mark.parametrize("files, fetch, why", HOSTILE_REQUESTS,
                         ids=[str(i) for i in range(len(HOSTILE_REQUESTS))])
def test_hostile_names_are_refused_by_name(server, models, files, fetch, why):
    reply = run(server, models, code="open('ran', 'w')\nprint('ran')", files=files,
                fetch_files=fetch)
    assert reply.status == "SandboxError" and reply.run_result is None, reply
    assert why in reply.message, reply.message
    with pytest.raises(Exception, match="Sandbox responded with error"):   # the SDK's own reading
        sandbox_fusion.run_code(sandbox_fusion.RunCodeRequest(
            code="print(1)", language="python", files=files, fetch_files=fetch),
            endpoint=server.url, max_attempts=1)
    assert_serves(server, models)


def test_sizes_are_bounded(server, models):
    """Over 32 MiB of files in is refused naming the file; what comes back stops at 32 MiB (the
    file over it is left out and `message` says so)."""
    reply = run(server, models, code="print(1)",
                files={"small.bin": b64(b"x"), "huge.bin": b64(bytes(33 << 20))})
    assert reply.status == "SandboxError" and "'huge.bin': the files sent hold over 32 MiB" in reply.message
    code = ("for name in ('a.bin', 'b.bin', 'c.bin'):\n"
            "    open(name, 'wb').write(bytes(20 << 20 if name != 'c.bin' else 10))\nprint('ok')")
    reply = run(server, models, code=code, fetch_files=["a.bin", "b.bin", "c.bin"])
    assert reply.status == "Success" and set(reply.files) == {"a.bin", "c.bin"}, reply.message
    assert len(base64.b64decode(reply.files["a.bin"])) == 20 << 20
    assert "'b.bin' (20971520 bytes, over what is left of the 32 MiB" in reply.message
    assert_serves(server, models)


def test_names_the_code_made_unreadable_come_back_as_nothing(server, models):
    """Under the full isolation the code cannot make links or FIFOs at all; a folder named like
    a fetched file is left out and named."""
    code = ("import os\nmade = []\n"
            "for name, make in [('leak.txt', lambda: os.symlink('/etc/passwd', 'leak.txt')),\n"
            "                   ('hard.txt', lambda: os.link('/etc/passwd', 'hard.txt')),\n"
            "                   ('fifo.txt', lambda: os.mkfifo('fifo.txt'))]:\n"
            "    try:\n        make()\n        made.append(name)\n"
            "    except OSError:\n        pass\n"
            "os.mkdir('dir.txt')\nprint(made)")
    reply = run(server, models, code=code,
                fetch_files=["leak.txt", "hard.txt", "fifo.txt", "dir.txt"])
    assert reply.status == "Success" and reply.files == {}, reply
    assert "'dir.txt' (a folder, not a file)" in reply.message
    assert "root:" not in reply.model_dump_json()
    assert_serves(server, models)


# A host with none of namespaces, Landlock and seccomp (policy "rlimits"), simulated in the
# worker's own interpreter: the code can then make links and FIFOs, and scratch is a host folder
# on the same file system as the secret (a hard link to it is possible).
NOTHING_BUT_RLIMITS = functools.partial(launch_subprocess, prelude=(
    "from sandbox import confine\n"
    "def no_namespaces(*args):\n"
    "    raise confine.ConfinementError('simulated host without namespaces')\n"
    "confine.enter_namespaces = no_namespaces\n"
    "confine.landlock_abi = lambda: 0\n"
    "confine.seccomp_unavailable_reason = lambda: 'simulated host without seccomp'"))


def test_links_fifos_and_hard_links_are_never_read(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("THYME-TOKEN-SECRET")
    code = (f"import os\nSECRET = {str(secret)!r}\n"
            "os.symlink(SECRET, 'sym.txt')\n"
            "os.link(SECRET, 'hard.txt')\n"
            "os.mkfifo('fifo.txt')\n"
            "os.symlink(os.path.dirname(SECRET), 'hostdir')\n"
            "os.mkdir('sub')\nos.symlink(SECRET, 'sub/deep.txt')\n"
            "open('plain.txt', 'w').write('fine')\nprint('made')")
    fetch = ["sym.txt", "hard.txt", "fifo.txt", "hostdir/token", "sub/deep.txt", "plain.txt"]
    with Sandbox(workers=1, isolation="rlimits", launcher=NOTHING_BUT_RLIMITS) as sb:
        assert set(sb.degraded) == {"namespaces", "landlock", "seccomp"}
        r = sb.run(code, repairs=False, fetch_files=fetch)
        assert r.ok and r.text == "made", r
        assert r.fetched == {"plain.txt": b64(b"fine")}
        assert r.unfetched == {
            "sym.txt": "a symbolic link (not followed)",
            "hard.txt": "a file with 2 names (a hard link; not read)",
            "fifo.txt": "not a regular file (a FIFO, socket or device; not opened)",
            "hostdir/token": "a symbolic link is on the path (not followed)",
            "sub/deep.txt": "a symbolic link (not followed)"}
        assert sb.run("print(2)").text == "2"


def test_written_files_stay_inside_the_folder(tmp_path):
    """The writer, on its own: folders made as needed, a later path naming the same file
    replaces it, and a link in the way (which cannot be there: the worker writes into a folder
    it has just made, before the child exists; the writer does not rely on that) is not
    followed."""
    (tmp_path / "scratch").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "scratch" / "via").symlink_to(tmp_path / "outside")
    call_files.write(str(tmp_path / "scratch"), {"a/b/c.txt": b"1", "a/./b/c.txt": b"2"})
    assert (tmp_path / "scratch" / "a" / "b" / "c.txt").read_bytes() == b"2"
    with pytest.raises(OSError, match="'via/x.txt' could not be written .a symbolic link"):
        call_files.write(str(tmp_path / "scratch"), {"via/x.txt": b"x"})
    assert list((tmp_path / "outside").iterdir()) == []
