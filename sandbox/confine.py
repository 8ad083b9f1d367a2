"""Operating-system confinement: namespaces, Landlock, seccomp, rlimits, capabilities.

Two layers, applied at two moments:
- `enter_namespaces` runs once when a worker starts: a user namespace (so nothing inside holds a
  capability over the host, root included), an empty network namespace, and a private mount
  namespace in which the worker's scratch directory is a tmpfs capped in bytes and inodes.
- `confine_child` runs in every forked child before it runs a line of model code: rlimits,
  no-new-privs, Landlock (files, TCP, signals, abstract sockets), all capabilities dropped, and a
  seccomp filter (no exec, fork, threads, sockets, ptrace, namespaces, SysV IPC, io_uring,
  memfd, leases, host-wide sync, ...).

Nothing here scans code: every guarantee is enforced by the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import struct
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86_64 and aarch64 share these (generic syscall table for new calls).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_REC, _MS_PRIVATE = 0x4000, 1 << 18

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4

# Landlock access rights (include/uapi/linux/landlock.h)
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2

_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_READ_FILE | FS_READ_DIR | FS_EXECUTE
SCRATCH = (FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE
           | FS_MAKE_DIR | FS_MAKE_REG | FS_TRUNCATE)


class ConfinementError(RuntimeError):
    """A confinement mechanism is unavailable or failed to apply."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"{what} failed: {os.strerror(err)} (errno {err})")
    return ret


# ---------------------------------------------------------------- probing

def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    ret = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def seccomp_unavailable_reason() -> str | None:
    """None when seccomp filters can be built here, else why not."""
    try:
        import pyseccomp  # noqa: F401  (needs libseccomp.so.2)
    except Exception as exc:  # noqa: BLE001 - any import failure means "missing"
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------- worker level

def enter_namespaces(scratch_root: str, scratch_mb: int, scratch_inodes: int) -> None:
    """Move the calling (single-threaded) process into fresh user, mount and network namespaces
    and mount a tmpfs of `scratch_mb` and `scratch_inodes` on `scratch_root`, visible only
    inside. (Empty files and folders use no blocks: only the inode cap bounds the kernel memory
    they hold.)"""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET), "unshare(user, mount, net)")
    # Map ourselves to root inside the namespace: needed to mount; grants nothing on the host.
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError as exc:
            raise ConfinementError(f"writing /proc/self/{name} failed: {exc.strerror}") from exc
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount(private /)")
    opts = f"size={scratch_mb}m,nr_inodes={scratch_inodes},mode=0700".encode()
    _check(_libc.mount(b"tmpfs", scratch_root.encode(), b"tmpfs",
                       _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, opts), "mount(tmpfs scratch)")


_MADV_COLLAPSE = 25
_HUGE_PAGE = 2 << 20


