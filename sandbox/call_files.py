"""Files a call exchanges with its caller (SandboxFusion's `files` and `fetch_files`, also on
our own /v1 endpoints and sessions): written into the child's scratch folder (the folder its
code runs in) as the worker makes it, before the child exists, and read back from it once the
child cannot run any more (a one-shot call's child is dead; a session's is frozen between
blocks, and the worker has seen it stopped before it reads).

A path is relative to that folder: absolute paths, `..`, NUL and over-long names are refused
(`check_request`). The worker writes and reads by walking a path one component at a time from
a descriptor of the scratch folder, never following a link (an `lstat` of each component, then
`O_NOFOLLOW`), so nothing the code leaves under a fetched name reaches outside it: a symbolic
link anywhere on the path is refused, as are a FIFO or device (never opened, so nothing
blocks), a folder, and a file with a second name (a hard link: its other name could be outside,
where the code could not read). What comes back is bounded in files and bytes.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from collections.abc import Mapping, Sequence

from sandbox import outputs

MAX_FILES = 64                  # files written into one call
MAX_FILES_BYTES = 32 << 20      # their decoded bytes in all
MAX_FETCH_FILES = 64            # paths one call may fetch
MAX_FETCH_BYTES = 32 << 20      # bytes fetched in all (base64 in the reply: 43 MiB)
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255            # one component (the kernel's NAME_MAX)
NOT_FOUND = "not found"         # a fetched path with nothing there (SandboxFusion omits it)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FileRequestError(ValueError):
    """`files` or `fetch_files` this sandbox will not take (the message names the file)."""


def components(path) -> list[str]:
    """The names along a relative path, `.` and empty ones dropped; FileRequestError if the
    path could leave the folder the code runs in or is not a usable name."""
    if not isinstance(path, str) or not path:
        raise FileRequestError(f"{path!r}: a file path must be a non-empty string")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise FileRequestError(f"{path!r}: the path is not valid UTF-8") from None
    if "\0" in path:
        raise FileRequestError(f"{path!r}: the path contains a NUL character")
    if size > MAX_PATH_BYTES:
        raise FileRequestError(f"{path[:60]!r}...: the path is {size} bytes long; at most "
                               f"{MAX_PATH_BYTES} are accepted")
    if path.startswith("/"):
        raise FileRequestError(f"{path!r}: absolute paths are not accepted; a path is relative "
                               "to the folder the code runs in")
    names = [n for n in path.split("/") if n not in ("", ".")]
    if ".." in names:
        raise FileRequestError(f"{path!r}: `..` is not accepted; a path stays inside the folder "
                               "the code runs in")
    if not names:
        raise FileRequestError(f"{path!r}: the path names no file")
    for name in names:
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise FileRequestError(f"{path!r}: a name in it is over {MAX_NAME_BYTES} bytes")
    return names


def check_request(files: Mapping[str, bytes], fetch_files: Sequence[str]) -> None:
    """FileRequestError (naming the file) unless every path is safe, no file is also a folder
    of another, and the counts and bytes are within the limits above."""
    if len(files) > MAX_FILES:
        raise FileRequestError(f"{len(files)} files were sent; at most {MAX_FILES} are accepted")
    if len(fetch_files) > MAX_FETCH_FILES:
        raise FileRequestError(f"{len(fetch_files)} files were asked for; at most "
                               f"{MAX_FETCH_FILES} are fetched")
    total, paths, folders = 0, {}, set()
    for path, data in files.items():
        names = components(path)
        total += len(data)
        if total > MAX_FILES_BYTES:
            raise FileRequestError(f"{path!r}: the files sent hold over {MAX_FILES_BYTES >> 20} "
                                   "MiB in all (the limit)")
        paths[tuple(names)] = path
        folders.update(tuple(names[:i]) for i in range(1, len(names)))
    for names in folders & paths.keys():
        raise FileRequestError(f"{paths[names]!r}: it is sent as a file and is also the folder "
                               "of another file sent")
    for path in fetch_files:
        components(path)


def from_json(files, fetch_files) -> tuple[dict[str, bytes], list[str]]:
    """`files` ({path: base64}) and `fetch_files` ([path]) as a JSON request carries them,
    decoded and checked (`check_request`); FileRequestError names the field or file."""
    files = {} if files is None else files
    fetch_files = [] if fetch_files is None else fetch_files
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise FileRequestError("`files` must be an object of {relative path: base64 string}")
    if not isinstance(fetch_files, list) or not all(isinstance(p, str) for p in fetch_files):
        raise FileRequestError("`fetch_files` must be a list of relative paths")
    decoded = decode(files)
    check_request(decoded, fetch_files)
    return decoded, fetch_files


def to_json(files: Mapping[str, bytes] | None, fetch_files: Sequence[str] = ()) -> dict:
    """The `files` ({path: base64}) and `fetch_files` fields of a request to a worker or the
    service, checked first (`check_request`); {} when there are none."""
    files, fetch_files = dict(files or {}), list(fetch_files)
    check_request(files, fetch_files)
    if not files and not fetch_files:
        return {}
    return {"files": {path: base64.b64encode(data).decode("ascii") for path, data in files.items()},
            "fetch_files": fetch_files}


def make_folder(scratch: str, files: Mapping[str, bytes]) -> None:
    """Make the scratch folder `scratch` with `files` in it, before any child can use it; if a
    file cannot be written the folder is removed and OSError (naming the file) raised."""
    os.mkdir(scratch, 0o700)
    try:
        write(scratch, files)
    except OSError:
        outputs.remove_tree(scratch)
        raise


def write(scratch: str, files: Mapping[str, bytes]) -> None:
    """Write each file under `scratch` (folders made as needed), in order: a later path that
    names the same file replaces it, as in SandboxFusion. OSError names a file that could not
    be written."""
    root = os.open(scratch, _DIR_FLAGS)
    try:
        for path, data in files.items():
            *folders, name = components(path)
            try:
                folder = _walk(root, folders, create=True)
                try:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=folder)
                finally:
                    if folder != root:
                        os.close(folder)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as exc:
                raise OSError(exc.errno, f"{path!r} could not be written ({exc.strerror})") from None
    finally:
        os.close(root)


def fetch(scratch: str, paths: Sequence[str],
          max_bytes: int = MAX_FETCH_BYTES) -> tuple[dict[str, str], dict[str, str]]:
    """({path: base64 content} of the regular files found, {path: why not} of the others).
    Call it once nothing can change `scratch` any more (the child is dead)."""
    fetched: dict[str, str] = {}
    refused: dict[str, str] = {}
    left = max_bytes
    root = os.open(scratch, _DIR_FLAGS)
    try:
        for path in paths:
            if path in fetched or path in refused:
                continue
            data = _read(root, components(path), left)
            if isinstance(data, str):
                refused[path] = data
                continue
            left -= len(data)
            fetched[path] = base64.b64encode(data).decode("ascii")
    finally:
        os.close(root)
    return fetched, refused


def _walk(root: int, folders: list[str], create: bool = False) -> int:
    """A descriptor of root/folders[0]/..., no link followed (OSError otherwise; ELOOP for a
    link). Returns `root` itself when `folders` is empty."""
    fd = root
    try:
        for name in folders:
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "a symbolic link is on the path (not followed)")
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            if fd != root:
                os.close(fd)
            fd = sub
    except BaseException:
        if fd != root:
            os.close(fd)
        raise
    return fd


def _read(root: int, names: list[str], max_bytes: int) -> bytes | str:
    """The bytes of the regular file at root/names, or why it is not returned."""
    *folders, name = names
    try:
        folder = _walk(root, folders)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return NOT_FOUND
        return exc.strerror if exc.errno == errno.ELOOP else f"not read ({exc.strerror})"
    try:
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError as exc:
            return NOT_FOUND if exc.errno in (errno.ENOENT, errno.ENOTDIR) else \
                f"not read ({exc.strerror})"
        problem = _kind_problem(st)
        if problem:
            return problem
        if st.st_size > max_bytes:
            return (f"{st.st_size} bytes, over what is left of the {MAX_FETCH_BYTES >> 20} MiB "
                    f"a call may fetch ({max_bytes} bytes)")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, dir_fd=folder)
        except OSError as exc:
            return f"not read ({exc.strerror})"
    finally:
        if folder != root:
            os.close(folder)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            return "it changed while it was read"
        problem = _kind_problem(opened)
        if problem:
            return problem
        data = outputs.read_capped(fd, max_bytes)
    except OSError as exc:
        return f"not read ({exc.strerror})"
    finally:
        os.close(fd)
    return f"over the {MAX_FETCH_BYTES >> 20} MiB a call may fetch" if data is None else data


def _kind_problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link (not followed)"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, socket or device; not opened)"
    if st.st_nlink != 1:
        return f"a file with {st.st_nlink} names (a hard link; not read)"
    return None


def decode(files: Mapping[str, str]) -> dict[str, bytes]:
    """{path: bytes} of {path: base64}; FileRequestError names a file that is not base64."""
    decoded = {}
    for path, text in files.items():
        try:
            decoded[path] = base64.b64decode("".join(text.split()), validate=True)
        except (ValueError, TypeError, AttributeError):
            raise FileRequestError(f"{path!r}: the content is not valid base64") from None
    return decoded
