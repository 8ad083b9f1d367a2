"""The label mask at token level on crafted Thyme rows: exactly the model's own writing trains."""

import base64
import io

import pytest
import torch
from PIL import Image

from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user
from thyme_train.chat import IGNORE, RowError, ThymeChat, ThymeCollator
from thyme_train.tiny import build_tiny_model

CODE = "<code>\n```python\nprint(result)\n```\n</code>"


@pytest.fixture(scope="module")
def processor(request):
    from transformers import AutoProcessor

    path = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")
    return AutoProcessor.from_pretrained(path)


def b64(color, size=(56, 56)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def row(response, images=1, question="What colour is the sign?", extra_images=0):
    q = render_user(question, "images/0001.jpg", (56, 56)) if images else render_user(question)
    return {"image": [b64((40 * i, 0, 0)) for i in range(images + extra_images)],
            "question": q, "response": response}


def trainable_runs(chat, r):
    """The decoded text of each contiguous run of trainable tokens, checking labels == ids."""
    enc = chat.encode(r)
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    return [chat.tokenizer.decode(run) for run in runs], enc


def test_single_round_trains_reasoning_code_and_answer_only(processor):
    chat = ThymeChat(processor)
    response = (f"<think>The sign is small; crop it.{CODE}<sandbox_output><image></sandbox_output>"
                "The crop shows red.</think> <answer>red</answer>")
    runs, enc = trainable_runs(chat, row(response, extra_images=1))
    assert runs == [f"<think>The sign is small; crop it.{CODE}",
                    "The crop shows red.</think> <answer>red</answer><|im_end|>"]
    # Everything else is masked: system prompt, user turn, both images, the output block.
    tok = chat.tokenizer
    masked = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True)
                         if lab == IGNORE])
    assert DEFAULT_SYSTEM_PROMPT in masked and "What colour is the sign?" in masked
    assert "<sandbox_output><|vision_start|>" in masked
    image_tokens = [lab for t, lab in zip(enc.input_ids, enc.labels, strict=True)
                    if t == chat.image_token_id]
    assert len(image_tokens) == 8 and set(image_tokens) == {IGNORE}  # 4 per 56x56 image
    assert len(enc.image_grid_thw) == 2


TWO_ROUNDS = (f"<think>Crop wide first.{CODE}<sandbox_output><image></sandbox_output>"
              f"Still small; crop tighter.{CODE}<sandbox_output><image></sandbox_output>"
              "Now it reads STOP.</think> <answer>STOP</answer>")


def test_two_rounds_all_rounds_trained_when_last_round_only_is_off(processor):
    chat = ThymeChat(processor, train_last_round_only=False)
    runs, _ = trainable_runs(chat, row(TWO_ROUNDS, extra_images=2))
    assert runs == [f"<think>Crop wide first.{CODE}", f"Still small; crop tighter.{CODE}",
                    "Now it reads STOP.</think> <answer>STOP</answer><|im_end|>"]


def test_two_rounds_last_round_only_masks_the_first_round(processor):
    chat = ThymeChat(processor, train_last_round_only=True)
    runs, _ = trainable_runs(chat, row(TWO_ROUNDS, extra_images=2))
    assert runs == [f"Still small; crop tighter.{CODE}",
                    "Now it reads STOP.</think> <answer>STOP</answer><|im_end|>"]
    # A single-round row loses nothing to last-round-only.
    single = (f"<think>Crop.{CODE}<sandbox_output><image></sandbox_output>Red.</think> "
              "<answer>red</answer>")
    runs, _ = trainable_runs(chat, row(single, extra_images=1))
    assert runs == [f"<think>Crop.{CODE}", "Red.</think> <answer>red</answer><|im_end|>"]


COMPUTATION = (f"<think>Compute 17*23.{CODE}<sandbox_output>391</sandbox_output>"
               "So 391.</think> <answer>391</answer>")


@pytest.mark.parametrize("images", [1, 0])
def test_computation_with_and_without_image(processor, images):
    chat = ThymeChat(processor)
    r = row(COMPUTATION, images=images, question="What is 17*23?")
    runs, enc = trainable_runs(chat, r)
    assert runs == [f"<think>Compute 17*23.{CODE}",
                    "So 391.</think> <answer>391</answer><|im_end|>"]
    assert (chat.image_token_id in enc.input_ids) == bool(images)
    assert enc.pixel_values is None if not images else enc.pixel_values.shape[0] == 16


def test_output_with_text_and_output_with_two_images(processor):
    chat = ThymeChat(processor)
    response = (f"<think>Measure.{CODE}<sandbox_output>width=120\nheight=80</sandbox_output>"
                f"Crop both halves.{CODE}<sandbox_output><image><image></sandbox_output>"
                "Left is red.</think> <answer>left</answer>")
    runs, enc = trainable_runs(chat, row(response, extra_images=2))
    assert runs == [f"<think>Measure.{CODE}", f"Crop both halves.{CODE}",
                    "Left is red.</think> <answer>left</answer><|im_end|>"]
    assert len(enc.image_grid_thw) == 3
    # The two sandbox images' tokens sit inside the second output block and are all masked.
    text = chat.tokenizer.decode(enc.input_ids)
    block = text[text.index("<sandbox_output><|vision_start|>"):]
    assert block.count("<|vision_start|>") == 2


