"""Hostile snippets: each one tries to break out of the sandbox, starve it, or leave a trace on
the host. Every test checks both that the attack failed (an error kind or an observable) and
that the host is untouched (no file appeared, no listener got a byte, the secret is not in the
output, the workers were not replaced and still answer `print(1)`).

Each test runs twice through `any_sandbox`: as root and as an unprivileged user, so that nothing
passes merely because the kernel's ordinary permissions already refused it.

Four attacks here once succeeded and shaped the design: host-file metadata changes (now no-ops
in seccomp), remnants of earlier jobs in the worker's heap (children now fork from a zygote that
never sees a request), inotify on host directories (denied), and a session computing between
blocks (its child is now stopped between blocks).
"""

from __future__ import annotations

# Modules the snippets import lazily must already be loaded in this process: the unprivileged
# workers are forked from it and cannot read the stdlib under /root themselves.
import builtins  # noqa: F401
import ctypes  # noqa: F401
import encodings.idna  # noqa: F401  (socket.create_connection)
import errno
import fcntl  # noqa: F401
import hashlib
import io  # noqa: F401
import json  # noqa: F401
import mmap  # noqa: F401
import multiprocessing  # noqa: F401
import multiprocessing.context  # noqa: F401
import multiprocessing.popen_fork  # noqa: F401
import multiprocessing.process  # noqa: F401
import multiprocessing.util  # noqa: F401
import os
import pathlib  # noqa: F401
import platform
import resource  # noqa: F401
import shutil
import signal  # noqa: F401
import socket
import stat
import struct  # noqa: F401
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
from hostile import (
    UNPRIVILEGED_UID,
    assert_denied,
    assert_healthy,
    results_listing,
    snippet,
    still_serving,  # noqa: F401  (autouse: every test ends with the sandbox still serving)
    worker_pids,
)

from sandbox import result as R

