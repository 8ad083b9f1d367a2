"""Streaming readers: source files -> raw rows -> `Sample`s (or quarantine reasons).

A reader knows two things about its format: how to list a file's rows in bounded pieces
(`units`: parquet row groups, JSONL line ranges, Arrow record batches) and how to turn one raw
row into a `Sample` (`to_sample`). Files are never loaded whole: parquet is read in small
record batches of a single row group, JSONL line by line.

A file that cannot be opened (truncated, not parquet, empty) becomes one `unreadable` unit, and a
unit that fails while it is read raises `UnitUnreadable`: ingest quarantines it as a whole and goes
on with the other files.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipelines.core.images import ImageRejected, ImageStore
from pipelines.core.prompts import parse_user, strip_image_tokens
from pipelines.core.schema import Sample
from pipelines.core.tasks import infer_task_from_response
from pipelines.pool import truth
from sandbox.protocol import IMAGE_TOKEN, extract_answer

FORMATS = ("thyme-sft", "thyme-rl", "deepeyes", "generic")
BATCH_ROWS = 64  # rows decoded at a time: bounds memory when rows carry large base64 images


class RowRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class UnitUnreadable(Exception):
    """A unit (a whole file, or one parquet row group) that cannot be read; `reason` is a
    quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# What reading a damaged file raises: I/O and Arrow errors, and (JSON state, UTF-8, Thrift
# metadata) ValueErrors.
READ_ERRORS = (OSError, EOFError, pa.ArrowException, ValueError, KeyError)


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------ units of work

@dataclass(frozen=True)
class Unit:
    """A contiguous run of rows of one file: `count` rows from global row `first` on."""
    file: str            # path as given
    kind: str            # parquet | jsonl | arrow | unreadable (a file that does not open)
    part: int            # parquet row group / arrow file index / 0 for jsonl
    first: int           # index of the first row within the file
    count: int
    error: str = ""      # unreadable: why


def list_units(path: str) -> list[Unit]:
    """Split a file (or a saved HF dataset directory) into units, reading only metadata. A file
    whose metadata cannot be read is one `unreadable` unit of unknown size."""
    p = Path(path)
    if not p.is_dir() and p.suffix not in (".parquet", ".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported input (expected .parquet, .jsonl or a saved dataset dir)")
    try:
        return _list_units(p, path)
    except READ_ERRORS as exc:
        return [Unit(path, "unreadable", 0, 0, 0, error=describe(exc))]


def _list_units(p: Path, path: str) -> list[Unit]:
    if p.is_dir():  # datasets.save_to_disk: state.json lists Arrow stream files
        state = json.loads((p / "state.json").read_text())
        units, first = [], 0
        for i, entry in enumerate(state["_data_files"]):
            with pa.memory_map(str(p / entry["filename"])) as source:
                rows = ipc.open_stream(source).read_all().num_rows
            units.append(Unit(path, "arrow", i, first, rows))
            first += rows
        return units
    if p.suffix == ".parquet":
        meta = pq.ParquetFile(path).metadata
        units, first = [], 0
        for rg in range(meta.num_row_groups):
            rows = meta.row_group(rg).num_rows
            units.append(Unit(path, "parquet", rg, first, rows))
            first += rows
        return units
    if p.suffix in (".jsonl", ".json"):
        with open(path, "rb") as f:
            rows = sum(1 for _ in f)
        return [Unit(path, "jsonl", 0, 0, rows)]
    raise AssertionError(p)


def read_unit(unit: Unit, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, dict | None, str]]:
    """Rows `lo`..`hi` (relative to the unit) as (row number in file, dict or None, error).
    Raises `UnitUnreadable` when the unit cannot be read (rows already yielded are then suspect:
    the caller drops the unit whole)."""
    hi = unit.count if hi is None else hi
    if unit.kind == "unreadable":
        raise UnitUnreadable("unreadable_file", unit.error)
    try:
        if unit.kind == "parquet":
            # CRCs are checked where the writer stored them: silent page corruption is caught
            pf = pq.ParquetFile(unit.file, buffer_size=1 << 20, page_checksum_verification=True)
            yield from _batch_rows(pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[unit.part]),
                                   unit.first, lo, hi)
        elif unit.kind == "arrow":
            state = json.loads((Path(unit.file) / "state.json").read_text())
            name = state["_data_files"][unit.part]["filename"]
            with pa.memory_map(str(Path(unit.file) / name)) as source:
                yield from _batch_rows(ipc.open_stream(source), unit.first, lo, hi)
        else:
            yield from _jsonl_rows(unit.file, lo, hi)
    except READ_ERRORS as exc:
        if unit.kind == "parquet":
            raise UnitUnreadable("unreadable_row_group", f"row group {unit.part} (rows "
                                 f"{unit.first + lo}-{unit.first + hi - 1}): {describe(exc)}") from None
        raise UnitUnreadable("unreadable_file", f"rows {unit.first + lo}-{unit.first + hi - 1}: "
                             f"{describe(exc)}") from None


