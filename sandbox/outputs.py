"""What a job leaves behind: the images it produced, and its scratch directory.

- `printed_image_paths` finds the image names a snippet printed, in time linear in the output.
- `check_image` decodes an image completely; it runs in a confined checker child forked from
  the zygote (`serve_checks`, `ask_checker`), never in the worker: decoders are the largest
  attack surface a snippet can reach, and a full decode takes time a snippet chooses.
- `gather_images` reads the files a call names as images (regular files in its scratch, not
  following links, within the per-call caps); `store_image` writes one into the caller's
  results directory atomically.
- `remove_tree` deletes a scratch directory of any depth without recursion.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import struct
import time
import zlib

from sandbox import replies, runner
from sandbox import result as R
from sandbox.protocol import VIRTUAL_OUTPUT_DIR

# Formats accepted as outputs (their decoders are loaded in the zygote), and the extension each
# is stored under. Anything else (EPS, PDF, SVG, ...) is refused, whatever its name. (PIL opens a
# multi-picture JPEG through the JPEG decoder and names it MPO.)
ACCEPTED_FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif",
                    "GIF": "gif"}
_EXTENSIONS = {**ACCEPTED_FORMATS, "MPO": "jpg"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif")
MAX_ASPECT_RATIO = 200
# A printed path is a run of characters without whitespace, quotes, <, > or |, cut after the
# last image extension in it. Two linear scans: tokens, then the suffixes inside each token.
_TOKEN = re.compile(r"[^\s'\"<>|]+")
_IMAGE_SUFFIX = re.compile(rf"\.(?:{'|'.join(IMAGE_EXTENSIONS)})\b", re.IGNORECASE)


_MAX_SPACED_CHARS = 255   # a path with spaces under the output directory is read up to this long


def printed_image_paths(text: str, scratch: str | None = None) -> list[str]:
    """Every printed name that ends in an image extension, in order (linear time). Under
    `scratch` (the output directory) a name may contain spaces (a sub-folder the model named
    so): it counts when that file exists, else the words around it are read as usual."""
    if scratch is None:
        return _image_words(text)
    spaced = re.compile(rf"{re.escape(scratch)}/[^\n'\"<>|]{{0,{_MAX_SPACED_CHARS}}}?"
                        rf"\.(?:{'|'.join(IMAGE_EXTENSIONS)})\b", re.IGNORECASE)
    found, pos = [], 0
    for match in spaced.finditer(text):
        if " " in match.group() and os.path.isfile(match.group()):
            found += _image_words(text[pos:match.start()])
            found.append(match.group())
            pos = match.end()
    return found + _image_words(text[pos:])


def _image_words(text: str) -> list[str]:
    paths = []
    for token in _TOKEN.finditer(text):
        last = None
        for last in _IMAGE_SUFFIX.finditer(token.group()):  # noqa: B007 - keep the last one
            pass
        if last is not None:
            paths.append(token.group()[: last.end()])
    return paths


def gather_images(scratch: str, processed: str | None, stdout: str, max_images: int,
                  max_bytes: int) -> tuple[list[tuple[str, bytes]], tuple[str, str] | None]:
    """The files a call names as its images (`processed_path`, then printed names, in order):
    regular files inside `scratch`, read without following links, within the per-call caps
    (`max_images` files, `max_bytes` in all). ([(name, bytes)], None) or ([], error). As in the
    original, a call that named output-directory images of which none was saved fails
    (`no_output`)."""
    candidates = [processed] if processed else []
    candidates += printed_image_paths(stdout.replace(VIRTUAL_OUTPUT_DIR, scratch), scratch)
    found: list[str] = []
    missing: list[str] = []     # output-directory paths the code named but never saved
    for cand in candidates:
        cand = cand.replace(VIRTUAL_OUTPUT_DIR, scratch)
        path = os.path.normpath(os.path.join(scratch, cand))
        if not path.startswith(scratch + "/") or path in found:
            continue
        if os.path.lexists(path):
            found.append(path)
            if len(found) > max_images:
                return [], (R.OUTPUT_LIMIT, f"the code produced more than {max_images} images; "
                                            f"at most {max_images} are collected from one call")
        elif os.path.isabs(cand):
            missing.append(path)
    if missing and not found:
        shown = missing[0].replace(scratch, VIRTUAL_OUTPUT_DIR, 1)
        return [], (R.NO_OUTPUT, f"{shown}: the code printed or set this image path, but saved "
                                 "no image there")
    files: list[tuple[str, bytes]] = []
    for path in found:
        name = os.path.relpath(path, scratch)
        if os.path.realpath(path) != path:
            return [], (R.INVALID_IMAGE, f"{name}: not a regular file in the output directory (link)")
        data = _read_regular_file(path, max_bytes - sum(len(d) for _, d in files))
        if data is None:
            return [], (R.OUTPUT_LIMIT, f"the images of one call may total at most "
                                        f"{max_bytes >> 20} MB ({name} is over)")
        if isinstance(data, str):
            return [], (R.INVALID_IMAGE, f"{name}: {data}")
        files.append((name, data))
    return files, None


def _read_regular_file(path: str, max_bytes: int) -> bytes | str | None:
    """The file's bytes; a problem (str); or None if it holds more than `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a link" if exc.errno == errno.ELOOP else exc.strerror
        return f"not a regular file in the output directory ({why})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        return read_capped(fd, max_bytes)
    finally:
        os.close(fd)


