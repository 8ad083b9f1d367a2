"""Ground truth from sources: a column mapping that reads boxes, angles, categories, difficulty,
targets, options and answers from a source's rows into the sample (`meta`, `answer`, `task`),
validated against the stored image. A value that is present but wrong (a box outside the image
or without area, an angle that is not a number in (-360, 360), ...) quarantines the row as
`bad_ground_truth`, naming the column and the value; a row without the column simply has no such
ground truth. The conventions are the generated pool's (`pipelines.pool.generate`), which the
teachers' guided prompts and the audit read: `meta.box` = [x1, y1, x2, y2] in pixels of the
stored (first) image, x2/y2 exclusive; `meta.angle` = degrees counter-clockwise the upright
content was turned (`Image.rotate(-angle, expand=True)` restores it).

The mapping is the readers' `mapping` (CLI `--map KEY=VALUE`, Dagster `mapping`), for every
format. Columns (a path into nested fields: `extra_info.bbox`, `annotations.0.bbox`; a JSON text
on the way is parsed):
    box          one box, or a list of boxes (their union is `box`; all are kept in `boxes`), each
                 [a, b, c, d], {"x1","y1","x2","y2"} or {"x","y","w","h"}, or JSON text of one
    angle        degrees
    category, difficulty, target, options (a list of "A. text" lines), answer
Settings:
    box_format     xyxy (default) | xywh | cxcywh
    box_units      pixels (default) | normalized (fractions of the image size) | thousandths
                   (0-1000 of the image size, Qwen2-VL's grounding convention)
    box_tolerance  pixels a box may stick out of the image and be clipped (default 2)
    angle_sense    ccw (default) | cw (the source's angle is clockwise)
    set_task       a task for every row, or `auto`: rows of unknown task become rotate when
                   they have a non-zero angle, crop when their box covers at most
                   `box_task_share` of the image (default 0.25)
    preset         a named set of the above, overridden by explicit keys (PRESETS)
`meta.truth_columns` records which column each value came from.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache

from pipelines.core.schema import TASKS, Sample

COLUMNS = ("box", "angle", "category", "difficulty", "target", "options", "answer")
SETTINGS = {"box_format": ("xyxy", "xywh", "cxcywh"),
            "box_units": ("pixels", "normalized", "thousandths"),
            "angle_sense": ("ccw", "cw")}
DEFAULTS = {"box_format": "xyxy", "box_units": "pixels", "angle_sense": "ccw",
            "box_tolerance": "2", "box_task_share": "0.25"}
PRESETS = {
    # the rows `python -m pipelines vstar-rows` writes from a V*-Bench folder
    "vstar": {"box": "bbox", "box_format": "xywh", "category": "category",
              "target": "target_object", "options": "options", "set_task": "crop",
              "source": "vstar"},
    # an annotated high-resolution RL set (THYME.md §3: question, answer, rough box, category)
    "hr-rl": {"box": "bbox", "category": "category", "set_task": "auto"},
}
MAX_LABEL = 200            # characters of a category, difficulty or target
# The generic reader's own keys (its columns, and the source's name).
READER_KEYS = ("question", "image", "answer", "task", "source")
KNOWN_KEYS = {*READER_KEYS, *COLUMNS, *SETTINGS, *DEFAULTS, "set_task", "preset"}


class BadTruth(ValueError):
    """A mapped ground-truth value that is malformed or out of range."""


def resolve(mapping: dict[str, str]) -> dict[str, str]:
    """The mapping with its preset expanded and settings checked (ValueError naming the key)."""
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - KNOWN_KEYS)
    if unknown:   # a misspelt key would silently map nothing
        raise ValueError(f"unknown mapping key(s) {unknown}; known: {', '.join(sorted(KNOWN_KEYS))}")
    preset = mapping.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown ground-truth preset {preset!r}; choose one of {sorted(PRESETS)}")
        mapping = {**PRESETS[preset], **mapping}
    for key, allowed in SETTINGS.items():
        if key in mapping and mapping[key] not in allowed:
            raise ValueError(f"{key}={mapping[key]!r}: expected one of {', '.join(allowed)}")
    task = mapping.get("set_task")
    if task is not None and task != "auto" and task not in TASKS:
        raise ValueError(f"set_task={task!r}: expected auto or one of {', '.join(TASKS)}")
    for key in ("box_tolerance", "box_task_share"):
        if key in mapping:
            try:
                value = float(mapping[key])
            except ValueError:
                raise ValueError(f"{key}={mapping[key]!r} is not a number") from None
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"{key} must be >= 0")
    return mapping


@lru_cache(maxsize=64)
def _resolved(items: tuple) -> dict[str, str]:
    return {**DEFAULTS, **resolve(dict(items))}


# Generic rows read these same-named columns when present (a mapping may rename or add others).
GENERIC_DEFAULTS = {"category": "category", "difficulty": "difficulty", "options": "options"}


def wants_truth(mapping: dict[str, str]) -> bool:
    return bool(mapping) and any(k in mapping for k in (*COLUMNS, "preset", "set_task"))


def apply(sample: Sample, row: dict, mapping: dict[str, str]) -> Sample:
    """`sample` with the mapped ground truth of `row` (in place, and returned). Raises
    `BadTruth` naming the column and value of the first bad one."""
    if not wants_truth(mapping):
        return sample
    m = _resolved(tuple(sorted(mapping.items())))
    meta = dict(sample.meta or {})
    found = {}
    for key in COLUMNS:
        if key not in m:
            continue
        value = lookup(row, m[key])
        if value is None or value == "" or value == []:
            continue
        found[key] = m[key]
        try:
            _set(key, value, sample, meta, m)
        except BadTruth as exc:
            raise BadTruth(f"column {m[key]!r} ({key}): {exc}; value {_show(value)}") from None
    if found:
        meta["truth_columns"] = found
    sample.meta = meta
    if m.get("source"):
        sample.source = m["source"]
    task = m.get("set_task")
    if task == "auto":
        if sample.task == "unknown":
            sample.task = _auto_task(sample, meta, float(m["box_task_share"]))
    elif task:
        sample.task = task
    return sample


def lookup(row: dict, path: str):
    """The value at a dotted path (`a.b.0.c`); JSON text met on the way is parsed. None when
    any step is missing."""
    value = row
    for step in path.split("."):
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list | tuple) and step.isdigit():
            index = int(step)
            value = value[index] if index < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


def _set(key: str, value, sample: Sample, meta: dict, m: dict) -> None:
    if key == "box":
        boxes = parse_boxes(value, sample, m)
        meta["box"] = union(boxes)
        if len(boxes) > 1:
            meta["boxes"] = boxes
    elif key == "angle":
        meta["angle"] = parse_angle(value, m["angle_sense"])
    elif key == "answer":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadTruth(f"an answer must be text or a number, not {type(value).__name__}")
        text = str(value).strip()
        if not text:
            raise BadTruth("the answer is empty")
        sample.answer = text
    elif key == "options":
        meta["options"] = parse_options(value)
    elif key == "difficulty":
        meta["difficulty"] = parse_difficulty(value)
    else:                       # category, target
        meta[key] = parse_label(value)


def _number(value) -> float:
    if isinstance(value, bool):
        raise BadTruth("a boolean is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadTruth(f"{_show(value)} is not a number") from None
    if not math.isfinite(number):
        raise BadTruth("the number is not finite")
    return number


def _one_box(value) -> tuple[list[float], str | None]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadTruth("box text is not JSON") from None
    if isinstance(value, dict):
        if {"x1", "y1", "x2", "y2"} <= set(value):
            return [_number(value[k]) for k in ("x1", "y1", "x2", "y2")], "xyxy"
        if {"x", "y", "w", "h"} <= set(value):
            return [_number(value[k]) for k in ("x", "y", "w", "h")], "xywh"
        raise BadTruth(f"a box dict needs x1/y1/x2/y2 or x/y/w/h, has {sorted(value)}")
    if isinstance(value, list | tuple) and len(value) == 4:
        return [_number(v) for v in value], None
    raise BadTruth("a box must be 4 numbers")


def parse_boxes(value, sample: Sample, m: dict) -> list[list[int]]:
    """The boxes of `value` in xyxy pixels of the sample's first image, validated."""
    if not sample.images:
        raise BadTruth("the row has no image for the box to lie in")
    width, height = sample.images[0].width, sample.images[0].height
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadTruth("box text is not JSON") from None
    items = value if (isinstance(value, list | tuple) and value and
                      all(isinstance(v, list | tuple | dict | str) for v in value)) else [value]
    boxes = []
    for item in items:
        numbers, form = _one_box(item)
        boxes.append(_to_pixels(numbers, form or m["box_format"], m["box_units"], width, height,
                                float(m["box_tolerance"])))
    return boxes


