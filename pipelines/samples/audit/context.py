"""What the audit's checks share for one trajectory (`Context`): the sample's ground truth, the last
code result, and decoded images, each image decoded once; inputs (with their pyramid for
`locate`) also stay cached across the trajectories of one sample."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipelines.core.answers import parse_options
from pipelines.core.images import store_path
from pipelines.core.schema import Sample
from pipelines.core.tasks import infer_task
from pipelines.core.trajectory import Result, Trajectory
from pipelines.samples.audit.config import AuditConfig
from pipelines.samples.audit.hints import code_boxes
from pipelines.samples.audit.locate import Pyramid
from pipelines.samples.audit.rotation import reduced
from pipelines.samples.audit.rotation_hints import RotationHint, code_rotation

UNKNOWN_TASK = "unknown"


class Unreadable(Exception):
    """An image that cannot be used; the message says why."""


class Context:
    """One trajectory under audit: what every check reads (see the module docstring)."""

    def __init__(self, trajectory: Trajectory, sample: Sample, root: Path, config: AuditConfig):
        self.t, self.sample, self.root, self.cfg = trajectory, sample, root, config
        self.meta = sample.meta or {}
        self.code_turns = trajectory.code_turns
        known = [t for t in (sample.task, trajectory.task) if t and t != UNKNOWN_TASK]
        # A real pool's samples carry `unknown`: the task is what the code did (core.tasks).
        self.task_inferred = not known
        self.task = known[0] if known else infer_task(
            [t.code for t in self.code_turns],
            [t.result.kind if t.result is not None else None for t in self.code_turns])
        self.last: Result | None = self.code_turns[-1].result if self.code_turns else None
        self._grey: dict[str, np.ndarray | Unreadable] = {}

    # -- images --------------------------------------------------------------------------------
    def produced(self) -> list[str]:
        """Every image the code produced, in order (results that are not errors)."""
        return [p for turn in self.code_turns if turn.result is not None
                and turn.result.kind != "error" for p in turn.result.images]

    def final_image(self) -> str | None:
        images = self.produced()
        return images[-1] if images else None

    def code_boxes(self, relpath: str, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The boxes named in the code of the turn that produced `relpath` (`hints.py`): where
        `locate` looks first. Never the ground truth's box: the code's own claims only."""
        for turn in self.code_turns:
            if turn.result is not None and relpath in turn.result.images:
                return code_boxes(turn.code, width, height, self.cfg.code_box_hints)
        return []

    def code_rotation(self, relpath: str, width: int, height: int) -> RotationHint | None:
        """The rotation the code of the turn that produced `relpath` says it applied
        (`rotation_hints.py`): the hypothesis the rotation check scores first. The code's claim
        only, never the ground truth's angle."""
        if not self.cfg.code_rotation_hints:
            return None
        for turn in self.code_turns:
            if turn.result is not None and relpath in turn.result.images:
                return code_rotation(turn.code, width, height)
        return None

    def grey(self, relpath: str) -> np.ndarray:
        if relpath not in self._grey:
            try:
                self._grey[relpath] = _load_grey(self._resolve(relpath), self.cfg.max_pixels)
            except Unreadable as exc:
                self._grey[relpath] = exc
        value = self._grey[relpath]
        if isinstance(value, Unreadable):
            raise value
        return value

    def input(self) -> Input:
        if not self.sample.images:
            raise Unreadable("the sample has no input image")
        return _cached_input(self._resolve(self.sample.images[0].relpath), self.cfg.max_pixels)

    def _resolve(self, relpath: str) -> Path:
        try:
            return store_path(self.root, relpath)
        except ValueError as exc:
            raise Unreadable(str(exc)) from None

    # -- ground truth --------------------------------------------------------------------------
    def gt_box(self) -> tuple[int, int, int, int] | None:
        box = self.meta.get("box")
        if not isinstance(box, list | tuple) or len(box) != 4 or not self.sample.images:
            return None
        try:
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        except (TypeError, ValueError):
            return None
        ref = self.sample.images[0]
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(ref.width, x2), min(ref.height, y2)
        return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None

    def options(self) -> dict[str, str]:
        return parse_options(self.meta.get("options"))


