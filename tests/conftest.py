"""Shared fixtures: real sandboxes (as the current user, and dropped to an unprivileged uid),
and small images."""

from __future__ import annotations

import os

# Workers must be single-threaded to enter namespaces; keep BLAS pools off in this process too.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import container_modes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from sandbox import (  # noqa: E402
    Sandbox,  # noqa: E402
    runner,
    worker,
)

UNPRIVILEGED_UID = 65534  # nobody


def launch_forked_as(uid: int, mode: container_modes.Mode | None = None):
    """A launcher that forks this (already warmed) process and drops to `uid` before the
    worker enters its namespaces: the sandbox then has no privilege to start from. (A fresh
    interpreter would not do here: this machine's Python lives under /root.) `mode`: an
    emulated deployment (a container's seccomp profile, ...) applied before the worker starts."""

    def launch(config: worker.WorkerConfig):
        # A fork keeps the zlib this process has loaded; only a fresh interpreter can preload
        # another (sandbox.deflate).
        config = dataclasses.replace(config, zlib=None)
        parent = os.path.dirname(config.scratch_root)
        for path in (parent, config.scratch_root, os.path.join(parent, "results")):
            if os.path.exists(path):
                os.chown(path, uid, uid)
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.closerange(3, min(to_r, from_w))
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                # setuid() made us non-dumpable, which hides /proc/self from ourselves; a
                # process started by the user directly is dumpable.
                ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
                assert os.getuid() == uid and os.geteuid() == uid
                try:
                    if mode is not None:
                        container_modes.apply(mode)
                    w = worker.Worker(config)
                except Exception as exc:  # noqa: BLE001
                    runner.write_frame(from_w, json.dumps({"ready": False, "error": str(exc)}).encode())
                else:
                    w.serve(to_r, from_w)
            finally:
                os._exit(0)
        os.close(to_r)
        os.close(from_w)
        return pid, to_w, from_r

    return launch


# THYME_TEST_SANDBOX_MODE runs the sandboxes below in an emulated deployment (a container's
# seccomp profile, a kernel without Landlock, ...; tests/container_modes.py), under the weakest
# policy that mode allows: benchmarks/sandbox_matrix.py runs the hostile suite so in each mode.
MODE = container_modes.current()


def _warm_for_forking() -> None:
    worker._library_paths()
    worker.warm_up()  # import everything the worker needs while we can still read it
    worker.warm_up_sympy()
    import socket  # noqa: F401  hostile snippets import these; preload them for the same reason  # noqa: F401
    import subprocess  # noqa: F401

    import pyseccomp  # noqa: F401


@pytest.fixture(scope="session")
def sandbox():
    if MODE.name == "host":
        with Sandbox(workers=2, timeout=10) as sb:
            yield sb
        return
    uid = 0 if "as_root" in MODE.users else UNPRIVILEGED_UID
    _warm_for_forking()
    results = tempfile.mkdtemp(prefix="thyme-mode-results-")
    os.chown(results, uid, uid)
    try:
        with Sandbox(workers=2, timeout=10, results_dir=results, isolation=MODE.policy,
                     launcher=launch_forked_as(uid, MODE)) as sb:
            yield sb
    finally:
        shutil.rmtree(results, ignore_errors=True)


@pytest.fixture(scope="session")
def unprivileged_sandbox():
    if os.getuid() != 0:
        # Already unprivileged: the ordinary sandbox is the unprivileged one.
        with Sandbox(workers=1) as sb:
            yield sb
        return
    _warm_for_forking()
    results = tempfile.mkdtemp(prefix="thyme-unpriv-results-")
    os.chown(results, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    mode = None if MODE.name == "host" else MODE
    try:
        with Sandbox(workers=1, results_dir=results, isolation=MODE.policy,
                     launcher=launch_forked_as(UNPRIVILEGED_UID, mode)) as sb:
            yield sb
    finally:
        shutil.rmtree(results, ignore_errors=True)


@pytest.fixture(params=["as_root", "unprivileged"])
def any_sandbox(request):
    """Both sandboxes: each hostile snippet must fail as root and as an unprivileged user."""
    if request.param == "as_root" and os.getuid() != 0:
        pytest.skip("not running as root")
    if request.param not in MODE.users:
        pytest.skip(f"the {MODE.name} mode runs {', '.join(MODE.users)} only")
    return request.getfixturevalue("sandbox" if request.param == "as_root" else "unprivileged_sandbox")


def make_image(path, width=640, height=480, seed=0) -> str:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    rng.integers(0, 255, (height, width))], -1).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)
    os.chmod(path, 0o644)
    return str(path)


@pytest.fixture(scope="session")
def image_dir():
    d = tempfile.mkdtemp(prefix="thyme-test-images-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_image(image_dir) -> str:
    """A 640x480 JPEG readable by any user."""
    return make_image(os.path.join(image_dir, "sample.jpg"))


@pytest.fixture
def searches(monkeypatch):
    """How many full searches the audit's `locate` ran (each walks the zoom grid once): the
    code-hint tests count them to see a confirmed hint spare the search."""
    from pipelines.samples.audit import locate as locate_module

    calls = []
    grid = locate_module._zoom_grid
    monkeypatch.setattr(locate_module, "_zoom_grid", lambda *a: calls.append(a) or grid(*a))
    return calls