def test_without_output_masking_the_output_text_trains_but_image_tokens_never(processor):
    chat = ThymeChat(processor, mask_sandbox_outputs=False)
    response = (f"<think>Measure.{CODE}<sandbox_output>391</sandbox_output>Then crop.{CODE}"
                "<sandbox_output><image></sandbox_output>Done.</think> <answer>a</answer>")
    runs, enc = trainable_runs(chat, row(response, extra_images=1))
    assert runs[0] == (f"<think>Measure.{CODE}<sandbox_output>391</sandbox_output>Then crop."
                       f"{CODE}<sandbox_output><|vision_start|>")
    assert runs[1] == "<|vision_end|></sandbox_output>Done.</think> <answer>a</answer><|im_end|>"


def test_system_prompt_is_configurable(processor):
    chat = ThymeChat(processor, system_prompt="ORIGINAL THYME PROMPT")
    text, _ = chat.render("<image>\nQ", "<think>x</think> <answer>y</answer>")
    assert text.startswith("<|im_start|>system\nORIGINAL THYME PROMPT<|im_end|>")
    assert DEFAULT_SYSTEM_PROMPT not in text


def test_malformed_rows_name_the_reason(processor):
    chat = ThymeChat(processor)
    with pytest.raises(RowError, match="image_count.*2 <image> placeholders.*1 images"):
        chat.encode(row(f"<think>{CODE}<sandbox_output><image></sandbox_output></think> "
                        "<answer>a</answer>") | {"_origin": "x.parquet:7"})
    with pytest.raises(RowError, match="unbalanced_tags.*never closed"):
        chat.encode(row(f"<think>{CODE}<sandbox_output>5</think> <answer>a</answer>"))


def test_length_from_image_sizes_matches_encoding(processor):
    chat = ThymeChat(processor)
    r = row(TWO_ROUNDS, extra_images=2)
    r["image"][1] = b64("blue", size=(300, 90))
    assert chat.length(r) == len(chat.encode(r).input_ids)


def test_collator_pads_masks_and_mixes_image_and_text_rows(processor):
    chat = ThymeChat(processor)
    rows = [row(COMPUTATION, images=0), row(TWO_ROUNDS, extra_images=2),
            row(COMPUTATION, images=1)]
    batch = ThymeCollator(chat)(rows)
    lengths = [len(chat.encode(r).input_ids) for r in rows]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE).all()
    assert (batch["input_ids"][pad] == chat.tokenizer.pad_token_id).all()
    assert batch["image_grid_thw"].shape == (4, 3)          # 3 images of row 2, 1 of row 3
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(1).sum())
    assert (batch["mm_token_type_ids"] == (batch["input_ids"] == chat.image_token_id)).all()
    for i, r in enumerate(rows):
        assert batch["labels"][i, :lengths[i]].tolist() == chat.encode(r).labels

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(processor.tokenizer.name_or_path)
    assert torch.isfinite(model(**batch).loss)
    with pytest.raises(ValueError, match="max_length 20"):
        ThymeCollator(chat, max_length=20)(rows)


def test_several_input_images_keep_their_order(processor):
    """A multi-image row: each input image is a vision span of the user turn, in the row's order
    (their grids tell them apart), then the sandbox's image; no image token trains."""
    from pipelines.core.prompts import load_prompt_set

    chat = ThymeChat(processor)
    question = load_prompt_set().render_user("Which is wider?", "images/a.png", (112, 56), images=2)
    response = (f"<think>Crop.{CODE}<sandbox_output><image></sandbox_output>The first."
                "</think> <answer>first</answer>")
    r = {"image": [b64((200, 0, 0), size=(112, 56)), b64((0, 0, 200), size=(56, 84)),
                   b64((0, 200, 0), size=(168, 56))], "question": question, "response": response}
    runs, enc = trainable_runs(chat, r)
    assert runs == [f"<think>Crop.{CODE}", "The first.</think> <answer>first</answer><|im_end|>"]
    assert enc.image_grid_thw == [[1, 4, 8], [1, 6, 4], [1, 4, 12]]     # (t, h, w) in 14-px patches
    text = chat.tokenizer.decode(enc.input_ids)
    user = text[text.index("<|im_start|>user"):text.index("<|im_start|>assistant")]
    assert user.count("<|vision_start|>") == 2 and user.index("<|vision_start|>") < user.index("Which")
    assert chat.length(r) == len(enc.input_ids)
    assert all(label == IGNORE for token, label in zip(enc.input_ids, enc.labels, strict=True)
               if token == chat.image_token_id)
