"""The rotation a trajectory's code says it applied, as the hypothesis the rotation check scores first.

    code_rotation(code, width, height) -> RotationHint(angle, source, size, zoom) | None

Read from the syntax tree, never run (as `hints.py`), from the code as the sandbox ran it (its
repairs). The statements are followed in order (a loop's or a function's body read once, where
it is written), each image variable keeping where it came from in the input: turned by how
much, cut where. What counts (degrees counter-clockwise, as PIL):
`img.rotate(a, expand=...)` (PIL), `cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)` (or 0, 1, 2),
`np.rot90(img, k, axes)`, `img.transpose(Image.ROTATE_90)` (or `Image.Transpose.`), `scipy.ndimage.rotate`,
`skimage.transform.rotate`, `imutils.rotate` / `rotate_bound`, and `cv2.warpAffine(img, M, ...)` with
`M = cv2.getRotationMatrix2D(centre, a, scale)`; crops (`img.crop(box)`, `img[y1:y2, x1:x2]`) before
or after. Angles and boxes are numbers, names bound once to numbers, or +-*/ of those. The image
described is the one saved last (`.save(...)`, `cv2.imwrite(path, img)`, `imwrite`/`imsave`).

Anything that does not fit gives no hint (the check's full search runs as before): a mirror
(`flip`, `FLIP_*`, `TRANSPOSE`), a free warp, a rotation about another centre, an angle or box the
code computes, a crop after a resize or a warp. Other calls pass the image through unchanged,
`ImageOps.exif_transpose` included (the image store keeps inputs upright, pipelines/core/images.py;
were one not, the pixels would reject the claim). A hint is only a claim: rotation.py accepts it
only where the pixels confirm it.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, replace

from pipelines.samples.audit.hints import MAX_CODE_CHARS, bound_numbers, named_box
from sandbox.repair import CV2_ALIASES, RepairContext, repair


@dataclass(frozen=True)
class RotationHint:
    """What the code says the saved image shows."""

    angle: float                           # degrees counter-clockwise the input was turned (net)
    source: tuple[float, float]            # the input point (px) at the saved image's centre
    size: tuple[float, float] | None       # the region it shows, in input px (None: after a warp)
    zoom: float = 1.0                      # its px per input px, where `size` is None


class _Unreadable(Exception):
    """Code whose geometry cannot be followed: no hint."""


def code_rotation(code: str | None, width: int, height: int) -> RotationHint | None:
    """The rotation (and crop) the code applied to the image it saved last, or None when the code
    does not parse, saves nothing, rotates nothing, or does something the reader cannot follow."""
    if not code or len(code) > MAX_CODE_CHARS or width < 1 or height < 1:
        return None
    try:
        tree, nodes = _as_ran(code, width, height)
        reader = _Reader(tree, nodes, width, height)
        reader.statements(tree.body)
    except (SyntaxError, ValueError, RecursionError, MemoryError, _Unreadable):
        return None
    g = reader.saved
    if g is None or not g.rotated:
        return None
    return RotationHint(g.angle, g.source, g.size, g.zoom)


def _as_ran(code: str, width: int, height: int) -> tuple[ast.Module, list[ast.AST]]:
    """The code's tree as the sandbox ran it, and its nodes. Only three of its repairs can change what the reader
    follows (sandbox/repair.py): re-indenting code that does not parse, clamping and growing a
    literal 4-tuple assigned to a name, and `cv.` for `cv2.`; code with none of those ran as
    written (and the repair, ~1 ms, is skipped)."""
    try:
        tree = ast.parse(code)
        nodes = list(ast.walk(tree))
        if not any(isinstance(n, ast.Name) and n.id in CV2_ALIASES
                   or isinstance(n, ast.Assign) and isinstance(n.value, ast.Tuple | ast.List) and len(n.value.elts) == 4
                   for n in nodes):
            return tree, nodes
    except SyntaxError:
        pass
    try:
        ran = repair(code, RepairContext(image_size=lambda: (width, height)))[0]
    except Exception:  # noqa: BLE001 - as in the sandbox: odd code gets no repair (hints only)
        ran = code
    tree = ast.parse(ran)
    return tree, list(ast.walk(tree))


@dataclass(frozen=True)
class _Geometry:
    """An image derived from the input: turned by `angle`; its centre shows input point `source`;
    it spans `size` px of the turned input's canvas (None: unknown, after a warp)."""

    angle: float
    source: tuple[float, float]
    size: tuple[float, float] | None
    zoom: float = 1.0
    resized: bool = False       # its pixels are no longer the canvas's: a later crop is not followed
    rotated: bool = False


