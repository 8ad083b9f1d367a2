"""The Thyme auto-corrections (THYME.md §2), as AST-located source edits.

The tree finds what to change; the edit splices new text into the original source, so comments
and formatting survive. A repair fires only when it changes something, and its name is reported.
Repairs (names as reported):
- `indentation`: only if the code does not parse: dedent, or re-indent a flush-left first line.
- `image_path`: `image_path = "<literal>"` naming no file of this call becomes the real input.
- `crop_box`: literal crop boxes are clamped to the image, corners ordered, sides >= 64 px.
- `cv2_alias`: `cv.`/`cv3.`/`cv4.`/`CV.` attribute access means `cv2.` (unless the name is bound).
- `output_dir`: the fictitious `/mnt/data/temp_processed_images` becomes the call's scratch dir.
- `float_precision`: one-digit float formats (`:.2f`, `%.2f`) print eight digits.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.protocol import VIRTUAL_OUTPUT_DIR

MIN_CROP_SIDE = 64
CV2_ALIASES = {"cv", "cv3", "cv4", "CV"}
# Tuple unpacking targets that name a box, in (x_min, y_min, x_max, y_max) order.
_CORNER_NAMES = {
    ("x1", "y1", "x2", "y2"), ("x0", "y0", "x1", "y1"), ("left", "top", "right", "bottom"),
    ("xmin", "ymin", "xmax", "ymax"), ("x_min", "y_min", "x_max", "y_max"),
    ("x_start", "y_start", "x_end", "y_end"), ("start_x", "start_y", "end_x", "end_y"),
}
_BOX_NAMES = re.compile(r"^(bbox|box|crop_box|crop_bbox|coords|crop_coords|crop_area|"
                        r"crop_region|region|roi|bounding_box|bbox_coords|box_coords)$")
_BRACE_PRECISION = re.compile(r"(\{[^{}:]*:[<>^=+\- #0-9,_]*\.)([0-7])f(?=\})")
_SPEC_PRECISION = re.compile(r"^([rRuU]?['\"][<>^=+\- #0-9,_]*\.)([0-7])f(?=['\"]$)")
_PERCENT_PRECISION = re.compile(r"(%[-+ #0-9]*\.)([0-7])f")


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
    code = code.replace("\r\n", "\n").expandtabs(4)
    yield textwrap.dedent(code)
    lines = code.split("\n")
    if len(lines) > 1 and lines[0].strip() and not lines[0][0].isspace():
        yield lines[0] + "\n" + textwrap.dedent("\n".join(lines[1:]))
    # the model indented everything but the first line by one extra level
    yield textwrap.dedent("\n".join(lines[1:])) if len(lines) > 1 and not lines[0].strip() else code


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
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
        return -node.operand.value
    return None


def clamp_box(box: list[float], width: int, height: int) -> list[float]:
    """Order the corners, clamp to the image, and grow sides shorter than 64 px around their
    centre (within the image)."""
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    out = []
    for lo, hi, size in ((x1, x2, width), (y1, y2, height)):
        lo, hi = min(max(lo, 0), size), min(max(hi, 0), size)
        need = min(MIN_CROP_SIDE, size)
        if hi - lo < need:
            centre = (lo + hi) / 2
            lo = min(max(centre - need / 2, 0), size - need)
            hi = lo + need
        out.append((lo, hi))
    (x1, x2), (y1, y2) = out
    result = [x1, y1, x2, y2]
    if all(isinstance(v, int) for v in box):
        result = [int(round(v)) for v in result]
    return result


def _box_literal(node: ast.AST) -> list[float] | None:
    if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == 4:
        values = [_number(e) for e in node.elts]
        if all(v is not None for v in values):
            return values
    return None


def _format_box(node: ast.AST, values: list[float]) -> str:
    body = ", ".join(repr(v) for v in values)
    return f"[{body}]" if isinstance(node, ast.List) else f"({body})"


def _find_crop_boxes(src: _Source, ctx: RepairContext) -> dict:
    edits, literals = {}, []
    for node in src.nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Tuple) and len(target.elts) == 4 and all(
                    isinstance(e, ast.Name) for e in target.elts):
                if tuple(e.id for e in target.elts) in _CORNER_NAMES:
                    literals.append(node.value)
            elif isinstance(target, ast.Name) and _BOX_NAMES.match(target.id):
                literals.append(node.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "crop" and len(node.args) == 1):
            literals.append(node.args[0])
    boxes = [(lit, values) for lit in literals if (values := _box_literal(lit)) is not None]
    size = ctx.image_size() if boxes else None
    if size is None:
        return {}
    for literal, values in boxes:
        fixed = clamp_box(values, *size)
        if fixed != values:
            edits[src.span(literal)] = _format_box(literal, fixed)
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
    patterns = {}  # id(string node) -> the precision pattern that applies to it
    for node in src.nodes:
        if isinstance(node, ast.JoinedStr):
            patterns[id(node)] = _BRACE_PRECISION
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "format"):
            patterns[id(node.func.value)] = _BRACE_PRECISION
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "format" and len(node.args) == 2):
            patterns[id(node.args[1])] = _SPEC_PRECISION
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            patterns[id(node.left)] = _PERCENT_PRECISION
    edits = {}
    for node in src.strings:
        pattern = patterns.get(id(node))
        if pattern is None:
            continue
        span = src.span(node)
        text = src.text(span)
        new = pattern.sub(r"\g<1>8f", text)
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
