"""Evaluation benchmark files read as items: the one reader of their rows, for decontamination
(pipelines.datasets.decontaminate) and for the evaluation (thyme_train.eval_data builds its
items on these), so both see the same questions, options, answers and images. Two formats:

- VLMEvalKit TSV (V*, HRBench, MME-RealWorld and -Lite, HallusionBench, OCRBench...): `index`,
  `image` (base64; a list of them written as `['...', '...']`; or, at most 64 characters, the
  `index` of another row that holds the image, as VLMEvalKit stores repeated images: before or
  after the row, never a row that is itself a reference), or `image_path` (relative to the file;
  a list too); `question`, options in columns `A`..`H` (where a cell is empty the letter is
  absent, gaps kept: A, C), else MME-RealWorld-Lite's `multi-choice options` (a Python list
  literal of "(A) text", read with ast.literal_eval, never eval), `answer`, `category`, an
  optional `hint`. Every other column is kept in `extra` (l2-category, cycle_category, bbox...).
  A file with an `image` or `image_path` column needs an image in every row; one without either
  is text-only. Empty cells and pandas' "nan"/"NaN"/"None" count as missing.
- JSONL (`.jsonl`, `.json`): one object per line, `question`, `answer`, optional `id` (else
  `index`, else the line number), `options` (a mapping or a list: letters A..), `category`,
  `hint`, and the image(s) as `image`/`images`/`image_path`: base64 text, a path relative to the
  file, or a list of these. Every other field is kept in `extra`.

    read_benchmark(path) -> Iterator[BenchmarkItem]     raises BenchmarkError(file, row, reason)
    iter_benchmark(path) -> Iterator[BenchmarkItem | BenchmarkError]     (in file order)
    sift(items_and_errors, on_error, errors) -> Iterator[item]          (what read_benchmark does)

Rows are streamed (a VLMEvalKit TSV holds every image in base64: several GB); an item carries
its own images' bytes (`images`, each checked to decode), the file each was read from when the
row names one (`image_files`), and the index of the row whose image it repeats (`image_refs`).
An item that repeats a later row's image waits for that row, so every yielded reference names a
row yielded before it with an image of its own; a reference to a row that is missing, broken or
holds no image is an error of the referencing row. A broken row is a `BenchmarkError` naming the
file, the row (TSV: "<data row> (index <index>)"; JSONL: the line) and the reason;
`read_benchmark(..., on_error="skip")` hands it to `errors` and goes on. A missing file, an
unknown format or a header without `question` (or `answer`, where `require_answer`) raises.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core import published

OPTION_LETTERS = "ABCDEFGH"
REFERENCE_CHARS = 64           # VLMEvalKit: an image cell this short names another row's index
FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_MISSING = ("", "nan", "NaN", "None")    # how pandas-written TSVs leave a cell empty
_TSV_FIELDS = {"index", "image", "image_path", "question", "answer", "category", "hint",
               "multi-choice options", *OPTION_LETTERS}
_JSONL_FIELDS = {"id", "index", "image", "images", "image_path", "question", "answer", "options",
                 "category", "hint"}


class BenchmarkError(ValueError):
    def __init__(self, source: str, row: int | str, reason: str):
        super().__init__(f"{source}: row {row}: {reason}")
        self.source, self.row, self.reason = source, row, reason


@dataclass
class BenchmarkItem:
    benchmark: str                 # the file's stem (V_Star, HRBench4K, ...)
    id: str                        # the row's `index` / `id`
    row: int                       # 1-based data row (TSV: after the header; JSONL: the line)
    where: int | str               # the row as errors name it (TSV: "3 (index 7)"; JSONL: 3)
    question: str                  # the bare question (no hint, no options)
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str = ""
    hint: str = ""
    images: list[bytes] = field(default_factory=list)   # the row's own images' bytes, in order
    image_files: list[Path | None] = field(default_factory=list)  # the file each came from
    image_refs: list[str] = field(default_factory=list)  # the index of the row holding its image
    extra: dict = field(default_factory=dict)            # the row's other columns / fields

    def text(self) -> str:
        """The question as a model reads it: the hint before it, the options after it."""
        lines = ([f"Hint: {self.hint}"] if self.hint else []) + [self.question]
        return "\n".join(lines + [f"{k}. {v}" for k, v in self.options.items()])


def benchmark_format(path: str | os.PathLike) -> str | None:
    """"tsv" or "jsonl" from the file's suffix; None for another file."""
    return FORMATS.get(Path(path).suffix.lower())


