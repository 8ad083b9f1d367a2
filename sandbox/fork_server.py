"""The worker's fork server: the zygotes, and the life of each child they fork.

A zygote is a copy of the warmed worker made before any request; it forks children, so no
child inherits a heap that held another job's code or output. There are two (`ZYGOTES`): "lean"
(cv2, numpy, PIL) forks most children and the image checkers; "sympy", made after the worker
also warmed sympy, forks the children whose code names it (`sandbox.warm.needs_sympy`). sympy
is over half the warmed heap, and a child's fork and exit cost grows with the pages it
inherits: 0.2-0.7 ms less CPU per call (docs/benchmarks.md). A child confines itself
(sandbox.confine) and says so before it reads any input, then serves code blocks (sandbox.runner)
or image checks (sandbox.outputs). The worker confirms that report, resumes and freezes a
session's child between blocks, and kills it, has its zygote reap it and removes its scratch.
`ForkServer` holds these steps; the `Worker` (sandbox.worker) is one and sets what they read.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sandbox import call_files, confine, outputs, replies, runner
from sandbox.repair import image_size

if TYPE_CHECKING:
    from sandbox.worker import WorkerConfig


class Unfit(RuntimeError):
    """This worker can no longer serve and must retire (the message says why)."""


class ZygoteLost(Unfit):
    """A zygote died or hung: this worker can no longer start children."""


ZYGOTES = ("lean", "sympy")     # in the order the worker makes them


@dataclass
class Zygote:
    name: str                         # one of ZYGOTES
    pid: int
    sock: socket.socket               # requests and replies (fds ride along)


# How long the worker waits to see a session's child stopped before it reads its folder.
FREEZE_WAIT_S = 2.0
CHILD_ENV = {"LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
             "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}


@dataclass
class Child:
    pid: int                          # -1 once the child is gone
    pidfd: int                        # signals go through it: no pid-reuse races
    to_child: int                     # both pipes are non-blocking on the worker's side
    from_child: int
    scratch: str | None               # None for an image checker (it writes nothing)
    inputs: list[str]
    zygote: str = "lean"              # the zygote that forked it (and reaps it)
    confined: bool = False            # it reported confinement (before reading any input)
    _image_size: tuple[int, int] | None = field(default=None, init=False)

    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the first input, read on first use (crop-box clamping)."""
        if self._image_size is None and self.inputs:
            self._image_size = image_size(self.inputs[0])
        return self._image_size


