"""Path rewriting (issue 5): what a published row says about files must hold on the reader's
machine. For our trajectories and for the released Thyme data alike:

- the question's `User Image Path` names the input image as the dataset stores it (a path
  relative to the dataset root), `User Image Size` its real size;
- every `image_path = "..."` literal that named the original input names that same path (the
  sandbox substitutes the real input for such a literal anyway, so this is what it meant);
- processed-image paths keep the conventional output directory (`VIRTUAL_OUTPUT_DIR`, which the
  sandbox redirects): an author's own output folder becomes that directory;
- each `<image>` in the response maps, in order, to `image[1:]`.

Anything else absolute or machine-specific is left for `find_absolute_paths` (and the validation
that uses it) to report: it is never guessed at.

    python -m pipelines rewrite-paths --input thyme-sft.parquet --images-root DIR --out OUT.parquet
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from pipelines.core.prompts import set_user_image
from pipelines.core.trajectory import Result, Trajectory, Turn
from sandbox.protocol import IMAGE_TOKEN, VIRTUAL_OUTPUT_DIR

IMAGES_DIR = "images"   # published datasets keep image files (when they ship them) under this folder
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# `image_path = "<literal>"` (any string prefix, either quote).
_IMAGE_PATH_ASSIGN = re.compile(r"""(\bimage_path\s*=\s*[rRuU]?)(["'])([^"'\n]*)\2""")
# An absolute POSIX path: a '/' not preceded by a word character, '<' (closing tags), '.', ':' or
# '/' (URLs), followed by at least one directory component. Windows and home paths apart.
_STOP = r"""\s"'`<>()\[\]{},;|*?"""
ABSOLUTE_PATH = re.compile(
    rf"(?<![\w<.:/~\\-])/(?:[^{_STOP}/]+/)+[^{_STOP}/]*"
    rf"|\b[A-Za-z]:\\(?:[^{_STOP}\\]+\\)*[^{_STOP}\\]*"
    rf"|(?<![\w/])~/[^{_STOP}]*"
)


def dataset_path(store_relpath: str) -> str:
    """The dataset-relative path of an image-store file (`ab/abcd.jpg` -> `images/ab/abcd.jpg`)."""
    return f"{IMAGES_DIR}/{store_relpath}"


def store_relpath(path: str) -> str:
    """The inverse of `dataset_path`."""
    prefix = IMAGES_DIR + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not a dataset image path (expected {prefix}...)")
    return path[len(prefix):]


def is_virtual_output(path: str) -> bool:
    return path == VIRTUAL_OUTPUT_DIR or path.startswith(VIRTUAL_OUTPUT_DIR + "/")


def find_absolute_paths(text: str) -> list[str]:
    """Absolute or home-relative paths in `text`, except the sandbox's virtual output directory."""
    return [m.group(0) for m in ABSOLUTE_PATH.finditer(text or "") if not is_virtual_output(m.group(0))]


@dataclass
class Rewrites:
    """What a rewrite changed, by rule (for reports)."""

    counts: Counter

    def add(self, rule: str, n: int = 1) -> None:
        self.counts[rule] += n


def _processed_dir_target(path: str) -> str | None:
    """An author's processed-image folder (a component mentioning 'processed') mapped into the
    virtual output directory, keeping what follows it; None when the path is not one."""
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts):
        if "processed" in part.lower():
            rest = "/".join(parts[i + 1:])
            return f"{VIRTUAL_OUTPUT_DIR}/{rest}" if rest else VIRTUAL_OUTPUT_DIR
    return None


def rewrite_text(text: str, input_path: str | None, originals: list[str] = (),
                 rewrites: Rewrites | None = None) -> str:
    """Rewrite the paths in a response, code block or printed output.

    `input_path`: where the dataset stores the input image (None: the row has none).
    `originals`: paths that named the input where the text was written (e.g. the original
    question's User Image Path); any occurrence becomes `input_path`.
    """
    if not text:
        return text
    rewrites = rewrites if rewrites is not None else Rewrites(Counter())
    originals = [o for o in originals if o]
    basenames = {os.path.basename(o) for o in originals}

    def assign(m: re.Match) -> str:
        literal = m.group(3)
        if input_path is None or is_virtual_output(literal) or literal == input_path:
            return m.group(0)
        rewrites.add("image_path_literal")
        return f"{m.group(1)}{m.group(2)}{input_path}{m.group(2)}"

    text = _IMAGE_PATH_ASSIGN.sub(assign, text)
    if input_path is not None:
        for original in originals:  # relative originals too (ABSOLUTE_PATH would not see them)
            if original != input_path and original in text:
                rewrites.add("original_input", text.count(original))
                text = text.replace(original, input_path)

    def absolute(m: re.Match) -> str:
        path = m.group(0)
        if is_virtual_output(path):
            return path
        target = _processed_dir_target(path)
        if target is not None:
            rewrites.add("processed_dir")
            return target
        if input_path is not None and os.path.basename(path) in basenames:
            rewrites.add("original_input")
            return input_path
        return path  # unknown: left for validation to report

    return ABSOLUTE_PATH.sub(absolute, text)


def rewrite_question(text: str, input_path: str | None, size: tuple[int, int] | None) -> str:
    """Set the User Image Path and Size lines of a Thyme user message, leaving the rest as is."""
    return set_user_image(text, input_path, size)


def rewrite_trajectory(trajectory: Trajectory, input_path: str | None,
                       originals: list[str] = (), rewrites: Rewrites | None = None) -> Trajectory:
    """A copy whose reasoning, code and printed outputs name `input_path` for the input and the
    virtual output directory for processed images."""
    def fix(text):
        return rewrite_text(text, input_path, originals, rewrites) if text else text

    turns = [Turn(fix(t.reasoning), fix(t.code),
                  None if t.result is None else Result(t.result.kind, fix(t.result.text),
                                                       list(t.result.images), t.result.error_kind))
             for t in trajectory.turns]
    return replace(trajectory, turns=turns, answer=fix(trajectory.answer))


def count_image_tokens(text: str) -> int:
    return (text or "").count(IMAGE_TOKEN)