def _to_pixels(v: list[float], form: str, units: str, width: int, height: int,
               tolerance: float) -> list[int]:
    if form == "xywh":
        v = [v[0], v[1], v[0] + v[2], v[1] + v[3]]
    elif form == "cxcywh":
        v = [v[0] - v[2] / 2, v[1] - v[3] / 2, v[0] + v[2] / 2, v[1] + v[3] / 2]
    scale = {"pixels": (1, 1), "normalized": (width, height), "thousandths": (width / 1000, height / 1000)}[units]
    x1, y1, x2, y2 = v[0] * scale[0], v[1] * scale[1], v[2] * scale[0], v[3] * scale[1]
    if x2 <= x1 or y2 <= y1:
        raise BadTruth(f"the box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has no area (x2 <= x1 or y2 <= y1)")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise BadTruth(f"the box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {width}x{height} "
                       f"image (more than {tolerance:g} px)")
    box = [max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)),
           min(height, math.ceil(y2))]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise BadTruth(f"the box {box} has no area inside the image")
    return box


def union(boxes: list[list[int]]) -> list[int]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes)]


def parse_angle(value, sense: str = "ccw") -> float | int:
    """Degrees counter-clockwise in [0, 360); a value outside (-360, 360) is refused."""
    angle = _number(value)
    if not -360 < angle < 360:
        raise BadTruth(f"the angle {angle:g} is outside (-360, 360)")
    angle = (-angle if sense == "cw" else angle) % 360
    return int(angle) if float(angle).is_integer() else round(angle, 3)