class ForkServer:
    """The zygote and the children it forks; mixed into the `Worker`, whose start-up sets these
    (the confinement a child applies to itself is worked out once, before the zygote forks)."""

    cfg: WorkerConfig
    limits: confine.Limits
    landlock_abi: int
    seccomp: bool
    seccomp_per_child: bool
    seccomp_bpf: bytes
    read_only: list[str]
    baseline_vm: int                  # (each zygote keeps the value it was made with)
    zygotes: dict[str, Zygote]
    counter: int                      # children started (names their scratch folders)
    lost: str | None
    cleanup_problem: str | None

    # ------------------------------------------------------------ the zygotes
    # Children are forked from copies of this process made at start-up, before any request:
    # this process's heap soon holds other jobs' code and output, which a child could scan.
    def _start_zygote(self, name: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                confine.die_with_parent()
                keep = theirs.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                self._zygote_loop(theirs)
            finally:
                os._exit(0)
        theirs.close()
        ours.settimeout(self.cfg.zygote_timeout_s)
        self.zygotes[name] = Zygote(name, pid, ours)

    def _zygote_loop(self, sock: socket.socket) -> None:
        while True:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
            if not msg:
                return  # the worker is gone
            req = json.loads(msg)
            if req["op"] == "reap":
                status, cpu = _reap(req["pid"])
                sock.send(json.dumps({"status": status, "cpu_s": cpu}).encode())
                continue
            c_in, c_out = fds
            pid = os.fork()
            if pid == 0:
                self._child_main(req, c_in, c_out)
            os.close(c_in)
            os.close(c_out)
            pidfd = os.pidfd_open(pid)
            socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
            os.close(pidfd)

    def _child_main(self, req: dict, c_in: int, c_out: int) -> None:
        """A child: confine, say so, then serve. Never returns."""
        status = 0
        try:
            confine.set_process_name(f"thyme-{req['role']}")  # thyme-code, thyme-checker
            try:
                self._confine_child(req["scratch"], req["inputs"], keep=(c_in, c_out))
            except BaseException as exc:  # noqa: BLE001
                msg = {"confine_error": f"{type(exc).__name__}: {exc}"}
                runner.write_frame(c_out, json.dumps(msg).encode())
                return
            # Written before any input is read, so no code can forge it (or its absence).
            runner.write_frame(c_out, b'{"confined": true}')
            status = replies.REPLY_LOST_STATUS  # unless serving ends because the worker closed
            if req["role"] == "checker":
                outputs.serve_checks(c_in, c_out, self.cfg.max_image_pixels,
                                     self.cfg.max_output_mb << 20)
            else:
                runner.serve(c_in, c_out, req["inputs"][0] if req["inputs"] else None,
                             self.cfg.stdout_limit, req["scratch"], self.cfg.namespace)
            status = 0
        finally:
            os._exit(status)

    def _zygote_call(self, name: str, message: dict, fds: list[int] = ()) -> tuple[dict, list[int]]:
        """Zygote `name`'s answer; ZygoteLost (and the worker retires) if it is gone or hung."""
        zygote, msg, got = self.zygotes[name], b"", []
        try:
            socket.send_fds(zygote.sock, [json.dumps(message).encode()], list(fds))
            msg, got, _, _ = socket.recv_fds(zygote.sock, 1 << 16, 1)
        except TimeoutError:
            self.lost = f"the {name} zygote did not answer within {self.cfg.zygote_timeout_s:g} s"
        except OSError as exc:
            self.lost = f"the {name} zygote is gone ({type(exc).__name__})"
        if not msg:
            self.lost = self.lost or f"the {name} zygote is gone"
            raise ZygoteLost(self.lost)
        return json.loads(msg), got

    # ------------------------------------------------------------ children
    def _spawn(self, inputs: list[str], role: str = "code", files: dict | None = None,
               zygote: str = "lean") -> Child:
        """A new child (forked by `zygote`) that confines itself, then serves code blocks
        (or image checks). It reports whether it is confined before it reads anything, and
        never runs code unconfined. Its scratch holds `files` before it exists. Raises OSError
        when no scratch directory can be made."""
        self.counter += 1
        scratch = None
        if role == "code":
            scratch = os.path.join(self.cfg.scratch_root, str(self.counter))
            call_files.make_folder(scratch, files or {})
        c_in, p_out = os.pipe()
        p_in, c_out = os.pipe()
        try:
            reply, fds = self._zygote_call(zygote, {"op": "spawn", "role": role,
                                                    "scratch": scratch, "inputs": inputs},
                                           [c_in, c_out])
        except ZygoteLost:
            for fd in (p_in, p_out):
                os.close(fd)
            raise
        finally:
            os.close(c_in)
            os.close(c_out)
        os.set_blocking(p_out, False)
        os.set_blocking(p_in, False)
        return Child(reply["pid"], fds[0], p_out, p_in, scratch, inputs, zygote)

    def _confirm(self, child: Child) -> str | None:
        """None once the child has reported its confinement, else what went wrong."""
        if child.confined:
            return None
        deadline = time.monotonic() + 2 * self.cfg.zygote_timeout_s
        try:
            frame = replies.read_frame(child.from_child, 1 << 16, deadline)
            msg = json.loads(frame) if frame else {}
        except (OSError, EOFError, TimeoutError, ValueError):
            msg = {}
        if isinstance(msg, dict) and msg.get("confined") is True:
            child.confined = True
            return None
        reason = msg.get("confine_error", "it died or did not answer") if isinstance(msg, dict) else "?"
        return f"the sandbox child could not confine itself: {reason}"

    def _signal(self, child: Child, sig: int) -> None:
        try:
            signal.pidfd_send_signal(child.pidfd, sig)
        except ProcessLookupError:
            pass

    def _freeze(self, child: Child, wait_s: float = FREEZE_WAIT_S) -> bool:
        """Stop a session's child and wait until the kernel shows it stopped (or dead): a
        signal is delivered asynchronously, and a handler the code installed could otherwise
        still be writing. False if that could not be seen within `wait_s`."""
        self._signal(child, signal.SIGSTOP)
        deadline, pause = time.monotonic() + wait_s, 0.0005
        while True:
            if _exited(child) or _process_state(child.pid) in ("T", "Z", "X"):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def _kill_and_reap(self, child: Child) -> tuple[int | None, float]:
        """Stop the child for good; its wait status (None if unknown) and CPU seconds."""
        self._signal(child, signal.SIGKILL)
        status, cpu = None, 0.0
        if self.lost is None:
            try:
                reply, _ = self._zygote_call(child.zygote, {"op": "reap", "pid": child.pid})
                status, cpu = reply["status"], reply["cpu_s"]
            except ZygoteLost:
                pass  # the worker retires after this request
        os.close(child.pidfd)
        child.pid = -1
        return status, cpu

    def _confine_child(self, scratch: str | None, inputs: list[str], keep: tuple[int, int]) -> None:
        os.setsid()
        confine.die_with_parent()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        low, high = sorted(keep)
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        os.chdir(scratch or "/")
        os.environ.clear()
        if scratch:
            os.environ.update(CHILD_ENV, HOME=scratch, TMPDIR=scratch)
            tempfile.tempdir = scratch
        else:
            os.environ.update(CHILD_ENV)
        # A per-child filter is compiled through a temporary file: before Landlock, which would
        # refuse it outside scratch (an image checker has none).
        program = b""
        if self.seccomp:
            program = (confine.seccomp_program(os.getpid(), deny_truncate=self.landlock_abi < 3)
                       if self.seccomp_per_child else self.seccomp_bpf)
        confine.set_rlimits(self.limits, self.baseline_vm)
        confine.no_new_privs()
        if self.landlock_abi >= 1:
            confine.landlock_restrict(self.landlock_abi, self.read_only + inputs,
                                      [scratch] if scratch else [])
        confine.drop_capabilities()  # (also without namespaces: root in a container keeps none)
        if self.seccomp:
            confine.install_seccomp(program)

    def _end(self, child: Child | None) -> None:
        if child is None:
            return
        for fd in (child.to_child, child.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        if child.pid > 0:
            self._kill_and_reap(child)
        if child.scratch and self.lost is None:  # (once reaped nothing can write there)
            try:
                outputs.remove_tree(child.scratch)
            except OSError as exc:
                self.cleanup_problem = f"a scratch directory could not be removed ({exc})"


# ---------------------------------------------------------------- helpers

def _exited(child: Child) -> bool:
    """Whether the child has ended (its pidfd turns readable)."""
    return bool(select.select([child.pidfd], [], [], 0)[0])


def _process_state(pid: int) -> str | None:
    """The state letter /proc shows for `pid` (R, S, D, T, Z, ...), or None if not shown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split(b" ", 1)  # after "pid (name) "; name may hold ")"
    return fields[0].decode("ascii", "replace") if fields and fields[0] else None


def _reap(pid: int) -> tuple[int, float]:
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return 0, 0.0
    return status, usage.ru_utime + usage.ru_stime