def collapse_heap_to_huge_pages() -> int:
    """Back the warmed heap with transparent huge pages (MADV_COLLAPSE, Linux 6.1+), so each
    fork copies and each exit frees one entry per 2 MB instead of 512. A speed-up only:
    returns the bytes collapsed (0 where the kernel cannot)."""
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    collapsed = 0
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    for line in maps:
        fields = line.split()
        path = fields[5] if len(fields) > 5 else ""
        if fields[1] != "rw-p" or path not in ("", "[heap]"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        start = -(-start // _HUGE_PAGE) * _HUGE_PAGE
        end = end // _HUGE_PAGE * _HUGE_PAGE
        if end - start >= _HUGE_PAGE and _libc.madvise(start, end - start, _MADV_COLLAPSE) == 0:
            collapsed += end - start
    return collapsed


# ---------------------------------------------------------------- child level

@dataclass(frozen=True)
class Limits:
    """Per-child resource budget."""

    memory_mb: int = 1024          # address space the code may add on top of the warmed worker
    cpu_s: int = 60                # CPU seconds over the child's life (a session), a backstop
    file_mb: int = 32              # largest file the code may write
    open_files: int = 64


def address_space_bytes() -> int:
    """The calling process's virtual memory size (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def set_rlimits(limits: Limits, baseline_bytes: int) -> None:
    """Cap the process; the address space gets `memory_mb` on top of `baseline_bytes` (the
    warmed worker's size, read once rather than per child)."""
    address_space = baseline_bytes + limits.memory_mb * 1024 * 1024
    for res, value in (
        (resource.RLIMIT_AS, address_space),
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_FSIZE, limits.file_mb * 1024 * 1024),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_MEMLOCK, 0),
        (resource.RLIMIT_MSGQUEUE, 0),
        # queued signals are kernel memory an idle session could hold (per user namespace)
        (resource.RLIMIT_SIGPENDING, 256),
    ):
        resource.setrlimit(res, (value, value))
    # A file over the size limit should fail the write (OSError), not kill the process silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def set_process_name(name: str) -> None:
    """What `ps` and /proc/PID/comm show for the calling process (15 bytes at most)."""
    _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def die_with_parent() -> None:
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def no_new_privs() -> None:
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def drop_capabilities() -> None:
    """Drop every capability (bounding, ambient, effective, permitted, inheritable)."""
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)  # two zeroed {effective, permitted, inheritable} sets
    _check(_libc.capset(header, data), "capset(empty)")


def landlock_restrict(abi: int, read_only: list[str], read_write: list[str]) -> None:
    """Confine the calling process to reading `read_only` paths and writing `read_write`
    directories; deny TCP, abstract unix sockets and signals to processes outside."""
    if abi < 1:
        raise ConfinementError("Landlock is not available on this kernel")
    handled_fs = _FS_BY_ABI.get(abi, (1 << 16) - 1)
    handled_net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("=Q", handled_fs)
    ruleset = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for paths, access in ((read_only, READ_ONLY), (read_write, SCRATCH)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except (FileNotFoundError, PermissionError):
                    continue  # absent, or unreachable for us anyway
                try:
                    allowed = access & handled_fs
                    if not os.path.isdir(path):
                        allowed &= _FILE_RIGHTS
                    rule = struct.pack("=Qi", allowed, fd)
                    _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0),
                           f"landlock_add_rule({path})")
                finally:
                    os.close(fd)
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


# Syscalls model code never needs and an attacker would: denied with EPERM, so Python raises a
# PermissionError the model can read instead of the process dying.
_DENIED_SYSCALLS = (
    # new programs and processes (threads too: no thread bomb, CPU time stays bounded by wall time)
    "execve", "execveat", "fork", "vfork", "clone", "clone3",
    # memory outside RLIMIT_AS (memfd pages are shmem no budget counts), kernel timers
    "memfd_create", "memfd_secret", "timer_create",
    # host-wide effects: writeback of every filesystem, IPIs or RCU waits on every CPU
    "sync", "syncfs", "membarrier",
    # network and local IPC
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semctl", "semtimedop", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "setpriority", "ioprio_set", "migrate_pages", "move_pages",
    # privilege, namespaces, mounts, kernel surfaces
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "personality", "syslog", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "setdomainname", "sethostname", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime", "iopl", "ioperm", "name_to_handle_at", "open_by_handle_at",
    "fanotify_init", "fanotify_mark", "lookup_dcookie", "vhangup", "nfsservctl",
    # watching host directories
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    # links: outputs must be plain files the code wrote
    "link", "linkat", "symlink", "symlinkat",
)
# Metadata changes Landlock does not cover: the code runs as the owner of the worker's files,
# so chmod/chown/utime/xattrs could alter host files it may merely read (or could name). They
# succeed without doing anything, so library code that copies modes (shutil.copy) still works.
_METADATA_NOOP = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
)
# fcntl commands with an effect outside the sandbox: leases stall host processes that open the
# file (up to 45 s), dnotify watches host folders, bigger pipe buffers are unbudgeted memory.
_DENIED_FCNTLS = (1024, 1026, 1031)  # F_SETLEASE, F_NOTIFY, F_SETPIPE_SZ
# Locks other processes see (the input image, a library). One process holds all the sandbox's
# locks, so taking them can succeed without doing anything (sqlite, filelock keep working).
_NOOP_FCNTLS = (6, 7, 37, 38)  # F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW
_NOOP_SYSCALLS = ("flock",)
# ioctl commands that change inode flags (chattr) on any file the code can open.
_DENIED_IOCTLS = (0x40086602, 0x40046602, 0x401C5820, 0x40087602)  # FS_IOC_SETFLAGS, 32-bit
# SETFLAGS, FS_IOC_FSSETXATTR, FS_IOC_SETVERSION

