"""Published datasets from a released-shaped pool (issue 14): every path the card promises
resolves (the SFT card's snippet writes the embedded images where the rows name them; the RL
dataset ships its files), the original Thyme README's decode recipe still works on our SFT
dataset, text-only and multi-image rows survive, and the card carries the decontamination and
quarantine counts."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
import released_pool
from PIL import Image

from pipelines.core.prompts import parse_user
from pipelines.core.trajectory import Turn, trajectories_table
from pipelines.datasets.decontaminate import DecontaminationConfig
from pipelines.datasets.publish import PublishConfig, publish
from pipelines.datasets.splits import SplitConfig, build_splits

SFT_SPLITS = ["wo_thinking_thyme_single_round", "2round", "computation"]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    info = released_pool.build(root)
    # one trajectory broken (two answers): set aside by validation, counted on the card
    trajectories = list(info["trajectories"].values())
    t = trajectories[2]
    t.turns = [Turn("First <answer>blue</answer>.", t.turns[0].code, t.turns[0].result), t.turns[1]]
    pq.write_table(trajectories_table(trajectories), root / "audited" / "shard-00000.parquet")
    bench = root / "bench.jsonl"
    bench.write_text(json.dumps({"id": "v1", "question": "q",
                                 "image": base64.b64encode((info["store"] / info["rl"]["plain"].images[0].relpath)
                                                           .read_bytes()).decode()}) + "\n")
    d = tmp_path_factory.mktemp("publish")
    report = build_splits(*released_pool.files(root), d / "splits",
                          SplitConfig(rl_source="pool", rl_share=0.0, test_share=0.0,
                                      decontaminate=DecontaminationConfig(benchmarks=(str(bench),))))
    funnel = {k: report[k] for k in ("rows", "rl_prompts", "validated", "decontamination")}
    sft = publish(d / "splits", info["store"], d / "thyme-sft", PublishConfig(kind="sft", funnel=funnel))
    rl = publish(d / "splits", info["store"], d / "thyme-rl", PublishConfig(kind="rl", funnel=funnel))
    return d, info, sft, rl


def _load(path, split, config=None):
    from datasets import load_dataset
    return load_dataset(str(path), config, split=split, cache_dir=str(path.parent / f"hf-cache-{path.name}"))


def test_the_sft_cards_snippet_makes_every_user_image_path_resolve(published, tmp_path):
    d, info, sft, _ = published
    copy = tmp_path / "thyme-sft"
    shutil.copytree(d / "thyme-sft", copy)
    card = (copy / "README.md").read_text()
    assert "not shipped" in card and not (copy / "images").exists()
    snippet = re.search(r"```python\n(import base64, hashlib.*?)```", card, re.S).group(1)
    exec(compile(snippet.replace("PATH_TO_THIS_DATASET", str(copy)), "card-snippet", "exec"), {})
    checked = 0
    for split in sft["splits"]:
        for row in _load(copy, split):
            path = parse_user(row["question"])[1].get("original_path")
            if not row["has_image"]:
                assert path is None and row["image"] == []
                continue
            assert (copy / path).read_bytes() == base64.b64decode(row["image"][0])
            checked += 1
    assert checked == 2            # the multi-image and two-round rows; one image row was set aside


def test_text_only_and_multi_image_rows_are_published(published):
    d, info, sft, _ = published
    assert sft["rows"]["computation"] == 1 and sft["rows"]["wo_thinking_thyme_single_round"] == 1
    (text,) = _load(d / "thyme-sft", "computation")
    assert text["has_image"] is False and text["image"] == [] and "<image>" not in text["question"]
    (multi,) = _load(d / "thyme-sft", "wo_thinking_thyme_single_round")
    assert len(multi["image"]) == 3 and multi["question"].count("<image>") == 2
    (multi_hf,) = _load(d / "thyme-sft", "wo_thinking_thyme_single_round", "hf")
    assert [im.size for im in multi_hf["images"]][:2] == [(320, 240), (320, 240)]


def _original_decode(dataset_dir, out_root):
    """The Thyme README's decode recipe (section 2.2), step for step: each split's `image` list
    of base64 strings decoded, transparency flattened on white, saved as JPEG q95 at
    `<img_root>/<split>/<row+1:08d>_<k:02d>.jpg`, and a JSONL of {image: paths, question,
    response} per split. (The original never creates its image folders; we do.)"""
    from datasets import load_dataset

    written = {}
    for split in SFT_SPLITS:
        ds = load_dataset(str(dataset_dir), split=split, cache_dir=str(out_root / "cache"))
        img_dir = out_root / "img" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for sample_idx, sample in enumerate(ds):
            paths = []
            for img_idx, b64 in enumerate(sample["image"], start=1):
                path = img_dir / f"{sample_idx + 1:08d}_{img_idx:02d}.jpg"
                with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
                    if img.mode in ("RGBA", "LA", "P"):
                        img = img.convert("RGBA")
                        background = Image.new("RGB", img.size, (255, 255, 255))
                        background.paste(img, (0, 0), img)
                        img = background
                    elif img.mode != "RGB":
                        img = img.convert("RGB")
                    img.save(path, "jpeg", quality=95)
                paths.append(str(path))
            records.append({"image": paths, "question": sample["question"], "response": sample["response"]})
        (out_root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        written[split] = records
    return written


def test_the_original_decode_recipe_still_works(published, tmp_path):
    d, info, sft, _ = published
    written = _original_decode(d / "thyme-sft", tmp_path)
    assert {s: len(r) for s, r in written.items()} == {s: sft["rows"].get(s, 0) for s in SFT_SPLITS}
    (text,) = written["computation"]
    assert text["image"] == []
    (multi,) = written["wo_thinking_thyme_single_round"]
    assert len(multi["image"]) == 3 and all(Image.open(p).format == "JPEG" for p in multi["image"])


def test_the_rl_dataset_ships_every_file_its_prompts_name(published):
    d, info, _, rl = published
    assert "every image file ships there" in (d / "thyme-rl" / "README.md").read_text()
    rows = list(_load(d / "thyme-rl", "train"))
    assert len(rows) == rl["rows"]["train"] == 5       # 8 prompts: plain decontaminated, open and text-only filtered
    for row in rows:
        path = parse_user(row["messages"][1]["content"])[1]["original_path"]
        assert (d / "thyme-rl" / path).read_bytes() == base64.b64decode(row["images"][0])
    two = next(r for r in rows if r["id"] == info["rl"]["two_images"].id)
    assert len(two["images"]) == 2 and two["messages"][1]["content"].count("<image>") == 2


def test_the_card_reports_decontamination_quarantine_and_rl_prompts(published):
    d, *_ = published
    card = (d / "thyme-sft" / "README.md").read_text()
    assert "## Decontamination" in card and "| `bench` | 1 | 1 | 1 | 1 | 0 | 0 | 1 |" in card
    assert "## Rows set aside by validation" in card and "one_answer" in card
    assert "## RL prompts" in card and "From the pool (no teacher)" in card
