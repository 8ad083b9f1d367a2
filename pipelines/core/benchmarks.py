"""Evaluation benchmark files read as items, without decoding any picture: what decontamination
needs (and the evaluation may reuse). Two formats:

- VLMEvalKit TSV (V*, HRBench, MME-RealWorld, MathVista...): `index`, `image` (base64; a list of
  them written as `['...', '...']`; or, at most 64 characters, the `index` of another row that
  holds the image, as VLMEvalKit stores repeated images), or `image_path` (relative to the file);
  `question`, options in columns `A`..`H`, `answer`, `category`, an optional `hint`;
- JSONL: one object per line, `question`, `answer`, optional `id`, `options` (a mapping or a
  list), `category`, and the image(s) as `image`/`images`/`image_path`: base64 text, a path
  relative to the file, or a list of these.

    read_benchmark(path) -> Iterator[BenchmarkItem]     raises BenchmarkError(file, row, reason)

Rows are streamed; an item carries its images' bytes (`images`) and the indices of rows whose
image it repeats (`image_refs`). A reference to an index the file never defines is an error at
the end of the file. A broken row raises `BenchmarkError` naming the file, the row and the
reason; `on_error="skip"` hands the error to `errors` and goes on.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

OPTION_LETTERS = "ABCDEFGH"
_REFERENCE_CHARS = 64          # VLMEvalKit: an image value this short names another row's index
FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class BenchmarkError(ValueError):
    def __init__(self, source: str, row: int | str, reason: str):
        super().__init__(f"{source}: row {row}: {reason}")
        self.source, self.row, self.reason = source, row, reason


@dataclass
class BenchmarkItem:
    benchmark: str                 # the file's stem (V_Star, HRBench4K, ...)
    id: str                        # the row's `index` / `id`
    row: int                       # 1-based data row (TSV: after the header; JSONL: the line)
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str = ""
    images: list[bytes] = field(default_factory=list)   # encoded image bytes, in order
    image_refs: list[str] = field(default_factory=list)  # indices of rows holding its image(s)

    def text(self) -> str:
        """The question as a model reads it: the options listed after it."""
        if not self.options:
            return self.question
        return "\n".join([self.question] + [f"{k}. {v}" for k, v in self.options.items()])


def read_benchmark(path: str | os.PathLike, on_error: str = "raise",
                   errors: list[BenchmarkError] | None = None) -> Iterator[BenchmarkItem]:
    """The items of a benchmark file (format from its suffix: .tsv, .jsonl/.json)."""
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip' (got {on_error!r})")
    if not path.is_file():
        raise BenchmarkError(str(path), "-", "no such file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BenchmarkError(str(path), "-", "unknown benchmark format (expected .tsv or .jsonl)")
    rows = _tsv(path) if kind == "tsv" else _jsonl(path)
    for item in rows:
        if isinstance(item, BenchmarkError):
            if on_error == "raise":
                raise item
            if errors is not None:
                errors.append(item)
            continue
        yield item


def _decode(value: str, base: Path) -> bytes:
    """Image bytes from base64 text (a data URL too) or a path relative to `base`."""
    text = value.strip()
    if len(text) < 1024 and not text.startswith("data:"):
        candidate = Path(text) if os.path.isabs(text) else base / text
        if candidate.is_file():
            return candidate.read_bytes()
    if text.startswith("data:image/") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"image {value[:40]!r} is neither a file nor base64") from None
    if not data:
        raise ValueError("an image is empty")
    return data


def _as_list(value) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError("an image list does not parse") from None
        if not isinstance(parsed, list):
            raise ValueError("an image list does not parse")
        return parsed
    return [value]


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "nan"))


def _tsv(path: Path):
    csv.field_size_limit(sys.maxsize)                     # base64 images are long fields
    defined: set[str] = set()
    wanted: dict[str, tuple[int, str]] = {}               # referenced index -> (row, its index)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"question"} - set(reader.fieldnames or [])
        if missing:
            yield BenchmarkError(str(path), "header", f"missing columns {sorted(missing)}")
            return
        for n, row in enumerate(reader, start=1):
            index = (row.get("index") or "").strip() or str(n)
            try:
                images, refs = [], []
                raw = row.get("image")
                if not _missing(raw):
                    for value in _as_list(raw):
                        value = str(value)
                        if len(value.strip()) <= _REFERENCE_CHARS:
                            refs.append(value.strip())
                        else:
                            images.append(_decode(value, path.parent))
                elif not _missing(row.get("image_path")):
                    images = [_decode(str(p), path.parent) for p in _as_list(row["image_path"])]
                if images:
                    defined.add(index)
                for ref in refs:
                    wanted.setdefault(ref, (n, index))
                question = (row["question"] or "").strip()
                if not question:
                    raise ValueError("empty question")
                if not _missing(row.get("hint")):
                    question = f"Hint: {row['hint'].strip()}\n{question}"
                options = {k: row[k].strip() for k in OPTION_LETTERS if not _missing(row.get(k))}
                yield BenchmarkItem(path.stem, index, n, question, (row.get("answer") or "").strip(),
                                    options, (row.get("category") or "").strip(), images, refs)
            except (ValueError, OSError) as exc:
                yield BenchmarkError(str(path), f"{n} (index {index})", str(exc))
    for ref, (n, index) in wanted.items():
        if ref not in defined:
            yield BenchmarkError(str(path), f"{n} (index {index})",
                                 f"its image names row index {ref!r}, which holds no image")


def _jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line is not a JSON object")
                options = row.get("options") or {}
                if isinstance(options, list):
                    options = dict(zip(OPTION_LETTERS, options, strict=False))
                if not isinstance(options, dict):
                    raise ValueError("options are neither a mapping nor a list")
                raw = next((row[k] for k in ("image", "images", "image_path") if not _missing(row.get(k))), None)
                images = [] if raw is None else [_decode(str(v), path.parent) for v in _as_list(raw)]
                question = str(row["question"]).strip()
                if not question:
                    raise ValueError("empty question")
                yield BenchmarkItem(path.stem, str(row.get("id", row.get("index", n))), n, question,
                                    str(row.get("answer", "")).strip(),
                                    {str(k): str(v) for k, v in options.items()},
                                    str(row.get("category") or ""), images)
            except KeyError as exc:
                yield BenchmarkError(str(path), n, f"missing field {exc}")
            except (ValueError, TypeError, OSError) as exc:
                yield BenchmarkError(str(path), n, str(exc))
