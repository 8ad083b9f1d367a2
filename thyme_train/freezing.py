"""Freezing the vision side of a Qwen-VL-style model (`model.visual`: its blocks, and the
`merger` that projects them into the language model), for SFT (thyme_train.sft) and RL
(thyme_train.grpo) alike."""

from __future__ import annotations


def freeze(model, vision_tower: bool, merger: bool) -> dict:
    """Freeze the vision blocks and/or the merger; returns trainable/total parameter counts."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower at model.visual")
    for name, p in visual.named_parameters():
        is_merger = name.startswith("merger.")
        if (is_merger and merger) or (not is_merger and vision_tower):
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
