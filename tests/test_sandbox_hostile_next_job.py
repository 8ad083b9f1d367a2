"""Hostile snippets aimed at the NEXT job and at the host rather than at escaping: a snippet
that is contained but leaves its worker unable to serve, holds host resources after it ends,
stalls a host process, or makes the sandbox report its own failure.

Each test checks the attack's effect and then that the sandbox still serves: every worker
answers `print(1)`, and (unless the test replaces a worker on purpose) none was replaced.
Like `test_sandbox_hostile.py`, each runs as root and as an unprivileged user.

Seven of these once broke the sandbox (issue 20): a deep folder chain that cleanup could not
remove, a long output line that the worker parsed in quadratic time, memfd pages outside the
memory budget, file leases on inputs and libraries, a dead zygote that was never replaced, model
code that made the sandbox report an `internal` error with host paths, and a lone surrogate in
the output.
"""

from __future__ import annotations

# Modules the snippets import lazily must already be loaded in this process: the unprivileged
# workers are forked from it and cannot read the stdlib under /root themselves.
import contextlib
import ctypes  # noqa: F401
import dataclasses
import errno
import fcntl
import functools
import mmap  # noqa: F401
import os
import platform
import resource  # noqa: F401
import signal
import stat  # noqa: F401
import struct  # noqa: F401
import sys
import time
import warnings  # noqa: F401

import numpy
import pytest
from hostile import (
    assert_denied,
    assert_healthy,
    descendants,
    process_name,
    results_listing,
    snippet,
    still_serving,  # noqa: F401  (autouse: every test ends with the sandbox still serving)
    worker_pids,
)

from sandbox import Sandbox
from sandbox import result as R
from sandbox.core import launch_subprocess

X86_64 = platform.machine() == "x86_64"
LIBRARY_FILE = numpy.__file__  # a library file every sandboxed child may read
HOST_PATHS = ("/work", "/root", "/tmp", "/home", "site-packages", sys.prefix, sys.base_prefix)


def assert_no_host_paths(r) -> None:
    for text in (r.stdout, r.error.message if r.error else "", "\n".join(r.notes)):
        for host in HOST_PATHS:
            assert host not in text, (host, r)


# ---------------------------------------------------------------- 1. scratch that cannot be freed

def test_deep_directory_chain_is_removed(any_sandbox):
    """Issue 20 (1): a 1,500-deep chain with the scratch filled at its bottom. Cleanup used to
    recurse, fail, and leave the worker's tmpfs full for every later job."""
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import os
        for i in range(1500):
            os.mkdir('d'); os.chdir('d')
        try:
            for k in range(9):
                open(f'f{k}', 'wb').write(b'1' * (31 << 20))
        except OSError:
            pass
        print('x')
    """), timeout=20)
    assert r.ok and r.stdout == "x\n", r
    for _ in range(any_sandbox.workers):
        r = any_sandbox.run("open('again.bin', 'wb').write(bytes(16 << 20))\nprint('ok')")
        assert r.ok and r.stdout == "ok\n", r
    assert_healthy(any_sandbox, pids)


def test_inode_exhaustion_is_bounded_and_freed(any_sandbox):
    """Empty files and folders use no blocks: only an inode cap bounds the kernel memory they
    hold, and the next job gets them back."""
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import os
        n = 0
        try:
            while n < 200_000:
                os.mkdir(f'd{n}')
                n += 1
            print('made', n)
        except OSError as exc:
            print('stopped', n, exc.errno)
    """), timeout=10)
    assert r.ok, r
    word, count, *rest = r.stdout.split()
    assert word == "stopped" and rest == [str(errno.ENOSPC)], r
    assert int(count) <= 16384
    for _ in range(any_sandbox.workers):
        r = any_sandbox.run("import os\nfor i in range(1000):\n    open(f'f{i}', 'w').close()\n"
                            "print(len(os.listdir('.')))")
        assert r.ok and r.stdout == "1000\n", r
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 2. output the worker must parse

LONG_LINES = {
    "dots": "print('.' * 63000)",                        # issue 20 (2): ~36 s in the old regex
    "image_suffixes": "print('a.jpg' * 12600)",
    "slash_dots": "print('/.' * 31500)",
    "path_then_dots": "print('x/' * 10000 + 'y.png' + '.' * 40000)",
    "many_names": "print(' '.join(f'{i}.png' for i in range(6000)))",
}


