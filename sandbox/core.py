"""The caller's side: `Sandbox`, `Session`, `Job`.

    with Sandbox() as sb:                                  # one pre-warmed worker per core
        r = sb.run(code, inputs=["/abs/img.jpg"], timeout=10.0)
        with sb.session(inputs=[...]) as s:                # one trajectory: variables persist
            r1 = s.run(code1); r2 = s.run(code2)
        results = sb.map(jobs)                             # all workers busy, results in order

Thread-safe: any number of threads may call `run` and sessions at once; each worker serves one
call at a time. A worker that dies or hangs is replaced and its call returns an `internal` error.
The health rule: a worker that reports it can no longer serve (its zygote died or hung, its
scratch could not be freed) is replaced at once, and a call it could not start is retried on the
fresh worker; after a call that stopped a child abnormally (timeout, crash, limit, a broken
reply) the worker must pass a probe job before it gets another call, or it is replaced. Only
that worker's sessions lose their state.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from sandbox import call_files, deflate, policy, runner
from sandbox import result as R
from sandbox.replies import read_frame
from sandbox.result import Result
from sandbox.worker import WorkerConfig

# Seconds a worker may take beyond a call's own timeout (fork, repairs, collecting images)
# before it is declared hung and replaced.
WORKER_GRACE_S = 30.0
PROBE_TIMEOUT_S = 30.0
log = logging.getLogger("sandbox")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SandboxUnavailable(RuntimeError):
    """A required isolation mechanism is missing on this host (the message names it)."""


@dataclass
class Job:
    code: str
    inputs: Sequence[str] = ()
    timeout: float | None = None


# A launcher starts one worker process and returns (pid, fd to write, fd to read).
Launcher = Callable[[WorkerConfig], tuple[int, int, int]]


# Every child is a fresh process, so each buffer a snippet allocates (a decoded image, its
# crops and resizes) is new memory faulted in 4 KB at a time; in a VM a fault costs microseconds,
# and a child decoding a 4 MP JPEG took ~3,400 of them. With this glibc (2.35+) asks the kernel
# for transparent huge pages for malloc's memory: one fault per 2 MB, and the funnel's children
# use 5-8 % less CPU (docs/benchmarks.md). Ignored by an older glibc or a kernel with THP off.
MALLOC_TUNABLES = "glibc.malloc.hugetlb=1"


def worker_environment(zlib: str | None) -> dict[str, str]:
    """What a worker's interpreter starts with, besides PATH and PYTHONPATH: single-threaded
    numerics, malloc's huge pages, and `zlib` preloaded (sandbox.deflate; the worker checks that
    it loaded)."""
    env = {"LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "GLIBC_TUNABLES": MALLOC_TUNABLES}
    if zlib:
        env["LD_PRELOAD"] = zlib
    return env


def launch_subprocess(config: WorkerConfig, prelude: str = "") -> tuple[int, int, int]:
    """Start a worker as a fresh interpreter with a minimal environment (`prelude`: Python run
    before the worker starts, e.g. a test that simulates a host without Landlock)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": _PACKAGE_PARENT, **worker_environment(config.zlib)}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # host-specific BLAS workarounds
        if key in os.environ:
            env[key] = os.environ[key]
    code = f"{prelude}\nfrom sandbox.worker import main\nmain()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, cwd=config.scratch_root,
                            close_fds=True)
    fd_to, fd_from = os.dup(proc.stdin.fileno()), os.dup(proc.stdout.fileno())
    proc.stdin.close()
    proc.stdout.close()
    proc.returncode = 0  # we reap it ourselves (waitpid); keep Popen from warning
    runner.write_frame(fd_to, json.dumps(asdict(config)).encode())
    return proc.pid, fd_to, fd_from


