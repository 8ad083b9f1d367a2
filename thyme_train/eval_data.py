"""Benchmark items for evaluation, from three formats, as one `EvalItem` type:

- `tsv`: VLMEvalKit style (V*, HRBench, MME-RealWorld): `index`, base64 `image` (or
  `image_path`), `question`, options in columns `A`…`E`, `answer`, `category`, optional `hint`;
- `jsonl`: one object per line, `image` (a path relative to the file), `question`, `answer`,
  optional `options` (a dict or a list), `category`, `id`;
- `published`: a split of a dataset this project published (read through
  pipelines.core.published, the reader SFT and GRPO share): parquet shards with `question` or
  `messages`, `images` (base64 strings, image structs or paths), `solution` or `answer`, `task`.

Every item's image is a real file, because the sandbox and the User Image Path need one: the file
a row names when there is one, else its bytes decoded once into a cache folder beside the
results (pipelines.core.published.image_file). A broken row raises `BenchmarkError` naming the
file, the row and the reason; `load_items(..., on_error="skip")` records it and goes on.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core import published

OPTION_LETTERS = "ABCDEFGH"


class BenchmarkError(ValueError):
    def __init__(self, source: str, row: int | str, reason: str):
        super().__init__(f"{source}: row {row}: {reason}")
        self.source, self.row, self.reason = source, row, reason


@dataclass
class EvalItem:
    id: str
    image: str | None                 # path to the decoded image file; None for text-only items
    question: str                     # the bare question (options appended by `prompt_text`)
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str = "all"
    show_options: bool = True         # False when the question text already lists the options

    def prompt_text(self) -> str:
        """The question as the model reads it: multiple-choice options listed after it."""
        if not self.options or not self.show_options:
            return self.question
        lines = [self.question, "Options:"] + [f"{k}. {v}" for k, v in self.options.items()]
        return "\n".join(lines) + "\nAnswer with the option's letter from the given choices."


def detect_format(path: Path) -> str:
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return "published"
    if path.suffix in (".tsv", ".csv"):
        return "tsv"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    raise BenchmarkError(str(path), "-", "unknown benchmark format (expected .tsv, .jsonl, "
                         "a .parquet file or a published dataset directory)")


def load_items(path: str | os.PathLike, image_dir: str | os.PathLike, limit: int | None = None,
               split: str = "test", on_error: str = "raise",
               errors: list[BenchmarkError] | None = None) -> list[EvalItem]:
    """Items of a benchmark file; images decoded into `image_dir`. `on_error`: raise | skip."""
    path, image_dir = Path(path), Path(image_dir)
    if not path.exists():
        raise BenchmarkError(str(path), "-", "no such file or directory")
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = {"tsv": _tsv_rows, "jsonl": _jsonl_rows, "published": _published_rows}[detect_format(path)]
    items = []
    for item in rows(path, image_dir, split):
        if isinstance(item, BenchmarkError):
            if on_error == "raise":
                raise item
            if errors is not None:
                errors.append(item)
            continue
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def _image_from(value, base: Path, image_dir: Path) -> str:
    """An image given as base64 text, bytes, an HF image struct, or a path (relative to `base`),
    as a file that opens (pipelines.core.published.image_file)."""
    return str(published.image_file(value, base, image_dir))


def _tsv_rows(path: Path, image_dir: Path, split: str):
    csv.field_size_limit(sys.maxsize)                  # base64 images are long fields
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        missing = {"question", "answer"} - set(reader.fieldnames or [])
        if missing:
            raise BenchmarkError(str(path), "header", f"missing columns {sorted(missing)}")
        images_by_index: dict[str, str] = {}
        for n, row in enumerate(reader, start=1):
            index = row.get("index") or str(n)
            try:
                raw = row.get("image") or row.get("image_path") or ""
                # VLMEvalKit stores a repeated image as the index of the row that holds it
                if raw in images_by_index:
                    image = images_by_index[raw]
                else:
                    image = _image_from(raw, path.parent, image_dir)
                images_by_index[index] = image
                options = {k: row[k].strip() for k in OPTION_LETTERS
                           if row.get(k) not in (None, "", "nan")}
                question = row["question"].strip()
                if row.get("hint") not in (None, "", "nan"):
                    question = f"Hint: {row['hint'].strip()}\n{question}"
                yield EvalItem(id=index, image=image, question=question, answer=row["answer"].strip(),
                               options=options, category=row.get("category") or "all")
            except (ValueError, OSError) as exc:
                yield BenchmarkError(str(path), index, str(exc))


def _jsonl_rows(path: Path, image_dir: Path, split: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                options = row.get("options") or {}
                if isinstance(options, list):
                    options = dict(zip(OPTION_LETTERS, options, strict=False))
                image = row.get("image") or row.get("image_path")
                yield EvalItem(id=str(row.get("id", n)),
                               image=_image_from(image, path.parent, image_dir) if image else None,
                               question=str(row["question"]), answer=str(row["answer"]),
                               options={str(k): str(v) for k, v in options.items()},
                               category=str(row.get("category", "all")))
            except (ValueError, KeyError, OSError, TypeError) as exc:
                reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                yield BenchmarkError(str(path), n, reason)


def _published_rows(path: Path, image_dir: Path, split: str):
    from pipelines.core.answers import parse_options
    from pipelines.core.prompts import parse_user

    if path.is_dir():
        try:
            files = published.split_files(path, split)
        except FileNotFoundError:
            raise BenchmarkError(str(path), "-", f"no parquet files for split {split!r}") from None
    else:
        files = [path]
    base = path if path.is_dir() else path.parent     # rows name image files relative to it
    for where, row in published.iter_rows(files):
        file, n = where.rsplit(" row ", 1)
        rid = row.get("id") or f"{Path(file).name}:{n}"
        try:
            if "messages" in row and row["messages"]:
                user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            else:
                user = row["question"]
            question, _ = parse_user(user)
            images = published.image_entries(row)
            image = _image_from(images[0], base, image_dir) if images else None
            answer = row.get("solution") or row.get("answer")
            if answer is None and row.get("response"):
                # an SFT row: its audited trajectory's answer is the ground truth
                from pipelines.core.answers import extract
                answer = extract(row["response"]).text or None
            if answer is None:
                raise ValueError("no solution/answer")
            meta = row.get("meta")
            meta = json.loads(meta) if isinstance(meta, str) and meta else (meta or {})
            yield EvalItem(id=str(rid), image=image, question=question, answer=str(answer),
                           options=parse_options(meta.get("options")), show_options=False,
                           category=row.get("task") or "all")
        except (ValueError, KeyError, StopIteration, OSError) as exc:
            yield BenchmarkError(file, rid, str(exc) or type(exc).__name__)