def read_benchmark(path: str | os.PathLike, on_error: str = "raise",
                   errors: list[BenchmarkError] | None = None,
                   require_answer: bool = False) -> Iterator[BenchmarkItem]:
    """The items of a benchmark file; a broken row raises, or with `on_error="skip"` goes to
    `errors`. `require_answer`: the file must have answers (the evaluation scores them)."""
    return sift(iter_benchmark(path, require_answer), on_error, errors)


def sift(rows: Iterator, on_error: str = "raise",
         errors: list[BenchmarkError] | None = None) -> Iterator:
    """The items of a stream of items and `BenchmarkError`s: an error raises (`on_error="raise"`)
    or goes to `errors` (`"skip"`)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip' (got {on_error!r})")
    for item in rows:
        if isinstance(item, BenchmarkError):
            if on_error == "raise":
                raise item
            if errors is not None:
                errors.append(item)
            continue
        yield item


def iter_benchmark(path: str | os.PathLike,
                   require_answer: bool = False) -> Iterator[BenchmarkItem | BenchmarkError]:
    """Items and broken rows' errors in file order (a caller that adds its own row errors
    handles both in one loop)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(str(path), "-", "no such file")
    kind = benchmark_format(path)
    if kind is None:
        raise BenchmarkError(str(path), "-", "unknown benchmark format (expected .tsv or .jsonl)")
    yield from (_tsv if kind == "tsv" else _jsonl)(path, require_answer)


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _MISSING)


def _text(value) -> str:
    return "" if _missing(value) else str(value).strip()


def _as_list(value) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError("an image list does not parse") from None
        if not isinstance(parsed, list):
            raise ValueError("an image list does not parse")
        return parsed
    return [value]


def _image(entry, base: Path) -> tuple[bytes, Path | None]:
    """One image entry (base64 text or a data URL, a path relative to `base`, an HF image
    struct) as its bytes, checked to decode, and the file it names (None when embedded)."""
    if isinstance(entry, str):
        entry = entry.strip()
    file = published.named_file(entry, base)
    data = file.read_bytes() if file is not None else published.image_bytes(entry, base)
    published.check_decodes(data, f"image {str(entry)!r}" if file is not None else "the image")
    return data, file


def _images(entries, base: Path) -> tuple[list[bytes], list[Path | None]]:
    pairs = [_image(e, base) for e in _as_list(entries)]
    if not pairs:
        raise ValueError("an empty image list")
    return [d for d, _ in pairs], [f for _, f in pairs]


def _option_list(text: str) -> dict[str, str]:
    """MME-RealWorld-Lite's `multi-choice options`: a Python list literal of "(A) text" lines."""
    from pipelines.core.answers import parse_options

    lines = ast.literal_eval(text.strip())
    if not isinstance(lines, list | tuple):
        raise ValueError(f"multi-choice options is not a list: {text[:60]!r}")
    return parse_options(lines)