X86_64 = platform.machine() == "x86_64"
ALLOWED_ENV = {"LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "PYTHONDONTWRITEBYTECODE", "MPLBACKEND", "HOME", "TMPDIR"}


@pytest.fixture
def sandbox_uid(request) -> int:
    """The host uid the current `any_sandbox` runs as."""
    return 0 if request.node.callspec.params.get("any_sandbox") == "as_root" else UNPRIVILEGED_UID


@pytest.fixture
def host_dir():
    """A directory on the host that everyone may enter and read (0755)."""
    d = tempfile.mkdtemp(prefix="thyme-hostile-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def secret(host_dir) -> tuple[str, str]:
    """(path, content) of a secret readable by every user (0644): only confinement stops it."""
    token = f"THYME-SECRET-{uuid.uuid4().hex}"
    path = os.path.join(host_dir, "secret.txt")
    with open(path, "w") as f:
        f.write(token)
    os.chmod(path, 0o644)
    return path, token


@pytest.fixture
def victim():
    """A disposable host process the snippets try to kill."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


class Listener:
    """A loopback TCP listener in a thread, recording any connection or byte it gets."""

    def __init__(self, family=socket.AF_INET, address=("127.0.0.1", 0)):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    self.received.append(b"<connected>" + conn.recv(4096))
                except OSError:
                    self.received.append(b"<connected>")

    def close(self) -> list[bytes]:
        time.sleep(0.2)  # room for a late connection
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.received


# ---------------------------------------------------------------- 1. reading host files

READ_SECRET = {
    "open": "print(open(@SECRET@).read())",
    "os_open": "import os\nprint(os.read(os.open(@SECRET@, os.O_RDONLY), 200))",
    "proc_self_root": "print(open('/proc/self/root' + @SECRET@).read())",
    "dotdot_from_cwd": "print(open('../' * 16 + @SECRET@.lstrip('/')).read())",
    "virtual_dir_dotdot": "print(open('/mnt/data/temp_processed_images/' + '../' * 16 + @SECRET@[1:]).read())",
    "numpy_fromfile": "import numpy as np\nprint(np.fromfile(@SECRET@, dtype=np.uint8).tobytes())",
    "shutil_copy": "import shutil\nshutil.copy(@SECRET@, 'copy.txt')\nprint(open('copy.txt').read())",
}


@pytest.mark.parametrize("how", list(READ_SECRET))
def test_read_secret_file(any_sandbox, secret, how):
    path, token = secret
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet(READ_SECRET[how], SECRET=path))
    assert_denied(r, secrets=(token,))
    assert_healthy(any_sandbox, pids)


PROC_ENVIRON = {
    "self": "print(open('/proc/self/environ', 'rb').read())",
    "worker": "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
    "init": "print(open('/proc/1/environ', 'rb').read())",
}


@pytest.mark.parametrize("which", list(PROC_ENVIRON))
def test_read_proc_environ(any_sandbox, which):
    r = any_sandbox.run(PROC_ENVIRON[which])
    # PATH is in every one of these environments (the worker's, init's); none may show.
    assert_denied(r, secrets=("PATH=", "HOME=/"))


def test_read_another_jobs_input(any_sandbox, image_dir):
    from conftest import make_image

    a = make_image(os.path.join(image_dir, f"a-{uuid.uuid4().hex}.jpg"), seed=1)
    b = make_image(os.path.join(image_dir, f"b-{uuid.uuid4().hex}.jpg"), seed=2)
    r1 = any_sandbox.run("print(len(open(image_path, 'rb').read()))", inputs=[a])
    assert r1.ok and int(r1.stdout) == os.path.getsize(a), r1
    steal = snippet("""
        import cv2
        print('cv2:', cv2.imread(@A@) is None)
        print(len(open(@A@, 'rb').read()))
    """, A=a)
    for _ in range(2 * any_sandbox.workers):  # every worker, after it served job 1
        r2 = any_sandbox.run(steal, inputs=[b])
        assert_denied(r2)
        assert r2.stdout == "cv2: True\n"  # cv2 could not read it either
        assert str(os.path.getsize(a)) not in r2.error.message
    assert_healthy(any_sandbox)


def test_read_proc_mem(any_sandbox):
    r = any_sandbox.run(snippet("""
        import os
        for path in ('/proc/self/mem', f'/proc/{os.getppid()}/mem', '/proc/self/maps'):
            try:
                open(path, 'rb').read(16)
                print('READ', path)
            except PermissionError:
                print('denied')
    """))
    assert r.ok and r.stdout == "denied\n" * 3, r
    assert "READ" not in r.stdout


# ---------------------------------------------------------------- 2. network

def test_tcp_connect_to_host_listener(any_sandbox):
    listener = Listener()
    host, port = listener.address
    r = any_sandbox.run(snippet("""
        import socket
        s = socket.create_connection((@HOST@, @PORT@), timeout=1)
        s.sendall(b'pwned')
        print('connected')
    """, HOST=host, PORT=port))
    assert listener.close() == []
    assert_denied(r)
    assert "connected" not in r.stdout


def test_udp_sendto_host(any_sandbox):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.3)
    try:
        r = any_sandbox.run(snippet("""
            import socket
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'pwned', @ADDR@)
            print('sent')
        """, ADDR=sink.getsockname()))
        with pytest.raises(TimeoutError):
            sink.recvfrom(4096)
    finally:
        sink.close()
    assert_denied(r)
    assert "sent" not in r.stdout


def test_abstract_unix_socket(any_sandbox):
    name = f"\0thyme-hostile-{uuid.uuid4().hex}"
    listener = Listener(socket.AF_UNIX, name)
    r = any_sandbox.run(snippet("""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(@NAME@)
        s.sendall(b'pwned')
        print('connected')
    """, NAME=name))
    assert listener.close() == []
    assert_denied(r)


# ---------------------------------------------------------------- 3. writing outside scratch

WRITE_TARGETS = {
    "host_dir_0777": lambda d: os.path.join(d, "pwned.txt"),
    "tmp": lambda d: f"/tmp/thyme-pwned-{uuid.uuid4().hex}",
    "dev_shm": lambda d: f"/dev/shm/thyme-pwned-{uuid.uuid4().hex}",
}


@pytest.mark.parametrize("where", list(WRITE_TARGETS))
def test_write_outside_scratch(any_sandbox, host_dir, where):
    os.chmod(host_dir, 0o777)
    target = WRITE_TARGETS[where](host_dir)
    try:
        r = any_sandbox.run(snippet("""
            with open(@T@, 'w') as f:
                f.write('pwned')
            print('written')
        """, T=target))
        assert_denied(r)
        assert not os.path.lexists(target)
    finally:
        if os.path.lexists(target):
            os.remove(target)


@pytest.mark.parametrize("path", ["/proc/self/cwd/../x", "../x", "/mnt/data/temp_processed_images/../x"])
def test_write_beside_own_scratch(any_sandbox, path):
    """The parent of the scratch dir is the worker's tmpfs (shared by its children)."""
    r = any_sandbox.run(snippet("""
        with open(@P@, 'w') as f:
            f.write('pwned')
        print('written')
    """, P=path))
    assert_denied(r)
    root = any_sandbox._root
    for dirpath, _, files in os.walk(root):
        assert "x" not in files, dirpath
    # A later job does not see it either (it would if it had landed in the shared tmpfs root).
    for _ in range(any_sandbox.workers):
        r = any_sandbox.run("import os\nprint(os.path.lexists('../x'))")
        assert r.ok and r.stdout == "False\n", r


DESTROY = {
    "remove": "import os\nos.remove(@F@)",
    "rename": "import os\nos.rename(@F@, @F@ + '.moved')",
    "truncate": "import os\nos.truncate(@F@, 0)",
    "open_rw": "open(@F@, 'r+').write('pwned')",
    "mkdir": "import os\nos.mkdir(@F@ + '.d')",
}


@pytest.mark.parametrize("how", list(DESTROY))
def test_modify_host_file(any_sandbox, host_dir, sandbox_uid, how):
    """Even a file owned by the sandbox's own host uid in a world-writable dir is untouched."""
    os.chmod(host_dir, 0o777)
    path = os.path.join(host_dir, "victim.txt")
    with open(path, "w") as f:
        f.write("intact")
    os.chown(path, sandbox_uid, sandbox_uid)
    r = any_sandbox.run(snippet(DESTROY[how], F=path) + "\nprint('done')")
    assert_denied(r)
    assert sorted(os.listdir(host_dir)) == ["victim.txt"]
    with open(path) as f:
        assert f.read() == "intact"


METADATA = {
    "chmod_setuid": ("import os\nos.chmod(@F@, 0o4777)\nprint('done')",
                     lambda p, st: os.stat(p).st_mode == st.st_mode),
    "utime": ("import os\nos.utime(@F@, (0, 0))\nprint('done')",
              lambda p, st: os.stat(p).st_mtime == st.st_mtime),
    "setxattr": ("import os\nos.setxattr(@F@, 'user.thyme', b'pwned')\nprint('done')",
                 lambda p, st: "user.thyme" not in os.listxattr(p)),
}


@pytest.mark.parametrize("how", list(METADATA))
def test_change_host_file_metadata(any_sandbox, host_dir, sandbox_uid, how):
    path = os.path.join(host_dir, "victim.txt")
    with open(path, "w") as f:
        f.write("intact")
    os.chmod(path, 0o644)
    os.chown(path, sandbox_uid, sandbox_uid)
    before = os.stat(path)
    code, unchanged = METADATA[how]
    r = any_sandbox.run(snippet(code, F=path))
    host_untouched = unchanged(path, before)
    now = os.stat(path)
    assert host_untouched, (f"host file changed: mode {oct(before.st_mode)} -> {oct(now.st_mode)}, "
                            f"mtime {before.st_mtime} -> {now.st_mtime}, xattrs {os.listxattr(path)}")
    # metadata calls are no-ops by design (so shutil.copy keeps working): the call "succeeds"
    assert r.ok and r.text == "done", r


# ---------------------------------------------------------------- 4./5. programs, processes, threads

START = {
    "os_system": ("import os\nprint('rc', os.system('touch @M@'))", None),
    "subprocess_run": ("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'touch @M@'])\nprint('ran')", R.FORBIDDEN),
    "os_execv": ("import os\nos.execv('/bin/sh', ['sh', '-c', 'touch @M@'])", R.FORBIDDEN),
    "posix_spawn": ("import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'touch @M@'], {})\nprint('spawned')", R.FORBIDDEN),
    "os_fork": ("import os\npid = os.fork()\nif pid == 0:\n    open('@M@', 'w').close()\n    os._exit(0)\nprint('forked', pid)", R.FORBIDDEN),
    "thread": ("import threading\nt = threading.Thread(target=open, args=('@M@', 'w'))\nt.start()\nt.join()\nprint('thread ran')", R.RUNTIME),
    "multiprocessing": ("import multiprocessing\np = multiprocessing.Process(target=open, args=('@M@', 'w'))\np.start()\np.join()\nprint('process ran')", R.FORBIDDEN),
}


@pytest.mark.parametrize("how", list(START))
def test_start_program(any_sandbox, host_dir, how):
    os.chmod(host_dir, 0o777)
    marker = os.path.join(host_dir, "started")
    code, kind = START[how]
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(code.replace("@M@", marker))
    if kind is None:  # os.system reports failure through its return value
        assert r.ok and r.stdout.startswith("rc ") and r.stdout != "rc 0\n", r
    else:
        assert_denied(r, kind)
        if kind == R.RUNTIME:
            assert "can't start new thread" in r.error.message
    assert not os.path.exists(marker)
    assert_healthy(any_sandbox, pids)


def test_fork_bomb(any_sandbox):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import os
        forks = failures = 0
        while failures < 2000:
            try:
                os.fork()
                forks += 1
            except OSError as exc:
                failures += 1
                last = exc.errno
        print('forks', forks, 'errno', last)
    """), timeout=5)
    assert r.ok and r.stdout == f"forks 0 errno {errno.EPERM}\n", r
    assert_healthy(any_sandbox, pids)


def test_fork_bomb_unbounded(any_sandbox):
    """The classic form: the first fork already fails, so the bomb never goes off."""
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run("import os\nwhile True:\n    os.fork()", timeout=5)
    assert_denied(r)
    assert r.wall_s < 3
    assert_healthy(any_sandbox, pids)


def test_thread_bomb(any_sandbox):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import threading, time
        started = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                started += 1
        except RuntimeError as exc:
            print('started', started, 'alive', threading.active_count(), exc)
    """), timeout=5)
    assert r.ok and r.stdout == "started 0 alive 1 can't start new thread\n", r
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 6. memory and disk

