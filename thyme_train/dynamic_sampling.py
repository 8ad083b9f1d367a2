"""DAPO's dynamic sampling (Yu et al. 2025, §3.2) for GRPO-ATS: a group whose accuracy does not
vary (every completion right, or every one wrong) has zero advantage and teaches nothing, so it
is dropped and its slot refilled with a group of another prompt, generated until the slot holds
a group that varies or `dynamic_sampling_max_rounds` rounds ran. TRL has no such option.

It runs before TRL scores the batch (ThymeGRPOTrainer._generate_and_score_completions): the
rollouts of the final batch are handed to ThymeRolloutFunc, so TRL's own path (rewards,
advantages, importance sampling, the loss) sees an ordinary batch. Accuracy here is the answer
rules' (pipelines.core.answers.score_answer), as the accuracy reward has it: with a judge, an
answer only the judge could decide keeps its group (no judge call is spent here); without one,
it is wrong, as the reward scores it.
"""

from __future__ import annotations

import random

from pipelines.core.answers import parse_options, score_answer


class DynamicSampling:
    def __init__(self, dataset, rollout_func, group_size: int, max_rounds: int, seed: int = 0,
                 tolerance: float = 1e-6, judged: bool = False):
        self.dataset, self.rollout_func = dataset, rollout_func
        self.group_size, self.max_rounds, self.tolerance = group_size, max_rounds, tolerance
        self.judged = judged              # a judge decides what the rules cannot
        self.rng = random.Random(seed)
        names = getattr(dataset, "column_names", None) or []
        self.prompt_ids = list(dataset["prompt_index"]) if "prompt_index" in names else list(range(len(dataset)))
        self.statistics: dict[str, float] = {}

    def varies(self, rows: list[dict], rollouts) -> bool:
        """Whether a group's accuracy varies (with a judge, an undecided answer counts as
        varying: only the judge knows)."""
        decode = self.rollout_func.codec.tokenizer.decode
        seen = set()
        for row, r in zip(rows, rollouts, strict=True):
            truth = row.get("solution", row.get("answer"))
            table = parse_options(row.get("options")) if row.get("options") else None
            verdict = score_answer(decode(r.completion_ids, skip_special_tokens=True), str(truth),
                                   table or None, self.tolerance)
            if self.judged and not verdict.decisive and verdict.given:
                return True
            seen.add(verdict.correct)
        return len(seen) > 1

    def fill(self, inputs: list[dict], trainer) -> list[dict]:
        """The batch's rows after dropping and refilling groups that do not vary; their rollouts
        wait in the rollout function for TRL's call."""
        g = self.group_size
        if len(inputs) % g:
            raise ValueError(f"dynamic sampling needs whole groups: {len(inputs)} rows per process "
                             f"is not a multiple of num_generations = {g}")
        rows = list(inputs)
        rollouts, encoded = self.rollout_func.run(trl_prompts(rows), trainer)
        slots = [s for s in range(len(rows) // g)
                 if not self.varies(rows[s * g:(s + 1) * g], rollouts[s * g:(s + 1) * g])]
        sampled_flat = len(slots)
        rounds = generated = 0
        in_batch = {r.get("prompt_index") for r in rows}     # refills come from other prompts
        while slots and rounds < self.max_rounds:
            rounds += 1
            pool = [i for i, p in enumerate(self.prompt_ids) if p not in in_batch] \
                or list(range(len(self.prompt_ids)))
            picks = [self.rng.choice(pool) for _ in slots]
            new_rows = [self.dataset[i] for i in picks for _ in range(g)]
            new_rollouts, new_encoded = self.rollout_func.run(trl_prompts(new_rows), trainer)
            generated += len(picks)
            left = []
            for k, slot in enumerate(slots):
                part = slice(k * g, (k + 1) * g)
                if not self.varies(new_rows[part], new_rollouts[part]):
                    left.append(slot)
                    continue
                target = slice(slot * g, (slot + 1) * g)
                rows[target], rollouts[target], encoded[target] = \
                    new_rows[part], new_rollouts[part], new_encoded[part]
                in_batch.add(self.prompt_ids[picks[k]])
            slots = left
        groups = len(rows) // g
        self.statistics = {
            "thyme/dynamic_sampling/sampled_zero_variance_groups": sampled_flat / groups,
            "thyme/dynamic_sampling/kept_zero_variance_groups": len(slots) / groups,
            "thyme/dynamic_sampling/refill_rounds": float(rounds),
            "thyme/dynamic_sampling/extra_groups_generated": float(generated),
        }
        for i, r in enumerate(rollouts):     # TRL's layout: sample i of the batch
            r.prompt_index, r.sample_index = i // g, i % g
        self.rollout_func.prepared = (rollouts, encoded)
        return rows


def trl_prompts(rows: list[dict]) -> list:
    """The prompts as GRPOTrainer._generate_and_score_completions hands them to rollout_func
    (TRL 1.16): each row's image files put into its messages' image parts."""
    from trl.data_utils import prepare_multimodal_messages

    if "images" in rows[0]:
        images = [row.get("images") for row in rows]
    elif "image" in rows[0]:
        images = [[row["image"]] if row.get("image") is not None else None for row in rows]
    else:
        images = None
    if images is None or all(i == [] for i in images):
        return [row["prompt"] for row in rows]
    return [prepare_multimodal_messages(row["prompt"], images=i) for row, i in zip(rows, images, strict=True)]