def _tsv(path: Path, require_answer: bool):
    csv.field_size_limit(sys.maxsize)                     # base64 images are long fields
    holds: dict[str, bool] = {}          # index read -> whether its row holds an image of its own
    waiting: dict[str, list[BenchmarkItem]] = defaultdict(list)   # items repeating a later row

    def settle(item: BenchmarkItem) -> BenchmarkItem | BenchmarkError:
        ref = item.image_refs[0]
        if holds.get(ref):
            return item
        why = ("the file has no such row" if ref not in holds else
               "that row is broken or has no image of its own")
        return BenchmarkError(str(path), item.where,
                              f"its image names row index {ref!r}, which holds no image ({why})")

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = set(reader.fieldnames or [])
        missing = {"question", "answer"} - columns if require_answer else {"question"} - columns
        if missing:
            raise BenchmarkError(str(path), "header", f"missing columns {sorted(missing)}")
        with_images = bool({"image", "image_path"} & columns)
        for n, row in enumerate(reader, start=1):
            index = _text(row.get("index")) or str(n)
            where = f"{n} (index {index})"
            try:
                item = _tsv_item(path, row, n, index, where, with_images)
            except (ValueError, OSError, SyntaxError, TypeError) as exc:
                holds[index] = False
                yield BenchmarkError(str(path), where, str(exc) or type(exc).__name__)
            else:
                holds[index] = bool(item.images)
                if not item.image_refs:
                    yield item
                elif item.image_refs[0] in holds:
                    yield settle(item)
                else:
                    waiting[item.image_refs[0]].append(item)
            for later in waiting.pop(index, []):
                yield settle(later)
    for items in waiting.values():
        yield from (settle(item) for item in items)


def _tsv_item(path: Path, row: dict, n: int, index: str, where: str,
              with_images: bool) -> BenchmarkItem:
    if None in row:
        raise ValueError(f"{len(row[None])} more field(s) than the header")
    images, files, refs = [], [], []
    if not _missing(row.get("image")):
        cell = row["image"].strip()
        if len(cell) <= REFERENCE_CHARS:
            refs = [cell]
        else:
            images, files = _images(cell, path.parent)
    elif not _missing(row.get("image_path")):
        images, files = _images(row["image_path"], path.parent)
    elif with_images:
        raise ValueError("no image (the image and image_path cells are empty)")
    question = _text(row.get("question"))
    if not question:
        raise ValueError("empty question")
    options = {k: row[k].strip() for k in OPTION_LETTERS if not _missing(row.get(k))}
    if not options and not _missing(row.get("multi-choice options")):
        options = _option_list(row["multi-choice options"])
    extra = {k: v for k, v in row.items() if k not in _TSV_FIELDS and not _missing(v)}
    return BenchmarkItem(path.stem, index, n, where, question, _text(row.get("answer")), options,
                         _text(row.get("category")), _text(row.get("hint")), images, files, refs,
                         extra)


def _jsonl(path: Path, require_answer: bool):
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line is not a JSON object")
                question = _text(row["question"])
                if not question:
                    raise ValueError("empty question")
                answer = _text(row["answer"] if require_answer else row.get("answer"))
                options = row.get("options") or {}
                if isinstance(options, list):
                    options = dict(zip(OPTION_LETTERS, options, strict=False))
                if not isinstance(options, dict):
                    raise ValueError("options are neither a mapping nor a list")
                raw = next((row[k] for k in ("image", "images", "image_path")
                            if not _missing(row.get(k))), None)
                images, files = ([], []) if raw is None else _images(raw, path.parent)
                ident = next((row[k] for k in ("id", "index") if not _missing(row.get(k))), n)
                extra = {k: v for k, v in row.items() if k not in _JSONL_FIELDS and v is not None}
                yield BenchmarkItem(path.stem, str(ident), n, n, question, answer,
                                    {str(k): str(v) for k, v in options.items()},
                                    _text(row.get("category")), _text(row.get("hint")),
                                    images, files, [], extra)
            except KeyError as exc:
                yield BenchmarkError(str(path), n, f"missing field {exc}")
            except (ValueError, TypeError, OSError, SyntaxError) as exc:
                yield BenchmarkError(str(path), n, str(exc) or type(exc).__name__)
