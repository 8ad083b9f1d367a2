"""A sandbox worker: a pre-warmed fork server, one per core.

Started once (`sandbox.worker.main`), it enters its own user/mount/network namespaces,
mounts a size-capped tmpfs for scratch, imports and exercises cv2, numpy, PIL and sympy, then
serves requests from the `Sandbox` over a pipe. Each trajectory gets a forked child that confines
itself (sandbox.confine) before any model code runs; a one-shot job is a one-block trajectory.
The worker enforces wall time from outside, collects outputs itself (regular files inside the
child's scratch only), validates images, and cleans up. It trusts nothing the child says.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import sysconfig
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from sandbox import confine, runner
from sandbox import result as R
from sandbox.protocol import VIRTUAL_OUTPUT_DIR
from sandbox.repair import RepairContext, output_subfolders, repair


class ZygoteLost(RuntimeError):
    """The zygote died: this worker can no longer start children and must be replaced."""


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif")
_EXTENSIONS = "|".join(IMAGE_EXTENSIONS)
# A printed word that ends in an image extension (the longest such start of each word). Matched
# word by word, anchored: a search over the whole text backtracks quadratically on a long word.
_WORD_SEPARATORS = re.compile(r"[\s'\"<>|]+")
_IMAGE_WORD = re.compile(rf".*\.(?:{_EXTENSIONS})\b", re.IGNORECASE)
_MAX_PATH_CHARS = 255  # a path with spaces under the output directory is read up to this long
MAX_ASPECT_RATIO = 200
CHILD_ENV = {"LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
             "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}


@dataclass
class WorkerConfig:
    scratch_root: str                 # directory on which the worker mounts its tmpfs
    scratch_mb: int = 256             # disk budget of the tmpfs (all of this worker's children)
    memory_mb: int = 1024
    file_mb: int = 32
    cpu_s: int = 120                  # CPU budget over a child's life (sessions), a backstop
    open_files: int = 64
    stdout_limit: int = 64_000
    max_image_mb: int = 64
    max_image_pixels: int = 50_000_000   # produced images beyond this are refused
    max_images: int = 16
    allow_degraded: bool = False
    namespace: str = "compat"         # pre-bound names: "compat" (the original's) or "strict"


@dataclass
class Child:
    pid: int                          # -1 once the child is gone
    pidfd: int                        # signals go through it: no pid-reuse races
    to_child: int
    from_child: int
    scratch: str
    inputs: list[str]
    _image_size: tuple[int, int] | None = field(default=None, init=False)

    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the first input, read on first use (crop-box clamping)."""
        if self._image_size is None and self.inputs:
            self._image_size = _image_size(self.inputs[0])
        return self._image_size