MEMORY_BOMBS = {
    "bytearray_10GB": "b = bytearray(10**10)",
    "growing_list": "chunks = []\nwhile True:\n    chunks.append(bytes(16 << 20))",
    "numpy": "import numpy as np\na = np.ones((100_000, 100_000))",
}


@pytest.mark.parametrize("how", list(MEMORY_BOMBS))
def test_memory_bomb(any_sandbox, how):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(MEMORY_BOMBS[how], timeout=10)
    assert_denied(r, R.MEMORY)
    assert r.wall_s < 5
    assert_healthy(any_sandbox, pids)


def test_disk_bomb(any_sandbox):
    pids = worker_pids(any_sandbox)
    before = shutil.disk_usage(tempfile.gettempdir()).used
    r = any_sandbox.run(snippet("""
        files = 0
        try:
            for i in range(300):
                with open(f'fill{i}.bin', 'wb') as f:
                    f.write(b'\\1' * (1 << 20))
                files += 1
        finally:
            print('files', files)
    """), timeout=10)
    after = shutil.disk_usage(tempfile.gettempdir()).used
    assert_denied(r, R.OUTPUT_LIMIT)
    assert "No space left on device" in r.error.message
    assert int(r.stdout.split()[1]) < 300
    assert abs(after - before) < 64 << 20, "host disk usage changed"
    for dirpath, _, files in os.walk(any_sandbox._root):
        assert not any(name.startswith("fill") for name in files), dirpath
    # The space came back: a later job on each worker can write again.
    for _ in range(any_sandbox.workers):
        r = any_sandbox.run("open('again.bin', 'wb').write(bytes(16 << 20))\nprint('ok')")
        assert r.ok and r.stdout == "ok\n", r
    assert_healthy(any_sandbox, pids)


