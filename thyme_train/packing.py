"""Padding-free SFT batches for Qwen2.5-VL (`padding_free: true` in the SFT config): the rows of
a batch become ONE sequence with no padding, each row keeping its own positions, so no compute
goes to pad tokens.

TRL 1.16 refuses `packing` and `padding_free` for vision datasets (its collator knows nothing of
images or of Qwen-VL's 3D rotary positions). transformers 5 supports packed Qwen2.5-VL input
itself: `position_ids` of shape (4, 1, N) — text positions restarting at 0 for every row, then
the three M-RoPE rows — and no attention mask. From the text positions it builds a
block-diagonal causal mask (sdpa, eager) or the varlen boundaries (flash-attention 2), so a row
never attends to another. `PaddingFreeCollator` makes that layout from our collator's padded
batch (thyme_train.chat.ThymeCollator, which owns the labels): the M-RoPE positions are the
model's own `get_rope_index`, computed per row on the padded batch, then every row's tokens are
concatenated; the first token of each row gets no label (it would be predicted from the row
before). Images are unchanged (their patches were already in row order).

Same loss and gradients as the padded batch (tests/test_sft.py checks both). The gain is the
padding not computed, which only flash-attention 2 can realise (not measured yet): with sdpa or eager the packed sequence
gets one dense block-diagonal mask, so attention covers every pair of the whole packed sequence
and the run is slower than padded batches (0.72x tokens/s on CPU with 35% padding:
benchmarks/sft_packing_bench.py, docs/benchmarks.md). TRL's logged `num_tokens` would count
`position_ids.size(1)`, 1 per packed batch: thyme_train.trl_adapter counts the tokens.
"""

from __future__ import annotations

from thyme_train.chat import IGNORE


class PaddingFreeCollator:
    """Wraps a padded collator; `rope_index` is the model's `get_rope_index` (Qwen2.5-VL's
    `model.model.get_rope_index`)."""

    def __init__(self, collator, rope_index):
        self.collator, self.rope_index = collator, rope_index

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        batch = self.collator(rows)
        mask = batch.pop("attention_mask").bool()
        with torch.no_grad():
            rope, _ = self.rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                      image_grid_thw=batch.get("image_grid_thw"),
                                      attention_mask=mask.long())
        lengths = mask.sum(dim=1).tolist()
        text = torch.cat([torch.arange(n) for n in lengths])
        labels = batch["labels"][mask]
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        labels[starts] = IGNORE
        packed = {
            "input_ids": batch["input_ids"][mask][None],
            "labels": labels[None],
            "mm_token_type_ids": batch["mm_token_type_ids"][mask][None],
            "position_ids": torch.cat([text[None], rope[:, mask]])[:, None, :],
            # transformers reads packing from the positions only without a KV cache (TRL's
            # trainers turn it off too; a forward with one would let rows attend to each other)
            "use_cache": False,
        }
        for key in ("pixel_values", "image_grid_thw"):
            if key in batch:
                packed[key] = batch[key]
        return packed
