"""The Thyme auto-corrections (THYME.md §2), as AST-located source edits.

The tree finds what to change; the edit splices new text into the original source, so comments
and formatting survive. A repair fires only when it changes something, and its name is reported.
Each follows the original sandbox's rule, so released checkpoints see the results they were
trained on (tests/test_sandbox_compat.py runs both side by side). Repairs (names as reported):
- `indentation`: only if the code does not parse: dedent, re-indent the first line to match the
  second (flush-left or deeper), or both.
- `image_path`: `image_path = "<literal>"` naming no file of this call becomes the real input.
- `crop_box`: a literal tuple assigned to corner names (`x1, y1, x2, y2 = ...`, any of x1 y1 x2
  y2 left top right bottom) or to a box name (`bbox`, `crop_box`, ...) is clamped to the image,
  corners ordered, sides grown to 64 px from the first corner, as integers.
- `cv2_alias`: `cv.`/`cv3.`/`cv4.`/`CV.` attribute access means `cv2.` (unless the name is bound).
- `output_dir`: the fictitious `/mnt/data/temp_processed_images` becomes the call's scratch dir;
  `output_subfolders` lists the sub-folders that literal paths under it name (to be created).
- `float_precision`: a one-digit format `:.Nf}` in a string prints eight digits (`:.8f}`).
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.protocol import VIRTUAL_OUTPUT_DIR

MIN_CROP_SIDE = 64
CV2_ALIASES = {"cv", "cv3", "cv4", "CV"}
# The original's rules for what a crop box is: four names unpacked from a literal tuple, one of
# them a corner name (the four values read as x1, y1, x2, y2 whatever the names), or one of
# these names assigned a literal 4-tuple. Lists, `.crop(...)` arguments and negative literals
# were never clamped, and code written for it relies on that (PIL pads such crops).
_CORNER_WORDS = {"x1", "y1", "x2", "y2", "left", "top", "right", "bottom"}
_BOX_NAMES = {"crop_box", "bbox", "box", "coordinates", "coords", "crop_coords",
              "left_crop_coords", "right_crop_coords", "top_crop_coords", "bottom_crop_coords"}
_ONE_DIGIT_PRECISION = re.compile(r":\.\df\}")


@dataclass
class RepairContext:
    inputs: list[str] = field(default_factory=list)   # paths of the call's input files
    # (width, height) of the first input; a function so it is read only when a box needs it
    image_size: Callable[[], tuple[int, int] | None] = lambda: None
    output_dir: str = VIRTUAL_OUTPUT_DIR                # the real directory behind the virtual one
    is_known_file: Callable[[str], bool] = lambda path: False  # e.g. an image an earlier block saved


def repair(code: str, ctx: RepairContext) -> tuple[str, list[str]]:
    """Return the corrected code and the names of the repairs that fired."""
    fired: list[str] = []
    code, tree = _parseable(code, fired)
    if tree is None:
        return code, fired
    src = _Source(code, tree)
    edits: dict[tuple[int, int], str] = {}
    for name, finder in _FINDERS:
        found = finder(src, ctx)
        found = {span: text for span, text in found.items() if span not in edits}
        if found:
            edits.update(found)
            fired.append(name)
    if not edits:
        return code, fired
    repaired = _splice(code, edits)
    try:
        ast.parse(repaired)
    except SyntaxError:  # an edit we made broke the code: never make things worse
        return code, [f for f in fired if f == "indentation"]
    return repaired, fired


# ------------------------------------------------------------------ indentation

def _parseable(code: str, fired: list[str]) -> tuple[str, ast.Module | None]:
    try:
        return code, ast.parse(code)
    except SyntaxError:
        pass
    for candidate in _indentation_candidates(code):
        try:
            tree = ast.parse(candidate)
        except SyntaxError:
            continue
        fired.append("indentation")
        return candidate, tree
    return code, None


def _indentation_candidates(code: str):
    seen = set()
    for tabsize in (8, 4):  # Python's own tab stops first, then the common editor setting
        lines = [_expand_leading_tabs(line, tabsize)
                 for line in code.replace("\r\n", "\n").split("\n")]
        candidates = [textwrap.dedent("\n".join(lines))]
        if len(lines) > 1 and lines[0].strip() and not lines[0][0].isspace():
            candidates.append(lines[0] + "\n" + textwrap.dedent("\n".join(lines[1:])))
        aligned = _align_first_line_to_second(lines)
        if aligned is not None:
            candidates.append(textwrap.dedent("\n".join(aligned)))
        for candidate in candidates:
            if candidate not in seen:
                seen.add(candidate)
                yield candidate


def _expand_leading_tabs(line: str, tabsize: int) -> str:
    body = line.lstrip(" \t")
    return line[:len(line) - len(body)].expandtabs(tabsize) + body


def _align_first_line_to_second(lines: list[str]) -> list[str] | None:
    """The original's rule: the first non-empty line takes the indentation of the second (the
    model indented the first line deeper than the rest, or the rest deeper than the first)."""
    filled = [i for i, line in enumerate(lines) if line.strip()][:2]
    if len(filled) < 2:
        return None
    first, second = (lines[i] for i in filled)
    indent = second[:len(second) - len(second.lstrip(" "))]
    if first[:len(first) - len(first.lstrip(" "))] == indent:
        return None
    lines = list(lines)
    lines[filled[0]] = indent + first.lstrip(" ")
    return lines


# ------------------------------------------------------------------ finders
# Each returns {(start_byte, end_byte): replacement} over the UTF-8 source.

class _Source:
    """The code, its tree walked once, and byte offsets for AST positions (UTF-8 columns)."""

    def __init__(self, code: str, tree: ast.Module):
        self.data = code.encode()
        self.nodes = list(ast.walk(tree))
        self.line_starts, total = [], 0
        for line in self.data.splitlines(keepends=True):
            self.line_starts.append(total)
            total += len(line)
        self.line_starts.append(total)
        inside_fstring = {id(n) for node in self.nodes if isinstance(node, ast.JoinedStr)
                          for n in ast.walk(node) if n is not node}
        # string literals and f-strings, outermost only (3.11 mislocates f-string internals)
        self.strings = [n for n in self.nodes if id(n) not in inside_fstring and (
            isinstance(n, ast.JoinedStr)
            or (isinstance(n, ast.Constant) and isinstance(n.value, str)))]

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.line_starts[node.lineno - 1] + node.col_offset,
                self.line_starts[node.end_lineno - 1] + node.end_col_offset)

    def text(self, span: tuple[int, int]) -> str:
        return self.data[span[0]:span[1]].decode()


def _find_image_path(src: _Source, ctx: RepairContext) -> dict:
    if not ctx.inputs:
        return {}
    edits = {}
    for node in src.nodes:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "image_path"
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            literal = node.value.value
            real = literal.replace(VIRTUAL_OUTPUT_DIR, ctx.output_dir)
            if literal in ctx.inputs or ctx.is_known_file(real):
                continue
            edits[src.span(node.value)] = repr(ctx.inputs[0])
    return edits


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    return None


def clamp_box(box: list[float], width: int, height: int) -> list[int]:
    """The original's clamp: order the corners, keep them inside the image, grow a side shorter
    than 64 px from its first corner (back from the far edge when there is no room), and round
    to integers."""
    (x1, x2), (y1, y2) = (_clamp_side(box[0], box[2], width), _clamp_side(box[1], box[3], height))
    return [int(round(v)) for v in (x1, y1, x2, y2)]


def _clamp_side(a: float, b: float, size: int) -> tuple[float, float]:
    size = float(size)
    lo, hi = min(a, b), max(a, b)
    lo = min(max(0.0, lo), size - 1.0 if size > 0 else 0.0)
    hi = min(max(0.0, hi), size)
    if lo >= hi and size > 0:
        lo = max(0.0, hi - 1.0)
        if hi <= lo:
            hi = min(size, lo + 1.0)
    if size > 0 and hi - lo < MIN_CROP_SIDE:
        if size < MIN_CROP_SIDE:
            lo, hi = 0.0, size
        else:
            hi = lo + MIN_CROP_SIDE
            if hi > size:
                hi, lo = size, max(0.0, size - MIN_CROP_SIDE)
    if size > 0 and lo >= hi:
        hi = min(size, lo + 1.0)
    return lo, hi


def _box_literal(node: ast.AST) -> list[float] | None:
    if isinstance(node, ast.Tuple) and len(node.elts) == 4:
        values = [_number(e) for e in node.elts]
        if all(v is not None for v in values):
            return values
    return None


def _find_crop_boxes(src: _Source, ctx: RepairContext) -> dict:
    literals = []
    for node in src.nodes:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if isinstance(target, ast.Tuple) and len(target.elts) == 4 and all(
                isinstance(e, ast.Name) for e in target.elts):
            if any(e.id.lower() in _CORNER_WORDS for e in target.elts):
                literals.append(node.value)
        elif isinstance(target, ast.Name) and target.id in _BOX_NAMES:
            literals.append(node.value)
    boxes = [(lit, values) for lit in literals if (values := _box_literal(lit)) is not None]
    size = ctx.image_size() if boxes else None
    if size is None:
        return {}
    edits = {}
    for literal, values in boxes:
        fixed = clamp_box(values, *size)
        if fixed != [int(round(v)) for v in values]:
            edits[src.span(literal)] = "(" + ", ".join(map(str, fixed)) + ")"
    return edits


def _find_cv_aliases(src: _Source, ctx: RepairContext) -> dict:
    bound = set()
    for node in src.nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return {src.span(node.value): "cv2" for node in src.nodes
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in CV2_ALIASES and node.value.id not in bound}


def _find_output_dir(src: _Source, ctx: RepairContext) -> dict:
    edits = {}
    for node in src.strings:
        span = src.span(node)
        text = src.text(span)
        if VIRTUAL_OUTPUT_DIR in text:
            edits[span] = text.replace(VIRTUAL_OUTPUT_DIR, ctx.output_dir)
    return edits


def _find_float_formats(src: _Source, ctx: RepairContext) -> dict:
    edits = {}
    for node in src.strings:
        span = src.span(node)
        text = src.text(span)
        new = _ONE_DIGIT_PRECISION.sub(":.8f}", text)
        if new != text:
            edits[span] = new
    return edits


_FINDERS = (
    ("image_path", _find_image_path),     # first: it replaces the whole literal
    ("output_dir", _find_output_dir),
    ("crop_box", _find_crop_boxes),
    ("cv2_alias", _find_cv_aliases),
    ("float_precision", _find_float_formats),
)


def _splice(code: str, edits: dict[tuple[int, int], str]) -> str:
    data = code.encode()
    for (start, end), text in sorted(edits.items(), reverse=True):
        data = data[:start] + text.encode() + data[end:]
    return data.decode()


def output_subfolders(code: str, output_dir: str) -> list[str]:
    """The sub-folders of `output_dir` that the code's literal paths name, e.g.
    `f"{output_dir}/crops/{name}.jpg"` -> `{output_dir}/crops`, so that saving there works as it
    did in the original. Only paths that stay inside `output_dir`; for an f-string, the part
    before its first placeholder."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    root = output_dir.rstrip("/") + "/"
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            literal = node.value
        elif isinstance(node, ast.JoinedStr):
            literal = ""
            for part in node.values:
                if not isinstance(part, ast.Constant):
                    break
                literal += part.value
        else:
            continue
        if not literal.startswith(root):
            continue
        folder = os.path.normpath(os.path.dirname(literal))
        if folder.startswith(root) and folder not in found:
            found.append(folder)
    return found


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an input image, for clamping crop boxes; None when it is no image."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - not an image: no crop clamping
        return None