def read_capped(fd: int, max_bytes: int) -> bytes | None:
    """What `fd` holds, or None if it is more than `max_bytes` (read to the cap, whatever fstat
    said: the file may grow)."""
    chunks, size = [], 0
    while size <= max_bytes:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > max_bytes else b"".join(chunks)


# What a checker may say about an image: a code, never free text (a checker whose decoder an
# image exploited could otherwise smuggle other calls' image bytes into a result message).
PROBLEMS = {
    "format": "not an image in an accepted format (" + ", ".join(ACCEPTED_FORMATS) + ")",
    "pixels": "more pixels than allowed",
    "aspect": f"an aspect ratio over {MAX_ASPECT_RATIO}",
    "truncated": "the image data is truncated",
    "corrupt": "the image data is corrupt (it does not decode)",
}


def check_image(data: bytes, max_pixels: int) -> dict:
    """Decode `data` completely: {"ext": extension to store it under, "problem": a key of
    PROBLEMS or None}. A JPEG's every entropy-coded block is decoded, at 1/8 scale: its
    full-size inverse DCT and colour conversion cannot fail where that succeeded (libjpeg
    reports corrupt entropy data as warnings either way), and cost ~55 % of its time. A PNG's
    rows are inflated, not unfiltered (`_png_rows_problem`)."""
    from PIL import Image

    default, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels  # raise on the header
    try:
        return _check_image(data, max_pixels)
    finally:
        Image.MAX_IMAGE_PIXELS = default  # (the warm-up calls this before the zygote forks)


def _check_image(data: bytes, max_pixels: int) -> dict:
    from PIL import Image, UnidentifiedImageError

    ext = ""
    try:
        with Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS)) as img:
            fmt, (width, height) = img.format, img.size
            ext = _EXTENSIONS[fmt]
            if width * height > max_pixels:
                return {"ext": ext, "problem": "pixels"}
            img.verify()  # structure and checksums (PNG chunks, ...)
        problem = _png_rows_problem(data) if fmt == "PNG" else DECODE_WHOLE
        if problem is DECODE_WHOLE:
            with Image.open(io.BytesIO(data), formats=["JPEG" if fmt == "MPO" else fmt]) as img:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(width // 8, 1), max(height // 8, 1)))
                img.load()  # every pixel (a JPEG: every block): a truncated or corrupt stream fails here
        elif problem is not None:
            return {"ext": ext, "problem": problem}
    except Image.DecompressionBombError:
        return {"ext": ext, "problem": "pixels"}
    except UnidentifiedImageError:
        return {"ext": ext, "problem": "format"}
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        return {"ext": ext, "problem": "truncated" if "truncated" in str(exc) else "corrupt"}
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return {"ext": ext, "problem": "aspect"}
    return {"ext": ext, "problem": None}


# A PNG's rows are deflated, each after a filter-type byte. Unfiltering them (~40 % of PIL's
# decode: its Paeth filter goes byte by byte) cannot fail once the data inflates to every row
# and each filter type is known. For the PNGs code writes (8 bits per sample, not interlaced:
# grey, grey+alpha, RGB, RGBA) the checker checks exactly that, on the data PIL's decoder reads
# (the first run of IDAT chunks, inflated as far as the last row); any other PNG is decoded
# whole. tests/test_sandbox_check_image.py holds the verdicts to a full decode's.
DECODE_WHOLE = "decode whole"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}   # colour type -> samples per pixel
_PNG_FILTERS = 5                           # filter types 0-4