class Worker:
    def __init__(self, config: WorkerConfig):
        self.cfg = config
        self.limits = confine.Limits(memory_mb=config.memory_mb, cpu_s=config.cpu_s,
                                     file_mb=config.file_mb, open_files=config.open_files)
        self.degraded: list[str] = []
        self.sessions: dict[str, Child] = {}
        self.restarted: set[str] = set()  # sessions whose child was killed mid-block
        self.counter = 0
        self._setup()

    # ------------------------------------------------------------ start-up
    def _setup(self) -> None:
        try:
            confine.enter_namespaces(self.cfg.scratch_root, self.cfg.scratch_mb)
        except confine.ConfinementError as exc:
            self._missing("namespaces", f"user/mount/network namespaces unavailable: {exc}")
        self.landlock_abi = confine.landlock_abi()
        if self.landlock_abi < 1:
            self._missing("landlock", "Landlock is not enabled in this kernel")
        problem = confine.seccomp_unavailable_reason()
        self.seccomp = problem is None
        if problem:
            self._missing("seccomp", f"seccomp (pyseccomp + libseccomp.so.2) is unavailable: {problem}")
        _warm_up()
        self.read_only = _library_paths()
        # Compiled once; per child only when signals cannot be scoped by Landlock.
        self.seccomp_per_child = self.seccomp and self.landlock_abi < 6
        self.seccomp_bpf = confine.seccomp_program() if self.seccomp else b""
        # Keep the warmed heap out of the collector so children do not copy it page by page.
        gc.freeze()
        self.huge_pages_bytes = confine.collapse_heap_to_huge_pages()
        self.baseline_vm = confine.address_space_bytes()
        self._start_zygote()

    # ------------------------------------------------------------ the zygote
    # Children are forked from a copy of this process made now, before any request: this
    # process's heap soon holds other jobs' code and output, which a child could scan.
    def _start_zygote(self) -> None:
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
        self.zygote_pid, self.zygote = pid, ours

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
            if pid == 0:  # -------------------------------------------- the child
                try:
                    try:
                        self._confine_child(req["scratch"], req["inputs"], keep=(c_in, c_out))
                    except BaseException as exc:  # noqa: BLE001
                        msg = {"confine_error": f"{type(exc).__name__}: {exc}"}
                        runner.write_frame(c_out, json.dumps(msg).encode())
                    else:
                        runner.serve(c_in, c_out, req["inputs"][0] if req["inputs"] else None,
                                     self.cfg.stdout_limit, req["scratch"], self.cfg.namespace)
                finally:
                    os._exit(0)
            os.close(c_in)
            os.close(c_out)
            pidfd = os.pidfd_open(pid)
            socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
            os.close(pidfd)

    def _zygote_call(self, message: dict, fds: list[int] = ()) -> tuple[dict, list[int]]:
        socket.send_fds(self.zygote, [json.dumps(message).encode()], list(fds))
        msg, got, _, _ = socket.recv_fds(self.zygote, 1 << 16, 1)
        if not msg:
            raise ZygoteLost("the sandbox zygote died")
        return json.loads(msg), got

    def _missing(self, mechanism: str, reason: str) -> None:
        if not self.cfg.allow_degraded:
            raise confine.ConfinementError(reason)
        self.degraded.append(mechanism)

    # ------------------------------------------------------------ requests
    def handle(self, req: dict) -> dict:
        op = req["op"]
        if op == "run":
            return self.run(req)
        if op == "close":
            self._end(self.sessions.pop(req["session"], None))
            self.restarted.discard(req["session"])
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    def run(self, req: dict) -> dict:
        t0 = time.perf_counter()
        sid = req.get("session")
        inputs = [os.path.abspath(p) for p in req.get("inputs", [])]
        child = self.sessions.get(sid) if sid else None
        notes: list[str] = []
        if child is None:
            child = self._spawn(inputs)
            if sid:
                if sid in self.restarted:
                    notes.append("session state was lost (its previous call was stopped); "
                                 "this block ran in a fresh interpreter")
                self.sessions[sid] = child
        else:
            self._signal(child, signal.SIGCONT)
        try:
            out = self._run_block(child, req["code"], float(req["timeout"]), req["results_dir"])
        finally:
            if child.pid < 0 or not sid:
                self.sessions.pop(sid, None)
                if sid and child.pid < 0:
                    self.restarted.add(sid)
                self._end(child)
            else:
                # Between blocks a session's child is frozen: no timer or handler can compute
                # outside a block's time limit.
                self._signal(child, signal.SIGSTOP)
        out["notes"] = notes + out.get("notes", [])
        out["wall_s"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------ children
    def _spawn(self, inputs: list[str]) -> Child:
        """A new child (forked by the zygote) that confines itself, then serves code blocks.
        It reports a failure to confine instead of a reply, and never runs code unconfined."""
        self.counter += 1
        scratch = os.path.join(self.cfg.scratch_root, str(self.counter))
        os.mkdir(scratch, 0o700)
        c_in, p_out = os.pipe()
        p_in, c_out = os.pipe()
        try:
            reply, fds = self._zygote_call({"op": "spawn", "scratch": scratch, "inputs": inputs},
                                           [c_in, c_out])
        finally:
            os.close(c_in)
            os.close(c_out)
        return Child(reply["pid"], fds[0], p_out, p_in, scratch, inputs)

    def _signal(self, child: Child, sig: int) -> None:
        try:
            signal.pidfd_send_signal(child.pidfd, sig)
        except ProcessLookupError:
            pass

    def _kill_and_reap(self, child: Child) -> tuple[int, float]:
        """Stop the child for good; its exit status and CPU seconds."""
        self._signal(child, signal.SIGKILL)
        reply, _ = self._zygote_call({"op": "reap", "pid": child.pid})
        os.close(child.pidfd)
        child.pid = -1
        return reply["status"], reply["cpu_s"]

    def _confine_child(self, scratch: str, inputs: list[str], keep: tuple[int, int]) -> None:
        os.setsid()
        confine.die_with_parent()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        low, high = sorted(keep)
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        os.chdir(scratch)
        os.environ.clear()
        os.environ.update(CHILD_ENV, HOME=scratch, TMPDIR=scratch)
        tempfile.tempdir = scratch
        confine.set_rlimits(self.limits, self.baseline_vm)
        confine.no_new_privs()
        if self.landlock_abi >= 1:
            confine.landlock_restrict(self.landlock_abi, self.read_only + inputs, [scratch])
        if "namespaces" not in self.degraded:
            confine.drop_capabilities()
        if self.seccomp:
            confine.install_seccomp(confine.seccomp_program(os.getpid()) if self.seccomp_per_child
                                    else self.seccomp_bpf)

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
        shutil.rmtree(child.scratch, ignore_errors=True)

    # ------------------------------------------------------------ one code block
    def _run_block(self, child: Child, code: str, timeout: float, results_dir: str) -> dict:
        ctx = RepairContext(inputs=child.inputs, image_size=child.image_size,
                            output_dir=child.scratch,
                            is_known_file=lambda p: p.startswith(child.scratch + "/")
                            and os.path.isfile(p))
        code, repairs = repair(code, ctx)
        base = {"code": code, "repairs": repairs, "degraded": tuple(self.degraded)}
        try:
            compile(code, "<code>", "exec")
        except SyntaxError as exc:
            return self._finish(child, base, error=(R.SYNTAX, runner.classify(exc)[1]))
        deadline = time.monotonic() + timeout
        # UTF-8 text, JSON-escaped: at most 6 bytes per printed character, plus the envelope
        frame_limit = 6 * self.cfg.stdout_limit + 65536
        try:
            request = {"code": code, "make_dirs": output_subfolders(code, child.scratch)}
            runner.write_frame(child.to_child, json.dumps(request).encode())
            frame = _read_frame(child.from_child, frame_limit, deadline)
        except TimeoutError:
            _, cpu = self._kill_and_reap(child)
            return self._finish(child, base, cpu_s=cpu,
                                error=(R.TIMEOUT, f"the code ran longer than {timeout:g} s and was stopped"))
        except ValueError as exc:
            self._kill_and_reap(child)
            return self._finish(child, base, error=(R.OUTPUT_LIMIT, str(exc)))
        except (EOFError, OSError):
            frame = None
        if frame is None:  # the child died mid-block
            status, cpu = self._kill_and_reap(child)
            return self._finish(child, base, cpu_s=cpu, error=_death_reason(status))
        reply = json.loads(frame)
        if "confine_error" in reply:
            self._kill_and_reap(child)
            return self._finish(child, base, error=(
                R.INTERNAL, f"the sandbox child could not confine itself: {reply['confine_error']}"))
        error = reply.get("error")
        if error is not None and error[0] not in R.ERROR_KINDS:
            error = (R.RUNTIME, str(error[1]))
        return self._finish(child, base, stdout=str(reply.get("stdout", "")), error=error,
                            processed=reply.get("processed_path"), results_dir=results_dir,
                            cpu_s=float(reply.get("cpu_s", 0.0)))

    def _finish(self, child: Child, base: dict, *, stdout: str = "", error=None, processed=None,
                results_dir: str | None = None, cpu_s: float = 0.0) -> dict:
        truncated = len(stdout) >= self.cfg.stdout_limit
        stdout = self._scrub(child, stdout[: self.cfg.stdout_limit])
        images: list[str] = []
        if error is None and results_dir:
            images, error = self._collect_images(child, processed, stdout, results_dir)
        if error is None and not images and not stdout.strip():
            error = (R.NO_OUTPUT, "the code printed nothing and produced no image; print the "
                                  "result or the path of the saved image")
        err = R.ErrorInfo(error[0], self._scrub(child, str(error[1]))[:2000]) if error else None
        base["code"] = self._scrub(child, base["code"])
        return R.Result(ok=err is None, stdout=stdout, text=None if images else stdout.strip(),
                        images=images, error=err, cpu_s=cpu_s, stdout_truncated=truncated,
                        **base).to_dict()

    def _scrub(self, child: Child, text: str) -> str:
        """Hide host paths: scratch shows as the virtual directory, inputs by file name."""
        text = text.replace(child.scratch, VIRTUAL_OUTPUT_DIR)
        for path in child.inputs:
            text = text.replace(path, os.path.basename(path))
        return text

    def _collect_images(self, child: Child, processed: str | None, stdout: str,
                        results_dir: str) -> tuple[list[str], tuple | None]:
        candidates = [processed] if processed else []
        candidates += _printed_images(stdout.replace(VIRTUAL_OUTPUT_DIR, child.scratch),
                                      child.scratch)
        found: list[str] = []
        missing: list[str] = []  # output-directory paths the code named but never saved
        for cand in candidates:
            cand = cand.replace(VIRTUAL_OUTPUT_DIR, child.scratch)
            path = os.path.normpath(os.path.join(child.scratch, cand))
            if not path.startswith(child.scratch + "/") or path in found:
                continue
            if os.path.lexists(path):
                found.append(path)
            elif os.path.isabs(cand):
                missing.append(path)
        if missing and not found:  # as the original: a claimed image that is not there fails
            return [], (R.NO_OUTPUT, f"{missing[0]}: the code printed or set this image path, "
                                     "but saved no image there")
        images = []
        for path in found[: self.cfg.max_images]:
            data, ext, problem = self._read_output_file(child, path)
            if problem:
                return images, (R.INVALID_IMAGE, problem)
            images.append(_store_image(data, ext, results_dir))
        return images, None

    def _read_output_file(self, child: Child, path: str) -> tuple[bytes, str, str | None]:
        name = os.path.relpath(path, child.scratch)
        if os.path.realpath(path) != path:
            return b"", "", f"{name}: not a regular file in the output directory (link)"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            return b"", "", f"{name}: cannot be opened ({exc.strerror})"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return b"", "", f"{name}: not a regular file"
            if st.st_size > self.cfg.max_image_mb * 1024 * 1024:
                return b"", "", f"{name}: larger than {self.cfg.max_image_mb} MB"
            with os.fdopen(fd, "rb") as f:
                fd = -1
                data = f.read()
        finally:
            if fd >= 0:
                os.close(fd)
        return (data, *_check_image(name, data, self.cfg.max_image_pixels))

    # ------------------------------------------------------------ serve
    def serve(self, fd_in: int, fd_out: int) -> None:
        hello = {"ready": True, "pid": os.getpid(), "degraded": self.degraded,
                 "landlock_abi": self.landlock_abi, "huge_pages_bytes": self.huge_pages_bytes,
                 "zygote_pid": self.zygote_pid}
        runner.write_frame(fd_out, json.dumps(hello).encode())
        while True:
            frame = runner.read_frame(fd_in, 1 << 26)
            if frame is None:
                break
            req = json.loads(frame)
            if req.get("op") == "shutdown":
                break
            try:
                reply = self.handle(req)
            except ZygoteLost:
                raise  # exit: the Sandbox sees the pipe close and starts a fresh worker
            except Exception:  # noqa: BLE001 - report, keep serving
                reply = R.Result(ok=False, code=req.get("code", ""), error=R.ErrorInfo(
                    R.INTERNAL, traceback.format_exc(limit=3)[-1500:])).to_dict()
            runner.write_frame(fd_out, json.dumps(reply).encode())
        for child in list(self.sessions.values()):
            self._end(child)


# ---------------------------------------------------------------- helpers

def _read_frame(fd: int, limit: int, deadline: float) -> bytes | None:
    """A frame from an untrusted writer, bounded in size and in time (TimeoutError)."""
    buf = b""
    need = runner.HEADER.size
    size = None
    while True:
        while len(buf) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(need - len(buf), 1 << 20))
            if not chunk:
                if not buf:
                    return None
                raise EOFError("truncated frame")
            buf += chunk
        if size is not None:
            return buf[runner.HEADER.size:]
        (size,) = runner.HEADER.unpack(buf)
        if size > limit:
            raise ValueError(f"the code's output exceeded {limit} bytes")
        need = runner.HEADER.size + size


