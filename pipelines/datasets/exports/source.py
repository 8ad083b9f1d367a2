"""What an export reads: a published dataset directory (what a user downloads) or built splits.

    open_source(DIR, store_root=None) -> [SourceSplit]

- Published (`pipelines.datasets.publish`): `DIR/data/<encoding>/<split>-NNNNN.parquet`; the
  `thyme` encoding (base64 images) is read when present, else `hf` (`Sequence(Image)`). SFT rows
  carry `image`/`images`, `question`, `response`; RL rows `messages`, `images`, `solution`.
- Built splits (`pipelines.datasets.splits`): `DIR/<split>/<train|test>.parquet`, rows naming
  images in the content-addressed store at `store_root`.

Rows come out in one shape whatever the input: SFT `{id, task, question, response, images}`,
RL `{id, task, question, messages, solution, images}`, where `images` is a list of
`ExportImage(path, data)` with `path` = `images/<hash[:2]>/<hash>.<ext>` (the path the prompt's
User Image Path names) and `_origin` says `file:row` for error messages.
The published layout is read through `pipelines.core.published`, the reader SFT, GRPO and
evaluation share.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipelines.core import published
from pipelines.datasets.exports.segments import BadRow
from pipelines.datasets.names import PARTS, RL, SFT_SPLITS
from pipelines.datasets.splits import split_file, store_resolver

_EXT = {"JPEG": "jpg", "PNG": "png"}


@dataclass(frozen=True)
class ExportImage:
    path: str     # relative to the export root: images/<hash[:2]>/<hash>.<ext>
    data: bytes


@dataclass
class SourceSplit:
    name: str                                          # the export's file stem
    kind: str                                          # "sft" | "rl"
    batches: Callable[[int], Iterator[list[dict]]]     # batch_rows -> batches of normalised rows


def image_from_bytes(data: bytes, origin: str) -> ExportImage:
    """An embedded image under its content address (the store's naming: SHA-256 of the bytes)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise BadRow("bad_image", f"{origin}: an image does not decode ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    return ExportImage(f"images/{digest[:2]}/{digest}.{_EXT.get(fmt, (fmt or 'bin').lower())}", data)


def _embedded(item, root: Path, origin: str) -> ExportImage:
    try:
        return image_from_bytes(published.image_bytes(item, root), origin)
    except ValueError as exc:
        raise BadRow("bad_image", f"{origin}: {exc}") from None


def _published_row(row: dict, kind: str, root: Path, origin: str) -> dict:
    out = {"id": row.get("id") or origin, "task": row.get("task") or "", "question": row["question"],
           "_origin": origin, "_images": published.image_entries(row), "_root": root}
    if kind == "sft":
        out["response"] = row["response"]
    else:
        out["messages"], out["solution"] = row["messages"], row["solution"]
    return out


def load_images(row: dict, read: Callable[[str], bytes] | None = None) -> list[ExportImage]:
    """The row's images (decoded lazily so a bad image quarantines only its row)."""
    if read is not None:  # built splits: store paths
        try:
            return [ExportImage(p, read(p)) for p in row["_images"]]
        except OSError as exc:
            raise BadRow("missing_image", f"{row['_origin']}: {exc}") from None
    return [_embedded(item, row["_root"], row["_origin"]) for item in row["_images"]]


def _published(root: Path) -> list[SourceSplit]:
    held = published.encodings(root)
    if not held:
        raise FileNotFoundError(f"{root}: no data/{{{','.join(published.ENCODINGS)}}}/*.parquet shards")
    shards = {name: published.split_files(root, name, held[0])
              for name in published.splits(root, held[0])}
    order = [*SFT_SPLITS, "train", "test"]
    names = sorted(shards, key=lambda s: (order.index(s) if s in order else len(order), s))
    out = []
    for name in names:
        columns = set(pq.read_schema(shards[name][0]).names)
        kind = "sft" if "response" in columns else "rl" if "solution" in columns else None
        if kind is None:
            raise ValueError(f"{shards[name][0]}: neither SFT (response) nor RL (solution) rows")

        def batches(batch_rows: int, files=shards[name], kind=kind):
            for path in files:
                index = 0
                for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                    rows = batch.to_pylist()
                    yield [_published_row(r, kind, root, f"{path.relative_to(root)}:{index + k}")
                           for k, r in enumerate(rows)]
                    index += len(rows)
        out.append(SourceSplit(name, kind, batches))
    return out


def _built(root: Path) -> list[SourceSplit]:
    out = []
    for split in (*SFT_SPLITS, RL):
        kind = "rl" if split == RL else "sft"
        for part in PARTS:
            path = split_file(root, split, part)
            if not path.exists():
                continue

            def batches(batch_rows: int, path=path, kind=kind):
                index = 0
                for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                    rows = batch.to_pylist()
                    for k, r in enumerate(rows):
                        r["_origin"] = f"{path.relative_to(root)}:{index + k}"
                        r["_images"] = r.pop("images")
                    index += len(rows)
                    yield rows
            out.append(SourceSplit(f"{split}-{part}", kind, batches))
    return out


def open_source(path: str | os.PathLike, store_root: str | os.PathLike | None = None
                ) -> tuple[list[SourceSplit], Callable[[str], bytes] | None]:
    """The splits of a published dataset directory or of a built-splits directory, and the image
    reader built splits need (None for published data, whose images are embedded)."""
    root = Path(path)
    if (root / "data").is_dir():
        return _published(root), None
    built = _built(root)
    if built:
        if store_root is None:
            raise ValueError(f"{root} holds built splits, whose rows name images in the image store: "
                             f"pass the store's root (--images)")
        resolve = store_resolver(store_root)
        return built, lambda p: resolve(p).read_bytes()
    raise FileNotFoundError(f"{root}: neither a published dataset (data/<encoding>/*.parquet) nor "
                            f"built splits (<split>/<train|test>.parquet)")