def _jsonl_rows(file: str, lo: int, hi: int) -> Iterator[tuple[int, dict | None, str]]:
    """Lines `lo`..`hi`; blank lines are no rows (a trailing empty line is common)."""
    with open(file, "rb") as f:
        for number, line in enumerate(f):
            if number < lo:
                continue
            if number >= hi:
                return
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.decode("utf-8")), ""
            except UnicodeDecodeError as exc:
                yield number, None, f"bad_text: {exc}"
            except json.JSONDecodeError as exc:
                yield number, None, f"unparseable: invalid JSON ({exc.msg})"


def _batch_rows(batches, first: int, lo: int, hi: int) -> Iterator[tuple[int, dict | None, str]]:
    """Rows `lo`..`hi` of a unit whose record batches start at row `first`; stops reading at hi."""
    index = first
    for batch in batches:
        end = index + batch.num_rows
        if end > first + lo:
            start = max(first + lo - index, 0)
            stop = min(first + hi - index, batch.num_rows)
            yield from _slice_rows(batch.slice(start, stop - start), index + start)
        index = end
        if index >= first + hi:
            return


def _slice_rows(batch, first: int) -> Iterator[tuple[int, dict | None, str]]:
    """A batch's rows; Arrow does not validate UTF-8 on read, so a string that is not UTF-8
    fails the whole batch's conversion: then row by row, and only that row is rejected."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        for k in range(batch.num_rows):
            try:
                yield first + k, batch.slice(k, 1).to_pylist()[0], ""
            except UnicodeDecodeError as exc:
                yield first + k, None, f"bad_text: a text column is not valid UTF-8 ({exc.reason})"
        return
    for k, row in enumerate(rows):
        yield first + k, row, ""


# ------------------------------------------------------------------ field helpers

def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowRejected("missing_field", f"'{key}' is missing")
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RowRejected("bad_text", f"'{key}' is not valid UTF-8") from None
    if not isinstance(value, str):
        raise RowRejected("wrong_type", f"'{key}' is {type(value).__name__}, expected text")
    if "\ufffd" in value:
        raise RowRejected("bad_text", f"'{key}' contains undecodable bytes (U+FFFD)")
    if required and not value.strip():
        raise RowRejected("bad_text", f"'{key}' is empty")
    return value


def _image_list(row: dict, key: str) -> list:
    value = row.get(key)
    if value is None:
        raise RowRejected("missing_field", f"'{key}' is missing")
    if isinstance(value, (str, bytes, dict)):
        value = [value]
    if not isinstance(value, list):
        raise RowRejected("wrong_type", f"'{key}' is {type(value).__name__}, expected a list")
    return value


def store_image(store: ImageStore, item, image_root: str | None = None, notes: dict | None = None):
    """Store one image given as base64 text, raw bytes, an HF/verl {'bytes', 'path'} dict, or
    (with `image_root`) a relative path. Returns (ref, written); `notes` as `ImageStore.put`."""
    if isinstance(item, dict):
        if item.get("bytes"):
            return store.put(item["bytes"], notes)
        item = item.get("path")
        if not item:
            raise ImageRejected("empty_image", "an image entry has neither bytes nor path")
        if image_root is None:
            raise ImageRejected("missing_image_file", f"path {item!r} given without an image root")
    if isinstance(item, bytes):
        return store.put(item, notes)
    if not isinstance(item, str):
        raise RowRejected("wrong_type", f"an image is {type(item).__name__}")
    if image_root is not None and not _looks_base64(item):
        path = Path(image_root) / item
        if not path.is_file():
            raise ImageRejected("missing_image_file", f"{item} not found under the image root")
        return store.put_file(path, notes)
    return store.put_base64(item, notes)


def _looks_base64(text: str) -> bool:
    return len(text) > 256 or text.startswith("data:image/")


# ------------------------------------------------------------------ formats

@dataclass
class Reader:
    """Turns raw rows of one format into Samples."""

    format: str
    image_root: str | None = None                   # generic: folder image paths are relative to
    mapping: dict[str, str] = field(default_factory=dict)  # our field -> their column (truth.py)
    base_dir: str = ""                              # origins are recorded relative to this

    def origin(self, file: str) -> str:
        return _origin(file, self.base_dir)

    def to_sample(self, file: str, number: int, row: dict, store: ImageStore) -> Sample:
        """One row as a Sample (its images stored), with the ground truth the mapping names
        (`pipelines.pool.truth`). Raises RowRejected / ImageRejected."""
        sample = getattr(self, "_" + self.format.replace("-", "_"))(self.origin(file), number, row, store)
        mapping = {**truth.GENERIC_DEFAULTS, **self.mapping} if self.format == "generic" else self.mapping
        try:
            return truth.apply(sample, row, mapping)
        except truth.BadTruth as exc:
            raise RowRejected("bad_ground_truth", str(exc)) from None

    def _images(self, items: list, store: ImageStore, meta: dict | None = None) -> list:
        """The items stored; when one was turned upright by its EXIF orientation, `meta`'s
        `exif_orientation` lists the orientation applied to each item (1: none)."""
        refs, orientations = [], []
        for item in items:
            notes: dict = {}
            refs.append(store_image(store, item, self.image_root, notes)[0])
            orientations.append(notes.get("exif_orientation", 1))
        if meta is not None and any(o != 1 for o in orientations):
            meta["exif_orientation"] = orientations
        return refs

    def _thyme_sft(self, origin: str, number: int, row: dict, store: ImageStore):
        # `image`: the question's input image(s), then each sandbox-produced image in order; empty
        # for the text-only rows of the release's computation split. The question holds one
        # <image> per input (the original first when it holds none).
        if "image" not in row:
            raise RowRejected("missing_field", "'image' is missing")
        images = [] if row["image"] is None else _image_list(row, "image")
        text = _text(row, "question")
        question, meta = parse_user(text)
        response = _text(row, "response")
        inputs = text.count(IMAGE_TOKEN) or (1 if images else 0)
        if inputs > len(images):
            raise RowRejected("image_mismatch", f"the question has {inputs} {IMAGE_TOKEN} but "
                                                f"'image' holds {len(images)} image(s)")
        refs = self._images(images[:inputs], store, meta) + self._images(images[inputs:], store)
        reference = {"response": response, "images": [r.relpath for r in refs[inputs:]]}
        return Sample(question=question, images=refs[:inputs], source="thyme-sft",
                      origin_file=origin, origin_row=number,
                      answer=extract_answer(response) or "", task=infer_task_from_response(response),
                      meta=meta, reference=reference)

    def _thyme_rl(self, origin: str, number: int, row: dict, store: ImageStore):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowRejected("missing_field" if messages is None else "wrong_type", "'messages' must be a list of chat messages")
        user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if user is None:
            raise RowRejected("unparseable", "no user message")
        content = _text(user, "content")
        _, meta = parse_user(content)
        system = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "system"), None)
        if system:
            meta["system_prompt"] = system
        images = _image_list(row, "images")
        _check_image_tokens(content, images)
        refs = self._images(images, store, meta)
        sample = Sample(question=_text(row, "question").strip(), images=refs, source="thyme-rl",
                        origin_file=origin, origin_row=number, answer=_text(row, "solution").strip(),
                        task="unknown", meta=meta)
        return sample

    def _deepeyes(self, origin: str, number: int, row: dict, store: ImageStore):
        prompt = row.get("prompt")
        if not isinstance(prompt, list):
            raise RowRejected("missing_field" if prompt is None else "wrong_type", "'prompt' must be a list of chat messages")
        user = next((m for m in prompt if isinstance(m, dict) and m.get("role") == "user"), None)
        if user is None:
            raise RowRejected("unparseable", "no user message in 'prompt'")
        content = _text(user, "content")
        question = strip_image_tokens(content)
        reward = row.get("reward_model")
        if not isinstance(reward, dict) or reward.get("ground_truth") is None:
            raise RowRejected("missing_field", "'reward_model.ground_truth' is missing")
        images = _image_list(row, "images")
        _check_image_tokens(content, images)
        meta = {"data_source": row.get("data_source")}
        refs = self._images(images, store, meta)
        if isinstance(row.get("extra_info"), dict):
            meta["extra_info"] = {k: v for k, v in row["extra_info"].items() if isinstance(v, (str, int, float, bool))}
        sample = Sample(question=question, images=refs, source="deepeyes", origin_file=origin,
                        origin_row=number, answer=str(reward["ground_truth"]).strip(),
                        task="unknown", meta=meta)
        return sample

    def _generic(self, origin: str, number: int, row: dict, store: ImageStore):
        col = {"question": "question", "image": "image", "answer": "answer", "task": "task",
               **self.mapping}
        images = row.get(col["image"])
        if images is None and col["image"] == "image":
            images = row.get("images")
        meta: dict = {}  # category, difficulty, options: truth.GENERIC_DEFAULTS (to_sample)
        refs = self._images([] if images is None else _image_list({"i": images}, "i"), store,
                            meta)  # [] : text-only
        task = _text(row, col["task"], required=False).strip() or "unknown"  # blank: not a task
        answer = row.get(col["answer"])
        if isinstance(answer, (list, dict)):
            raise RowRejected("wrong_type", f"'{col['answer']}' is {type(answer).__name__}, expected text or a number")
        return Sample(question=_text(row, col["question"]).strip(), images=refs,
                      source=self.mapping.get("source", "generic"), origin_file=origin,
                      origin_row=number, answer="" if answer is None else str(answer).strip(),
                      task=task, meta=meta)


@functools.lru_cache(maxsize=256)
def _origin(file: str, base_dir: str) -> str:
    """A file as origins record it (asked once per row: cached)."""
    return os.path.relpath(file, base_dir) if base_dir else os.path.basename(file)


def _check_image_tokens(content: str, images: list) -> None:
    """A prompt that names its images with <image> tokens must name each one, once."""
    tokens = content.count(IMAGE_TOKEN)
    if tokens and tokens != len(images):
        raise RowRejected("image_mismatch", f"the user message has {tokens} {IMAGE_TOKEN} but "
                                            f"'images' holds {len(images)} image(s)")