def parse_difficulty(value) -> float | int | str:
    if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return parse_label(value)
    number = _number(value)
    return int(number) if number.is_integer() else number


def parse_label(value) -> str:
    if isinstance(value, list | tuple) and all(isinstance(v, str | int) for v in value):
        value = ", ".join(str(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadTruth(f"expected text, not {type(value).__name__}")
    text = " ".join(str(value).split())
    if not text or len(text) > MAX_LABEL:
        raise BadTruth(f"expected 1-{MAX_LABEL} characters of text")
    return text


def parse_options(value) -> list[str]:
    """Option lines ("A. text", what the answer cascade parses) from a list of lines or of bare
    texts (lettered A, B, ... in order), a {letter: text} mapping, JSON text of either, or text
    with one option per line."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [line for line in value.splitlines() if line.strip()]
    if isinstance(value, dict):
        value = [f"{k}. {v}" for k, v in value.items()]
    if (not isinstance(value, list | tuple) or not value or len(value) > len(_LETTERS)
            or not all(isinstance(v, str | int | float) and str(v).strip() for v in value)):
        raise BadTruth("options must be a non-empty list of option texts or lines")
    return [str(v).strip() if _LETTERED.match(str(v)) else f"{_LETTERS[i]}. {str(v).strip()}"
            for i, v in enumerate(value)]


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTERED = re.compile(r"^\s*\(?[A-Z]\s*[.):]")


def _auto_task(sample: Sample, meta: dict, box_share: float) -> str:
    if meta.get("angle"):
        return "rotate"
    box = meta.get("box")
    if box and sample.images:
        ref = sample.images[0]
        if (box[2] - box[0]) * (box[3] - box[1]) <= box_share * ref.width * ref.height:
            return "crop"
    return sample.task


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
