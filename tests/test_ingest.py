"""Readers, the image store and ingest, on small files written in the real formats."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.core.formats import (
    SourceRow,
    deepeyes_table,
    thyme_rl_table,
    thyme_sft_table,
    write_parquet,
)
from pipelines.core.images import ImageLimits, ImageRejected, ImageStore
from pipelines.core.prompts import parse_user, render_user
from pipelines.core.schema import SAMPLE_SCHEMA, sample_id
from pipelines.pool.ingest import IngestConfig, ingest, plan_shards, scan_pool


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w=320, h=240, seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


JPEG = encode(photo(seed=1), "JPEG", quality=90)
PNG = encode(photo(seed=2), "PNG")


def read_samples(out) -> list[dict]:
    files = sorted((Path(out) / "samples").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def read_quarantine(out) -> list[dict]:
    files = sorted((Path(out) / "quarantine").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


# ------------------------------------------------------------------ prompts

def test_user_template_round_trip():
    text = render_user("What is on the sign?", "/mnt/data/a.jpg", (1920, 1080))
    assert text.startswith("<image>\nWhat is on the sign?\n\n### User Image Path:** \"/mnt/data/a.jpg\"")
    question, meta = parse_user(text)
    assert question == "What is on the sign?"
    assert meta == {"original_path": "/mnt/data/a.jpg", "original_size": [1920, 1080]}


# ------------------------------------------------------------------ image store

def test_jpeg_png_webp_are_stored_byte_identical(tmp_path):
    store = ImageStore(tmp_path)
    webp = encode(photo(seed=3), "WEBP", quality=80)
    gray = encode(photo(seed=4, mode="L"), "JPEG")
    for data, ext in ((JPEG, "jpg"), (PNG, "png"), (webp, "webp"), (gray, "jpg")):
        ref, written = store.put(data)
        assert written and ref.ext == ext and (ref.width, ref.height) == (320, 240)
        assert store.path(ref).read_bytes() == data
        assert store.path(ref).relative_to(tmp_path).as_posix() == f"{ref.hash[:2]}/{ref.hash}.{ext}"


def test_identical_images_are_stored_once(tmp_path):
    store = ImageStore(tmp_path)
    a, first = store.put(JPEG)
    b, second = store.put(JPEG)
    assert a == b and first and not second
    assert len(list(tmp_path.rglob("*.jpg"))) == 1


def test_conversions_only_when_needed(tmp_path):
    store = ImageStore(tmp_path)
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))        # opaque blue left half
    ref, _ = store.put(encode(rgba, "PNG"))
    out = Image.open(store.path(ref))
    assert ref.ext == "png" and out.mode == "RGB"
    assert out.getpixel((48, 10)) == (255, 255, 255)  # transparency flattened on white
    assert out.getpixel((10, 10)) == (0, 0, 255)
    palette = photo(seed=5).convert("P")
    assert Image.open(store.path(store.put(encode(palette, "PNG"))[0])).mode == "RGB"
    cmyk = store.put(encode(photo(seed=6).convert("CMYK"), "JPEG"))[0]
    assert cmyk.ext == "jpg" and Image.open(store.path(cmyk)).mode == "RGB"
    deep = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    ref16 = store.put(encode(deep, "PNG"))[0]
    assert Image.open(store.path(ref16)).mode == "RGB"


def test_converted_pngs_are_lossless_for_other_decoders(tmp_path):
    """The store's own PNG writer (Sub filter, ISA-L deflate): PIL and OpenCV decode exactly the
    pixels of the flattening, partial transparency and odd sizes included."""
    import cv2

    rng = np.random.default_rng(3)
    store = ImageStore(tmp_path)
    for size in ((64, 48), (29, 301)):
        rgba = Image.fromarray(rng.integers(0, 256, (*size[::-1], 4), dtype=np.uint8), "RGBA")
        ref, _ = store.put(encode(rgba, "PNG"))
        expected = Image.new("RGB", rgba.size, (255, 255, 255))
        expected.paste(rgba, mask=rgba.getchannel("A"))
        assert ref.ext == "png" and (ref.width, ref.height) == size
        assert np.array_equal(np.asarray(Image.open(store.path(ref))), np.asarray(expected))
        assert np.array_equal(cv2.imread(str(store.path(ref)))[:, :, ::-1], np.asarray(expected))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_image"),
    (JPEG[: len(JPEG) // 2], "undecodable_image"),
    (b"not an image at all", "undecodable_image"),
    (encode(photo(20, 20), "PNG"), "too_small"),
    (encode(photo(6000, 28), "PNG"), "bad_aspect_ratio"),
])
def test_bad_images_are_rejected_with_a_reason(tmp_path, data, reason):
    with pytest.raises(ImageRejected) as err:
        ImageStore(tmp_path).put(data)
    assert err.value.reason == reason
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    store = ImageStore(tmp_path, ImageLimits(max_pixels=320 * 240 - 1))
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        store.put(JPEG)


def test_bad_base64(tmp_path):
    with pytest.raises(ImageRejected, match="bad_base64"):
        ImageStore(tmp_path).put_base64("!!!not base64!!!")
    ref, _ = ImageStore(tmp_path).put_base64("data:image/jpeg;base64," + base64.b64encode(JPEG).decode())
    assert ref.ext == "jpg"


def exif_jpeg(orientation: int | None, w=120, h=80) -> bytes:
    """A JPEG whose stored pixels are w x h, with an EXIF orientation tag (None: no EXIF)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 60)], -1).astype(np.uint8)
    arr[:16, :24] = (255, 0, 0)   # a marker in the stored top-left corner
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return encode(Image.fromarray(arr), "JPEG", quality=92, exif=exif.tobytes())