def test_single_file_over_limit(any_sandbox):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        with open('big.bin', 'wb') as f:
            for _ in range(40):
                f.write(bytes(1 << 20))
        print('wrote 40 MB')
    """))
    assert_denied(r, R.OUTPUT_LIMIT)
    assert "File too large" in r.error.message  # EFBIG, not a killed process
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 7. time

LOOPS = {
    "except_exception": """
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass
    """,
    "bare_except": """
        while True:
            try:
                while True:
                    pass
            except:  # noqa: E722
                pass
    """,
    "signals_ignored": """
        import signal  # noqa: F401
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
        while True:
            try:
                pass
            except BaseException:
                pass
    """,
    "loop_in_finally": """
        try:
            while True:
                pass
        finally:
            while True:
                pass
    """,
}


@pytest.mark.parametrize("how", list(LOOPS))
def test_infinite_loop_times_out(any_sandbox, how):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet(LOOPS[how]), timeout=1.5)
    assert_denied(r, R.TIMEOUT)
    assert r.wall_s < 1.5 + 2
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 8. leaving the interpreter

EXITS = {
    "os_exit_0": ("import os\nos._exit(0)", "exit status 0"),
    "sys_exit_3": ("import sys\nsys.exit(3)", "status 3"),
    "abort": ("import os\nos.abort()", "SIGABRT"),
    "segfault": ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
}


@pytest.mark.parametrize("how", list(EXITS))
def test_exit_interpreter(any_sandbox, how):
    code, detail = EXITS[how]
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(code)
    assert_denied(r, R.RUNTIME)
    assert detail in r.error.message
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 9. signals

KILLS = {
    "parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('sent')", R.FORBIDDEN),
    "parent_group": ("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nprint('sent')", R.FORBIDDEN),
    # kill(-1) returns 0 when every target refused (EPERM) -- what matters is who survived
    "everyone": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('sent')", None),
    # its own group is itself alone: a SIGKILL death, reported as a runtime error
    "own_group": ("import os, signal\nos.killpg(0, signal.SIGKILL)\nprint('sent')", R.RUNTIME),
    "victim": ("import os, signal\nos.kill(@VICTIM@, signal.SIGKILL)\nprint('sent')", R.FORBIDDEN),
}


@pytest.mark.parametrize("how", list(KILLS))
def test_kill_other_processes(any_sandbox, victim, how):
    code, kind = KILLS[how]
    if how in ("everyone", "own_group") and any_sandbox.isolation_report["landlock_abi"] < 6:
        kind = R.FORBIDDEN  # no signal scoping: seccomp allows signalling only itself (EPERM)
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(code.replace("@VICTIM@", str(victim.pid)))
    if kind is None:
        assert r.ok and r.stdout == "sent\n", r
    elif isinstance(kind, tuple):
        assert not r.ok and r.error.kind in kind, r
    else:
        assert_denied(r, kind)
    time.sleep(0.1)
    assert victim.poll() is None, "a host process was killed"
    os.kill(os.getpid(), 0)  # this test process is alive (trivially: we are running)
    assert_healthy(any_sandbox, pids)


def test_sigio_redirected_to_host_process(any_sandbox, victim):
    """F_SETOWN + F_SETSIG turns I/O readiness into a signal to any pid: Landlock's signal
    scoping must refuse it for processes outside the sandbox."""
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import fcntl, os, signal
        F_SETSIG = 10
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
        def arm(owner, sig):
            r, w = os.pipe()
            fcntl.fcntl(r, fcntl.F_SETOWN, owner)
            fcntl.fcntl(r, F_SETSIG, sig)
            fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
            os.write(w, b'x')
        arm(os.getpid(), signal.SIGUSR1)     # the mechanism works on ourselves...
        arm(@VICTIM@, signal.SIGKILL)        # ...and is aimed at a host process
        arm(os.getppid(), signal.SIGKILL)    # ...and at the worker
        print('self', len(got))
    """, VICTIM=victim.pid))
    if any_sandbox.isolation_report["landlock_abi"] >= 6:
        assert r.ok and r.stdout == "self 1\n", r
    else:  # no signal scoping: seccomp refuses to set a signal owner at all
        assert_denied(r)
    time.sleep(0.2)
    assert victim.poll() is None, "SIGIO killed a host process"
    assert_healthy(any_sandbox, pids)