# Allowed only when they target the calling process itself (argument 0 is a pid, 0 = self).
_SELF_ONLY_OR_ZERO = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
                      "sched_setattr")
_SIGNALS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# Signals the kernel sends on the code's behalf: I/O readiness (SIGIO, or any signal chosen with
# F_SETSIG) goes to the owner set with F_SETOWN/F_SETOWN_EX or the FIOSETOWN/SIOCSPGRP ioctls,
# which may be any process of the same user. Landlock's signal scoping refuses it; without it
# (ABI < 6) these are denied outright (model code has no use for async I/O signals).
_SIGNAL_OWNER_FCNTLS = (8, 10, 15)           # F_SETOWN, F_SETSIG, F_SETOWN_EX
_SIGNAL_OWNER_IOCTLS = (0x8901, 0x8902)      # FIOSETOWN, SIOCSPGRP
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def seccomp_program(self_pid: int | None = None, deny_truncate: bool = False) -> bytes:
    """Compile the filter to classic BPF once (libseccomp is slow to build it per child).

    Signals to other processes are refused by Landlock's signal scoping (ABI >= 6); on older
    kernels pass `self_pid` to compile a per-process filter that allows signalling only itself.
    `deny_truncate`: refuse `truncate` by path, which Landlock covers only from ABI 3 (6.2):
    before, a snippet could empty any file its user may write (`ftruncate` on a file it opened
    for writing stays allowed: opening was Landlock's decision).
    """
    import tempfile

    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in _DENIED_SYSCALLS:
        try:
            f.add_rule(deny, name)
        except (ValueError, RuntimeError, OSError):
            continue  # not a syscall on this architecture
    for name in _METADATA_NOOP + _NOOP_SYSCALLS:
        try:
            f.add_rule(sc.ERRNO(0), name)
        except (ValueError, RuntimeError, OSError):
            continue
    for cmd in _DENIED_FCNTLS:
        f.add_rule(deny, "fcntl", sc.Arg(1, sc.EQ, cmd))
    for cmd in _NOOP_FCNTLS:
        f.add_rule(sc.ERRNO(0), "fcntl", sc.Arg(1, sc.EQ, cmd))
    for cmd in _DENIED_IOCTLS:
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.EQ, cmd))
    for name in _SELF_ONLY_OR_ZERO:
        f.add_rule(deny, name, sc.Arg(0, sc.NE, 0))
    if self_pid is not None:
        for name in _SIGNALS:
            f.add_rule(deny, name, sc.Arg(0, sc.NE, self_pid))
        for cmd in _SIGNAL_OWNER_FCNTLS:
            f.add_rule(deny, "fcntl", sc.Arg(1, sc.EQ, cmd))
        for cmd in _SIGNAL_OWNER_IOCTLS:
            f.add_rule(deny, "ioctl", sc.Arg(1, sc.EQ, cmd))
    if deny_truncate:
        f.add_rule(deny, "truncate")
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(program: bytes) -> None:
    """Load a compiled filter into the calling process (no-new-privs must be set)."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
           "prctl(PR_SET_SECCOMP)")