_ROTATE_CODES = {"ROTATE_90_CLOCKWISE": -90.0, "ROTATE_180": 180.0, "ROTATE_90_COUNTERCLOCKWISE": 90.0}
_CV2_ROTATE_NUMBERS = {0: -90.0, 1: 180.0, 2: 90.0}
_TRANSPOSE_ROTATIONS = {"ROTATE_90": 90.0, "ROTATE_180": 180.0, "ROTATE_270": 270.0}
_MIRRORS = {"flip", "fliplr", "flipud", "mirror", "warpPerspective", "affine_transform", "warp",
            "transform", "perspective", "shear"}
_SAVES = {"imwrite", "imsave"}


class _Reader:
    """Follows the statements in order; `saved` is the last saved image's geometry."""

    def __init__(self, tree: ast.Module, nodes: list[ast.AST], width: int, height: int):
        self.numbers = bound_numbers(tree, read=lambda v: _value(v, {}), nodes=nodes)
        self.modules = _imports(nodes)
        self.boxes = _bound_tuples(nodes)
        self.input = _Geometry(0.0, (width / 2, height / 2), (float(width), float(height)))
        self.images: dict[str, _Geometry] = {}
        self.matrices: dict[str, tuple[float, float]] = {}   # name -> (angle, scale)
        self.saved: _Geometry | None = None

    def statements(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                matrix = self._matrix(stmt.value)
                geometry = self.geometry(stmt.value)
                for t in targets:
                    if isinstance(t, ast.Name):
                        self.images[t.id] = geometry
                        if matrix is not None:
                            self.matrices[t.id] = matrix
            elif isinstance(stmt, ast.Expr):
                self.geometry(stmt.value)
            else:       # compound statements: their bodies in order (a loop read once)
                for field in ("body", "orelse", "finalbody"):
                    self.statements(getattr(stmt, field, None) or [])
                for handler in getattr(stmt, "handlers", None) or []:
                    self.statements(handler.body)

    def geometry(self, node: ast.AST) -> _Geometry:
        """Where the image an expression yields comes from (the input unless it is known)."""
        if isinstance(node, ast.Name):
            return self.images.get(node.id, self.input)
        if isinstance(node, ast.Subscript):
            source = self.geometry(node.value)
            box = named_box(node, self.numbers)
            if box is not None:
                return _crop(source, box)
            if isinstance(node.slice, ast.Tuple) and any(
                    isinstance(e, ast.Slice) and (e.lower is not None or e.upper is not None)
                    for e in node.slice.elts):
                raise _Unreadable("a crop by computed bounds")
            return source
        if isinstance(node, ast.BinOp):
            return self.geometry(node.left)
        if isinstance(node, ast.Call):
            return self._call(node)
        return self.input

    def _call(self, call: ast.Call) -> _Geometry:
        name = _dotted(call.func, self.modules)
        last = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        on_module = receiver is not None and _root(receiver) in self.modules   # np.x, not img.x
        args = call.args

        def arg(i: int, key: str) -> ast.AST | None:      # by keyword, else the i-th positional
            value = _keyword(call, key)
            return value if value is not None else (args[i] if len(args) > i else None)

        def first() -> _Geometry:                           # the image a function is given
            return self.geometry(args[0]) if args else self.input
        if last in _SAVES and len(args) >= 2:
            self.saved = self.geometry(args[1])
            return self.input
        if last == "save" and receiver is not None and not on_module:
            self.saved = self.geometry(receiver)
            return self.input
        if last == "savefig":           # a figure: not an image the reader follows
            self.saved = None
            return self.input
        if last in _MIRRORS:
            raise _Unreadable(f"{last}: not a rotation")
        if name == "cv2.rotate":
            return _rotate(first(), self._rotate_code(arg(1, "rotateCode")), expand=True)
        if last == "rot90" and name.startswith("numpy."):
            k = self._number(arg(1, "k"), default=1.0)
            axes = arg(2, "axes")
            sign = 1.0 if axes is None or _literal(axes) == (0, 1) else -1.0 if _literal(axes) == (1, 0) else None
            if sign is None or k != int(k):
                raise _Unreadable("rot90 over other axes")
            return _rotate(first(), 90.0 * k * sign, expand=True)
        if last == "rotate" and name.endswith("ndimage.rotate"):
            axes = _literal(arg(2, "axes"))
            sign = {None: 1.0, (1, 0): 1.0, (0, 1): -1.0}.get(axes)
            if sign is None:
                raise _Unreadable("ndimage.rotate over other axes")
            return _rotate(first(), sign * self._number(arg(1, "angle")), self._flag(arg(3, "reshape"), True))
        if last == "rotate" and name.startswith("skimage."):
            self._none(arg(3, "center"))
            return _rotate(first(), self._number(arg(1, "angle")), self._flag(arg(2, "resize"), False))
        if name in ("imutils.rotate", "imutils.rotate_bound"):
            if last == "rotate":
                self._none(arg(2, "center"))
                if self._number(arg(3, "scale"), default=1.0) != 1.0:
                    raise _Unreadable("imutils.rotate with a scale")
            sign = -1.0 if last == "rotate_bound" else 1.0     # rotate_bound turns clockwise
            return _rotate(first(), sign * self._number(arg(1, "angle")), expand=last == "rotate_bound")
        if last == "warpAffine":
            matrix = self.matrices.get(args[1].id) if len(args) > 1 and isinstance(args[1], ast.Name) else \
                (self._matrix(args[1]) if len(args) > 1 else None)
            if matrix is None:
                raise _Unreadable("warpAffine with a matrix not from getRotationMatrix2D")
            if not 0 < matrix[1] < 100:
                raise _Unreadable("a matrix that does not keep the image (scale <= 0)")
            turned = _rotate(first(), matrix[0], expand=False)
            return replace(turned, size=None, zoom=turned.zoom * matrix[1])
        if receiver is not None and not on_module:          # a method of an image
            source = self.geometry(receiver)
            if last == "rotate":            # PIL: rotate(angle, resample, expand, center, translate)
                self._none(arg(3, "center"))
                self._none(arg(4, "translate"))
                return _rotate(source, self._number(arg(0, "angle")), self._flag(arg(2, "expand"), False))
            if last == "transpose":
                method = arg(0, "method")
                attr = method.attr if isinstance(method, ast.Attribute) else getattr(method, "id", None)
                if attr not in _TRANSPOSE_ROTATIONS:
                    raise _Unreadable("a transpose that is not a rotation")
                return _rotate(source, _TRANSPOSE_ROTATIONS[attr], expand=True)
            if last == "crop":
                box = arg(0, "box")
                if isinstance(box, ast.Name):
                    box = self.boxes.get(box.id)
                values = named_box(box, self.numbers) if box is not None else None
                if values is None:
                    raise _Unreadable("a crop by a computed box")
                return _crop(source, values)
            if last in ("resize", "thumbnail", "reduce"):
                return replace(source, resized=True)
            return source
        if last in ("resize", "pyrDown", "pyrUp", "rescale", "zoom") and args:
            return replace(first(), resized=True)
        return first()

    # -- reading values --------------------------------------------------------------------------
    def _number(self, node: ast.AST | None, default: float | None = None) -> float:
        value = default if node is None else _value(node, self.numbers)
        if value is None:
            raise _Unreadable("an angle the code computes")
        return value

    def _flag(self, node: ast.AST | None, default: bool) -> bool:
        if node is None:
            return default
        if isinstance(node, ast.Constant) and isinstance(node.value, bool | int):
            return bool(node.value)
        raise _Unreadable("a computed expand flag")

    def _none(self, node: ast.AST | None) -> None:
        if node is not None and not (isinstance(node, ast.Constant) and node.value is None):
            raise _Unreadable("a rotation about another centre")

    def _rotate_code(self, node: ast.AST | None) -> float:
        if isinstance(node, ast.Attribute) and node.attr in _ROTATE_CODES:
            return _ROTATE_CODES[node.attr]
        value = _value(node, self.numbers) if node is not None else None
        if value not in _CV2_ROTATE_NUMBERS:
            raise _Unreadable("an unknown cv2.rotate code")
        return _CV2_ROTATE_NUMBERS[int(value)]

    def _matrix(self, node: ast.AST) -> tuple[float, float] | None:
        if isinstance(node, ast.Call) and _dotted(node.func, self.modules).endswith("getRotationMatrix2D"):
            angle = _keyword(node, "angle") or (node.args[1] if len(node.args) > 1 else None)
            scale = _keyword(node, "scale") or (node.args[2] if len(node.args) > 2 else None)
            return self._number(angle), self._number(scale)
        return None



# ---------------------------------------------------------------------------------------------
# Geometry: canvases as rotation.py's `_rotate` makes them (expanded, centred)
# ---------------------------------------------------------------------------------------------

def canvas(width: float, height: float, angle: float) -> tuple[float, float]:
    """The size of a width x height image turned by `angle` on an enlarged canvas."""
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    return width * c + height * s, width * s + height * c


def turn(point: tuple[float, float], centre: tuple[float, float], angle: float,
         to_centre: tuple[float, float]) -> tuple[float, float]:
    """`point` turned counter-clockwise by `angle` about `centre`, which lands on `to_centre`
    (cv2.getRotationMatrix2D's sense: y points down)."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    dx, dy = point[0] - centre[0], point[1] - centre[1]
    return to_centre[0] + c * dx + s * dy, to_centre[1] - s * dx + c * dy


def _rotate(g: _Geometry, angle: float, expand: bool) -> _Geometry:
    """Turned about its own centre: the input point at the centre stays there."""
    if not math.isfinite(angle):
        raise _Unreadable("an angle that is not finite")
    size = g.size
    if size is not None and expand:
        size = canvas(*size, angle)
    return replace(g, angle=g.angle + angle, size=size, rotated=True)


def _crop(g: _Geometry, box: tuple[float, ...]) -> _Geometry:
    """A crop in the image's own pixels: its centre moves by the box's offset from the image's
    centre, turned back into input pixels."""
    if g.size is None or g.resized:
        raise _Unreadable("a crop after a warp or a resize")
    w, h = g.size
    x1, y1, x2, y2 = max(0.0, box[0]), max(0.0, box[1]), min(w, box[2]), min(h, box[3])
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise _Unreadable("an empty crop")
    # the box's centre, relative to the image's, turned back by the image's angle
    centre = turn(((x1 + x2) / 2, (y1 + y2) / 2), (w / 2, h / 2), -g.angle, g.source)
    return replace(g, source=centre, size=(x2 - x1, y2 - y1))


# ---------------------------------------------------------------------------------------------
# Small readers of the syntax tree
# ---------------------------------------------------------------------------------------------

def _value(node: ast.AST | None, numbers: dict[str, float]) -> float | None:
    """A number, a name bound to one, or +-*/ of those; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value) if abs(node.value) < 1e9 else None
    if isinstance(node, ast.Name):
        return numbers.get(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _value(node.operand, numbers)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        a, b = _value(node.left, numbers), _value(node.right, numbers)
        if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
            return None
        v = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) \
            if not isinstance(node.op, ast.Div) else a / b
        return v if v is not None and abs(v) < 1e9 else None
    return None


