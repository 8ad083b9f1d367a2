"""The published-dataset reader (pipelines.core.published) that SFT, GRPO and evaluation share:
split discovery per encoding, other Hub layouts, and a row's images as files."""

import base64
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.core import published


def _png(size=(40, 30), colour=(200, 0, 0), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _layout(root, encodings=("thyme", "hf"), splits=("train", "test")):
    for encoding in encodings:
        for split in splits:
            for k in range(2):
                path = root / "data" / encoding / published.shard_name(split, k)
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"id": [f"{encoding}-{split}-{k}"]}), path)
    return root


def test_split_files_per_encoding(tmp_path):
    root = _layout(tmp_path / "ds")
    assert published.encodings(root) == ["thyme", "hf"]
    assert published.splits(root, "hf") == ["test", "train"]
    names = [f.relative_to(root).as_posix() for f in published.split_files(root, "train", "hf")]
    assert names == ["data/hf/train-00000.parquet", "data/hf/train-00001.parquet"]
    # no encoding named: the first the dataset holds (each split is there once per encoding)
    assert {f.parent.name for f in published.split_files(root, "test")} == {"thyme"}
    rows = [row["id"] for _, row in published.iter_rows(published.split_files(root, "test"))]
    assert rows == ["thyme-test-0", "thyme-test-1"]
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        published.split_files(root, "dev")
    with pytest.raises(ValueError, match="encoding must be one of"):
        published.split_files(root, "train", "b64")


def test_a_missing_encoding_names_what_the_dataset_holds(tmp_path):
    root = _layout(tmp_path / "ds", encodings=("thyme",))
    with pytest.raises(FileNotFoundError, match=r"no data/hf/.*\['thyme'\]"):
        published.split_files(root, "train", "hf")


def test_other_hub_layouts_are_read(tmp_path):
    flat = tmp_path / "flat" / "data"
    flat.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), flat / "test-00000-of-00001.parquet")
    assert [f.name for f in published.split_files(tmp_path / "flat", "test")] == \
        ["test-00000-of-00001.parquet"]
    folders = tmp_path / "folders" / "test"
    folders.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["b"]}), folders / "part-0.parquet")
    assert [f.name for f in published.split_files(tmp_path / "folders", "test")] == ["part-0.parquet"]


def test_image_entries_of_every_encoding_become_files(tmp_path):
    root = tmp_path / "ds"
    (root / "images" / "ab").mkdir(parents=True)
    shipped = root / "images" / "ab" / "ab12.png"
    shipped.write_bytes(_png())
    cache = tmp_path / "cache"
    # hf struct naming a shipped file: the dataset's own file, no copy
    assert published.image_file({"bytes": None, "path": "images/ab/ab12.png"}, root, cache) == shipped
    assert published.image_file("images/ab/ab12.png", root) == shipped
    # bytes only (hf without files, thyme base64, a data URL): cached once by content hash
    data = _png(colour=(0, 0, 200))
    from_bytes = published.image_file({"bytes": data, "path": "images/cd/gone.png"}, root, cache)
    from_b64 = published.image_file(base64.b64encode(data).decode(), root, cache)
    from_url = published.image_file("data:image/png;base64," + base64.b64encode(data).decode(), root, cache)
    assert from_bytes == from_b64 == from_url and from_bytes.parent == cache
    assert from_bytes.read_bytes() == data and list(cache.iterdir()) == [from_bytes]
    # other formats are stored as PNG; JPEG keeps its bytes
    gif = published.image_file(_png(fmt="GIF"), root, cache)
    assert gif.suffix == ".png" and Image.open(gif).format == "PNG"
    jpeg = _png(fmt="JPEG")
    assert published.image_file(jpeg, root, cache).read_bytes() == jpeg
    assert published.image_entries({"image": ["x"]}) == ["x"] == published.image_entries({"images": ["x"]})


def test_broken_image_entries_say_why(tmp_path):
    (tmp_path / "bad.png").write_bytes(_png()[:40])              # truncated
    with pytest.raises(ValueError, match="does not decode"):
        published.image_file("bad.png", tmp_path)
    with pytest.raises(ValueError, match=r"neither a file nor base64 \(no file .*missing.png\)"):
        published.image_file("missing.png", tmp_path, tmp_path / "cache")
    # an hf struct naming a file that is not there, with no bytes to fall back on
    with pytest.raises(ValueError, match="no file 'images/ab/gone.png' under .* and no image bytes"):
        published.image_file({"bytes": b"", "path": "images/ab/gone.png"}, tmp_path, tmp_path / "c")
    with pytest.raises(ValueError, match="need a cache folder"):
        published.image_file({"bytes": _png(), "path": None}, tmp_path)
    with pytest.raises(ValueError, match="does not decode"):
        published.image_file(base64.b64encode(b"not an image").decode(), tmp_path, tmp_path / "c")
    with pytest.raises(ValueError, match="no image"):
        published.image_file({"bytes": None, "path": None}, tmp_path, tmp_path / "c")