@pytest.mark.parametrize("how", list(LONG_LINES))
def test_long_output_line_is_parsed_in_linear_time(any_sandbox, how):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(LONG_LINES[how], timeout=5)
    assert r.ok and r.images == [], r
    assert_healthy(any_sandbox, pids)


def test_lone_surrogate_in_output_keeps_output_and_session(any_sandbox):
    """Issue 20 (7): a lone surrogate used to lose the output and the session, reported as
    'terminated the interpreter (exit status 0)'."""
    with any_sandbox.session() as s:
        r = s.run("x = 41\nprint('a\\ud800b')")
        assert r.ok and r.stdout == "a\ufffdb\n", r
        r = s.run("raise ValueError('\\udcff')")
        assert r.error.kind == R.RUNTIME and "ValueError: \ufffd" in r.error.message, r
        r = s.run("print(x + 1)")
        assert r.ok and r.stdout == "42\n" and r.notes == [], r
    assert_healthy(any_sandbox)


def test_stderr_flood_does_not_fail_the_job(any_sandbox):
    r = any_sandbox.run(snippet("""
        import sys, warnings
        sys.stderr.write('w' * 200_000)
        for i in range(2000):
            warnings.warn(f'noise {i}' * 50)
        print('fine')
    """))
    assert r.ok and r.stdout == "fine\n", r


# ---------------------------------------------------------------- 3. memory outside the budget

SHARED_MEMORY = {
    # issue 20 (3): memfd pages are not counted by RLIMIT_AS
    "memfd_create": "import os\nfd = os.memfd_create('m')\nos.write(fd, bytes(8 << 20))\nprint('held')",
    "shm_open": snippet("""
        import ctypes, os
        rt = ctypes.CDLL('librt.so.1', use_errno=True)
        fd = rt.shm_open(b'/thyme-hostile', os.O_CREAT | os.O_RDWR, 0o600)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        print('held')
    """),
    "dev_shm_file": "open('/dev/shm/thyme-hostile', 'wb').write(bytes(8 << 20))\nprint('held')",
}


@pytest.mark.parametrize("how", list(SHARED_MEMORY))
def test_shared_memory_outside_the_budget_is_denied(any_sandbox, how):
    pids = worker_pids(any_sandbox)
    try:
        with any_sandbox.session() as s:  # a session: what it holds would outlive the block
            r = s.run(SHARED_MEMORY[how])
            assert_denied(r)
        assert not os.path.exists("/dev/shm/thyme-hostile")
    finally:  # (a weaker isolation policy lets it through: leave the host as found)
        if os.path.exists("/dev/shm/thyme-hostile"):
            os.remove("/dev/shm/thyme-hostile")
    assert_healthy(any_sandbox, pids)


# x86_64 numbers; each is refused with EPERM.
SYSCALLS = {
    "memfd_create": (319, (b"m", 0)),
    "memfd_secret": (447, (0,)),
    "sync": (162, ()),                    # host-wide writeback
    "syncfs": (306, (0,)),
    "timer_create": (222, (1, 0, "BUF")),  # kernel memory bounded by nothing per process
    "membarrier_global": (324, (1, 0, 0)),
    "clone_thread": (56, (0x50f00, 0, 0, 0, 0)),  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM
}


