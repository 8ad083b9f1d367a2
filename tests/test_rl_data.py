"""RL prompts from every format RL data comes in (thyme_train.rl_data): the pipeline's published
RL dataset, a released Thyme-RL parquet, a DeepEyes (verl) parquet, written by the project's own
publisher and format writers. Every prompt keeps all its images, in order, as files; a bad row
names its file and row or is quarantined; prompts are the row's own or a chosen set's."""

import io
import json
import os

import pyarrow as pa
import pytest
from PIL import Image

from pipelines.core.formats import SourceRow, b64, deepeyes_table, thyme_rl_table, write_parquet
from pipelines.core.prompts import load_prompt_set
from thyme_train.rl_data import BadRow, data_report, load_rl_rows, rl_dataset


def png(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def user_text(row) -> str:
    """The user message's text, `<image>` where each image part stands."""
    return "".join("<image>" if p["type"] == "image" else p["text"] for p in row["prompt"][-1]["content"])


def system_text(row) -> str | None:
    first = row["prompt"][0]
    return first["content"][0]["text"] if first["role"] == "system" else None


RED = SourceRow("What colour is the sign?", [png((200, 0, 0))], answer="red",
                image_path="/mnt/data/images/sign.jpg", image_size=(640, 480))
SUM = SourceRow("What is 17 + 25?", [], answer="42")


def test_a_released_thyme_rl_parquet_keeps_its_images_and_prompts(tmp_path):
    """The issue: this format was read as simple rows and silently became text-only prompts."""
    write_parquet(thyme_rl_table([RED, SUM], load_prompt_set("thyme-release")), tmp_path / "rl.parquet")
    cache = tmp_path / "cache"
    red, total = load_rl_rows(tmp_path / "rl.parquet", cache_dir=cache)
    assert len(red["images"]) == 1 and Image.open(red["images"][0]).size == (40, 30)
    assert os.path.dirname(red["images"][0]) == str(cache)
    # the row's own messages, verbatim: the released system prompt and its User Image Path
    release = load_prompt_set("thyme-release")
    assert system_text(red) == release.system
    assert user_text(red) == release.render_user(RED.question, RED.image_path, RED.image_size)
    assert (red["solution"], red["question"], red["origin"]) == ("red", RED.question, "rl.parquet row 0")
    assert total["images"] == [] and "<image>" not in user_text(total)      # text-only by data
    # images are written once, by content
    load_rl_rows(tmp_path / "rl.parquet", cache_dir=cache)
    assert len(list(cache.glob("*.png"))) == 1
    # the downloaded dataset folder (Hub layout: data/<split>-*-of-*.parquet), shard by shard
    hub = tmp_path / "Thyme-RL" / "data"
    hub.mkdir(parents=True)
    for k, row in enumerate((RED, SUM)):
        write_parquet(thyme_rl_table([row]), hub / f"train-0000{k}-of-00002.parquet")
    rows = load_rl_rows(tmp_path / "Thyme-RL", cache_dir=cache)
    assert [r["origin"] for r in rows] == ["data/train-00000-of-00002.parquet row 0",
                                           "data/train-00001-of-00002.parquet row 0"]
    assert [len(r["images"]) for r in rows] == [1, 0]


def test_prepared_rows_are_reused_until_the_data_or_prompts_change(tmp_path, monkeypatch):
    import thyme_train.rl_data as rl_data

    write_parquet(thyme_rl_table([RED, SUM]), tmp_path / "rl.parquet")
    cache = tmp_path / "cache"
    first = load_rl_rows(tmp_path / "rl.parquet", cache_dir=cache)
    assert len(list(cache.glob("prompts-*.jsonl"))) == 1

    def no_decoding(*args):
        raise AssertionError("the prepared rows should have been read")
    monkeypatch.setattr(rl_data, "_prompt_row", no_decoding)
    assert load_rl_rows(tmp_path / "rl.parquet", cache_dir=cache) == first
    monkeypatch.undo()
    # another prompt set, a changed file, a lost image: prepared again
    load_rl_rows(tmp_path / "rl.parquet", prompt_set="thyme-release", cache_dir=cache)
    assert len(list(cache.glob("prompts-*.jsonl"))) == 2
    os.remove(first[0]["images"][0])
    assert load_rl_rows(tmp_path / "rl.parquet", cache_dir=cache) == first
    write_parquet(thyme_rl_table([SUM]), tmp_path / "rl.parquet")
    assert [r["question"] for r in load_rl_rows(tmp_path / "rl.parquet", cache_dir=cache)] == [SUM.question]


def test_a_chosen_prompt_set_rerenders_every_row(tmp_path):
    write_parquet(thyme_rl_table([RED, SUM], load_prompt_set("thyme-release")), tmp_path / "rl.parquet")
    ours = load_prompt_set("thyme")
    red, total = load_rl_rows(tmp_path / "rl.parquet", prompt_set="thyme", cache_dir=tmp_path / "c")
    assert system_text(red) == ours.system
    # the image keeps the name and size the row's own message gives it
    assert user_text(red) == ours.render_user(RED.question, RED.image_path, RED.image_size)
    assert user_text(total) == ours.render_user(SUM.question)
    # a set taken from a dataset's own rows
    taken, _ = load_rl_rows(tmp_path / "rl.parquet", prompt_set=f"from:{tmp_path / 'rl.parquet'}",
                            cache_dir=tmp_path / "c")
    assert system_text(taken) == load_prompt_set("thyme-release").system
    with pytest.raises(ValueError, match="no such set"):
        load_rl_rows(tmp_path / "rl.parquet", prompt_set="thyme-nope")


def test_deepeyes_rows_get_a_thyme_prompt_around_their_question(tmp_path):
    table = deepeyes_table([RED]).to_pylist()
    # the released DeepEyes prompt: its own system prompt and tool instructions after the question
    table[0]["prompt"] = [
        {"role": "system", "content": "You are a helpful assistant. # Tools ... image_zoom_in_tool"},
        {"role": "user", "content": "<image>\nWhat colour is the sign?\nThink first, call "
                                    "**image_zoom_in_tool** if needed, then answer. Format ..."}]
    write_parquet(pa.Table.from_pylist(table), tmp_path / "deepeyes.parquet")
    row, = load_rl_rows(tmp_path / "deepeyes.parquet", cache_dir=tmp_path / "cache")
    assert row["question"] == "What colour is the sign?" and row["solution"] == "red"
    assert system_text(row) == load_prompt_set().system
    name = os.path.basename(row["images"][0])            # bytes only: named by its cached file
    assert user_text(row) == load_prompt_set().render_user(RED.question, name, (40, 30))
    assert "tool_call" not in user_text(row) and "zoom_in_tool" not in user_text(row)


def test_multi_image_rows_keep_every_image_in_order(tmp_path):
    two = SourceRow("Which is wider?", [png((200, 0, 0), (60, 20)), png((0, 0, 200), (20, 60))],
                    answer="the first", image_path="/mnt/data/images/pair.jpg", image_size=(60, 20))
    table = thyme_rl_table([two]).to_pylist()
    table[0]["messages"][1]["content"] = load_prompt_set().render_user(
        two.question, two.image_path, two.image_size, images=2)
    write_parquet(pa.Table.from_pylist(table), tmp_path / "rl.parquet")
    row, = load_rl_rows(tmp_path / "rl.parquet", cache_dir=tmp_path / "cache")
    assert [Image.open(f).size for f in row["images"]] == [(60, 20), (20, 60)]
    assert user_text(row).startswith("<image>\n<image>\nWhich is wider?")
    # the same row re-rendered keeps both placeholders
    again, = load_rl_rows(tmp_path / "rl.parquet", prompt_set="thyme-release", cache_dir=tmp_path / "cache")
    assert user_text(again).count("<image>") == 2 and again["images"] == row["images"]


def test_bad_rows_name_file_and_row_or_are_quarantined(tmp_path):
    table = thyme_rl_table([RED, RED, RED, SUM]).to_pylist()
    table[1]["images"] = [b64(png((0, 0, 200))[:50])]          # a truncated image
    table[2]["images"] = []                                      # the prompt says <image>, no image
    table[3]["solution"] = ""                                    # no ground truth
    write_parquet(pa.Table.from_pylist(table), tmp_path / "rl.parquet")
    with pytest.raises(BadRow, match=r"rl.parquet row 1: image 1 of 1 .* does not decode"):
        load_rl_rows(tmp_path / "rl.parquet", cache_dir=tmp_path / "cache")
    quarantine = []
    rows = load_rl_rows(tmp_path / "rl.parquet", cache_dir=tmp_path / "cache", quarantine=quarantine)
    assert [r["origin"] for r in rows] == ["rl.parquet row 0"]
    # prepared rows remember their bad rows: quarantined again, or the error when not asked to
    again = []
    assert load_rl_rows(tmp_path / "rl.parquet", cache_dir=tmp_path / "cache", quarantine=again) == rows
    assert again == quarantine
    with pytest.raises(BadRow, match=r"rl.parquet row 1: image 1 of 1 .* does not decode"):
        load_rl_rows(tmp_path / "rl.parquet", cache_dir=tmp_path / "cache")
    assert [(q["origin"], q["reason"]) for q in quarantine] == [
        ("rl.parquet row 1", "bad_image"), ("rl.parquet row 2", "image_count"),
        ("rl.parquet row 3", "missing_field")]
    report = data_report(rows, quarantine, tmp_path / "out")
    assert report == {"prompts": 1, "with_images": 1, "text_only": 0, "images": 1,
                      "quarantined": {"bad_image": 1, "image_count": 1, "missing_field": 1}}
    lines = (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
    assert [json.loads(line)["origin"] for line in lines] == [q["origin"] for q in quarantine]
    data_report(rows, [], tmp_path / "out")                     # a clean run leaves no stale list
    assert not (tmp_path / "out" / "quarantine.jsonl").exists()


def test_simple_rows_with_a_missing_image_or_broken_line_fail_by_row(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "0.png")
    (tmp_path / "rl.jsonl").write_text(
        json.dumps({"question": "Colour?", "solution": "red", "image": "0.png"}) + "\n"
        + json.dumps({"question": "Colour?", "solution": "red", "image": "gone.png"}) + "\n"
        + "{not json\n")
    with pytest.raises(BadRow, match=r"rl.jsonl row 1: image 1 of 1 'gone.png' .*no file"):
        load_rl_rows(tmp_path / "rl.jsonl")
    quarantine = []
    row, = load_rl_rows(tmp_path / "rl.jsonl", quarantine=quarantine)
    assert row["images"] == [str(tmp_path / "0.png")]
    assert 'User Image Path:** "0.png"' in user_text(row) and 'Size:** "40x30"' in user_text(row)
    assert [q["reason"] for q in quarantine] == ["bad_image", "not_json"]


def test_numeric_difficulty_and_pass_rate_reach_curriculum_sampling(tmp_path):
    """A row's number in `difficulty` or `pass_rate` (top-level or in `meta`) is kept for the
    curriculum; a label such as "hard" is not a rank and is left out."""
    from thyme_train.sampling import PromptSampling

    rows = [{"question": "2+2?", "solution": "4", "difficulty": 3},
            {"question": "3+3?", "solution": "6", "meta": json.dumps({"difficulty": 1, "pass_rate": 0.9})},
            {"question": "4+4?", "solution": "8", "difficulty": "hard"}]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_rl_rows(tmp_path / "rl.jsonl")
    assert [r.get("difficulty") for r in loaded] == [3.0, 1.0, None]
    assert loaded[1]["pass_rate"] == 0.9 and "pass_rate" not in loaded[0]
    ranked = PromptSampling.from_rows(rl_dataset(loaded[:2]), curriculum=True,
                                      curriculum_field="difficulty", higher_is_harder=True)
    assert ranked.order == [1, 0]                                   # easy first
    with pytest.raises(ValueError, match="row 2 has no number in 'difficulty'"):
        PromptSampling.from_rows(rl_dataset(loaded), curriculum=True,
                                 curriculum_field="difficulty", higher_is_harder=True)


def test_the_published_rl_dataset_is_read_in_both_encodings(tmp_path):
    """Prompts written by the pipeline itself (splits.rl_row, publish): the hf encoding's rows
    name the shipped files; the thyme encoding's base64 images are cached; same prompts."""
    from pipelines.core.images import ImageStore
    from pipelines.core.schema import Sample
    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import RL_SCHEMA, rl_row

    store = ImageStore(tmp_path / "store")
    samples = [Sample("What colour is the sign?", [store.put(png((200, 0, 0)))[0]], "test", "f", 0,
                      answer="red", meta={"options": ["A. red", "B. blue"]}),
               Sample("What is 17 + 25?", [], "test", "f", 1, answer="42")]
    (tmp_path / "splits" / "rl").mkdir(parents=True)
    for part, rows in (("train", samples), ("test", [])):
        write_parquet(pa.Table.from_pylist([rl_row(s, load_prompt_set()) for s in rows], schema=RL_SCHEMA),
                      tmp_path / "splits" / "rl" / f"{part}.parquet")
    root = tmp_path / "thyme-rl"
    publish(tmp_path / "splits", tmp_path / "store", root, PublishConfig(kind="rl"))
    red, total = load_rl_rows(root, cache_dir=tmp_path / "cache")
    assert red["images"][0].startswith(str(root / "images")) and red["options"] == ["A. red", "B. blue"]
    assert red["origin"] == "data/hf/train-00000.parquet row 0"
    assert f'"{os.path.relpath(red["images"][0], root)}"' in user_text(red)   # dataset-relative
    assert str(tmp_path) not in user_text(red)
    assert total["images"] == [] and total["solution"] == "42"
    # the thyme encoding alone (base64): same prompts, images from the cache
    import shutil
    shutil.rmtree(root / "data" / "hf")
    again = load_rl_rows(root, cache_dir=tmp_path / "cache")
    assert [r["prompt"] for r in again] == [red["prompt"], total["prompt"]]
    assert open(again[0]["images"][0], "rb").read() == open(red["images"][0], "rb").read()
    # what GRPOTrainer takes: text-only and image rows side by side
    dataset = rl_dataset([red, total])
    assert dataset["images"] == [red["images"], []]
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        load_rl_rows(root, split="dev")


@pytest.mark.slow
def test_every_input_image_reaches_the_policy_and_the_sandbox_in_order(tmp_path, request, sandbox):
    """A two-image row through TRL's own image filling (prepare_multimodal_messages, as
    GRPOTrainer does from the `images` column) and the rollout codec: both images become vision
    spans in order, and the sandbox session gets both files; the first is `image_path`, the
    others are readable inputs at their paths (the sandbox binds no name for them)."""
    from transformers import AutoProcessor
    from trl.data_utils import prepare_multimodal_messages

    from thyme_train.engine import ChatCodec
    from thyme_train.tiny import build_tiny_model

    two = SourceRow("Which is wider?", [png((200, 0, 0), (112, 56)), png((0, 0, 200), (56, 56))],
                    answer="the first", image_path="/mnt/data/images/pair.jpg", image_size=(112, 56))
    table = thyme_rl_table([two]).to_pylist()
    table[0]["messages"][1]["content"] = load_prompt_set().render_user(
        two.question, two.image_path, two.image_size, images=2)
    write_parquet(pa.Table.from_pylist(table), tmp_path / "rl.parquet")
    os.chmod(tmp_path, 0o755)
    example = rl_dataset(load_rl_rows(tmp_path / "rl.parquet", cache_dir=tmp_path / "cache"))[0]

    processor = AutoProcessor.from_pretrained(build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default"))
    codec = ChatCodec(processor)
    prompt = codec.prompt(prepare_multimodal_messages(example["prompt"], example["images"]))
    assert prompt.image_files == example["images"] and [im.size for im in prompt.images] == [(112, 56), (56, 56)]
    text = codec.decode(prompt.prompt_ids)
    spans = [len(s.split("<|vision_end|>")[0].split("<|image_pad|>")) - 1 for s in text.split("<|vision_start|>")[1:]]
    ip = processor.image_processor
    assert spans == [ip.get_number_of_image_patches(h, w) // ip.merge_size ** 2 for w, h in ((112, 56), (56, 56))]
    assert spans == [8, 4]                   # the wider image first, as in the row

    with sandbox.session(inputs=prompt.image_files) as session:
        result = session.run("from PIL import Image\n"
                             f"print(Image.open(image_path).size, Image.open({prompt.image_files[1]!r}).size)")
    assert result.ok and result.text == "(112, 56) (56, 56)", result