def _printed_images(text: str, scratch: str) -> list[str]:
    """Image paths in printed text, in order. A path under the output directory may contain
    spaces (a sub-folder the model named so); it counts only if that file exists, else the
    words around it are read as usual."""
    spaced = re.compile(rf"{re.escape(scratch)}/[^\n'\"<>|]{{0,{_MAX_PATH_CHARS}}}?"
                        rf"\.(?:{_EXTENSIONS})\b", re.IGNORECASE)
    found, pos = [], 0
    for match in spaced.finditer(text):
        if " " in match.group() and os.path.isfile(match.group()):
            found += _image_words(text[pos:match.start()])
            found.append(match.group())
            pos = match.end()
    return found + _image_words(text[pos:])


def _image_words(text: str) -> list[str]:
    found = []
    for word in _WORD_SEPARATORS.split(text):
        match = _IMAGE_WORD.match(word)
        if match:  # the rest of the word holds no further match: this one is the longest
            found.append(match.group())
    return found


def _reap(pid: int) -> tuple[int, float]:
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return 0, 0.0
    return status, usage.ru_utime + usage.ru_stime


def _death_reason(status: int) -> tuple[str, str]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return R.TIMEOUT, "the code used up its CPU time budget"
        if sig == signal.SIGKILL:
            return R.RUNTIME, "the process was killed (SIGKILL: out of memory, or by itself)"
        return R.RUNTIME, f"the interpreter crashed ({name})"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return R.RUNTIME, f"the code terminated the interpreter (exit status {code}) before finishing"