def _load_grey(path: Path, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise Unreadable(f"{im.width}x{im.height} exceeds {max_pixels} pixels")
            if im.format == "JPEG":
                im.draft("L", im.size)   # decode the luma plane only
            im.load()
            grey = im if im.mode == "L" else im.convert("L")
            return np.asarray(grey)
    except FileNotFoundError:
        raise Unreadable(f"{path.name} is missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise Unreadable(f"{path.name} does not decode ({exc})") from None


@dataclass
class Input:
    grey: np.ndarray
    pyramid: Pyramid
    _reduced: dict[int, np.ndarray] = field(default_factory=dict)
    _thumb: np.ndarray | None = None
    _mean: float | None = None

    def thumb(self) -> np.ndarray:
        """`thumbnail(grey)`, made on first use: most outputs are told apart from the input by
        their mean alone (`copy_difference`). Threads may both make it: the same array."""
        if self._thumb is None:
            self._thumb = thumbnail(self.grey)
        return self._thumb

    def mean(self) -> float:
        if self._mean is None:
            self._mean = float(cv2.mean(self.grey)[0])
        return self._mean

    def reduced(self, side: int) -> np.ndarray:
        """The input at the rotation check's scale (`rotation.reduced`), made once per input: the
        candidates of one sample share it (threads may both make it: the same array either way)."""
        if side not in self._reduced:
            self._reduced[side] = reduced(self.grey, side)
        return self._reduced[side]


_INPUTS: OrderedDict[tuple, Input] = OrderedDict()
_INPUTS_LOCK = threading.Lock()
_INPUTS_KEPT = 4            # trajectories of one sample usually come together


class _Loading:
    """An input one thread is decoding; the others auditing the same sample wait for it."""

    def __init__(self):
        self.done = threading.Event()
        self.item: Input | None = None
        self.error: str | None = None     # why it is Unreadable (neither set: it failed otherwise)


_LOADING: dict[tuple, _Loading] = {}


def _cached_input(path: Path, max_pixels: int) -> Input:
    try:
        st = path.stat()
    except OSError:
        raise Unreadable(f"input image {path.name} is missing") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _INPUTS_LOCK:
        if key in _INPUTS:
            _INPUTS.move_to_end(key)
            return _INPUTS[key]
        loading = _LOADING.get(key)
        mine = loading is None
        if mine:
            loading = _LOADING[key] = _Loading()
    if not mine:
        # The candidates of one sample are audited side by side: one decode, not one per thread.
        loading.done.wait()
        if loading.item is not None:
            return loading.item
        if loading.error is not None:
            raise Unreadable(loading.error)
        return _cached_input(path, max_pixels)   # it failed otherwise: try for ourselves
    try:
        grey = _load_grey(path, max_pixels)
        item = loading.item = Input(grey, Pyramid(grey))
    except Unreadable as exc:
        loading.error = str(exc)
        raise
    finally:
        with _INPUTS_LOCK:
            del _LOADING[key]
            if loading.item is not None:
                _INPUTS[key] = loading.item
                while len(_INPUTS) > _INPUTS_KEPT:
                    _INPUTS.popitem(last=False)
        loading.done.set()
    return item


THUMB_SIDE = 128


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """128 x 128 float32: what the copy-of-the-input test compares."""
    return cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)


# Shrinking by INTER_AREA averages areas: a thumbnail's mean is its image's to within the
# rounding to whole grey levels (0.5; float error ~0.01 on the benchmark pools), and the mean
# absolute difference of two thumbnails is at least the difference of their means. Images whose
# means lie more than `limit` + 2 apart (1 for the two roundings, 1 of slack) cannot be copies.
THUMB_MEAN_SLACK = 2.0


def copy_difference(grey: np.ndarray, mean: float, inp: Input, limit: float) -> float | None:
    """The mean absolute difference of `grey`'s thumbnail and the input's (what the
    copy-of-the-input test compares with `limit`), or None where their means alone show it is
    above `limit`: then neither thumbnail is made (~3 ms each at a megapixel). Only for
    shrinking: an image with a side under 128 px is enlarged, where INTER_AREA interpolates."""
    shrunk = min(grey.shape) >= THUMB_SIDE and min(inp.grey.shape) >= THUMB_SIDE
    if shrunk and abs(mean - inp.mean()) > limit + THUMB_MEAN_SLACK:
        return None
    return float(np.abs(thumbnail(grey) - inp.thumb()).mean())

