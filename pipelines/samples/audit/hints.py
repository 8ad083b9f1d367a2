"""Boxes a trajectory's code names, as places to look first when locating what it produced.

    code_boxes(code, width, height, limit) -> [(x1, y1, x2, y2), ...]

Read from the syntax tree, never run (the code may be hostile; here it is only text): a tuple or
list of four numbers or names bound to numbers (`img.crop((947, 2133, 1168, 2277))`,
`box = (x1, y1, x2, y2)`, `x_min, y_min, x_max, y_max = 947, 2133, 1168, 2277`) read as
left, top, right, bottom; a two-axis slice (`img[y1:y2, x1:x2]`, cv2/numpy) as rows, columns.
Both the code as written and as the sandbox ran it (its repairs: a box grown to 64 px, code
re-indented until it parses) are read. A box is only a hint: `locate` accepts one where the pixels confirm it and searches otherwise,
so a box the code names but did not crop (or a swapped one) costs a refinement, not a verdict.
"""

from __future__ import annotations

import ast

from sandbox.repair import RepairContext, repair

MAX_CODE_CHARS = 20_000     # longer code is not read for hints (the full search still runs)
MIN_SIDE = 8                # locate's smallest needle side; smaller boxes cannot be confirmed


def code_boxes(code: str | None, width: int, height: int, limit: int = 4) -> list[tuple[int, int, int, int]]:
    """The last `limit` distinct boxes named in `code` as written and as the sandbox ran it (its
    repairs clamp a literal box to the image and grow its sides to 64 px, sandbox/repair.py),
    clamped to width x height, last first (the final crop is usually the last one written)."""
    if not code or limit < 1 or len(code) > MAX_CODE_CHARS:
        return []
    try:
        ran = repair(code, RepairContext(image_size=lambda: (width, height)))[0]
    except Exception:  # noqa: BLE001 - as in the sandbox: odd code gets no repair (hints only)
        ran = code
    boxes: list[tuple[int, int, int, int]] = []
    for box in _boxes_in(code, width, height) + (_boxes_in(ran, width, height) if ran != code else []):
        if box in boxes:
            boxes.remove(box)
        boxes.append(box)
    return boxes[::-1][:limit]


def _boxes_in(code: str, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Every box the code names, in the order written."""
    try:
        tree = ast.parse(code)
        walked = list(ast.walk(tree))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    nodes = sorted((n for n in walked if isinstance(n, ast.Tuple | ast.List | ast.Subscript)),
                   key=lambda n: (n.lineno, n.col_offset))
    numbers = bound_numbers(tree, nodes=walked)
    return [box for node in nodes if (box := _clamp(named_box(node, numbers), width, height)) is not None]


def bound_numbers(tree: ast.AST, read=None, nodes: list[ast.AST] | None = None) -> dict[str, float]:
    """Names assigned a number exactly once (`x1 = 947`, `x1, y1 = 947, 2133`); `read` turns an
    assigned expression into its number or None (default: a numeric literal); `nodes`: the
    tree's nodes where the caller has walked it already."""
    read = read or number
    seen: dict[str, float | None] = {}
    for node in nodes if nodes is not None else ast.walk(tree):
        pairs = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple | ast.List) and isinstance(node.value, ast.Tuple | ast.List) \
                        and len(target.elts) == len(node.value.elts):
                    pairs += zip(target.elts, node.value.elts, strict=True)
                else:
                    pairs.append((target, node.value))
        elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.comprehension | ast.NamedExpr):
            pairs.append((node.target, None))
        for target, value in pairs:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    value_read = read(value) if name is target and value is not None else None
                    seen[name.id] = None if name.id in seen else value_read
    return {k: v for k, v in seen.items() if v is not None}


def number(node: ast.AST | None, numbers: dict[str, float] | None = None) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return float(node.value) if abs(node.value) < 1e9 else None   # (also not inf or nan)
    if numbers is not None and isinstance(node, ast.Name):
        return numbers.get(node.id)
    return None


def named_box(node: ast.AST, numbers: dict[str, float]) -> tuple[float, ...] | None:
    if isinstance(node, ast.Tuple | ast.List) and len(node.elts) == 4:
        values = tuple(number(e, numbers) for e in node.elts)
        return values if None not in values else None
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple) and len(node.slice.elts) >= 2:
        rows, cols = node.slice.elts[:2]
        if isinstance(rows, ast.Slice) and isinstance(cols, ast.Slice):
            y1, y2, x1, x2 = (number(v, numbers) for v in (rows.lower, rows.upper, cols.lower, cols.upper))
            return (x1, y1, x2, y2) if None not in (x1, y1, x2, y2) else None
    return None


def _clamp(box: tuple[float, ...] | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    if box is None:
        return None
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    return (x1, y1, x2, y2) if x2 - x1 >= MIN_SIDE and y2 - y1 >= MIN_SIDE else None