@pytest.mark.skipif(not X86_64, reason="x86_64 syscall numbers")
@pytest.mark.parametrize("name", list(SYSCALLS))
def test_host_affecting_syscalls_are_denied(any_sandbox, name):
    nr, args = SYSCALLS[name]
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        buf = ctypes.create_string_buffer(256)
        args = [buf if a == 'BUF' else a for a in @ARGS@]
        args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        ret = libc.syscall(ctypes.c_long(@NR@), *args)
        if ret == 0 and @NR@ == 56:
            os._exit(0)  # a thread that should not exist
        print(ret, ctypes.get_errno())
    """, NR=nr, ARGS=args))
    assert r.ok and r.stdout == f"-1 {errno.EPERM}\n", r
    assert_healthy(any_sandbox, pids)


def test_thread_bomb_through_ctypes(any_sandbox):
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(snippet("""
        import ctypes
        libc = ctypes.CDLL(None)
        start = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda arg: None)
        tid = ctypes.c_ulong()
        codes = {libc.pthread_create(ctypes.byref(tid), None, start, None) for _ in range(200)}
        print(sorted(codes))
    """), timeout=5)
    assert r.ok and r.stdout in (f"[{errno.EPERM}]\n", f"[{errno.EAGAIN}]\n"), r
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 4. host-visible locks

FCNTL_COMMANDS = {  # fcntl commands with an effect outside the sandbox
    "lease_write": ("F_SETLEASE", 1024, "fcntl.F_WRLCK", "FILE"),   # issue 20 (4)
    "lease_read": ("F_SETLEASE", 1024, "fcntl.F_RDLCK", "FILE"),
    "dnotify": ("F_NOTIFY", 1026, "0x80000003", "DIR"),  # DN_ACCESS | DN_MODIFY | DN_MULTISHOT
    "pipe_size": ("F_SETPIPE_SZ", 1031, "1 << 20", "PIPE"),
}


@pytest.mark.parametrize("how", list(FCNTL_COMMANDS))
def test_host_visible_fcntl_commands_are_denied(any_sandbox, sample_image, how):
    name, cmd, arg, target = FCNTL_COMMANDS[how]
    r = any_sandbox.run(snippet("""
        import fcntl, os
        if @T@ == 'PIPE':
            fd = os.pipe()[0]
        else:
            fd = os.open(image_path if @T@ == 'FILE' else os.path.dirname(@LIB@), os.O_RDONLY)
        try:
            fcntl.fcntl(fd, @CMD@, ARG)
            print('took', @NAME@)
        except OSError as exc:
            print('refused', exc.errno)
    """, T=target, LIB=LIBRARY_FILE, CMD=cmd, NAME=name).replace("ARG", arg), inputs=[sample_image])
    assert r.ok and r.stdout in (f"refused {errno.EPERM}\n", f"refused {errno.EACCES}\n"), r


LOCKS = {
    "lease_on_input": "fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)",
    "flock_on_input": "fcntl.flock(fd, fcntl.LOCK_EX)",
    "posix_lock_on_input": "fcntl.lockf(fd, fcntl.LOCK_SH)",
    "ofd_lock_on_input": "fcntl.fcntl(fd, 37, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 0, 0, 0))",
    "flock_on_library": "fd = os.open(@LIB@, os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)",
}


@pytest.mark.parametrize("how", list(LOCKS))
def test_locks_held_by_a_session_do_not_block_the_host(any_sandbox, sample_image, how):
    """A session that locks its input (or a library) and stays open must not stall a host
    process that opens or locks the same file (a write lease made host open() wait 45 s)."""
    target = LIBRARY_FILE if how.endswith("library") else sample_image
    with any_sandbox.session(inputs=[sample_image]) as s:
        code = "import fcntl, os, struct\nfd = os.open(image_path, os.O_RDONLY)\n"
        code += snippet(LOCKS[how], LIB=LIBRARY_FILE)
        r = s.run(f"try:\n{_indent(code)}\n    print('held')\nexcept OSError as exc:\n"
                  "    print('refused', exc.errno)")
        assert r.ok, r
        # The host opens (a write lease makes a non-blocking open fail) and locks the file.
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if os.access(target, os.W_OK):
            with open(target, "r+b") as f:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(f, fcntl.LOCK_UN)
        r = s.run("print('still here')")
        assert r.ok and r.notes == [], r


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


# ---------------------------------------------------------------- 5. the zygote and the children

@pytest.mark.parametrize("zygote", ["lean", "sympy"])
def test_dead_zygote_is_detected_and_replaced(any_sandbox, zygote):
    """Issue 20 (5): a worker whose zygote died answered BrokenPipeError forever. Either of its
    two zygotes (sandbox.fork_server) gone retires it."""
    handle = any_sandbox._handles[0]
    old = handle.pid
    os.kill(handle.info["zygote_pids"][zygote], signal.SIGKILL)
    time.sleep(0.1)
    for _ in range(2 * any_sandbox.workers):
        r = any_sandbox.run("print(1)")
        assert r.ok and r.stdout == "1\n", r
    assert handle.pid != old, "the worker with a dead zygote was not replaced"
    assert_healthy(any_sandbox)


def test_hung_zygote_is_detected_and_replaced():
    impatient = functools.partial(_launch_with, zygote_timeout_s=1.0)
    with Sandbox(workers=1, launcher=impatient) as sb:
        handle = sb._handles[0]
        old, zygote = handle.pid, handle.info["zygote_pid"]
        os.kill(zygote, signal.SIGSTOP)
        try:
            results = [sb.run("print(1)") for _ in range(2 * sb.workers)]
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone if its worker was replaced
                os.kill(zygote, signal.SIGCONT)
        assert all(r.ok and r.stdout == "1\n" for r in results), results
        assert handle.pid != old
        assert_healthy(sb)


def _launch_with(config, **changes):
    return launch_subprocess(dataclasses.replace(config, **changes))


def test_sessions_on_other_workers_keep_their_state(sandbox):
    """The health rule: only the broken worker is replaced."""
    sessions = [sandbox.session() for _ in range(sandbox.workers)]  # one per worker
    try:
        for i, s in enumerate(sessions):
            assert s.run(f"x = {i}\nprint(x)").ok
        broken = sessions[0].handle
        os.kill(broken.info["zygote_pid"], signal.SIGKILL)
        for _ in range(2 * sandbox.workers):
            assert sandbox.run("print(1)").ok
        for i, s in enumerate(sessions):
            r = s.run("print(x)")
            if s.handle is broken:
                assert r.error.kind == R.RUNTIME and "NameError" in r.error.message, r
                assert any("state was lost" in n for n in r.notes), r
            else:
                assert r.ok and r.stdout == f"{i}\n" and r.notes == [], r
    finally:
        for s in sessions:
            s.close()
    assert_healthy(sandbox)


def test_session_child_killed_between_blocks_restarts_fresh(any_sandbox):
    pids = worker_pids(any_sandbox)
    with any_sandbox.session() as s:
        r = s.run("import os\nx = 1\nprint(os.getpid())")
        assert r.ok, r
        # the pid as the host sees it: the one code child below its worker's zygote
        (child,) = [p for p in descendants(s.handle.info["zygote_pid"])
                    if process_name(p) == "thyme-code"]
        os.kill(child, signal.SIGKILL)
        time.sleep(0.1)
        r = s.run("print('x' in globals())")
        assert r.ok and r.stdout == "False\n", r
        assert any("state was lost" in n for n in r.notes), r
    assert_healthy(any_sandbox, pids)


# ---------------------------------------------------------------- 6. internal errors from model code

def _forged_frame(payload: str) -> str:
    """Code that writes `payload` as a frame into every pipe it holds (only the reply pipe
    takes it), then finishes normally."""
    return snippet("""
        import os, stat, struct
        data = PAYLOAD
        for fd in range(3, 64):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, struct.pack('!I', len(data)) + data)
            except OSError:
                pass
        print('done')
    """).replace("PAYLOAD", payload)


INTERNAL_TRIGGERS = {
    # issue 20 (6)
    "json_dumps_patched": ("import json\njson.dumps = lambda *a, **k: 'not json'\nprint('patched')",
                           None),
    "deep_attribute_chain": ("x = a" + ".a" * 100_000, R.SYNTAX),
    "lone_surrogate_in_code": ("print('\ud800')", R.SYNTAX),
    # more of the same family
    "null_byte_in_code": ("print(1)\x00", R.SYNTAX),
    "deep_brackets": ("x = " + "[" * 100_000 + "]" * 100_000, R.SYNTAX),
    "code_too_long": ("x = 1\n" * 200_000, R.SYNTAX),
    "reply_not_json": (_forged_frame("b'{not json'"), R.RUNTIME),
    "reply_a_list": (_forged_frame("b'[1]'"), R.RUNTIME),
    "reply_nested_deep": (_forged_frame("b'[' * 300000"), R.RUNTIME),
    "reply_bad_types": (_forged_frame("b'{\"stdout\": 5, \"error\": [1, 2, 3], \"cpu_s\": \"x\"}'"),
                        R.RUNTIME),
    "reply_forged_confine_error": (_forged_frame("b'{\"confine_error\": \"x\"}'"), R.RUNTIME),
    "reply_invalid_utf8": (_forged_frame("b'{\"stdout\": \"\\xff\\xfe\"}'"), R.RUNTIME),
}


@pytest.mark.parametrize("how", list(INTERNAL_TRIGGERS))
def test_model_code_never_causes_an_internal_error(any_sandbox, how):
    code, kind = INTERNAL_TRIGGERS[how]
    pids = worker_pids(any_sandbox)
    r = any_sandbox.run(code)
    if kind is None:
        assert r.ok, r
    else:
        assert_denied(r, kind)
    assert_no_host_paths(r)
    assert_healthy(any_sandbox, pids)


def test_json_loads_patched_in_a_session(any_sandbox):
    with any_sandbox.session() as s:
        assert s.run("import json\njson.loads = lambda *a, **k: 0\nx = 1\nprint('patched')").ok
        r = s.run("print(x + 1)")
        assert r.ok and r.stdout == "2\n" and r.notes == [], r
    assert_healthy(any_sandbox)


def test_session_block_cannot_forge_the_next_reply(any_sandbox):
    """A block that writes a reply frame of its own must not shift the replies of later blocks
    (each later block used to get the previous block's reply)."""
    forged = '{"stdout": "FORGED\\n", "processed_path": null, "error": null, "cpu_s": 0}'
    with any_sandbox.session() as s:
        r1 = s.run(_forged_frame(repr(forged.encode())))
        for i in range(3):
            r = s.run(f"print('block', {i})")
            assert r.ok and r.stdout == f"block {i}\n", (r1, r)
    assert "FORGED" not in r1.stdout
    assert_healthy(any_sandbox)


# ---------------------------------------------------------------- 7. produced images

IMAGES = {
    "truncated_jpeg": """
        import cv2, numpy as np
        cv2.imwrite('t.jpg', np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
        data = open('t.jpg', 'rb').read()
        open('t.jpg', 'wb').write(data[:len(data) // 2])
        print('t.jpg')
    """,
    "truncated_png": """
        import cv2, numpy as np
        cv2.imwrite('t.png', np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
        data = open('t.png', 'rb').read()
        open('t.png', 'wb').write(data[:len(data) // 2])
        print('t.png')
    """,
    "eps_named_png": """
        open('e.png', 'w').write('%!PS-Adobe-3.0 EPSF-3.0\\n%%BoundingBox: 0 0 64 64\\n'
                                 'newpath 0 0 moveto 64 64 lineto stroke\\nshowpage\\n')
        print('e.png')
    """,
    "eps_as_processed_path": """
        open('e.eps', 'w').write('%!PS-Adobe-3.0 EPSF-3.0\\n%%BoundingBox: 0 0 64 64\\nshowpage\\n')
        processed_path = 'e.eps'
    """,
    "corrupt_png_crc": """
        import cv2, numpy as np
        cv2.imwrite('c.png', np.full((64, 64, 3), 9, np.uint8))
        data = bytearray(open('c.png', 'rb').read())
        data[40] ^= 0xFF
        open('c.png', 'wb').write(bytes(data))
        print('c.png')
    """,
}


@pytest.mark.parametrize("how", list(IMAGES))
def test_broken_or_foreign_images_are_refused(any_sandbox, how):
    before = results_listing(any_sandbox)
    r = any_sandbox.run(snippet(IMAGES[how]))
    assert_denied(r, R.INVALID_IMAGE)
    assert r.images == []
    assert results_listing(any_sandbox) == before
    assert_no_host_paths(r)


def test_images_of_a_failed_job_are_not_kept(any_sandbox):
    before = results_listing(any_sandbox)
    r = any_sandbox.run(snippet("""
        import cv2, numpy as np
        cv2.imwrite('good.png', np.full((64, 64, 3), 200, np.uint8))
        open('bad.png', 'w').write('not an image')
        print('good.png bad.png')
    """))
    assert_denied(r, R.INVALID_IMAGE)
    assert results_listing(any_sandbox) == before


WRITE_TO_HOST = {
    # issue 20: one job wrote 210 MB into the results folder
    "bytes": "for i in range(8):\n    cv2.imwrite(f'b{i}.bmp', np.full((2900, 2900, 3), i, np.uint8))\n"
             "print(' '.join(f'b{i}.bmp' for i in range(8)))",
    "files": "for i in range(40):\n    cv2.imwrite(f'n{i}.png', np.full((64, 64), i, np.uint8))\n"
             "print(' '.join(f'n{i}.png' for i in range(40)))",
}


@pytest.mark.parametrize("how", list(WRITE_TO_HOST))
def test_images_written_to_the_host_are_capped_per_job(any_sandbox, how):
    before = results_listing(any_sandbox)
    r = any_sandbox.run("import cv2, numpy as np\n" + WRITE_TO_HOST[how], timeout=20)
    assert_denied(r, R.OUTPUT_LIMIT)
    assert r.images == []
    assert results_listing(any_sandbox) == before


# ---------------------------------------------------------------- 8. the reply channel, signals, rlimits

SELF_SABOTAGE = {
    "close_reply_pipe": "import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n"
                        "    except OSError:\n        pass\nprint('closed')",
    "reply_pipe_nonblocking": "import os\nfor fd in range(3, 64):\n    try:\n"
                              "        os.set_blocking(fd, False)\n    except OSError:\n"
                              "        pass\nprint('\u00e9' * 60000)",
    "pipe_over_reply_pipe": "import os, stat\nr, w = os.pipe()\n"
                            "for fd in range(3, 64):\n    try:\n"
                            "        if fd not in (r, w) and stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
                            "            os.dup2(w, fd)\n    except OSError:\n"
                            "        pass\nprint('x')",
    "timer_raises_during_reply": "import signal\ndef boom(*_):\n    raise KeyError('boom')\n"
                                 "signal.signal(signal.SIGALRM, boom)\n"
                                 "signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)\nprint('armed')",
    "address_space_zero": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (0, 0))\n"
                          "print('x' * 50000)",
    "address_space_exhausted": "import resource\nheld = []\ntry:\n    while True:\n"
                               "        held.append(bytearray(16 << 20))\nexcept MemoryError:\n"
                               "    pass\nprint('full')",
    "nofile_zero": "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))\nprint('x')",
    "stack_tiny": "import json, resource, sys\n"
                  "resource.setrlimit(resource.RLIMIT_STACK, (1 << 16, 1 << 16))\n"
                  "sys.setrecursionlimit(10 ** 6)\njson.loads('[' * 100000 + ']' * 100000)",
}