def cv2_view(data: bytes, path: Path) -> np.ndarray:
    import cv2
    path.write_bytes(data)
    return cv2.imread(str(path))   # OpenCV applies the EXIF orientation itself


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied_once_at_ingest(tmp_path, orientation):
    import cv2
    original = exif_jpeg(orientation)
    assert Image.open(io.BytesIO(original)).size == (120, 80)   # PIL: the stored pixels
    seen = cv2_view(original, tmp_path / "orig.jpg")            # OpenCV: turned by the tag
    notes: dict = {}
    ref, _ = ImageStore(tmp_path / "store").put(original, notes)
    stored = ImageStore(tmp_path / "store").path(ref)
    assert notes == {"exif_orientation": orientation} and ref.ext == "jpg"
    turned = orientation >= 5
    assert (ref.width, ref.height) == ((80, 120) if turned else (120, 80))
    with Image.open(stored) as img:   # upright, and no tag left for anyone to apply again
        assert img.size == (ref.width, ref.height) and img.getexif().get(0x0112) is None
    assert cv2.imread(str(stored)).shape == (ref.height, ref.width, 3)
    # the same picture OpenCV showed from the original (one JPEG re-encoding apart)
    assert np.abs(cv2.imread(str(stored)).astype(int) - seen.astype(int)).mean() < 3


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_in_png_and_webp(tmp_path, fmt):
    import cv2
    exif = Image.Exif()
    exif[0x0112] = 8
    original = encode(photo(120, 80, seed=30), fmt, exif=exif.tobytes(), lossless=True)
    seen = cv2_view(original, tmp_path / f"orig.{fmt.lower()}")     # OpenCV turns these too
    ref, _ = ImageStore(tmp_path / "store").put(original)
    stored = cv2.imread(str(ImageStore(tmp_path / "store").path(ref)))
    assert ref.ext == "png" and (ref.width, ref.height) == (80, 120)
    assert np.array_equal(stored, seen)   # lossless all the way


@pytest.mark.parametrize("orientation", [None, 1])
def test_upright_jpegs_stay_byte_for_byte(tmp_path, orientation):
    original = exif_jpeg(orientation)
    notes: dict = {}
    ref, _ = ImageStore(tmp_path).put(original, notes)
    assert notes == {} and ImageStore(tmp_path).path(ref).read_bytes() == original


