"""Round plans for model teachers in the loop: how many code rounds a trajectory should have and
what the first one does, given to the teacher as private hints (THYME.md §3's multi-round data):

- `single`: one round (the generation prompt as it is);
- `further_enhancement` (crop): first a generous region around the target, then, having seen
  it, a tight crop of the exact detail;
- `error_correction` (crop): the first crop is taken at a plausible wrong region (we give its
  box), and the teacher, having seen what that crop shows, says what is wrong and crops the
  right region; (rotate): the first rotation goes the wrong way, and the teacher, having seen
  the still-tilted result, explains and rotates correctly.

The second round is always written by a model that saw the first round's real sandbox output:
that is what makes these rounds data rather than a script. The draw depends only on the seed
and the sample id (`multi_round_share` of crop samples, half each way; half that share of
rotation samples), as the template teacher's rounds do.
"""

from __future__ import annotations

import hashlib

import numpy as np

from pipelines.core.schema import Sample
from pipelines.samples.teachers.template.common import Draw, fit_box, overlaps

PLANS = ("single", "further_enhancement", "error_correction")


def draw_plan(sample: Sample, operation: str, seed: int, share: float) -> str:
    """The plan of one sample (see the module docstring)."""
    if share <= 0 or operation not in ("crop", "rotate"):
        return "single"
    key = int.from_bytes(hashlib.blake2b(sample.id.encode(), digest_size=8).digest(), "big")
    u = float(np.random.default_rng([seed, key, 0x9A17]).random())
    if operation == "crop":
        return "further_enhancement" if u < share / 2 else "error_correction" if u < share else "single"
    return "error_correction" if u < share / 2 else "single"


def plan_hints(sample: Sample, operation: str, plan: str, seed: int) -> list[str]:
    """The private hints that steer the rounds of `plan` (empty for `single`, or when the sample
    lacks what the plan needs: then the teacher writes one round)."""
    if plan == "single":
        return []
    meta = sample.meta or {}
    if operation == "rotate" and plan == "error_correction" and meta.get("angle") is not None:
        angle = float(meta["angle"])
        return [f"Work in two rounds. In the first code block, rotate the image the wrong way "
                f"(by +{angle:g} degrees, i.e. `img.rotate({angle:g}, expand=True)`), as a "
                f"hurried first attempt. After you see the result, notice honestly that it is "
                f"still not upright, say why, and rotate it the correct way in a second code "
                f"block."]
    box = meta.get("box")
    if operation != "crop" or not box or not sample.images:
        if operation == "crop" and plan == "further_enhancement":
            return ["Work in two rounds: first crop a generous region where the detail should "
                    "be; after you see it, crop tighter around the exact detail and enlarge it "
                    "more."]
        return []
    W, H = sample.images[0].width, sample.images[0].height
    key = int.from_bytes(hashlib.blake2b(sample.id.encode(), digest_size=8).digest(), "big")
    d = Draw(np.random.default_rng([seed, key, 0x51DE]))
    gt = [int(v) for v in box]
    if plan == "further_enhancement":
        wide = _wide_box(d, gt, W, H)
        return [f"Work in two rounds. First crop a generous region, {_fmt(wide)}, that contains "
                f"the target with plenty of context, and enlarge it a little. After you see "
                f"that crop, crop tighter around the exact detail (a small margin around the "
                f"target) and enlarge it more in a second code block."]
    wrong = wrong_region(d, gt, W, H)
    if wrong is None:
        return []
    return [f"Work in two rounds. In the first code block crop the region {_fmt(wrong)}: it "
            f"looks like a plausible place at first glance but does not contain the target. "
            f"After you see that crop, describe honestly what it shows and that the target is "
            f"not in it, then crop the correct region in a second code block. Do not hint "
            f"before seeing the crop that the first region is wrong."]


def _fmt(box) -> str:
    return "[" + ", ".join(str(int(v)) for v in box) + "] (left, top, right, bottom)"


def _wide_box(d: Draw, gt: list[int], W: int, H: int) -> list[int]:
    """A region 3-6 times the target's size around it (inside the image)."""
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    rw = min(max(gw * d.uniform(3, 6), 256.0), W * 0.7)
    rh = min(max(gh * d.uniform(3, 6), 192.0), H * 0.7)
    cx = (gt[0] + gt[2]) / 2 + d.uniform(-0.15, 0.15) * rw
    cy = (gt[1] + gt[3]) / 2 + d.uniform(-0.15, 0.15) * rh
    return fit_box(min(cx - rw / 2, gt[0] - 8), min(cy - rh / 2, gt[1] - 8),
                   max(cx + rw / 2, gt[2] + 8), max(cy + rh / 2, gt[3] + 8), W, H)


def wrong_region(d: Draw, gt: list[int], W: int, H: int) -> list[int] | None:
    """A region the size of a crop around the target that keeps well clear of it, or None when
    the image has no room for one."""
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    bw, bh = min(W, max(64, int(gw * 1.6))), min(H, max(64, int(gh * 1.6)))
    pad = max(gw, gh) // 2
    keep_out = [gt[0] - pad, gt[1] - pad, gt[2] + pad, gt[3] + pad]
    for _ in range(60):
        x = int(d.rng.integers(0, W - bw + 1))
        y = int(d.rng.integers(0, H - bh + 1))
        candidate = [x, y, x + bw, y + bh]
        if not overlaps(candidate, keep_out):
            return candidate
    return None
