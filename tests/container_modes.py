"""Emulated deployment modes for the sandbox: what a container, a rootless engine, a restricted
Kubernetes pod or an older kernel takes away, applied to a worker process on this host.

A mode is applied in the forked worker (`conftest.launch_forked_as(uid, mode)`), before the
worker probes its mechanisms, exactly as a container runtime applies it before the entrypoint:
1. rootless: the process enters a user namespace in which it is root, mapped to its
   unprivileged host uid (what rootless Docker/Podman do, with one uid instead of a range);
2. capabilities: the bounding, effective, permitted and inheritable sets are cut to the
   runtime's default set (Docker's 14) or to none (Kubernetes `drop: [ALL]`);
3. Landlock off or older: `confine.landlock_abi` reports 0 (kernels before 5.13, or without
   `landlock` in the boot's LSM list) or an older ABI, whose rules the sandbox then builds (the
   kernel enforces exactly those);
4. seccomp: a filter built from a Docker-format profile is loaded (Docker's default, which
   Kubernetes' `RuntimeDefault` follows, or containers/seccomp/thyme.json). Loading sets
   no-new-privs (Kubernetes `allowPrivilegeEscalation: false` does too; Docker does not, which
   changes nothing here: the sandbox's children set it themselves).

Not emulated: AppArmor/SELinux policies (none here), the container's own mount tree and
masked /proc paths, cgroup limits, and 32-bit syscalls (the filter covers the native ABI; the
sandbox's own filter covers the others).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

SECCOMP_DIR = Path(__file__).resolve().parent.parent / "containers" / "seccomp"
DOCKER_DEFAULT = SECCOMP_DIR / "docker-default.json"
THYME_PROFILE = SECCOMP_DIR / "thyme.json"
ENV_VAR = "THYME_TEST_SANDBOX_MODE"  # the hostile suite's sandboxes run in this mode

CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18, "CAP_SYS_ADMIN": 21,
    "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}
# Docker's (and containerd's) default capability set for a container.
DOCKER_CAPS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"})


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    policy: str                         # the weakest policy under which the sandbox starts
    users: tuple[str, ...] = ("as_root", "unprivileged")  # `any_sandbox` params it applies to
    caps: frozenset[str] | None = None  # None: the host's; else the capabilities kept
    profile: Path | None = None         # seccomp profile (Docker format) loaded, if any
    landlock_abi: int | None = None      # None: the kernel's; 0: no Landlock; else this ABI
    rootless: bool = False              # root in a user namespace mapped to the host uid

    @property
    def emulated(self) -> bool:
        return (self.caps is not None or self.profile is not None or self.rootless
                or self.landlock_abi is not None)


MODES = {m.name: m for m in (
    Mode("host", "bare host, this machine (Linux 6.18, Landlock ABI 7)", "strict"),
    Mode("docker-default", "container, Docker's default seccomp profile and capabilities",
         "landlock+seccomp+rlimits", caps=DOCKER_CAPS, profile=DOCKER_DEFAULT),
    Mode("docker-thyme-profile", "container, `--security-opt seccomp=containers/seccomp/thyme.json`",
         "strict", caps=DOCKER_CAPS, profile=THYME_PROFILE),
    Mode("rootless-default", "rootless Docker/Podman, default seccomp profile",
         "landlock+seccomp+rlimits", users=("unprivileged",), caps=DOCKER_CAPS,
         profile=DOCKER_DEFAULT, rootless=True),
    Mode("rootless-thyme-profile", "rootless Docker/Podman, the thyme.json profile", "strict",
         users=("unprivileged",), caps=DOCKER_CAPS, profile=THYME_PROFILE, rootless=True),
    Mode("k8s-restricted", "Kubernetes `restricted` pod: non-root, no privilege escalation, "
         "all capabilities dropped, seccomp RuntimeDefault", "landlock+seccomp+rlimits",
         users=("unprivileged",), caps=frozenset(), profile=DOCKER_DEFAULT),
    Mode("k8s-restricted-thyme-profile", "Kubernetes `restricted` pod with the thyme.json "
         "profile as its `Localhost` seccomp profile", "strict", users=("unprivileged",),
         caps=frozenset(), profile=THYME_PROFILE),
    Mode("landlock-abi1", "bare host, kernel with Landlock ABI 1 (5.13-5.18: Ubuntu 22.04's "
         "5.15, RHEL 9's 5.14): files only, no TCP rules, no signal scoping", "strict",
         landlock_abi=1),
    Mode("no-landlock", "bare host, kernel without Landlock (before 5.13, or not in `lsm=`)",
         "namespaces+seccomp+rlimits", landlock_abi=0),
    Mode("no-landlock-docker-default", "container with Docker's default profile on a kernel "
         "without Landlock", "seccomp+rlimits", caps=DOCKER_CAPS, profile=DOCKER_DEFAULT,
         landlock_abi=0),
)}


def current() -> Mode:
    """The mode named by THYME_TEST_SANDBOX_MODE (the bare host when unset)."""
    name = os.environ.get(ENV_VAR, "host")
    if name not in MODES:
        raise ValueError(f"{ENV_VAR}={name!r}: not one of {', '.join(MODES)}")
    return MODES[name]


# ---------------------------------------------------------------- applying a mode

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWUSER = 0x10000000
_PR_CAPBSET_DROP = 24


def apply(mode: Mode) -> None:
    """Take away what `mode` takes away, in the calling (forked, single-threaded) process."""
    if mode.rootless:
        uid, gid = os.getuid(), os.getgid()
        if _libc.unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) for the rootless mode")
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    if mode.caps is not None:
        _keep_capabilities({CAP_NUMBERS[c] for c in mode.caps})
    if mode.landlock_abi is not None:
        from sandbox import confine
        confine.landlock_abi = lambda: mode.landlock_abi
    if mode.profile is not None:
        seccomp_filter(json.loads(mode.profile.read_text()), mode.caps).load()


def _keep_capabilities(keep: set[int]) -> None:
    for cap in range(64):
        if cap in keep:
            continue
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    current = (ctypes.c_uint32 * 6)()
    if _libc.capget(header, current) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = sum(1 << c for c in keep)
    data = (ctypes.c_uint32 * 6)()
    for i in (0, 1):  # two {effective, permitted, inheritable} words: capabilities 0-31, 32-63
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[3 * i] = current[3 * i] & part
        data[3 * i + 1] = current[3 * i + 1] & part
        data[3 * i + 2] = current[3 * i + 2] & part
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


_ARCHES = {"x86_64": {"amd64"}, "aarch64": {"arm64"}}
_OPS = {"SCMP_CMP_EQ": "EQ", "SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE",
        "SCMP_CMP_GT": "GT", "SCMP_CMP_GE": "GE", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}


def _kernel_at_least(version: str) -> bool:
    have = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    return have >= tuple(int(x) for x in version.split(".")[:2])


def seccomp_filter(profile: dict, caps: frozenset[str] | None):
    """A libseccomp filter doing what a container runtime builds from a Docker-format profile
    for a container holding `caps` (None: the host's, read as Docker's defaults)."""
    import pyseccomp as sc

    caps = DOCKER_CAPS if caps is None else caps
    arches = _ARCHES.get(platform.machine(), set())
    default_errno = profile.get("defaultErrnoRet", errno.EPERM)
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        raise ValueError(f"unsupported defaultAction {profile['defaultAction']}")
    f = sc.SyscallFilter(defaction=sc.ERRNO(default_errno))
    for rule in profile["syscalls"]:
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if inc.get("caps") and not set(inc["caps"]) <= caps:
            continue
        if exc.get("caps") and set(exc["caps"]) & caps:
            continue
        if inc.get("arches") and not set(inc["arches"]) & arches:
            continue
        if exc.get("arches") and set(exc["arches"]) & arches:
            continue
        if inc.get("minKernel") and not _kernel_at_least(inc["minKernel"]):
            continue
        if rule["action"] == "SCMP_ACT_ALLOW":
            action = sc.ALLOW
        elif rule["action"] == "SCMP_ACT_ERRNO":
            action = sc.ERRNO(rule.get("errnoRet", default_errno))
        else:
            raise ValueError(f"unsupported action {rule['action']}")
        args = [sc.Arg(a["index"], getattr(sc, _OPS[a["op"]]), a["value"], a.get("valueTwo", 0))
                for a in rule.get("args") or ()]
        for name in rule["names"]:
            try:
                f.add_rule(action, name, *args)
            except (ValueError, RuntimeError, OSError):
                continue  # not a syscall on this architecture or unknown to this libseccomp
    return f