class _WorkerHandle:
    def __init__(self, config: WorkerConfig, launcher: Launcher):
        self.config, self.launcher = config, launcher
        self.lock = threading.Lock()
        self.generation = 0
        self.pid = -1
        self.info: dict = {}
        self.open_sessions = 0    # sessions placed here and not yet closed (Sandbox._sessions_lock)

    def start(self) -> None:
        self.pid, self.fd_to, self.fd_from = self.launcher(self.config)
        self.generation += 1

    def wait_ready(self, timeout: float = 120.0) -> dict:
        try:
            frame = read_frame(self.fd_from, 1 << 20, time.monotonic() + timeout)
        except TimeoutError:
            frame = None
        self.info = json.loads(frame) if frame else {"ready": False, "error": "worker did not start"}
        return self.info

    def request(self, message: dict, timeout: float) -> dict | None:
        """Send a request and wait for its reply; None if the worker died or hung (it is then
        replaced)."""
        try:
            runner.write_frame(self.fd_to, json.dumps(message).encode())
            frame = read_frame(self.fd_from, 1 << 26, time.monotonic() + timeout)
        except (OSError, EOFError, TimeoutError, ValueError):
            frame = None
        if frame is None:
            self.restart()
            return None
        return json.loads(frame)

    def call(self, message: dict, timeout: float) -> tuple[dict | None, list[str], int, float]:
        """`request` under the health rule: (reply, notes on any replacement, the generation of
        the worker that served it, when its reply came). A worker that retires is replaced,
        and a call it had not started goes to the fresh one; a worker flagged for a check must
        pass the probe job or it is replaced."""
        notes = []
        reply = self.request(message, timeout)
        if reply is not None and reply.get("ran") is False:
            notes.append(f"the sandbox worker was replaced before this call ran "
                         f"({reply.get('retire')})")
            self.restart()
            reply = self.request(message, timeout)
            if reply is not None and reply.get("ran") is False:  # a fresh one could not either
                self.restart()
                reply = None
        served_by, replied = self.generation, time.perf_counter()
        if reply is None:  # (`request` has replaced a worker that died or hung)
            return None, notes, served_by, replied
        retire, check = reply.pop("retire", None), reply.pop("check", False)
        if retire is None and check:
            probe = self.request({"op": "probe"}, PROBE_TIMEOUT_S)
            if probe is None:
                notes.append("the sandbox worker was replaced after this call (it died or hung "
                             "in its probe job)")
            elif not probe.get("ok"):
                retire = f"it failed its probe job: {probe.get('problem')}"
        if retire is not None:
            notes.append(f"the sandbox worker was replaced after this call ({retire})")
            self.restart()
        return reply, notes, served_by, replied

    def restart(self) -> None:
        self.stop(force=True)
        self._fresh_scratch()
        self.start()
        self.wait_ready()

    def _fresh_scratch(self) -> None:
        """Give the replacement an empty scratch directory. With namespaces the old worker's
        files vanished with its tmpfs; without them (a weaker isolation policy) they are still on
        the host's disk, and a worker finding them would retire at once, and so would every
        replacement after it. They are moved aside and removed in the background (a flood of
        files can take minutes to remove), so the fresh worker serves at once."""
        scratch = self.config.scratch_root
        try:
            if not os.listdir(scratch):
                return
            trash = f"{scratch}.old{self.generation}"
            os.rename(scratch, trash)
            os.mkdir(scratch, 0o700)
        except OSError:
            return  # (the new worker's health check reports a scratch it cannot use)
        threading.Thread(target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True},
                         daemon=True, name="thyme-scratch-cleanup").start()

    def stop(self, force: bool = False) -> None:
        if self.pid <= 0:
            return
        if not force:
            try:
                runner.write_frame(self.fd_to, json.dumps({"op": "shutdown"}).encode())
            except OSError:
                force = True
        for fd in (self.fd_to, self.fd_from):
            try:
                os.close(fd)
            except OSError:
                pass
        deadline = time.monotonic() + (0 if force else 5)
        while True:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
        self.pid = -1


