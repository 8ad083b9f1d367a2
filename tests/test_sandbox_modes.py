"""The isolation policy, and the sandbox in emulated deployments (tests/container_modes.py):
each mode starts only under the policy docs/sandbox.md names for it, reports the mechanisms
the docs list, and contains exactly the representative hostile snippets the docs say it
contains — no fewer (a regression) and no more (the docs would understate a gap). The whole
hostile suite per mode runs in benchmarks/sandbox_matrix.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import container_modes
import pytest
from conftest import UNPRIVILEGED_UID, _warm_for_forking, launch_forked_as
from hostile import assert_healthy

from sandbox import Sandbox, SandboxUnavailable, policy
from sandbox import result as R

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- the policy itself


def test_policy_spellings():
    assert policy.normalize("strict") == "strict"
    assert policy.normalize("rlimits+seccomp+landlock+namespaces") == "strict"
    assert policy.normalize(" Seccomp + landlock+rlimits ") == "landlock+seccomp+rlimits"
    for bad in ("", "landlock+apparmor", "degraded", "landlock,seccomp"):
        with pytest.raises(ValueError, match="unknown isolation policy"):
            policy.normalize(bad)


def test_policy_resolution(monkeypatch):
    monkeypatch.delenv(policy.ENV_VAR, raising=False)
    assert policy.resolve() == "strict"
    assert policy.resolve(allow_degraded=True) == "rlimits"  # the old flag: whatever is there
    monkeypatch.setenv(policy.ENV_VAR, "seccomp+landlock")
    assert policy.resolve() == "landlock+seccomp"
    assert policy.resolve("strict") == "strict"  # an explicit setting wins over the environment
    with pytest.raises(ValueError, match="not both"):
        policy.resolve("strict", allow_degraded=True)


def test_refusal_names_what_is_missing_and_how_to_proceed():
    missing = {"namespaces": "unshare(user, mount, net) failed: Operation not permitted"}
    assert policy.refusal("landlock+seccomp+rlimits", missing) is None
    message = policy.refusal("strict", missing)
    assert "requires namespaces" in message and "Operation not permitted" in message
    assert f"{policy.ENV_VAR}=landlock+seccomp+rlimits" in message
    assert "--sandbox-isolation" in message and "docs/sandbox.md" in message


# ---------------------------------------------------------------- emulated deployments

# Representative snippets of the hostile suite, one per mechanism that stops it (the suite's
# own tests, run per mode by the matrix script, are the full record).
SNIPPETS = {
    # Landlock: a host file every user may read
    "read_host_file": "print(open(@SECRET@).read())",
    # Landlock: a host folder every user may write
    "write_host_file": "open(@DROP@, 'w').write('x')\nprint('wrote')",
    # seccomp (and the empty network namespace)
    "open_socket": "import socket\nsocket.socket().connect(('127.0.0.1', 9))\nprint('connected')",
    # seccomp
    "start_program": "import subprocess\nprint(subprocess.run(['true']).returncode)",
    # namespaces: the scratch tmpfs caps the disk a job may fill (16 MB in these sandboxes)
    "fill_disk": "n = 0\ntry:\n    for n in range(48):\n        open(f'f{n}', 'wb').write(bytes(1 << 20))\n"
                 "    print('wrote', n + 1)\nexcept OSError as exc:\n    print('stopped', exc.errno)",
    # Landlock's truncate right (ABI 3), else seccomp: empty a host file its user may write
    "truncate_host_file": "import os\nos.truncate(@VICTIM_FILE@, 0)\nprint('emptied')",
    # rlimits
    "exhaust_memory": "x = bytearray(4 << 30)\nprint(len(x))",
    # Landlock's signal scoping (ABI 6), else seccomp: I/O readiness as SIGKILL to a host process
    "sigio_kill_host_process": "import fcntl, os\nr, w = os.pipe()\nfcntl.fcntl(r, fcntl.F_SETOWN, @VICTIM@)\n"
                               "fcntl.fcntl(r, 10, 9)\nfcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)\n"
                               "os.write(w, b'x')\nprint('armed')",
}
# What each mode no longer contains: the table in docs/sandbox.md ("Where it runs").
NOT_CONTAINED = {
    "docker-thyme-profile": set(),
    "landlock-abi1": set(),
    "docker-default": {"fill_disk"},
    "k8s-restricted": {"fill_disk"},
    "no-landlock": {"read_host_file", "write_host_file"},
    "no-landlock-docker-default": {"read_host_file", "write_host_file", "fill_disk"},
}
ACTIVE = {
    "docker-thyme-profile": ["namespaces", "landlock", "seccomp", "rlimits"],
    "landlock-abi1": ["namespaces", "landlock", "seccomp", "rlimits"],
    "docker-default": ["landlock", "seccomp", "rlimits"],
    "k8s-restricted": ["landlock", "seccomp", "rlimits"],
    "no-landlock": ["namespaces", "seccomp", "rlimits"],
    "no-landlock-docker-default": ["seccomp", "rlimits"],
}


def contained(name: str, r, victim, victim_file) -> bool:
    """Whether the snippet `name` failed to do what it tried (its result `r`)."""
    if name == "truncate_host_file":
        return os.path.getsize(victim_file) > 0
    if name == "sigio_kill_host_process":
        time.sleep(0.2)
        return victim.poll() is None
    if name == "fill_disk":
        return r.stdout.startswith("stopped")
    if name == "exhaust_memory":
        return r.error is not None and r.error.kind == R.MEMORY
    return r.error is not None and r.error.kind == R.FORBIDDEN


@pytest.fixture(scope="module")
def host_dir():
    d = tempfile.mkdtemp(prefix="thyme-modes-")
    os.chmod(d, 0o777)  # writable by every user: only confinement stops a write
    secret = os.path.join(d, "secret.txt")
    with open(secret, "w") as f:
        f.write(f"THYME-SECRET-{uuid.uuid4().hex}")
    os.chmod(secret, 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="the emulation switches users (run as root, as CI)")
@pytest.mark.parametrize("name", list(NOT_CONTAINED))
def test_emulated_mode_contains_what_the_docs_say(name, host_dir):
    mode = container_modes.MODES[name]
    uid = 0 if "as_root" in mode.users else UNPRIVILEGED_UID
    _warm_for_forking()
    results = tempfile.mkdtemp(prefix="thyme-modes-results-")
    os.chown(results, uid, uid)
    launcher = launch_forked_as(uid, mode)
    try:
        if mode.policy != "strict":
            with pytest.raises(SandboxUnavailable) as refused:
                Sandbox(workers=1, results_dir=results, isolation="strict", launcher=launcher)
            assert f"{policy.ENV_VAR}={mode.policy}" in str(refused.value)
        with Sandbox(workers=1, results_dir=results, scratch_mb=16, memory_mb=256,
                     isolation=mode.policy, launcher=launcher) as sb:
            report = sb.isolation_report
            assert report["policy"] == mode.policy and report["active"] == ACTIVE[name], report
            assert sorted(sb.degraded) == sorted(set(policy.MECHANISMS) - set(ACTIVE[name]))
            escaped = set()
            victim = subprocess.Popen(["sleep", "60"], user=uid)  # a host process of the same user
            victim_file = os.path.join(host_dir, f"victim-{name}.txt")  # a file it may write
            with open(victim_file, "w") as f:
                f.write("intact")
            os.chown(victim_file, uid, uid)
            for snippet, code in SNIPPETS.items():
                drop = os.path.join(host_dir, f"drop-{snippet}")
                code = code.replace("@SECRET@", repr(os.path.join(host_dir, "secret.txt")))
                code = code.replace("@DROP@", repr(drop)).replace("@VICTIM@", str(victim.pid))
                code = code.replace("@VICTIM_FILE@", repr(victim_file))
                r = sb.run(code, timeout=10)
                assert r.degraded == sb.degraded
                if not contained(snippet, r, victim, victim_file):
                    escaped.add(snippet)
                if os.path.exists(drop):
                    assert snippet in escaped, f"{snippet} wrote to the host yet looked contained"
                    os.unlink(drop)
            victim.kill()
            victim.wait()
            assert escaped == NOT_CONTAINED[name]
            # and it still does its job: an image produced, decoded by the confined checker
            r = sb.run("import numpy as np, cv2\ncv2.imwrite('/mnt/data/temp_processed_images/a.png', "
                       "np.zeros((8, 8, 3), np.uint8))\nprint('/mnt/data/temp_processed_images/a.png')")
            assert r.ok and len(r.images) == 1, r
            assert_healthy(sb)  # the sandbox still serves after every one of them
    finally:
        shutil.rmtree(results, ignore_errors=True)


# ---------------------------------------------------------------- the shipped recipes


def test_seccomp_profile_is_docker_default_plus_the_sandbox_rule():
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_seccomp_profile.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_dockerfiles_install_the_pinned_sets():
    """The images install what pyproject pins (STACK.md): the CPU set through constraints.txt,
    the GPU set's torch, torchvision and flash-attn at the `gpu` extra's versions."""
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    cpu = (ROOT / "containers" / "Dockerfile.cpu").read_text()
    gpu = (ROOT / "containers" / "Dockerfile.gpu").read_text()
    assert "-c constraints.txt '.[cpu]'" in cpu and "libseccomp2" in cpu and "libseccomp2" in gpu
    assert "'.[gpu]'" in gpu and "constraints.txt" not in re.sub(r"#.*", "", gpu)
    for pin in re.findall(r"(torch==\S+|torchvision==\S+|flash-attn==\S+)", gpu):
        assert pin in gpu_extra, pin
    for text in (cpu, gpu):
        assert "USER thyme" in text and "seccomp=containers/seccomp/thyme.json" in text


@pytest.mark.skipif(os.getuid() != 0, reason="the emulation switches users (run as root, as CI)")
def test_without_namespaces_a_replacement_worker_starts_with_empty_scratch():
    """Scratch is then a host folder that outlives its worker: what a killed worker's jobs left
    there must not make its replacement (and every one after it) retire."""
    import signal

    _warm_for_forking()
    mode = container_modes.MODES["docker-default"]
    with Sandbox(workers=1, isolation=mode.policy, launcher=launch_forked_as(0, mode)) as sb:
        with sb.session() as s:
            assert s.run("open('left.bin', 'wb').write(bytes(1 << 20))\nprint('ok')").ok
            os.kill(sb._handles[0].pid, signal.SIGKILL)
            assert s.run("print(1)").error.kind == R.INTERNAL  # its worker died: replaced
        for _ in range(3):
            r = sb.run("print(2)")
            assert r.ok and r.notes == [], r   # served, and no worker replaced after the call
        assert os.listdir(sb._handles[0].config.scratch_root) == []