def test_kill_sibling_session(any_sandbox):
    with any_sandbox.session() as s:
        r = s.run("import os\nx = 41\nprint(os.getpid())")
        assert r.ok, r
        child = int(r.stdout)
        for _ in range(any_sandbox.workers):
            k = any_sandbox.run(f"import os, signal\nos.kill({child}, signal.SIGKILL)\nprint('sent')")
            assert_denied(k)
        r = s.run("print(x + 1)")
        assert r.ok and r.stdout == "42\n" and r.notes == [], r
    assert_healthy(any_sandbox)


# ---------------------------------------------------------------- 10. links and foreign paths as outputs

def test_symlink_output(any_sandbox):
    before = results_listing(any_sandbox)
    r = any_sandbox.run("import os\nos.symlink('/etc/passwd', 'x.jpg')\nprint('x.jpg')")
    assert_denied(r)
    assert r.images == []
    assert results_listing(any_sandbox) == before
    r = any_sandbox.run("import os\ntry:\n    os.symlink('/etc/passwd', 'x.jpg')\nexcept OSError:\n    pass\n"
                        "processed_path = 'x.jpg'\nprint('x.jpg')")
    # the link was refused, so x.jpg does not exist: the printed name is just text
    assert r.ok and r.images == [] and r.text == "x.jpg", r
    assert results_listing(any_sandbox) == before


def test_hardlink_input_as_output(any_sandbox, sample_image):
    before = results_listing(any_sandbox)
    r = any_sandbox.run("import os\nos.link(image_path, 'x.jpg')\nprocessed_path = 'x.jpg'\nprint('x.jpg')",
                        inputs=[sample_image])
    assert_denied(r)
    assert r.images == []
    assert os.stat(sample_image).st_nlink == 1
    assert results_listing(any_sandbox) == before


HOST_PATH_OUTPUTS = {
    "printed_host_path": "print(@IMG@)",
    "processed_path_host": "processed_path = @IMG@\nprint('see', processed_path)",
    "virtual_dir_traversal": "processed_path = '/mnt/data/temp_processed_images/' + '../' * 16 + @IMG@[1:]\nprint(processed_path)",
    "own_input_printed": "print(image_path)\nprocessed_path = image_path",
}


@pytest.mark.parametrize("how", list(HOST_PATH_OUTPUTS))
def test_host_image_path_as_output(any_sandbox, sample_image, how):
    before = results_listing(any_sandbox)
    inputs = [sample_image] if how == "own_input_printed" else []
    r = any_sandbox.run(snippet(HOST_PATH_OUTPUTS[how], IMG=sample_image), inputs=inputs)
    assert r.ok, r
    assert r.images == []
    assert results_listing(any_sandbox) == before
    if inputs:  # the call's own input shows by file name only
        assert r.stdout == os.path.basename(sample_image) + "\n", r


def test_sibling_session_scratch(any_sandbox):
    """A job cannot read another open session's scratch files or claim its images."""
    token = uuid.uuid4().hex
    before = results_listing(any_sandbox)
    with any_sandbox.session() as s:
        r = s.run(snippet("""
            import os, numpy as np, cv2
            open('secret.txt', 'w').write(@TOKEN@)
            cv2.imwrite('secret.png', np.full((64, 64, 3), 7, np.uint8))
            print(os.path.basename(os.getcwd()))
        """, TOKEN=token))
        assert r.ok, r
        n = r.stdout.strip()
        steal = snippet("""
            import os
            base = '/mnt/data/temp_processed_images/../' + @N@
            try:
                print(open(base + '/secret.txt').read())
            except OSError as exc:
                print(type(exc).__name__)
            processed_path = base + '/secret.png'
            print(processed_path)
        """, N=n)
        for _ in range(2 * any_sandbox.workers):
            t = any_sandbox.run(steal)
            assert token not in t.stdout
            assert t.stdout.split()[0] in ("PermissionError", "FileNotFoundError"), t
            assert t.images == [], t
        r = s.run("print(open('secret.txt').read())")
        assert r.ok and r.stdout == token + "\n", r
    assert results_listing(any_sandbox) == before


# ---------------------------------------------------------------- 11. raw system calls

# x86_64 numbers; each is refused by seccomp (EPERM) before the kernel looks at its arguments.
SYSCALLS = {
    "fork": (57, ()),
    "socket": (41, (2, 1, 0)),
    "ptrace_attach_parent": (101, (16, "PPID", 0, 0)),
    "unshare_user": (272, (0x10000000,)),
    "mount": (165, (b"none", b"/tmp", b"tmpfs", 0, 0)),
    "clone3": (435, (0, 0)),
    "vfork": (58, ()),
    "execve": (59, (b"/bin/sh", 0, 0)),
    "setns": (308, (0, 0)),
    "chroot": (161, (b"/",)),
    "io_uring_setup": (425, (8, "BUF")),
    "bpf": (321, (0, "BUF", 64)),
    "userfaultfd": (323, (0,)),
    "perf_event_open": (298, ("BUF", 0, -1, -1, 0)),
    "process_vm_readv_parent": (310, ("PPID", "BUF", 1, "BUF", 1, 0)),
    "pidfd_open_parent": (434, ("PPID", 0)),
    "keyctl": (250, (0, 0)),
    "open_by_handle_at": (304, (-100, "BUF", 0)),
    "kexec_load": (246, (0, 0, 0, 0)),
    "init_module": (175, ("BUF", 0, b"")),
    "prlimit64_parent": (302, ("PPID", 7, 0, "BUF")),
}