@pytest.mark.parametrize("how", list(SELF_SABOTAGE))
def test_snippet_breaking_its_own_interpreter_leaves_the_worker_serving(any_sandbox, how):
    """The snippet only hurts itself: a clear error (never `internal`), and its worker serves
    the next job without being replaced."""
    pids = worker_pids(any_sandbox)
    with any_sandbox.session() as s:
        r = s.run(SELF_SABOTAGE[how], timeout=3)
        assert r.error is None or r.error.kind != R.INTERNAL, r
        assert_no_host_paths(r)
        if r.error is not None and r.error.kind == R.RUNTIME:
            assert "exit status 0" not in r.error.message, r
        r = s.run("print('next')")  # its own next block may fail (its doing), but not internally
        assert r.error is None or r.error.kind != R.INTERNAL, r
    assert_healthy(any_sandbox, pids)


def test_sigcont_handler_cannot_run_outside_its_block(any_sandbox):
    """A session's SIGCONT handler runs when the next block starts, inside that block's time:
    it cannot write the next block's reply."""
    with any_sandbox.session() as s:
        r = s.run(snippet("""
            import os, signal, stat, struct
            def forge(*_):
                data = b'{"stdout": "FORGED\\\\n", "processed_path": null, "error": null, "cpu_s": 0}'
                for fd in range(3, 64):
                    try:
                        if stat.S_ISFIFO(os.fstat(fd).st_mode):
                            os.write(fd, struct.pack('!I', len(data)) + data)
                    except OSError:
                        pass
            signal.signal(signal.SIGCONT, forge)
            print('armed')
        """))
        assert r.ok, r
        r = s.run("print('mine')")
        assert "FORGED" not in r.stdout, r
        assert r.error is None or r.error.kind != R.INTERNAL, r
    assert_healthy(any_sandbox)