def _png_rows_problem(data: bytes) -> str | None:
    """None, "truncated" or "corrupt" for a PNG whose chunks `verify()` passed; DECODE_WHOLE
    for a layout it does not check."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or colour not in _PNG_CHANNELS or interlace or not width or not height:
        return DECODE_WHOLE
    stride = 1 + width * _PNG_CHANNELS[colour]
    try:
        rows = zlib.decompressobj().decompress(png_image_data(data), stride * height)
    except zlib.error:
        return "corrupt"
    if len(rows) < stride * height:
        return "truncated"
    return "corrupt" if max(rows[::stride]) >= _PNG_FILTERS else None


def png_image_data(data: bytes) -> bytes:
    """A PNG's zlib stream as PIL's decoder reads it: its first run of IDAT chunks, joined."""
    pos, parts = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + length])
        elif parts or kind == b"IEND":
            break
        pos += 12 + length
    return b"".join(parts)


def serve_checks(fd_in: int, fd_out: int, max_pixels: int, max_bytes: int) -> None:
    """The checker child's loop: image bytes in, `check_image`'s verdict out."""
    while True:
        data = runner.read_frame(fd_in, max_bytes)
        if data is None:
            return
        runner.write_frame(fd_out, json.dumps(check_image(data, max_pixels)).encode())


def ask_checker(to_checker: int, from_checker: int, files: list[tuple[str, bytes]],
                seconds: float) -> tuple[list[str], tuple[str, str] | None]:
    """Have a checker child (`serve_checks`) decode each file within `seconds` in all:
    (the extension to store each under, None) or ([], error). The checker is confined but
    runs decoders on hostile bytes: only verdicts of the expected form are believed."""
    deadline = time.monotonic() + seconds
    exts: list[str] = []
    for name, data in files:
        try:
            replies.write_frame(to_checker, data, deadline)
            frame = replies.read_frame(from_checker, 1 << 16, deadline)
            verdict = json.loads(frame) if frame else None
        except TimeoutError:
            return [], (R.INVALID_IMAGE, f"{name}: not decoded within {seconds:g} s")
        except (OSError, EOFError, ValueError, RecursionError):
            verdict = None
        if not isinstance(verdict, dict):
            return [], (R.INVALID_IMAGE, f"{name}: the image decoder crashed on it")
        problem = verdict.get("problem")
        if problem is None and verdict.get("ext") in _EXTENSIONS.values():
            exts.append(verdict["ext"])
            continue
        why = PROBLEMS.get(problem, "the image decoder crashed on it") if isinstance(problem, str) \
            else "the image decoder crashed on it"
        return [], (R.INVALID_IMAGE, f"{name}: {why}")
    return exts, None


def store_image(data: bytes, ext: str, results_dir: str) -> str:
    """Write into the caller's results directory, named by content hash, atomically."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    path = os.path.join(results_dir, f"{digest}.{ext}")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str) -> None:
    """Delete `path` and everything below it, whatever the depth: one open directory at a
    time, a list of names per level, no recursion and no path longer than one name. Call it
    only once nothing writes below `path` any more (the job's child is dead)."""
    fd = os.open(path, _DIR_FLAGS)
    names: list[str] = []            # from `path` down to the directory `fd` is
    pending = [_clear(fd)]           # per level: subdirectories still to remove
    try:
        while True:
            if pending[-1]:
                name = pending[-1].pop()
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
                names.append(name)
                pending.append(_clear(fd))
                continue
            pending[-1] = _clear(fd)  # anything an iteration over a changing directory missed
            if pending[-1]:
                continue
            pending.pop()
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear(fd: int) -> list[str]:
    """Unlink every non-directory in the directory `fd`; the names of its subdirectories."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return subdirs