@pytest.mark.skipif(not X86_64, reason="x86_64 syscall numbers")
@pytest.mark.parametrize("name", list(SYSCALLS))
def test_raw_syscall(any_sandbox, name):
    nr, args = SYSCALLS[name]
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        buf = ctypes.create_string_buffer(256)
        subst = {'PPID': os.getppid(), 'BUF': buf}
        args = [subst.get(a, a) if isinstance(a, str) else a for a in @ARGS@]
        args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        ret = libc.syscall(ctypes.c_long(@NR@), *args)
        if ret == 0 and @NR@ in (57, 58, 435):
            os._exit(0)  # a child that should not exist
        print(ret, ctypes.get_errno())
    """, NR=nr, ARGS=args))
    assert r.ok and r.stdout == f"-1 {errno.EPERM}\n", r
    assert_healthy(any_sandbox, pids)


FOREIGN_ABI = {
    # the x32 ABI: the same syscall table with bit 30 set
    "x32_fork": "import ctypes\nprint(ctypes.CDLL(None).syscall(0x40000000 | 57))",
    "x32_socket": "import ctypes\nprint(ctypes.CDLL(None).syscall(0x40000000 | 41, 2, 1, 0))",
    # the i386 ABI through int 0x80 (fork is 2 there): machine code in an executable mapping
    "int80_fork": """
        import ctypes, mmap, os
        code = bytes([0xb8, 2, 0, 0, 0, 0xcd, 0x80, 0xc3])  # mov eax, 2; int 0x80; ret
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(code)
        fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
        pid = fn()
        if pid == 0:
            os._exit(0)
        print('forked', pid)
    """,
}


@pytest.mark.skipif(not X86_64, reason="x86_64 ABIs")
@pytest.mark.parametrize("how", list(FOREIGN_ABI))
def test_foreign_abi_syscall(any_sandbox, how):
    """Syscalls through another ABI would skip a filter written for the native table: the
    filter's architecture check kills the process instead."""
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet(FOREIGN_ABI[how]))
    assert_denied(r, R.RUNTIME)
    assert "SIGSYS" in r.error.message
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 12. environment and privileges

def test_environment_is_minimal(any_sandbox):
    os.environ["THYME_SECRET_MARKER"] = "leaked"  # too late for the workers, but never inherited
    try:
        for _ in range(any_sandbox.workers):
            r = any_sandbox.run("import os, json\nprint(json.dumps(dict(os.environ)))\nprint(os.getcwd())")
            assert r.ok, r
            env_text, cwd = r.stdout.splitlines()
            env = json.loads(env_text)
            assert set(env) <= ALLOWED_ENV, set(env) - ALLOWED_ENV
            assert "leaked" not in r.stdout
            assert env["HOME"] == env["TMPDIR"] == cwd == "/mnt/data/temp_processed_images"
    finally:
        del os.environ["THYME_SECRET_MARKER"]


PRIVILEGES = {
    "setuid_other": ("import os\nos.setuid(12345)\nprint(os.getuid())", R.RUNTIME),  # EINVAL: unmapped
    "setgroups": ("import os\nos.setgroups([0])\nprint('done')", R.FORBIDDEN),
    "chroot": ("import os\nos.chroot('.')\nprint('done')", R.FORBIDDEN),
    "mknod_fifo_outside": ("import os\nos.mkfifo('/tmp/thyme-fifo-' + str(os.getpid()))\nprint('done')", R.FORBIDDEN),
}


@pytest.mark.parametrize("how", list(PRIVILEGES))
def test_privilege_operations(any_sandbox, how):
    code, kind = PRIVILEGES[how]
    if how == "setuid_other" and "namespaces" in any_sandbox.degraded:
        # EPERM (no capability) on the host; EINVAL (unmapped) in a rootless engine's namespace
        kind = (R.FORBIDDEN, R.RUNTIME)
    fifos = {name for name in os.listdir("/tmp") if name.startswith("thyme-fifo-")}
    r = any_sandbox.run(code)
    made = {name for name in os.listdir("/tmp") if name.startswith("thyme-fifo-")} - fifos
    for name in made:  # (a weaker isolation policy lets it through: leave the host as found)
        os.unlink(os.path.join("/tmp", name))
    if isinstance(kind, tuple):
        assert not r.ok and r.error.kind in kind, r
    else:
        assert_denied(r, kind)
    assert not made


def test_chown_and_chmod_are_no_ops(any_sandbox, sandbox_uid):
    r = any_sandbox.run("import os, stat\nopen('f', 'w').close()\nos.chown('f', 1, 1)\n"
                        "os.chmod('f', 0o4777)\nst = os.stat('f')\n"
                        "print(st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode)))")
    assert r.ok, r
    uid, gid, mode = r.text.split()
    # root inside its own namespace; without one, the worker's uid (0 in a rootless engine's)
    owners = ("0", str(sandbox_uid)) if "namespaces" in any_sandbox.degraded else ("0",)
    assert uid == gid and uid in owners and not int(mode, 8) & 0o4000