def test_a_rotated_sample_has_one_size_in_the_sandbox(tmp_path, sandbox):
    """Ingest a Thyme-RL row whose JPEG carries orientation 6: the sample records the upright
    size, `meta` records the rotation, and PIL and OpenCV agree inside the sandbox."""
    rows = [SourceRow("Which way is up?", [exif_jpeg(6)], answer="up", image_path="/x/1.jpg",
                      image_size=(80, 120))]
    write_parquet(thyme_rl_table(rows), tmp_path / "rl.parquet")
    ingest(IngestConfig("thyme-rl", str(tmp_path / "out"), [str(tmp_path / "rl.parquet")], workers=1),
           progress=False)
    (row,) = read_samples(tmp_path / "out")
    image = row["images"][0]
    assert (image["width"], image["height"]) == (80, 120)
    assert json.loads(row["meta"])["exif_orientation"] == [6]
    path = tmp_path / "out" / "images" / image["hash"][:2] / f"{image['hash']}.{image['ext']}"
    code = ("import cv2\nfrom PIL import Image\n"
            "print(Image.open(image_path).size, cv2.imread(image_path).shape[1::-1])")
    result = sandbox.run(code, inputs=[str(path)])
    assert result.ok, result.error
    assert result.stdout.strip() == "(80, 120) (80, 120)"   # (width, height) for both


# ------------------------------------------------------------------ readers through ingest

def sft_rows():
    response = ("<think>The sign is small. <code>```python\nimport cv2\nimg = cv2.imread(image_path)\n"
                "crop = img[10:100, 20:200]\ncv2.imwrite('/mnt/data/temp_processed_images/c.jpg', crop)\n"
                "print('/mnt/data/temp_processed_images/c.jpg')\n```</code><sandbox_output><image>"
                "</sandbox_output>It says EXIT.</think> <answer>EXIT</answer>")
    return [
        SourceRow("What does the sign say?", [JPEG, PNG], response=response,
                  image_path="/data/user/img1.jpg", image_size=(320, 240)),
        SourceRow("How many cars?", [encode(photo(seed=7), "JPEG")], response="<think>Two.</think> <answer>2</answer>",
                  image_path="/data/user/img2.jpg", image_size=(320, 240)),
    ]


def test_thyme_sft(tmp_path):
    write_parquet(thyme_sft_table(sft_rows()), tmp_path / "sft.parquet")
    report = ingest(IngestConfig("thyme-sft", str(tmp_path / "out"), [str(tmp_path / "sft.parquet")]),
                    progress=False)
    assert report["kept"] == 2 and report["quarantined"] == 0 and report["images_written"] == 3
    rows = read_samples(tmp_path / "out")
    first = rows[0]
    assert first["question"] == "What does the sign say?"
    assert first["answer"] == "EXIT" and first["task"] == "crop" and first["source"] == "thyme-sft"
    assert json.loads(first["meta"]) == {"original_path": "/data/user/img1.jpg", "original_size": [320, 240]}
    assert first["origin"] == {"file": "sft.parquet", "row": 0}
    reference = json.loads(first["reference"])
    assert "<answer>EXIT</answer>" in reference["response"]
    assert len(reference["images"]) == 1  # the sandbox output image, stored too
    assert (tmp_path / "out" / "images" / reference["images"][0]).read_bytes() == PNG
    stored = tmp_path / "out" / "images" / f"{first['images'][0]['hash'][:2]}" / f"{first['images'][0]['hash']}.jpg"
    assert stored.read_bytes() == JPEG  # the original JPEG, byte for byte
    assert rows[1]["task"] == "no_code" and rows[1]["answer"] == "2"
    assert pq.read_schema(tmp_path / "out" / "samples" / "shard-00000.parquet").remove_metadata() == SAMPLE_SCHEMA


def test_thyme_rl(tmp_path):
    rows = [SourceRow("Which colour is the car?", [JPEG], answer="red", image_path="/x/1.jpg",
                      image_size=(320, 240))]
    write_parquet(thyme_rl_table(rows), tmp_path / "rl.parquet")
    ingest(IngestConfig("thyme-rl", str(tmp_path / "out"), [str(tmp_path / "rl.parquet")]), progress=False)
    (row,) = read_samples(tmp_path / "out")
    assert (row["question"], row["answer"], row["source"]) == ("Which colour is the car?", "red", "thyme-rl")
    meta = json.loads(row["meta"])
    assert meta["original_size"] == [320, 240] and "sandbox" in meta["system_prompt"]


def test_deepeyes_nested_verl_columns(tmp_path):
    rows = [SourceRow("What is the brand of the bag?", [JPEG], answer="Gucci", data_source="vstar")]
    write_parquet(deepeyes_table(rows), tmp_path / "de.parquet")
    ingest(IngestConfig("deepeyes", str(tmp_path / "out"), [str(tmp_path / "de.parquet")]), progress=False)
    (row,) = read_samples(tmp_path / "out")
    assert row["question"] == "What is the brand of the bag?" and row["answer"] == "Gucci"
    assert json.loads(row["meta"])["data_source"] == "vstar"
    assert row["images"][0]["ext"] == "jpg"


