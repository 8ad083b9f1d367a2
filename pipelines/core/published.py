"""The layout of a published dataset (written by `pipelines.datasets.publish`), and the one reader
of it that SFT, GRPO and evaluation share.

    data/<encoding>/<split>-00000.parquet ...   shards per split, per image encoding
    images/<hash[:2]>/<hash>.<ext>              image files rows name by dataset-relative path

Encodings: `thyme` (the released schema: images as base64 text, column `image` for SFT rows and
`images` for RL rows) and `hf` (column `images`, `Sequence(Image)`: `{"bytes", "path"}` structs).
A dataset in another Hub layout (`data/<split>-*.parquet`, `<split>/*.parquet`) is read too.

    files = split_files(root, "train", encoding="hf")
    for where, row in iter_rows(files): ...                        # where = "<file> row <i>"
    path = image_file(entry, root, cache_dir)                      # one image entry -> a file
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

ENCODINGS = ("thyme", "hf")      # a published dataset's image encodings; the first is the default
DATA_DIR = "data"
IMAGES_DIR = "images"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def shard_pattern(encoding: str, split: str) -> str:
    """The dataset-relative glob of one split's shards (the dataset card's `data_files`)."""
    return f"{DATA_DIR}/{encoding}/{split}-*.parquet"


def image_column(kind: str, encoding: str) -> str:
    """The column holding a row's images: `image` in the thyme encoding of SFT rows (the released
    schema), `images` everywhere else."""
    return "image" if (kind, encoding) == ("sft", "thyme") else "images"


def encodings(root: str | os.PathLike) -> list[str]:
    """The encodings a dataset directory holds (`data/<encoding>/`), in ENCODINGS order."""
    data = Path(root) / DATA_DIR
    return [e for e in ENCODINGS if (data / e).is_dir()]


def splits(root: str | os.PathLike, encoding: str) -> list[str]:
    """The split names of one encoding, sorted."""
    folder = Path(root) / DATA_DIR / encoding
    return sorted({f.name.rsplit("-", 1)[0] for f in folder.glob("*-*.parquet")})


def split_files(root: str | os.PathLike, split: str, encoding: str | None = None) -> list[Path]:
    """The parquet shards of `split`, sorted. In this project's layout, those of `encoding`
    (None: the first of ENCODINGS the dataset holds: each split is there once per encoding);
    in another Hub layout, `**/<split>-*.parquet` or `**/<split>/*.parquet`. FileNotFoundError
    naming the dataset, split and encoding when there are none."""
    root = Path(root)
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    held = encodings(root)
    if held:
        chosen = encoding or held[0]
        if chosen not in held:
            raise FileNotFoundError(f"{root}: no {DATA_DIR}/{chosen}/ (the dataset holds "
                                    f"{held}; pipelines.datasets.publish writes each encoding)")
        files = sorted(root.glob(shard_pattern(chosen, split)))
        where = shard_pattern(chosen, split)
    else:
        files = sorted(root.glob(f"**/{split}-*.parquet")) or sorted(root.glob(f"**/{split}/*.parquet"))
        where = f"**/{split}-*.parquet"
    if not files:
        raise FileNotFoundError(f"{root}: no {where} (split {split!r}; a published dataset, "
                                "pipelines.datasets.publish)")
    return files


def iter_rows(files: list[Path], batch_rows: int = 256) -> Iterator[tuple[str, dict]]:
    """Every row of the files as (where, row), `where` = "<file> row <i>", in record batches."""
    import pyarrow.parquet as pq

    for file in files:
        n = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield f"{file} row {n}", row
                n += 1


def image_entries(row: dict) -> list:
    """A row's image entries, whichever encoding (column `image` or `images`)."""
    entries = row.get("images")
    if entries is None:
        entries = row.get("image")
    return list(entries or [])


def image_file(entry, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """One image entry of a row as a file that opens: the dataset's own file when the entry names
    one (an hf struct's `path` or a path string, relative to `root` or absolute), else its bytes
    (an hf struct's `bytes`, base64 text, raw bytes) written once under `cache_dir` by content
    hash. ValueError saying why when it has neither or does not decode."""
    named = named_file(entry, Path(root))
    if named is not None:
        check_decodes(named.read_bytes(), str(named))
        return named
    data = image_bytes(entry, root)
    if cache_dir is None:
        raise ValueError("the image is not a file of the dataset (its bytes need a cache folder)")
    return cache_image(data, cache_dir)


def image_bytes(entry, root: str | os.PathLike) -> bytes:
    """The bytes of one image entry (see `image_file`)."""
    named = named_file(entry, Path(root))
    if named is not None:
        return named.read_bytes()
    path = None
    if isinstance(entry, dict):
        path, entry = entry.get("path"), entry.get("bytes")
    if isinstance(entry, bytes | bytearray) and entry:
        return bytes(entry)
    if not isinstance(entry, str) or not entry:
        if path:       # a struct naming a file that is not there, without bytes to fall back on
            raise ValueError(f"no file {path!r} under {root} and no image bytes")
        raise ValueError("no image (neither bytes nor a file)")
    text = entry.split(",", 1)[1] if entry.startswith("data:image/") else entry
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        looked = f" (no file {Path(root) / entry})" if len(entry) < 1024 else ""
        raise ValueError(f"image {entry[:60]!r} is neither a file nor base64{looked}") from None


def cache_image(data: bytes, cache_dir: str | os.PathLike) -> Path:
    """Decode-checked image bytes written once (atomically) under their content hash; PNG and
    JPEG keep their bytes, other formats become PNG."""
    from PIL import Image

    from pipelines.core.atomic import atomic_path, write_bytes

    fmt = check_decodes(data, "the image")
    ext = {"JPEG": "jpg", "PNG": "png"}.get(fmt, "png")
    out = Path(cache_dir) / f"{hashlib.sha256(data).hexdigest()[:24]}.{ext}"
    if out.exists():
        return out
    if fmt in ("JPEG", "PNG"):
        write_bytes(out, data)
    else:
        with Image.open(io.BytesIO(data)) as img, atomic_path(out) as tmp:
            img.save(tmp, format="PNG")
    return out


def named_file(entry, root: Path) -> Path | None:
    """The existing file an entry names, if it names one."""
    if isinstance(entry, dict):
        entry = entry.get("path")
    if not isinstance(entry, str | os.PathLike) or not entry or len(str(entry)) > 4096:
        return None
    path = root / entry                     # an absolute entry stays itself
    try:
        return path if path.is_file() else None
    except OSError:                          # a long base64 string is no file name
        return None


def check_decodes(data: bytes, what: str) -> str:
    """The image format, or ValueError when the bytes are not a whole image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise ValueError(f"{what} does not decode ({type(exc).__name__}: {exc})") from None
    return fmt
