"""A sandbox worker: a pre-warmed fork server, one per core.

Started once (`sandbox.worker.main`), it enters its own user/mount/network namespaces,
mounts a size-capped tmpfs for scratch, imports and exercises cv2, numpy and PIL, forks its
"lean" zygote, does the same for sympy, forks its "sympy" zygote, then serves requests from the
`Sandbox` over a pipe. Each trajectory gets a child, forked by one of the zygotes
(sandbox.fork_server: the sympy one when the code names sympy), that confines itself
(sandbox.confine) before any model code runs; a one-shot job is a one-block trajectory.
The worker enforces wall time from outside, collects outputs itself (regular files inside the
child's scratch only), has images decoded by a confined checker child, and cleans up. It trusts
nothing a child says (sandbox.replies), and after every request it checks that it can still
serve: a worker with a zygote gone or whose scratch could not be freed retires, and the
`Sandbox` starts a fresh one.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass

from sandbox import call_files, confine, deflate, outputs, policy, replies, runner
from sandbox import result as R
from sandbox.fork_server import ZYGOTES, Child, ForkServer, Unfit, ZygoteLost, _exited
from sandbox.protocol import VIRTUAL_OUTPUT_DIR
from sandbox.repair import RepairContext, output_subfolders, repair
from sandbox.warm import library_paths as _library_paths
from sandbox.warm import needs_sympy, warm_up, warm_up_sympy

# What the probe job prints: a worker that cannot run it is replaced.
PROBE_CODE, PROBE_OUTPUT = "print('probe', 6 * 7)", "probe 42\n"


@dataclass
class WorkerConfig:
    scratch_root: str                 # directory on which the worker mounts its tmpfs
    scratch_mb: int = 256             # disk budget of the tmpfs (all of this worker's children)
    scratch_inodes: int = 16384       # files and folders in it (empty ones cost no blocks)
    memory_mb: int = 1024
    file_mb: int = 32
    cpu_s: int = 120                  # CPU budget over a child's life (sessions), a backstop
    open_files: int = 64
    stdout_limit: int = 64_000
    max_code_chars: int = 200_000     # longer code is refused before the worker parses it
    max_output_mb: int = 32           # bytes of images one call may add to the results dir
    max_image_pixels: int = 50_000_000   # produced images beyond this are refused
    max_images: int = 16              # images one call may produce
    image_check_s: float = 10.0       # time to decode one call's images
    checker_reuse: int = 64           # images one checker decodes before a fresh one takes over
    zygote_timeout_s: float = 10.0    # a zygote silent this long is declared hung
    isolation: str = "strict"         # the isolation policy (sandbox.policy): what must be active
    namespace: str = "compat"         # pre-bound names: "compat" (the original's) or "strict"
    zlib: str | None = None           # a libz.so.1 build preloaded in place of the system's (sandbox.deflate)
    png_level: int | None = deflate.PNG_LEVEL  # PIL's PNG level when the code names none (None: zlib's)


class Worker(ForkServer):
    def __init__(self, config: WorkerConfig):
        self.cfg = config
        self.limits = confine.Limits(memory_mb=config.memory_mb, cpu_s=config.cpu_s,
                                     file_mb=config.file_mb, open_files=config.open_files)
        self.missing: dict[str, str] = {}  # mechanism -> why it is unavailable here
        self.sessions: dict[str, Child] = {}
        self.restarted: set[str] = set()  # sessions whose child was killed mid-block
        # each open session's files ({path: base64}), kept to start a fresh interpreter with
        self.session_files: dict[str, dict] = {}
        self.counter = 0
        self.zygotes = {}
        self.lost: str | None = None      # why a zygote can no longer be used
        self.cleanup_problem: str | None = None
        self.suspect = False              # the last request stopped a child abnormally
        self.checker: Child | None = None  # decodes produced images (see _check_images)
        self.checked = 0                   # images the current checker has decoded
        self._setup()

    # ------------------------------------------------------------ start-up
    def _setup(self) -> None:
        try:
            confine.enter_namespaces(self.cfg.scratch_root, self.cfg.scratch_mb,
                                     self.cfg.scratch_inodes)
        except confine.ConfinementError as exc:
            self.missing["namespaces"] = f"user/mount/network namespaces unavailable: {exc}"
        self.landlock_abi = confine.landlock_abi()
        if self.landlock_abi < 1:
            self.missing["landlock"] = "Landlock is not enabled in this kernel"
        problem = confine.seccomp_unavailable_reason()
        self.seccomp = problem is None
        if problem:
            self.missing["seccomp"] = f"seccomp (pyseccomp + libseccomp.so.2) is unavailable: {problem}"
        refusal = policy.refusal(self.cfg.isolation, self.missing)
        if refusal:
            raise confine.ConfinementError(refusal)
        self.degraded = [m for m in policy.MECHANISMS if m in self.missing]
        self.zlib = deflate.check_loaded(self.cfg.zlib)
        deflate.set_png_level(self.cfg.png_level)
        self.read_only = _library_paths()
        # Compiled once; per child only when signals cannot be scoped by Landlock.
        self.seccomp_per_child = self.seccomp and self.landlock_abi < 6
        self.seccomp_bpf = confine.seccomp_program() if self.seccomp else b""
        self.huge_pages_bytes = 0
        for name, warm in zip(ZYGOTES, (warm_up, warm_up_sympy), strict=True):
            warm()
            # Keep the warmed heap out of the collector so children do not copy it page by page.
            gc.freeze()
            self.huge_pages_bytes += confine.collapse_heap_to_huge_pages()
            # A child may allocate memory_mb beyond its zygote's size.
            self.baseline_vm = confine.address_space_bytes()
            self._start_zygote(name)

    def isolation(self) -> dict:
        """What confines this worker's children: the policy, the active mechanisms, and the
        missing ones with the reason for each."""
        return {"policy": self.cfg.isolation,
                "active": [m for m in policy.MECHANISMS if m not in self.missing],
                "missing": dict(self.missing), "landlock_abi": self.landlock_abi}

    # ------------------------------------------------------------ health
    def health(self) -> str | None:
        """Why this worker can no longer serve (it then retires), or None. Cheap enough to run
        after every request."""
        for zygote in self.zygotes.values():
            if self.lost is not None:
                break
            try:
                gone = os.waitpid(zygote.pid, os.WNOHANG)[0] != 0
            except ChildProcessError:
                gone = True
            if gone:
                self.lost = f"the {zygote.name} zygote died"
        if self.lost or self.cleanup_problem:
            return self.lost or self.cleanup_problem
        if not self.sessions and os.listdir(self.cfg.scratch_root):
            return "the scratch space was not freed"  # every child's folder is gone by now
        return None

    def probe(self) -> dict:
        """Run the probe job in a fresh child, then `health`: what the `Sandbox` asks for after
        a request that stopped a child abnormally."""
        try:
            child = self._spawn([])
        except OSError as exc:
            return {"ok": False, "problem": f"cannot make a scratch directory ({exc.strerror})"}
        try:
            out = self._run_block(child, PROBE_CODE, self.cfg.zygote_timeout_s, None)
        finally:
            self._end(child)
        problem = self.health()
        if not out["ok"] or out["stdout"] != PROBE_OUTPUT:
            problem = f"the probe job failed: {out['error']}"
        return {"ok": problem is None, "problem": problem}

    # ------------------------------------------------------------ requests
    def handle(self, req: dict) -> dict:
        op = req["op"]
        if op == "run":
            return self.run(req)
        if op == "probe":
            return self.probe()
        if op == "close":
            self._end(self.sessions.pop(req["session"], None))
            self.restarted.discard(req["session"])
            self.session_files.pop(req["session"], None)
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    def run(self, req: dict) -> dict:
        t0 = time.perf_counter()
        problem = self.health()  # (the zygote may have died since the last request)
        if problem:
            raise Unfit(problem)
        sid = req.get("session")
        inputs = [os.path.abspath(p) for p in req.get("inputs", [])]
        child = self.sessions.get(sid) if sid else None
        notes: list[str] = []
        if child is not None and _exited(child):
            # Killed between blocks (from outside: its own code was stopped).
            status, _ = self._kill_and_reap(child)
            if self.lost:
                raise ZygoteLost(self.lost)
            self._end(self.sessions.pop(sid))
            child = None
            notes.append("session state was lost: its interpreter ended between blocks "
                         f"({replies.death_reason(status)[1]}); this block ran in a fresh one")
        if sid and req.get("files"):
            self.session_files[sid] = req["files"]
        if child is None:
            if sid and req.get("session_files") and sid not in self.session_files:
                return {"need_files": True}  # the Sandbox sends them with this request again
            files = self.session_files.get(sid, {}) if sid else req.get("files") or {}
            try:
                child = self._spawn(inputs, files=call_files.decode(files),
                                    zygote="sympy" if needs_sympy(req["code"]) else "lean")
            except OSError as exc:  # the scratch tmpfs is full (of open sessions' files)
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                return R.Result(ok=False, code=req["code"], error=R.ErrorInfo(
                    R.OUTPUT_LIMIT, f"no scratch space left on this worker ({exc.strerror}): "
                                    "its open sessions hold it"), notes=notes).to_dict()
            if sid:
                if sid in self.restarted:
                    notes.append("session state was lost (its previous call was stopped); "
                                 "this block ran in a fresh interpreter")
                self.sessions[sid] = child
        try:
            out = self._run_block(child, req["code"], float(req["timeout"]), req["results_dir"],
                                  req.get("stdin"), req.get("repairs", True))
            if req.get("fetch_files"):
                self._fetch(child, bool(sid), req["fetch_files"], out)
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

    def _fetch(self, child: Child, session: bool, paths: list[str], out: dict) -> None:
        """Read `paths` back into `out` once nothing can change the child's folder: a one-shot
        child is killed first, a session's frozen (and seen stopped) so its variables live on."""
        if child.pid > 0 and not session:
            self._kill_and_reap(child)
        elif child.pid > 0 and not self._freeze(child):
            why = "not read (the session's interpreter could not be seen stopped)"
            out["fetched"], out["unfetched"] = {}, {path: why for path in paths}
            return
        out["fetched"], out["unfetched"] = call_files.fetch(child.scratch, paths)

    # ------------------------------------------------------------ one code block
    def _run_block(self, child: Child, code: str, timeout: float, results_dir: str | None,
                   stdin: str | None = None, repairs: bool = True) -> dict:
        base = {"code": code, "repairs": [], "notes": [], "degraded": tuple(self.degraded)}
        problem = replies.unfit_code(code, self.cfg.max_code_chars)
        if problem:
            return self._finish(child, base, error=(R.SYNTAX, problem))
        ctx = RepairContext(inputs=child.inputs, image_size=child.image_size,
                            output_dir=child.scratch,
                            is_known_file=lambda p: p.startswith(child.scratch + "/")
                            and os.path.isfile(p))
        try:
            if repairs:
                base["code"], base["repairs"] = repair(code, ctx)
        except RecursionError:
            return self._finish(child, base, error=(R.SYNTAX, "the code is nested too deeply to parse"))
        except Exception as exc:  # noqa: BLE001 - a repair tripping on odd code must not fail it
            base["notes"].append(f"automatic repairs were skipped ({type(exc).__name__})")
        try:
            compile(base["code"], "<code>", "exec")
        except SyntaxError as exc:
            return self._finish(child, base, error=(R.SYNTAX, runner.classify(exc)[1]))
        except (RecursionError, MemoryError):
            return self._finish(child, base, error=(R.SYNTAX, "the code is nested too deeply to compile"))
        except ValueError as exc:
            return self._finish(child, base, error=(R.SYNTAX, f"{type(exc).__name__}: {exc}"))
        problem = self._confirm(child)
        if problem:
            self._kill_and_reap(child)
            self.suspect = True
            return self._finish(child, base, error=(R.INTERNAL, problem))
        # Whatever an earlier block left in the reply pipe is not this block's reply; the child
        # is stopped, so nothing more arrives before it is resumed.
        replies.drain(child.from_child)
        self._signal(child, signal.SIGCONT)
        nonce = os.urandom(8).hex()
        deadline = time.monotonic() + timeout
        # UTF-8 text, JSON-escaped: at most 6 bytes per printed character, plus the envelope
        frame_limit = 6 * self.cfg.stdout_limit + 65536
        try:
            request = {"code": base["code"], "nonce": nonce, "stdin": stdin,
                       "make_dirs": output_subfolders(base["code"], child.scratch)}
            replies.write_frame(child.to_child, json.dumps(request).encode(), deadline)
            frame = replies.read_frame(child.from_child, frame_limit, deadline)
        except TimeoutError:
            _, cpu = self._stop_abnormally(child)
            return self._finish(child, base, cpu_s=cpu,
                                error=(R.TIMEOUT, f"the code ran longer than {timeout:g} s and was stopped"))
        except ValueError as exc:
            self._stop_abnormally(child)
            return self._finish(child, base, error=(R.OUTPUT_LIMIT, str(exc)))
        except (EOFError, OSError):
            frame = None
        if frame is None:  # the reply pipe closed: the child is dying, or closed it itself
            exited = bool(select.select([child.pidfd], [], [], 1.0)[0])
            status, cpu = self._stop_abnormally(child)
            if self.lost:
                return self._finish(child, base, error=(
                    R.INTERNAL, "the sandbox's process server died during this call; the "
                                "worker is being replaced (the code may be fine)"))
            error = replies.death_reason(status) if exited else (
                R.RUNTIME, "the code closed the sandbox's reply pipe; its interpreter was stopped")
            return self._finish(child, base, cpu_s=cpu, error=error)
        reply = replies.parse_reply(frame, nonce)
        if isinstance(reply, str):
            self._stop_abnormally(child)
            return self._finish(child, base, error=(
                R.RUNTIME, f"the code wrote into the sandbox's reply pipe ({reply}); its "
                           "interpreter was stopped"))
        return self._finish(child, base, stdout=reply["stdout"], error=reply["error"],
                            processed=reply["processed_path"], results_dir=results_dir,
                            cpu_s=reply["cpu_s"])

    def _stop_abnormally(self, child: Child) -> tuple[int | None, float]:
        self.suspect = True  # the Sandbox probes this worker before giving it another call
        return self._kill_and_reap(child)

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
        """Hide host paths: scratch shows as the virtual directory, inputs by file name, the
        worker's own scratch root as <scratch>."""
        if child.scratch:
            text = text.replace(child.scratch, VIRTUAL_OUTPUT_DIR)
        for path in child.inputs:
            text = text.replace(path, os.path.basename(path))
        return text.replace(self.cfg.scratch_root, "<scratch>")

    # ------------------------------------------------------------ produced images
    def _collect_images(self, child: Child, processed: str | None, stdout: str,
                        results_dir: str) -> tuple[list[str], tuple | None]:
        """The call's images: all found, read, decoded and within the per-call caps before the
        first is stored, so a failing call leaves nothing in the results directory."""
        files, error = outputs.gather_images(child.scratch, processed, stdout, self.cfg.max_images,
                                             self.cfg.max_output_mb << 20)
        if error:
            return [], error
        if not files:
            return [], None
        exts, error = self._check_images(files)
        if error:
            return [], error
        return [outputs.store_image(data, ext, results_dir)
                for (_, data), ext in zip(files, exts, strict=True)], None

    def _check_images(self, files: list[tuple[str, bytes]]) -> tuple[list[str], tuple | None]:
        """Decode each image completely in a confined checker child: (extensions, None) or
        ([], error). A checker serves `checker_reuse` images, then a fresh one takes over (a
        fork per call would cost about a third of an image call); one that refused an image or
        failed is never reused."""
        if self.checker is not None and (self.checked >= self.cfg.checker_reuse
                                         or _exited(self.checker)):
            self._end(self.checker)
            self.checker = None
        if self.checker is None:
            try:
                self.checker, self.checked = self._spawn([], role="checker"), 0
            except ZygoteLost:
                return [], (R.INTERNAL, "the sandbox could not start its image checker; the "
                                        "worker is being replaced (the code may be fine)")
        problem = self._confirm(self.checker)
        if problem:
            self.suspect = True
            self._end(self.checker)
            self.checker = None
            return [], (R.INTERNAL, problem)
        exts, error = outputs.ask_checker(self.checker.to_child, self.checker.from_child, files,
                                          self.cfg.image_check_s)
        self.checked += len(files)
        if error:
            self._end(self.checker)
            self.checker = None
        return exts, error

    # ------------------------------------------------------------ serve
    def serve(self, fd_in: int, fd_out: int) -> None:
        hello = {"ready": True, "pid": os.getpid(), "degraded": self.degraded,
                 "isolation": self.isolation(), "landlock_abi": self.landlock_abi, "huge_pages_bytes": self.huge_pages_bytes,
                 "zygote_pid": self.zygotes["lean"].pid,
                 "zygote_pids": {name: z.pid for name, z in self.zygotes.items()}, "zlib": self.zlib}
        runner.write_frame(fd_out, json.dumps(hello).encode())
        while True:
            frame = runner.read_frame(fd_in, 1 << 26)
            if frame is None:
                break
            req = json.loads(frame)
            if req.get("op") == "shutdown":
                break
            self.suspect = False
            try:
                reply = self.handle(req)
            except Unfit:  # before the code ran: the Sandbox retries it on a fresh worker
                reply = {"ran": False}
            except Exception as exc:  # noqa: BLE001 - report, get checked, keep serving
                traceback.print_exc(file=sys.stderr)  # for the operator, never into a result
                self.suspect = True
                reply = R.Result(ok=False, code=req.get("code", ""), error=R.ErrorInfo(
                    R.INTERNAL, f"the sandbox worker failed ({type(exc).__name__}); it is being "
                                "checked (the code may be fine)")).to_dict()
            problem = self.health()
            if problem:
                reply["retire"] = problem
            elif self.suspect:
                reply["check"] = True
            runner.write_frame(fd_out, json.dumps(reply).encode())
            if problem:
                break  # the Sandbox starts a fresh worker
        for child in [*self.sessions.values(), self.checker]:
            self._end(child)


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
    except RuntimeError as exc:  # confine.ConfinementError, or a zlib not loaded (sandbox.deflate)
        runner.write_frame(fd_out, json.dumps({"ready": False, "error": str(exc)}).encode())
        return
    worker.serve(fd_in, fd_out)


if __name__ == "__main__":
    main()