def _literal(node: ast.AST | None):
    """A tuple or list of small integer literals as a tuple (axes), else None."""
    if isinstance(node, ast.Tuple | ast.List) and all(
            isinstance(e, ast.Constant) and type(e.value) is int for e in node.elts):
        return tuple(e.value for e in node.elts)
    return None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


_USUAL_IMPORTS = {"np": "numpy", "numpy": "numpy", "cv2": "cv2", "Image": "PIL.Image",
                  "ImageOps": "PIL.ImageOps", "ndimage": "scipy.ndimage", "plt": "matplotlib.pyplot"}


def _imports(nodes: list[ast.AST]) -> dict[str, str]:
    """Local name -> what it was imported as (`np` -> `numpy`, `rotate` -> `scipy.ndimage.rotate`);
    the usual names count as imported (snippets often rely on a preamble)."""
    names: dict[str, str] = dict(_USUAL_IMPORTS)
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                names[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _bound_tuples(nodes: list[ast.AST]) -> dict[str, ast.AST]:
    """Names assigned a four-element tuple or list exactly once (`box = (x1, y1, x2, y2)`)."""
    seen: dict[str, ast.AST | None] = {}
    for node in nodes:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    four = isinstance(node.value, ast.Tuple | ast.List) and len(node.value.elts) == 4
                    seen[t.id] = None if t.id in seen or not four else node.value
    return {k: v for k, v in seen.items() if v is not None}


def _root(node: ast.AST) -> str:
    """The first name of a dotted path (`np` of `np.linalg`); '' for a call's result and the like."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _dotted(node: ast.AST, modules: dict[str, str]) -> str:
    """`np.rot90` -> `numpy.rot90` (the first name as imported); '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(modules.get(node.id, node.id))
    return ".".join(reversed(parts))