class Sandbox:
    """A pool of pre-warmed, confined workers that run model-written Python.

    Args:
        workers: number of worker processes; None means one per available core.
        timeout: default wall-clock limit of one call, seconds (THYME.md: 10 s).
        memory_mb: memory a call may allocate beyond the warmed interpreter.
        file_mb: largest file a call may write.
        scratch_mb: disk budget of a worker's scratch tmpfs (shared by its open sessions).
        stdout_limit: characters of printed output kept; printing more is an `output_limit` error.
        results_dir: where produced images are moved; None means a temporary directory that
            is removed by `close()` (pass one to keep the images).
        isolation: the isolation policy (`sandbox.policy`): "strict" (every mechanism), or a
            named minimum such as "landlock+seccomp+rlimits" below which the sandbox refuses to
            start (`SandboxUnavailable`, naming what is missing). None: the environment's
            THYME_SANDBOX_ISOLATION, else "strict". Every result lists missing mechanisms in
            `degraded`; `isolation_report` says what is active.
        allow_degraded: an alias of isolation="rlimits" (run with whatever the host offers).
        namespace: "compat" (default) pre-binds what the original Thyme sandbox did (`cv2`,
            `np`/`numpy`, `os`, `math`, `Image`, `json`, `re`, `random`, `string`,
            `temp_output_dir`, ...), as released checkpoints expect; "strict" binds only
            `image_path`, so code must import what it uses.
        zlib: the zlib the workers load (`sandbox.deflate`): "system", or the path of a libz.so.1
            build (zlib-ng in compat mode deflates PNGs ~2x faster); None: $THYME_SANDBOX_ZLIB,
            else the zlib-ng that `scripts/zlib_ng.sh` built into this environment, else the
            system's. `Sandbox.zlib` is the version the workers use (e.g. "1.3.1.zlib-ng").
        png_level: the zlib level PIL writes a PNG at when the code names no `compress_level`
            (`sandbox.deflate`): 4 by default (40 % less time than zlib's 6, files 3 % larger;
            the pixels are the same); None keeps zlib's default.
    """

    def __init__(self, workers: int | None = None, *, timeout: float = 10.0, memory_mb: int = 1024,
                 file_mb: int = 32, scratch_mb: int = 256, stdout_limit: int = 64_000,
                 results_dir: str | os.PathLike | None = None, isolation: str | None = None,
                 allow_degraded: bool = False, namespace: str = "compat", zlib: str | None = None,
                 png_level: int | None = deflate.PNG_LEVEL, launcher: Launcher = launch_subprocess):
        if namespace not in runner.NAMESPACES:
            raise ValueError(f"namespace must be one of {runner.NAMESPACES}, not {namespace!r}")
        zlib_library = deflate.resolve(zlib)
        deflate.check_png_level(png_level)
        self.timeout, self.namespace, self.png_level = timeout, namespace, png_level
        self.policy = policy.resolve(isolation, allow_degraded)
        self._root = tempfile.mkdtemp(prefix="thyme-sandbox-")
        self._own_results = results_dir is None
        self.results_dir = os.path.abspath(results_dir or os.path.join(self._root, "results"))
        os.makedirs(self.results_dir, exist_ok=True)
        count = workers or len(os.sched_getaffinity(0))
        self._handles: list[_WorkerHandle] = []
        for i in range(count):
            scratch = os.path.join(self._root, f"w{i}")
            os.mkdir(scratch, 0o700)
            config = WorkerConfig(scratch_root=scratch, scratch_mb=scratch_mb, memory_mb=memory_mb,
                                  file_mb=file_mb, stdout_limit=stdout_limit,
                                  isolation=self.policy, namespace=namespace, zlib=zlib_library,
                                  png_level=png_level)
            self._handles.append(_WorkerHandle(config, launcher))
        self._idle: queue.Queue[_WorkerHandle] = queue.Queue()
        self._next_session = itertools.count()
        self._sessions_lock = threading.Lock()
        try:
            for h in self._handles:
                h.start()
            for h in self._handles:
                info = h.wait_ready()
                if not info.get("ready"):
                    raise SandboxUnavailable(f"sandbox worker could not start: {info.get('error')}")
                self._idle.put(h)
        except BaseException:
            self.close()
            raise
        self.degraded = tuple(self._handles[0].info.get("degraded", ()))
        # What confines the children: {"policy", "active", "missing": {name: why}, "landlock_abi"}.
        # Runs record it (run metadata, rollout metrics, evaluation reports).
        self.isolation_report: dict = self._handles[0].info["isolation"]
        (log.warning if self.degraded else log.info)(policy.summary(self.isolation_report))
        # the version of the zlib the code's PNGs are written with (sandbox.deflate)
        zlib_in_use = self._handles[0].info["zlib"]
        self.zlib: str = zlib_in_use["version"]
        log.info("sandbox workers use zlib %s (%s)", self.zlib, zlib_in_use["library"])

    # ------------------------------------------------------------ public API
    def run(self, code: str, inputs: Sequence[str | os.PathLike] = (),
            timeout: float | None = None, *, stdin: str | None = None, repairs: bool = True,
            results_dir: str | os.PathLike | None = None, files: Mapping[str, bytes] | None = None,
            fetch_files: Sequence[str] = ()) -> Result:
        """Run one independent code block in a fresh confined process. `stdin`: what the code
        reads from `sys.stdin` (default: nothing); `repairs=False` runs the code as written
        (no Thyme auto-corrections: for generic code, e.g. a test-case harness); `results_dir`:
        where this call's images go (default: the sandbox's). `files`: {relative path: bytes}
        written into the folder the code runs in before it runs; `fetch_files`: relative paths
        read back after it ran, into `Result.fetched` (base64) or `Result.unfetched` (why not;
        sandbox.call_files). A path or limit it refuses raises `call_files.FileRequestError`."""
        extra = call_files.to_json(files, fetch_files)
        handle = self._idle.get()
        try:
            return self._call(handle, code, inputs, timeout, session=None, stdin=stdin,
                              repairs=repairs, results_dir=results_dir, extra=extra)[0]
        finally:
            self._idle.put(handle)

    def session(self, inputs: Sequence[str | os.PathLike] = (), timeout: float | None = None,
                *, files: Mapping[str, bytes] | None = None) -> Session:
        """A trajectory: code blocks run in one process, so variables persist between them.
        `files`: {relative path: bytes} in the folder the code runs in from its first block
        (written before its interpreter exists, and again into a fresh one if the session's
        state is lost); a path or limit it refuses raises `call_files.FileRequestError`.
        It goes to the worker with the fewest open sessions (ties in turn): plain turns would
        put two concurrent sessions on one worker whenever sessions differ in length, and that
        worker would serve both one call at a time while another stood idle."""
        encoded = call_files.to_json(files, ()).get("files", {})  # (refused before it is placed)
        with self._sessions_lock:
            start = next(self._next_session)
            n = len(self._handles)
            handle = min((self._handles[(start + i) % n] for i in range(n)),
                         key=lambda h: h.open_sessions)
            handle.open_sessions += 1
        return Session(self, handle, [os.fspath(p) for p in inputs], timeout, encoded)

    def map(self, jobs: Iterable[Job | dict], progress: bool = False) -> list[Result]:
        """Run independent jobs on all workers; results in job order."""
        jobs = [j if isinstance(j, Job) else Job(**j) for j in jobs]
        with ThreadPoolExecutor(len(self._handles)) as pool:
            results = pool.map(lambda j: self.run(j.code, j.inputs, j.timeout), jobs)
            if progress:
                from tqdm import tqdm
                results = tqdm(results, total=len(jobs), desc="sandbox", unit="job")
            return list(results)

    def close(self) -> None:
        for h in self._handles:
            h.stop()
        self._handles = []
        if self._own_results:
            shutil.rmtree(self._root, ignore_errors=True)
        else:
            for entry in os.listdir(self._root):
                shutil.rmtree(os.path.join(self._root, entry), ignore_errors=True)
            os.rmdir(self._root)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def workers(self) -> int:
        return len(self._handles)

    # ------------------------------------------------------------ internals
    def _call(self, handle: _WorkerHandle, code: str, inputs, timeout, session: str | None,
              stdin: str | None = None, repairs: bool = True,
              results_dir: str | os.PathLike | None = None,
              extra: dict | None = None,
              session_files: dict[str, str] | None = None) -> tuple[Result, int]:
        """The result, and the generation of the worker that ran the code (`extra`: more
        fields of the worker's request; `session_files`: a session's files, {path: base64},
        sent only when the worker asks for them: when it starts the session's interpreter and
        has not kept them, i.e. its first block on this worker)."""
        timeout = self.timeout if timeout is None else float(timeout)
        paths = [os.path.abspath(os.fspath(p)) for p in inputs]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"sandbox input not found: {path}")
        out_dir = self.results_dir if results_dir is None else os.path.abspath(results_dir)
        message = {"op": "run", "code": code, "inputs": paths, "timeout": timeout,
                   "session": session, "results_dir": out_dir, "stdin": stdin,
                   "repairs": repairs, "session_files": bool(session_files), **(extra or {})}
        t0 = time.perf_counter()
        with handle.lock:
            reply, notes, served_by, replied = handle.call(message, timeout + WORKER_GRACE_S)
            if reply is not None and reply.get("need_files"):
                reply, more, served_by, replied = handle.call(
                    {**message, "files": session_files}, timeout + WORKER_GRACE_S)
                notes += more
                if reply is not None and reply.get("need_files"):
                    raise RuntimeError("the sandbox worker asked again for files it was sent")
        if reply is None:
            return Result(ok=False, code=code, wall_s=replied - t0, notes=notes,
                          error=R.ErrorInfo(R.INTERNAL, "the sandbox worker died or hung; it was "
                                            "replaced"), degraded=self.degraded), served_by
        result = Result.from_dict(reply)
        result.notes += notes
        result.wall_s = replied - t0  # the call's own time: a probe or restart after it is not
        return result, served_by


