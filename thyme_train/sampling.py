"""Which prompts a GRPO step draws (Kimi k1.5 / Kimi-VL's sampling strategies): curriculum
sampling (easy prompts first, the pool widening to the hard ones) and prioritized sampling
(prompts the policy fails more often drawn more often), alone or together.

    sampling = PromptSampling.from_rows(rows, curriculum=True, prioritized=True, ...)
    trainer = ThymeGRPOTrainer(..., prompt_sampling=sampling)    # replaces TRL's RepeatSampler
    sampling.record(prompt_indices, accuracies)                   # after each batch's rewards

- **Curriculum**: prompts are ranked by difficulty — a numeric column of the rows
  (`curriculum_field`, e.g. `difficulty`; or a measured pass rate such as `pass_rate` with
  `higher_is_harder=False`, e.g. the SFT model's success over a few samples, as Kimi measures it);
  ties keep a seeded random order. A generation batch draws from the easiest share
  `c(t) = start + (1 - start) * min(1, t / ramp)` of the prompts, t counting generation batches
  (one per optimizer step with TRL's defaults): easy to hard over `ramp` batches.
- **Prioritized**: each prompt's weight is `1 - s + floor`, s its running success rate (an
  exponential moving average of the share of its rollouts that were right, updated from every
  batch's accuracy; an unseen prompt counts as s = 0, so it is tried first). Kimi samples in
  proportion to 1 - s; the floor keeps solved prompts reachable.
- Neither: a uniform draw without replacement inside each batch (what TRL's sampler does, but
  with replacement across batches: prompts are drawn, not walked through in epochs).

The sampler keeps TRL's `RepeatSampler` layout (each prompt G times in a row, each generation
batch repeated for its steps and iterations, every process drawing the same indices from the same
seed), draws each batch lazily (so the weights of the batch after next see this batch's results;
the data loader prefetches one), and the success rates are saved with each checkpoint and
restored on resume (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from thyme_train.config import doc


@dataclass
class PromptSamplingConfig:
    """Which prompts each step draws (off by default: TRL's own order)."""

    curriculum: bool = doc("curriculum sampling: easy prompts first, widening to all (see "
                           "thyme_train.sampling)", default=False)
    curriculum_field: str = doc("the rows' numeric column that ranks them (the RL data keeps `difficulty` and `pass_rate`, top-level or in `meta`)", default="difficulty")
    curriculum_higher_is_harder: bool = doc("true for a difficulty, false for a measured success "
                                            "rate such as pass_rate", default=True)
    curriculum_start: float = doc("share of the easiest prompts the first batch draws from",
                                  default=0.3)
    curriculum_ramp: int = doc("generation batches (steps) until every prompt is in the pool",
                               default=100)
    prioritized_sampling: bool = doc("draw prompts in proportion to 1 - their running success "
                                     "rate + priority_floor", default=False)
    priority_floor: float = doc("weight added to every prompt (keeps solved prompts reachable)",
                                default=0.05)
    priority_ema: float = doc("weight of the newest batch in a prompt's running success rate",
                              default=0.5)

    def __post_init__(self):
        if not 0 < self.curriculum_start <= 1 or self.curriculum_ramp < 1:
            raise ValueError("need 0 < curriculum_start <= 1 and curriculum_ramp >= 1")
        if self.priority_floor < 0 or not 0 < self.priority_ema <= 1:
            raise ValueError("need priority_floor >= 0 and 0 < priority_ema <= 1")

    @property
    def samples_prompts(self) -> bool:
        return self.curriculum or self.prioritized_sampling


class PromptSampling:
    """The state behind the sampler: difficulties, success rates, batches drawn."""

    def __init__(self, count: int, *, difficulty: Sequence[float] | None = None,
                 curriculum_start: float = 0.3, curriculum_ramp: int = 100,
                 prioritized: bool = False, priority_floor: float = 0.05,
                 success_ema: float = 0.5, seed: int = 0):
        if count < 1:
            raise ValueError("no prompts to sample")
        if not 0 < curriculum_start <= 1 or curriculum_ramp < 1:
            raise ValueError("need 0 < curriculum_start <= 1 and curriculum_ramp >= 1")
        if priority_floor < 0 or not 0 < success_ema <= 1:
            raise ValueError("need priority_floor >= 0 and 0 < success_ema <= 1")
        self.count, self.seed = count, seed
        self.curriculum = difficulty is not None
        self.curriculum_start, self.curriculum_ramp = curriculum_start, curriculum_ramp
        self.prioritized, self.priority_floor, self.success_ema = prioritized, priority_floor, success_ema
        generator = torch.Generator().manual_seed(seed)
        ties = torch.randperm(count, generator=generator).tolist()
        # easiest first; ties in a seeded random order
        self.order = (sorted(range(count), key=lambda i: (difficulty[i], ties[i]))
                      if difficulty is not None else list(range(count)))
        self.success: list[float | None] = [None] * count
        self.batches_drawn = 0

    @classmethod
    def from_config(cls, rows, cfg: PromptSamplingConfig, seed: int = 0) -> PromptSampling:
        return cls.from_rows(rows, curriculum=cfg.curriculum, curriculum_field=cfg.curriculum_field,
                             higher_is_harder=cfg.curriculum_higher_is_harder,
                             curriculum_start=cfg.curriculum_start, curriculum_ramp=cfg.curriculum_ramp,
                             prioritized=cfg.prioritized_sampling, priority_floor=cfg.priority_floor,
                             success_ema=cfg.priority_ema, seed=seed)

    @classmethod
    def from_rows(cls, rows, *, curriculum: bool, curriculum_field: str, higher_is_harder: bool,
                  **kwargs) -> PromptSampling:
        """From the dataset's rows (a `datasets.Dataset` or a list of dicts); a curriculum
        needs a number in `curriculum_field` on every row."""
        difficulty = None
        if curriculum:
            values = rows[curriculum_field] if hasattr(rows, "column_names") and \
                curriculum_field in rows.column_names else [r.get(curriculum_field) for r in rows]
            difficulty = []
            for i, value in enumerate(values):
                if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                    raise ValueError(f"curriculum: row {i} has no number in {curriculum_field!r} "
                                     f"(got {value!r}); every prompt needs one")
                difficulty.append(float(value) if higher_is_harder else -float(value))
        return cls(len(rows), difficulty=difficulty, **kwargs)

    # -- what the sampler asks -----------------------------------------------------------------

    def pool(self, minimum: int = 1) -> list[int]:
        """The prompts the next batch draws from (all of them without a curriculum), at least
        `minimum` of them."""
        if not self.curriculum:
            return self.order
        share = self.curriculum_start + (1 - self.curriculum_start) * min(
            1.0, self.batches_drawn / self.curriculum_ramp)
        return self.order[:max(minimum, math.ceil(share * self.count))]

    def weights(self, indices: Sequence[int]) -> torch.Tensor:
        if not self.prioritized:
            return torch.ones(len(indices))
        return torch.tensor([1.0 - (self.success[i] or 0.0) + self.priority_floor for i in indices])

    def draw(self, size: int, generator: torch.Generator) -> list[int]:
        """One generation batch: `size` distinct prompts."""
        pool = self.pool(size)
        weights = self.weights(pool)
        if int((weights > 0).sum()) < size:    # solved prompts and no floor: fill uniformly
            weights = weights + 1e-6
        picked = torch.multinomial(weights, size, replacement=False, generator=generator).tolist()
        self.batches_drawn += 1
        return [pool[k] for k in picked]

    # -- what the rewards tell it --------------------------------------------------------------

    def record(self, prompt_indices: Sequence[int], correct: Sequence[float | None]) -> None:
        """Update the success rates from one batch (all processes' results, so every process
        keeps the same state); unscored completions (None) are left out."""
        groups: dict[int, list[float]] = {}
        for index, value in zip(prompt_indices, correct, strict=True):
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                groups.setdefault(int(index), []).append(float(value > 0))
        for index, values in groups.items():
            rate = sum(values) / len(values)
            old = self.success[index]
            self.success[index] = rate if old is None else (1 - self.success_ema) * old + self.success_ema * rate

    def statistics(self) -> dict[str, float]:
        seen = [s for s in self.success if s is not None]
        return {"thyme/sampling/pool_share": len(self.pool()) / self.count,
                "thyme/sampling/prompts_seen": len(seen) / self.count,
                "thyme/sampling/mean_success_seen": sum(seen) / len(seen) if seen else 0.0}

    def state_dict(self) -> dict:
        """The success rates. Batches drawn are not saved: a resumed trainer replays the data
        loader up to its step (transformers skips the batches it trained on), which draws them
        again and so brings the curriculum back to where it was."""
        return {"success": list(self.success), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if state.get("count") != self.count:
            raise ValueError(f"saved prompt-sampling state covers {state.get('count')} prompts, "
                             f"the data has {self.count}")
        self.success = list(state["success"])

    def sampler(self, mini_repeat_count: int, batch_size: int, repeat_count: int):
        """The `torch.utils.data.Sampler` TRL's trainer iterates (its RepeatSampler's layout)."""
        return _Sampler(self, mini_repeat_count, batch_size, repeat_count)


class _Sampler(torch.utils.data.Sampler):
    def __init__(self, state: PromptSampling, mini_repeat_count: int, batch_size: int, repeat_count: int):
        if batch_size > state.count:
            raise ValueError(f"a generation batch of {batch_size} prompts but only {state.count} prompts")
        self.state, self.mini_repeat_count = state, mini_repeat_count
        self.batch_size, self.repeat_count = batch_size, repeat_count
        self.epoch = 0

    def __iter__(self):
        # Same seed on every process and a fresh generator per epoch: every process draws the
        # same batches, and the draws depend on the success rates all processes share.
        generator = torch.Generator().manual_seed(self.state.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        for _ in range(self.state.count // self.batch_size):
            chunk = self.state.draw(self.batch_size, generator)
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return (self.state.count // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count