def test_generic_jsonl_with_relative_paths_and_mapping(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(JPEG)
    lines = [{"prompt": "Q1?", "img": "imgs/a.jpg", "label": "yes", "task": "  "},  # blank task
             {"prompt": "Q2?", "img": "imgs/missing.jpg", "label": "no"}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken json\n")
    cfg = IngestConfig("generic", str(tmp_path / "out"), [str(tmp_path / "data.jsonl")],
                       image_root=str(tmp_path), mapping={"question": "prompt", "image": "img", "answer": "label"})
    report = ingest(cfg, progress=False)
    assert report["kept"] == 1 and report["quarantined_by_reason"] == {"missing_image_file": 1, "unparseable": 1}
    (row,) = read_samples(tmp_path / "out")
    assert (row["question"], row["answer"], row["task"]) == ("Q1?", "yes", "unknown")
    bad = {q["origin"]["row"]: q for q in read_quarantine(tmp_path / "out")}
    assert bad[1]["reason"] == "missing_image_file" and "imgs/missing.jpg" in bad[1]["detail"]
    assert bad[2]["reason"] == "unparseable" and bad[2]["origin"]["file"] == "data.jsonl"


def test_generic_saved_hf_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["What is it?"], "answer": ["a cat"],
                                     "image": [{"bytes": PNG, "path": None}]},
                                    features=datasets.Features({"question": datasets.Value("string"),
                                                                "answer": datasets.Value("string"),
                                                                "image": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "hf"))
    ingest(IngestConfig("generic", str(tmp_path / "out"), [str(tmp_path / "hf")]), progress=False)
    (row,) = read_samples(tmp_path / "out")
    assert row["question"] == "What is it?" and row["images"][0]["ext"] == "png"


def test_every_bad_input_is_quarantined_and_the_batch_goes_on(tmp_path):
    good = encode(photo(seed=11), "JPEG")
    table = pa.table({
        "image": [[base64.b64encode(good).decode()],          # 0 good
                  ["%%%not-base64%%%"],                        # 1 bad base64
                  [""],                                        # 2 empty image
                  [base64.b64encode(good[:300]).decode()],     # 3 truncated
                  [base64.b64encode(encode(photo(20, 20), "PNG")).decode()],       # 4 too small
                  [base64.b64encode(encode(photo(6000, 28), "PNG")).decode()],     # 5 aspect ratio
                  [base64.b64encode(encode(photo(seed=12), "JPEG")).decode()],     # 6 missing question
                  [base64.b64encode(encode(photo(seed=13), "JPEG")).decode()],     # 7 empty question
                  [],                                          # 8 no image: a text-only row, kept
                  [base64.b64encode(encode(photo(seed=14), "JPEG")).decode()]],    # 9 good
        "question": ["Q0", "Q1", "Q2", "Q3", "Q4", "Q5", None, "  ", "Q8", "Q9"],
        "response": ["<answer>a</answer>"] * 10,
    })
    pq.write_table(table, tmp_path / "bad.parquet", row_group_size=3)
    report = ingest(IngestConfig("thyme-sft", str(tmp_path / "out"), [str(tmp_path / "bad.parquet")]),
                    progress=False)
    reasons = {q["origin"]["row"]: q["reason"] for q in read_quarantine(tmp_path / "out")}
    assert reasons == {1: "bad_base64", 2: "empty_image", 3: "undecodable_image", 4: "too_small",
                       5: "bad_aspect_ratio", 6: "missing_field", 7: "bad_text"}
    assert [r["origin"]["row"] for r in read_samples(tmp_path / "out")] == [0, 8, 9]
    assert report["rows_read"] == 10 and report["kept"] + report["quarantined"] == 10


def test_wrong_types_and_non_utf8(tmp_path):
    good = base64.b64encode(JPEG).decode()
    pq.write_table(pa.table({"image": [[good], [good]], "question": [b"ok?", b"\xff\xfe bad"],
                             "response": ["x", "y"]}), tmp_path / "types.parquet")
    pq.write_table(pa.table({"image": [good], "question": [42], "response": ["x"]}), tmp_path / "int.parquet")
    ingest(IngestConfig("thyme-sft", str(tmp_path / "out"), [str(tmp_path / "types.parquet"),
                                                           str(tmp_path / "int.parquet")]), progress=False)
    reasons = {(q["origin"]["file"], q["origin"]["row"]): q["reason"] for q in read_quarantine(tmp_path / "out")}
    assert reasons == {("types.parquet", 1): "bad_text", ("int.parquet", 0): "wrong_type"}
    assert len(read_samples(tmp_path / "out")) == 1


def test_dedup_and_stable_ids(tmp_path):
    rows = [SourceRow("What is shown?", [JPEG], response="<answer>a</answer>"),
            SourceRow("  what IS   shown? ", [JPEG], response="<answer>a</answer>"),
            SourceRow("What is shown?", [PNG], response="<answer>b</answer>")]
    write_parquet(thyme_sft_table(rows), tmp_path / "d.parquet")
    r1 = ingest(IngestConfig("thyme-sft", str(tmp_path / "o1"), [str(tmp_path / "d.parquet")]), progress=False)
    r2 = ingest(IngestConfig("thyme-sft", str(tmp_path / "o2"), [str(tmp_path / "d.parquet")], shard_size=1),
                progress=False)
    assert r1["deduplicated"] == 1 and r1["kept"] == 2
    ids1 = [r["id"] for r in read_samples(tmp_path / "o1")]
    assert ids1[0] == sample_id("what is shown?", [read_samples(tmp_path / "o1")[0]["images"][0]["hash"]])
    # one row per shard: the duplicate survives ingest, the pool scan drops it by id
    assert r2["shards"] == 3 and r2["kept"] == 3
    assert scan_pool(str(tmp_path / "o2")).collect()["id"].to_list() == ids1


def test_rerun_is_a_no_op_and_config_changes_rerun(tmp_path):
    write_parquet(thyme_sft_table(sft_rows()), tmp_path / "s.parquet")
    cfg = IngestConfig("thyme-sft", str(tmp_path / "out"), [str(tmp_path / "s.parquet")], shard_size=1)
    first = ingest(cfg, progress=False)
    files = sorted((tmp_path / "out" / "samples").glob("*.parquet"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = ingest(cfg, progress=False)
    assert again["skipped_shards"] == 2 and again["kept"] == first["kept"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    changed = ingest(IngestConfig("thyme-sft", str(tmp_path / "out"), [str(tmp_path / "s.parquet")],
                                  shard_size=1, min_side=300), progress=False)
    assert changed["skipped_shards"] == 0 and changed["quarantined_by_reason"] == {"too_small": 2}


def test_plan_shards_cuts_row_groups(tmp_path):
    rows = [SourceRow(f"Q{i}", [JPEG], response="r") for i in range(10)]
    write_parquet(thyme_sft_table(rows), tmp_path / "a.parquet", row_group_size=3)
    write_parquet(thyme_sft_table(rows[:4]), tmp_path / "b.parquet", row_group_size=4)
    shards = plan_shards(IngestConfig("thyme-sft", "unused", [str(tmp_path)], shard_size=5))
    assert [s.rows for s in shards] == [5, 5, 4]
    assert shards[1].pieces[0][0].file.endswith("a.parquet") and shards[2].pieces[0][0].file.endswith("b.parquet")


@pytest.mark.slow
def test_killed_ingest_recovers_cleanly(tmp_path):
    rows = [SourceRow(f"Question {i}?", [encode(photo(seed=100 + i), "PNG")], response="<answer>a</answer>")
            for i in range(120)]
    write_parquet(thyme_sft_table(rows), tmp_path / "big.parquet", row_group_size=5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines", "ingest", "--format", "thyme-sft", "--input",
           str(tmp_path / "big.parquet"), "--out", str(out), "--shard-size", "5", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "samples" / "shard-00001.parquet").exists() and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run: some shards done, one maybe half-written
    proc.wait()
    done_before = len(list((out / "samples").glob("shard-*.parquet")))
    assert 2 <= done_before < 24
    report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    assert report["kept"] == 120 and report["skipped_shards"] >= done_before
    assert sorted(r["origin"]["row"] for r in read_samples(out)) == list(range(120))
    assert not [p for p in out.rglob("*.tmp") if p.is_file()], "temporary files left behind"