def test_no_capabilities(any_sandbox):
    r = any_sandbox.run(snippet("""
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        header = ctypes.create_string_buffer(struct.pack('=Ii', 0x20080522, 0))
        data = ctypes.create_string_buffer(24)
        assert libc.capget(header, data) == 0
        print(struct.unpack('=6I', data.raw))
        print(open('/proc/self/status').read())
    """))
    if "landlock" in any_sandbox.degraded:  # its own /proc/self/status is then readable
        assert r.ok and r.stdout.startswith("(0, 0, 0, 0, 0, 0)\n"), r
    else:
        assert_denied(r)  # /proc itself is out of reach
        assert r.stdout == "(0, 0, 0, 0, 0, 0)\n", r


RLIMITS = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE")


@pytest.mark.parametrize("name", RLIMITS)
def test_raise_rlimits(any_sandbox, name):
    r = any_sandbox.run(snippet("""
        import resource
        res = getattr(resource, @NAME@)
        soft, hard = resource.getrlimit(res)
        print(hard != resource.RLIM_INFINITY)
        resource.setrlimit(res, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print('raised')
    """, NAME=name))
    assert_denied(r, R.RUNTIME)
    assert "not allowed to raise maximum limit" in r.error.message
    assert r.stdout == "True\n"


def test_prlimit_on_parent(any_sandbox):
    r = any_sandbox.run("import os, resource\n"
                        "resource.prlimit(os.getppid(), resource.RLIMIT_AS, (-1, -1))\nprint('raised')")
    assert_denied(r)
    assert_healthy(any_sandbox)


# ---------------------------------------------------------------- 13. state between jobs

def test_state_does_not_leak_between_jobs(any_sandbox):
    plant = snippet("""
        import builtins, json, os, sys
        json.LEAK = 1
        builtins.LEAKED = 1
        sys.modules['leakmod'] = json
        os.environ['LEAK'] = '1'
        open('leak.txt', 'w').write('x')
        print(os.path.basename(os.getcwd()))
    """)
    probe = snippet("""
        import builtins, json, os, sys
        print(hasattr(json, 'LEAK'), hasattr(builtins, 'LEAKED'), 'leakmod' in sys.modules,
              'LEAK' in os.environ, os.path.exists('leak.txt'), os.listdir('.'))
        for n in range(1, 1000):
            try:
                open(f'../{n}/leak.txt').read()
                print('found', n)
            except OSError:
                pass
    """)
    for _ in range(2 * any_sandbox.workers):
        r = any_sandbox.run(plant)
        assert r.ok, r
        r = any_sandbox.run(probe)
        assert r.ok and r.stdout == "False False False False False []\n", r


