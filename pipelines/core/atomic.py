"""Atomic writes: a file or folder is either absent, the old version, or the whole new one.

Every writer in the project goes through here. A temporary sits beside its target (same
filesystem, so the rename is atomic) under a name that carries the writer's pid, so a re-run can
tell a killed writer's leftovers (`remove_stale_temporaries`) from a live writer's work; a write
first removes its own target's leftovers. A write that fails (a full disk, an exception while
producing the content) removes its temporary and raises; the target is untouched. A full disk,
quota, file-size limit or read-only filesystem is raised as `WriteFailed`, naming the target
(the OS's own error names no file).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"
# What a write fails with when the storage, not the data, is at fault.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class WriteFailed(OSError):
    """A write the storage refused (full disk, quota, file-size limit, read-only); `filename` is
    the target, which is untouched, and no temporary is left."""


def temporary_name(path: Path, tmp_dir: Path | None = None) -> Path:
    """`<name>.<pid>-<thread>.tmp` beside `path` (or in `tmp_dir`, on the same filesystem):
    unique per writer, and names its process."""
    return (tmp_dir or path.parent) / f"{path.name}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}"


@contextmanager
def atomic_path(path: str | os.PathLike, make_parent: bool = True,
                tmp_dir: Path | None = None) -> Iterator[Path]:
    """Yields a temporary path to write (a file or a folder); renamed over `path` when the block
    ends without an exception, removed otherwise. An existing folder at `path` is replaced.
    Without `tmp_dir`, temporaries of `path` left by dead writers are removed first (with it,
    the owner of `tmp_dir` cleans it)."""
    path = Path(path)
    tmp = temporary_name(path, tmp_dir)
    renamed = False
    try:
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        if tmp_dir is None:
            remove_stale_temporaries(path.parent, name=path.name)
        yield tmp
        if tmp.is_dir():
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
        renamed = True  # nothing left to clean up (saves two system calls per image stored)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS and not isinstance(exc, WriteFailed):
            raise WriteFailed(exc.errno, f"{os.strerror(exc.errno)}; not written", str(path)) from exc
        raise
    finally:
        if not renamed:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, tmp_dir: Path | None = None,
                make_parent: bool = True) -> Path:
    with atomic_path(path, make_parent, tmp_dir) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data, indent: int | None = 2,
               tmp_dir: Path | None = None) -> Path:
    return write_bytes(path, json.dumps(data, indent=indent, ensure_ascii=False, default=str).encode(),
                       tmp_dir)


def write_parquet(table, path: str | os.PathLike, **options) -> Path:
    """A pyarrow table as one parquet file (zstd unless `compression` is given)."""
    import pyarrow.parquet as pq

    options.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)
    return Path(path)


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` in place of `out`: the old one is moved aside first (two
    renames; a reader sees the old or the new folder, a crash between leaves the old one aside,
    which `remove_stale_temporaries` does not touch and the next replace clears)."""
    old = out.with_name(f"{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(*dirs: Path, name: str = "") -> int:
    """Delete temporaries in `dirs` whose writing process is gone (a killed run's leftovers);
    with `name`, only those of that target."""
    removed = 0
    for d in dirs:
        pattern = f"{glob.escape(name)}.*{TMP_SUFFIX}" if name else f"*{TMP_SUFFIX}"
        for tmp in Path(d).glob(pattern) if Path(d).is_dir() else ():
            pid = _writer_pid(tmp.name)
            if pid is not None and not _alive(pid):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _writer_pid(name: str) -> int | None:
    """The pid in `<name>.<pid>[-<thread>].tmp`, or None when the name has none."""
    stem = name[: -len(TMP_SUFFIX)]
    if "." not in stem:
        return None
    pid = stem.rsplit(".", 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    """Running. A zombie is dead: a killed writer whose parent does not reap it (a container
    without an init) stays a zombie, and its temporaries are leftovers all the same."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal answered, so trust it
    return state != "Z"