def _check_image(name: str, data: bytes, max_pixels: int) -> tuple[str, str | None]:
    """(file extension, problem or None) for bytes the code claims are an image."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = max_pixels  # larger headers raise before any decoding
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            ext = {"JPEG": "jpg"}.get(img.format, (img.format or "img").lower())
            img.verify()
    except Image.DecompressionBombError:
        return "", f"{name}: more than {max_pixels} pixels"
    except Exception as exc:  # noqa: BLE001
        return "", f"{name}: not a readable image ({type(exc).__name__})"
    if width * height > max_pixels:
        return ext, f"{name}: {width}x{height} is more than {max_pixels} pixels"
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return ext, f"{name}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}"
    return ext, None


def _store_image(data: bytes, ext: str, results_dir: str) -> str:
    """Write into the caller's results directory, named by content hash, atomically."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    path = os.path.join(results_dir, f"{digest}.{ext}")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def _image_size(path: str) -> tuple[int, int] | None:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - not an image: no crop clamping
        return None


@functools.cache
def _library_paths() -> list[str]:
    """What confined code may read: the interpreter, its libraries, shared objects."""
    paths = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {sysconfig.get_path(k, vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
              for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {os.path.join(sys.base_prefix, "lib"), os.path.realpath(sys.executable)}
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/usr/share/zoneinfo",
              "/etc/ld.so.cache", "/dev/null", "/dev/zero", "/dev/urandom"}
    return sorted(p for p in paths if p and os.path.exists(p))


def _warm_up() -> None:
    """Import and exercise what model code uses, so children pay a fork, not an import."""
    import cv2
    import numpy as np
    import sympy
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps  # noqa: F401

    cv2.setNumThreads(1)
    img = (np.arange(96 * 128 * 3) % 251).astype(np.uint8).reshape(96, 128, 3)
    ok, buf = cv2.imencode(".jpg", img)
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    dec = cv2.resize(dec[10:80, 20:100], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    cv2.createCLAHE(2.0, (8, 8)).apply(cv2.cvtColor(dec, cv2.COLOR_BGR2GRAY))
    cv2.rotate(dec, cv2.ROTATE_90_CLOCKWISE)
    pil = Image.fromarray(img).rotate(33, expand=True).crop((0, 0, 64, 64))
    ImageEnhance.Contrast(pil).enhance(1.5).resize((128, 128), Image.BICUBIC)
    pil.save(io.BytesIO(), format="JPEG")
    pil.save(io.BytesIO(), format="PNG")
    x = sympy.symbols("x")
    sympy.solve(sympy.Eq(x**2 - 2 * x, 3), x)
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    np.linalg.solve(np.eye(3), np.ones(3))
    runner.initial_namespace(None, None, "compat")  # imports what compat children pre-bind


def main() -> None:
    # The pipe to the Sandbox is our stdin/stdout; move it off fds 0/1 so stray prints from
    # libraries cannot corrupt the protocol.
    fd_in, fd_out = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    config = WorkerConfig(**json.loads(runner.read_frame(fd_in, 1 << 20)))
    try:
        worker = Worker(config)
    except confine.ConfinementError as exc:
        runner.write_frame(fd_out, json.dumps({"ready": False, "error": str(exc)}).encode())
        return
    worker.serve(fd_in, fd_out)


if __name__ == "__main__":
    main()