def test_previous_job_remnants_in_memory(any_sandbox):
    marker = f"THYME-REMNANT-{uuid.uuid4().hex[:12]}"
    scan = snippet("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sbrk.restype = ctypes.c_void_p
        libc.malloc.restype = ctypes.c_void_p
        vec = (ctypes.c_ubyte * 1024)()
        def mapped(a, n):
            return libc.mincore(ctypes.c_void_p(a), ctypes.c_size_t(n), vec) == 0
        marker = bytes.fromhex(@HEX@)
        end = libc.sbrk(0)
        start = libc.malloc(64) & ~((1 << 20) - 1)
        while mapped(start - (1 << 20), 1 << 20):
            start -= 1 << 20
        hits, a = 0, start
        while a < end:
            n = min(1 << 22, end - a)
            if mapped(a, n):
                hits += ctypes.string_at(a, n).count(marker)
            a += n
        print('hits', hits)
    """, HEX=marker.encode().hex())
    # Control: the scanner does not find the marker when no job ever carried it.
    control = [any_sandbox.run(scan) for _ in range(any_sandbox.workers)]
    assert all(r.ok and r.stdout == "hits 0\n" for r in control), control
    for _ in range(any_sandbox.workers):  # job 1 on every worker
        assert any_sandbox.run(f"secret = {marker!r}\nprint(secret * 20)").ok
    leaked = [any_sandbox.run(scan) for _ in range(any_sandbox.workers)]
    assert all(r.ok for r in leaked), leaked
    assert [r.stdout for r in leaked] == ["hits 0\n"] * any_sandbox.workers, "job 1 leaked into job 2"


def test_inotify_watch_on_host_dir(any_sandbox, host_dir):
    name = f"created-on-host-{uuid.uuid4().hex[:8]}"
    with any_sandbox.session() as s:
        r = s.run(snippet("""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            ifd = libc.inotify_init1(os.O_NONBLOCK)
            wd = libc.inotify_add_watch(ifd, @DIR@.encode(), 0xfff)
            print('watch', wd, ctypes.get_errno())
        """, DIR=host_dir))
        assert r.ok, r
        open(os.path.join(host_dir, name), "w").close()
        r = s.run("try:\n    print(os.read(ifd, 4096))\nexcept OSError as exc:\n    print(type(exc).__name__)")
        assert r.ok, r
    assert name not in r.stdout, "a host file name leaked through inotify"


def test_session_computes_between_blocks(any_sandbox):
    with any_sandbox.session() as s:
        r = s.run(snippet("""
            import signal, time
            def burn(*_):
                # 9 ms of CPU per 10 ms tick, but never more than 9 ms of wall time: on a
                # loaded machine a CPU-bound handler outlasts its tick and starves the block
                t, w = time.process_time(), time.monotonic()
                while time.process_time() - t < 0.009 and time.monotonic() - w < 0.009:
                    pass
            signal.signal(signal.SIGALRM, burn)
            signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
            print(time.process_time())
        """))
        assert r.ok, r
        before = float(r.stdout)
        # No call in flight for 3 s: a child left running would burn ~2.7 s. The margin absorbs the
        # calls' own CPU (the timer burns while they run), ~0.3 s on a loaded 2-core CI machine.
        time.sleep(3.0)
        r = s.run("import time\nprint(time.process_time())")
        assert r.ok, r
        idle_cpu = float(r.stdout) - before     # CPU between the end of one call and the next
    assert_healthy(any_sandbox)
    assert idle_cpu < 1.0, f"the session's child used {idle_cpu:.2f} s of CPU while idle"


# ---------------------------------------------------------------- 14. output bombs and forged replies

OUTPUT_BOMBS = {
    "one_print_10MB": "print('x' * (10 << 20))",
    "many_prints": "for i in range(10**7):\n    print(i)",
    "caught_and_continued": "try:\n    print('x' * (10 << 20))\nexcept Exception:\n    pass\nprint('y' * 100)",
}


@pytest.mark.parametrize("how", list(OUTPUT_BOMBS))
def test_output_bomb(any_sandbox, how):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(OUTPUT_BOMBS[how], timeout=10)
    assert_denied(r, R.OUTPUT_LIMIT)
    assert len(r.stdout) <= 64_000
    assert r.stdout_truncated
    assert_healthy(any_sandbox, pids)


def test_huge_exception_message(any_sandbox):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run("raise ValueError('x' * 10**7)")
    assert_denied(r, R.RUNTIME)  # the error is still reported, cut to a size a model can read
    assert r.error.message.startswith("  line 1: raise ValueError") and len(r.error.message) <= 2000
    assert_healthy(any_sandbox, pids)


def _forge(frame_expr: str) -> str:
    return snippet("""
        import json, os, stat, struct, time
        frame = FRAME
        for fd in range(3, 64):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, frame)  # the read end refuses: only the reply pipe takes it
            except OSError:
                pass
        time.sleep(3)
        print('not reached')
    """).replace("FRAME", frame_expr)


def test_forged_reply_claiming_gigabytes(any_sandbox):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(_forge("struct.pack('!I', 1 << 30) + b'{' * 1000"), timeout=8)
    assert_denied(r, R.OUTPUT_LIMIT)
    assert r.wall_s < 2.5  # rejected on the header, not after reading (the child then sleeps 3 s)
    assert_healthy(any_sandbox, pids)


def test_forged_reply_naming_host_image(any_sandbox, sample_image):
    before = results_listing(any_sandbox)
    reply = json.dumps({"stdout": f"{sample_image}\n/etc/passwd.png\n", "processed_path": sample_image,
                        "error": None, "cpu_s": 0.0})
    r = any_sandbox.run(_forge(f"(lambda b: struct.pack('!I', len(b)) + b)({reply.encode()!r})"))
    assert r.images == [], r
    assert r.error is None or r.error.kind != R.INTERNAL, r
    assert results_listing(any_sandbox) == before
    assert_healthy(any_sandbox)


# ---------------------------------------------------------------- 15. hostile images

def test_extreme_aspect_ratio_image(any_sandbox):
    before = results_listing(any_sandbox)
    r = any_sandbox.run("import numpy as np, cv2\n"
                        "cv2.imwrite('strip.png', np.zeros((20, 10000, 3), np.uint8))\nprint('strip.png')")
    assert_denied(r, R.INVALID_IMAGE)
    assert "aspect ratio" in r.error.message
    assert r.images == []
    assert results_listing(any_sandbox) == before


def test_decompression_bomb_image(any_sandbox):
    """196 megapixels in a few hundred KB: refused without being decoded."""
    before = results_listing(any_sandbox)
    r = any_sandbox.run("import numpy as np, cv2\n"
                        "cv2.imwrite('bomb.png', np.zeros((14000, 14000), np.uint8))\nprint('bomb.png')",
                        timeout=10)
    assert_denied(r, R.INVALID_IMAGE)
    assert r.images == []
    assert results_listing(any_sandbox) == before


def test_not_an_image(any_sandbox):
    """A text file (or a copy of a host file's bytes) named .png is not collected."""
    before = results_listing(any_sandbox)
    r = any_sandbox.run("open('fake.png', 'w').write('root:x:0:0::/root:/bin/sh')\nprint('fake.png')")
    assert_denied(r, R.INVALID_IMAGE)
    assert r.images == []
    assert results_listing(any_sandbox) == before


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_input_file_is_read_only(any_sandbox, image_dir):
    from conftest import make_image

    path = make_image(os.path.join(image_dir, f"ro-{uuid.uuid4().hex}.jpg"), seed=3)
    digest = _sha(path)
    for code in ("open(image_path, 'r+b').write(b'pwned')", "import os\nos.truncate(image_path, 0)",
                 "import os\nos.remove(image_path)"):
        r = any_sandbox.run(code + "\nprint('done')", inputs=[path])
        assert_denied(r)
    assert _sha(path) == digest
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