class Session:
    """One trajectory's interpreter, kept alive across `run` calls (see `Sandbox.session`)."""

    def __init__(self, sandbox: Sandbox, handle: _WorkerHandle, inputs: list[str],
                 timeout: float | None, files: dict[str, str] | None = None):
        self.sandbox, self.handle, self.inputs, self.timeout = sandbox, handle, inputs, timeout
        # {path: base64}, encoded once; a worker asks for them when it starts the interpreter
        self._files = files or {}
        self.id = uuid.uuid4().hex
        self._generation = None
        self._closed = False

    def run(self, code: str, timeout: float | None = None, *,
            results_dir: str | os.PathLike | None = None,
            fetch_files: Sequence[str] = ()) -> Result:
        """One block. `fetch_files`: relative paths read back after it, with the interpreter
        frozen (sandbox.call_files), into `Result.fetched` / `Result.unfetched`."""
        fetch_files = list(fetch_files)
        call_files.check_request({}, fetch_files)
        result, generation = self.sandbox._call(self.handle, code, self.inputs,
                                                self.timeout if timeout is None else timeout,
                                                session=self.id, results_dir=results_dir,
                                                extra={"fetch_files": fetch_files},
                                                session_files=self._files)
        if self._generation not in (None, generation):
            result.notes.append("session state was lost (its worker was replaced); this block "
                                "ran in a fresh interpreter")
        self._generation = generation
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self.sandbox._sessions_lock:
            self.handle.open_sessions -= 1
        if self.handle.pid > 0:
            with self.handle.lock:
                self.handle.call({"op": "close", "session": self.id}, WORKER_GRACE_S)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
