"""The data contracts (DESIGN.md §3): one place for the Arrow schemas every stage writes.

A `Sample` is one row of the source pool. Images live once in the content-addressed store
(`pipelines.core.images`); rows carry references, never pixels. Nested ground truth and reference
trajectories are JSON text: they vary by task and source, and stay readable by any engine.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field

import pyarrow as pa

# Tasks of the paper's data (THYME.md §3), plus what readers cannot classify.
TASKS = ("crop", "rotate", "contrast", "computation", "no_code", "real_world", "unknown")

IMAGE_REF = pa.struct([
    ("hash", pa.string()),     # sha256 of the stored bytes, hex
    ("ext", pa.string()),      # jpg | png | webp
    ("width", pa.int32()),
    ("height", pa.int32()),
])
ORIGIN = pa.struct([("file", pa.string()), ("row", pa.int64())])

SAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()),                 # stable: a hash of the image hashes + normalised question
    ("source", pa.string()),             # e.g. thyme-sft, deepeyes, generated
    ("images", pa.list_(IMAGE_REF)),     # the question's images, in order
    ("question", pa.string()),           # the bare question (templates stripped)
    ("answer", pa.string()),             # ground truth; "" when unknown
    ("task", pa.string()),               # one of TASKS
    ("meta", pa.string()),               # JSON: box, angle, options, difficulty, original path/size...
    ("reference", pa.string()),          # JSON: a reference trajectory (Thyme-SFT response + images), or null
    ("origin", ORIGIN),                  # where the row came from (relative file, row number)
])

QUARANTINE_SCHEMA = pa.schema([
    ("origin", ORIGIN),                  # file, and first row (null when no row is known)
    ("reason", pa.string()),             # a reason code (see REASONS)
    ("detail", pa.string()),             # a human-readable explanation
    ("source", pa.string()),
    ("rows", pa.int64()),                # input rows this entry stands for: 1 for a row, a unit's
                                         # row count for a unit read as a whole, null if unknown
    ("row_group", pa.int32()),           # the parquet row group of a unit entry, else null
])

# Reason codes for quarantined rows.
REASONS = {
    "bad_base64": "an image field is not valid base64",
    "empty_image": "an image has zero bytes",
    "undecodable_image": "the image data does not decode (corrupt or truncated)",
    "unsupported_image": "the image format or mode cannot be stored",
    "too_many_pixels": "the image exceeds the pixel limit (decompression bomb guard)",
    "too_small": "an image side is below the minimum",
    "bad_aspect_ratio": "the image aspect ratio exceeds the maximum",
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field has the wrong type",
    "bad_text": "a text field is not valid UTF-8 or is empty",
    "missing_image_file": "an image path does not exist under the image root",
    "unparseable": "the row does not follow the format's structure",
    "image_mismatch": "the prompt's <image> tokens do not match the row's image list",
    "reader_error": "reading the row raised an unexpected error (the detail names it)",
    "bad_ground_truth": "a mapped ground-truth value (box, angle, difficulty, options...) is "
                        "malformed or out of range (the detail names the column and value)",
    # units quarantined as a whole (a file, a parquet row group): their rows cannot be read
    "unreadable_file": "the file cannot be opened or read (truncated, not this format, empty)",
    "unreadable_row_group": "a parquet row group does not decode (corrupt pages)",
}


@dataclass
class ImageRef:
    hash: str
    ext: str
    width: int
    height: int

    @property
    def relpath(self) -> str:
        """The file's path inside the image store root."""
        return f"{self.hash[:2]}/{self.hash}.{self.ext}"


@dataclass
class Sample:
    question: str
    images: list[ImageRef]
    source: str
    origin_file: str
    origin_row: int
    answer: str = ""
    task: str = "unknown"
    meta: dict = field(default_factory=dict)
    reference: dict | None = None
    id: str = ""

    def __post_init__(self):
        if not self.id:
            self.id = sample_id(self.question, [im.hash for im in self.images])

    @classmethod
    def from_row(cls, row: dict) -> Sample:
        return cls(question=row["question"], images=[ImageRef(**im) for im in row["images"]],
                   source=row["source"], origin_file=row["origin"]["file"],
                   origin_row=row["origin"]["row"], answer=row["answer"], task=row["task"],
                   meta=json.loads(row["meta"] or "{}"),
                   reference=json.loads(row["reference"]) if row["reference"] else None,
                   id=row["id"])

    def to_row(self) -> dict:
        return {
            "id": self.id, "source": self.source,
            "images": [{"hash": im.hash, "ext": im.ext, "width": im.width, "height": im.height}
                       for im in self.images],   # (not `asdict`: its deep copies cost ingest)
            "question": self.question, "answer": self.answer, "task": self.task,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
            "reference": None if self.reference is None else json.dumps(self.reference, ensure_ascii=False),
            "origin": {"file": self.origin_file, "row": self.origin_row},
        }


_SPACE = re.compile(r"\s+")


def normalise_question(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the question part of the dedup key."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def sample_id(question: str, image_hashes: list[str]) -> str:
    """Stable id = dedup key: identical images and question give the same id on every run."""
    h = hashlib.blake2b(digest_size=8)
    for image_hash in image_hashes:
        h.update(image_hash.encode())
        h.update(b"\x00")
    h.update(normalise_question(question).encode())
    return h.hexdigest()


def samples_table(samples: list[Sample]) -> pa.Table:
    return pa.Table.from_pylist([s.to_row() for s in samples], schema=SAMPLE_SCHEMA)


def quarantine_row(file: str, row: int | None, reason: str, detail: str, source: str,
                   rows: int | None = 1, row_group: int | None = None) -> dict:
    """One quarantine entry: a row (`rows=1`), or a unit read as a whole (its first row and row
    count when known, its row group when it is one)."""
    assert reason in REASONS, reason
    return {"origin": {"file": file, "row": row}, "reason": reason, "detail": detail[:500],
            "source": source, "rows": rows, "row_group": row_group}
