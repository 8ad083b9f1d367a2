"""SFT rows from published datasets or parquet files (the Thyme-SFT columns), measured in tokens
before training so that rows over the length limit are dropped and counted, never cut.

    files = data_files(["data/published/thyme-sft"], ["computation"], encoding="thyme")
    rows = load_rows(files)                    # a datasets.Dataset, images still encoded
    kept, dropped, lengths = measure_and_filter(rows, chat, max_length, False, num_proc)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipelines.core import published

COLUMNS = ("image", "question", "response")


def data_files(paths: list[str], splits: list[str], encoding: str = "thyme") -> list[Path]:
    """The parquet files of `paths`, in a stable order. A published dataset directory
    (pipelines.core.published) gives the shards of `splits` (empty: all) in `encoding`; any other
    directory every parquet file under it whose path has a component starting with a split name
    (folders named like an encoding are left out: they hold a split once per encoding)."""
    if encoding not in published.ENCODINGS:
        raise ValueError(f"encoding must be one of {published.ENCODINGS}, not {encoding!r}")
    files = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            files.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"data: {raw} does not exist")
        if published.encodings(p):
            wanted = splits or published.splits(p, encoding)
            try:
                found = sorted({f for s in wanted for f in published.split_files(p, s, encoding)})
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"data: no parquet files under {raw} for splits "
                                        f"{splits} ({exc})") from None
        else:
            found = [f for f in sorted(p.rglob("*.parquet"))
                     if not set(f.relative_to(p).parts[:-1]) & set(published.ENCODINGS)]
            if splits:
                found = [f for f in found
                         if any(part.startswith(s) for s in splits
                                for part in f.relative_to(p).parts)]
        if not found:
            raise FileNotFoundError(f"data: no parquet files under {raw}"
                                    + (f" for splits {splits}" if splits else ""))
        files += found
    return files


def fingerprint(files: list[Path]) -> str:
    """A content fingerprint of the data: names, sizes and parquet footers (which change with any
    row), without reading the images."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}|{size}|".encode())
        with open(f, "rb") as fh:
            fh.seek(max(0, size - 65536))
            h.update(fh.read())
    return h.hexdigest()[:16]


def load_rows(files: list[Path], base: Path | None = None, cache_dir: str | None = None):
    """A `datasets.Dataset` of the Thyme columns plus `_origin` (file:row) for error messages."""
    import datasets

    parts = []
    for f in files:
        ds = datasets.Dataset.from_parquet(str(f), cache_dir=cache_dir)
        if "image" not in ds.column_names and "images" in ds.column_names:
            ds = ds.rename_column("images", "image")  # the `hf` encoding's column (published.image_column)
        missing = set(COLUMNS) - set(ds.column_names)
        if missing:
            raise ValueError(f"{f}: missing column(s) {sorted(missing)}; expected the Thyme-SFT "
                             f"format {list(COLUMNS)}")
        ds = ds.select_columns(list(COLUMNS))
        name = os.path.relpath(f, base) if base else f.name
        parts.append(ds.add_column("_origin", [f"{name}:{i}" for i in range(len(ds))]))
    return datasets.concatenate_datasets(parts)


class _Measure:
    """Token length of a row, or -1 and a reason when malformed (a picklable map function)."""

    def __init__(self, chat, skip_malformed: bool):
        self.chat, self.skip_malformed = chat, skip_malformed

    def __call__(self, row):
        from thyme_train.chat import RowError

        try:
            return {"_length": self.chat.length(row), "_error": ""}
        except RowError as exc:
            if not self.skip_malformed:
                raise ValueError(f"{row['_origin']}: {exc} (set skip_malformed to drop such "
                                 f"rows)") from None
            return {"_length": -1, "_error": exc.reason}


def measure_and_filter(rows, chat, max_length: int, skip_malformed: bool, num_proc: int):
    """Rows that fit `max_length`, and the counts of dropped rows by reason."""
    from collections import Counter

    measured = rows.map(_Measure(chat, skip_malformed), desc="measuring rows",
                        num_proc=num_proc if len(rows) > 256 else None)  # small: not worth forks
    dropped = Counter(e for e in measured["_error"] if e)
    lengths = measured["_length"]
    dropped["too_long"] = sum(n > max_length for n in lengths)
    kept = measured.filter(lambda n: 0 <= n <= max_length, input_columns=["_length"])
    return kept.remove_columns(["_error"]), {k: v for k, v in dropped.items() if v}, lengths
