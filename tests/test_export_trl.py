"""The TRL export through TRL's own SFTTrainer and collator: input ids, labels and images equal
our collator's (thyme_train.chat) token by token, no sandbox output or image token is labelled,
and the template renders exactly the official text. TRL's own training template, for contrast,
labels the sandbox outputs (the bug this export fixes)."""

from __future__ import annotations

import export_data
import pytest
import torch

from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT
from pipelines.datasets.exports import ExportConfig, export
from pipelines.datasets.exports.labels import label_counts
from thyme_train.chat import ThymeChat, ThymeCollator, thyme_messages
from thyme_train.tiny import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(request):
    return build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = export_data.write_published(tmp_path_factory.mktemp("published"), encodings=("thyme",))
    thyme_rows = [export_data.thyme_row(r, images) for items in export_data.rows().values()
                  for r, images in items]
    return root, thyme_rows


def _processor(model_dir):
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(model_dir)


def _trl_trainer(model_dir, export_dir, tmp_path, template: bool):
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    files = [str(export_dir / f"{s}.parquet") for s in export_data.rows()]
    dataset = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    args = SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=True, max_length=None,
                     chat_template_path=str(export_dir / "chat_template.jinja") if template else None,
                     per_device_train_batch_size=4, max_steps=1, report_to="none", logging_steps=1,
                     save_strategy="no", use_cpu=True, dataloader_num_workers=0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return SFTTrainer(model=model, args=args, train_dataset=dataset,
                      processing_class=_processor(model_dir)), dataset


@pytest.mark.parametrize("last_round_only", [False, True])
def test_trl_collator_matches_ours_token_by_token(model_dir, published, tmp_path, last_round_only):
    root, thyme_rows = published
    out = tmp_path / "trl"
    export(root, out, ExportConfig(format="trl", train_last_round_only=last_round_only))
    trainer, dataset = _trl_trainer(model_dir, out, tmp_path, template=True)
    assert trainer.chat_template is None  # the shipped template has markers: TRL swaps nothing in
    theirs = trainer.data_collator([dataset[i] for i in range(len(dataset))])

    processor = _processor(model_dir)
    chat = ThymeChat(processor, system_prompt=DEFAULT_SYSTEM_PROMPT,
                     train_last_round_only=last_round_only)
    ours = ThymeCollator(chat)(thyme_rows)
    for key in ("input_ids", "labels", "attention_mask", "image_grid_thw", "pixel_values"):
        assert torch.equal(theirs[key], ours[key]), key
    for ids, labels in zip(theirs["input_ids"], theirs["labels"], strict=True):
        counts = label_counts(ids, labels, processor.tokenizer, processor.image_token)
        assert counts.labelled_sandbox == counts.labelled_image == counts.label_mismatch == 0
        assert counts.labelled > 0
    trainer.train()  # and it trains on them
    assert trainer.state.global_step == 1


def test_trl_own_training_template_labels_sandbox_outputs(model_dir, published, tmp_path):
    """Without the shipped template TRL swaps in its Qwen2.5-VL training template, whose
    generation markers cover the whole assistant turn: the counting above would catch it."""
    root, _ = published
    out = tmp_path / "trl"
    export(root, out, ExportConfig(format="trl"))
    trainer, dataset = _trl_trainer(model_dir, out, tmp_path, template=False)
    assert trainer.chat_template is not None
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    processor = _processor(model_dir)
    counts = [label_counts(i, lab, processor.tokenizer, processor.image_token)
              for i, lab in zip(batch["input_ids"], batch["labels"], strict=True)]
    assert all(c.labelled_sandbox > 0 for c in counts)
    assert sum(c.labelled_image for c in counts) > 0


def test_template_renders_the_official_text(model_dir):
    from pipelines.datasets.exports.trl import chat_template

    processor = _processor(model_dir)
    for items in export_data.rows().values():
        for row, _ in items:
            for system in (DEFAULT_SYSTEM_PROMPT, None):
                messages = thyme_messages(row["question"], row["response"], system)
                for last_round_only in (False, True):
                    template = chat_template(last_round_only)
                    assert processor.apply_chat_template(messages, tokenize=False, chat_template=template) \
                        == processor.apply_chat_template(messages, tokenize=False)
                    assert processor.apply_chat_template(messages[:-1], tokenize=False, chat_template=template,
                                                         add_generation_prompt=True) \
                        == processor.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
