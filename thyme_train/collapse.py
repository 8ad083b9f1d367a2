"""Collapse in GRPO-ATS (answers and tool use): what detects it, and the settings of the field's remedies.

A GRPO group whose completions all earn the same reward has no advantage: it teaches nothing.
When the policy drifts to one answer (the same colour for every image, the same option letter
for every question), every group agrees, the accuracy sits at the share of prompts that answer
happens to fit, and with top-p / top-k truncation the minority answer is never sampled again:
the run is stuck (issue 24; users of every GRPO trainer report it as entropy collapse).

Detection, per step (logged as `thyme/collapse/...`, drawn in `curves_collapse.png`, counted in
`metrics.json` and the Dagster metadata, like the tool-collapse warning):

    zero_variance_groups   share of groups whose accuracy reward does not vary (no advantage
                           from accuracy; TRL's `frac_reward_zero_std` is the same on the total
                           reward, formatting included)
    answer_agreement       share of groups whose extracted answers all agree
    answer_entropy         mean over groups of the entropy (nats) of the group's answers
    top_answer_share       share of the batch's completions that give its most common answer
    answer_token_entropy   mean over completions of -log pi(token) of the sampled tokens of the
                           final answer: a Monte-Carlo estimate of the policy's entropy there
                           (low under top-p/top-k, whose tail is never sampled; from the
                           behaviour log-probs where the engine gives no policy ones). TRL's
                           `entropy` is over every model token, reasoning included

A step counts as collapsed when the batch accuracy is below `answer_collapse_max_accuracy`
(agreement on right answers is success, not collapse) and either the answer agreement reaches
`answer_collapse_agreement` or the answer-token entropy falls below
`answer_collapse_entropy_fraction` of its early value. After `answer_collapse_patience`
collapsed steps in a row the run warns, naming the step the collapse started;
`thyme/answer_collapse` is 1 on those steps and `thyme/answer_collapse_since` the start step.

Remedies (CollapseConfig; off by default, the paper used none of them): TRL's clip-higher
(`epsilon_high`), token-level loss normalisation (`loss_type: dapo`), entropy bonus
(`entropy_coef`) and floor (`entropy_floor`, TRL's adaptive entropy control); DAPO's dynamic
sampling (thyme_train.dynamic_sampling); and text sampled without top-p / top-k truncation once
collapse is detected (`untruncated_sampling_on_collapse`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from thyme_train.config import doc


@dataclass
class CollapseConfig:
    """Answer-collapse detection and the remedies (this module's docstring)."""

    answer_collapse_agreement: float = doc(
        "a step counts as collapsed when at least this share of groups agree on one answer "
        "(and the accuracy is below answer_collapse_max_accuracy)", default=0.9)
    answer_collapse_entropy_fraction: float = doc(
        "... or when the answer-token entropy falls below this share of its early value",
        default=0.1)
    answer_collapse_max_accuracy: float = doc(
        "batch accuracy at and above which agreeing groups are success, not collapse",
        default=0.9)
    answer_collapse_patience: int = doc("collapsed steps in a row before the warning",
                                        default=3)
    answer_collapse_early_steps: int = doc("steps that set the early answer-token entropy",
                                           default=5)
    untruncated_sampling_on_collapse: bool = doc(
        "once collapse is detected, sample text without top-p / top-k truncation for the rest "
        "of the run (truncation is what keeps a minority answer from ever being sampled again; "
        "the importance-sampling correction follows the new behaviour log-probs)", default=False)
    epsilon: float = doc("PPO clip range below 1 (TRL's epsilon; paper: 0.2)", default=0.2)
    epsilon_high: float | None = doc(
        "clip-higher (DAPO): the clip range above 1, wider than `epsilon` so that unlikely "
        "tokens can gain probability (DAPO: 0.28); null = `epsilon`. The ratio differs from 1 "
        "only when a batch is reused (num_iterations > 1, or steps_per_generation > "
        "gradient_accumulation_steps)", default=None)
    num_iterations: int = doc("optimisation passes over each generated batch (GRPO's mu; paper: 1)",
                              default=1)
    entropy_coef: float = doc(
        "entropy bonus: loss - coef x the mean per-token entropy of the model's tokens (TRL's "
        "entropy_coef; 0 = off). With entropy_floor, the coefficient's starting value",
        default=0.0)
    entropy_floor: float | None = doc(
        "entropy floor (nats per token): TRL's adaptive entropy control (Skywork-OR1) applies "
        "the bonus only while the policy's entropy is at or below this value, raising its "
        "coefficient by entropy_coef_step per optimizer step until the entropy is back above "
        "it; null = off", default=None)
    entropy_coef_step: float = doc("coefficient change per optimizer step of the entropy floor",
                                   default=0.005)
    entropy_coef_max: float = doc("largest coefficient the entropy floor may reach", default=1.0)
    dynamic_sampling: bool = doc(
        "DAPO's dynamic sampling: groups whose accuracy does not vary (all right or all wrong, "
        "by the answer rules; undecided answers keep a group) are dropped and replaced by groups "
        "of other prompts, generated until every slot has a group that varies or "
        "dynamic_sampling_max_rounds rounds ran (slots left keep their group). Needs "
        "per_device_train_batch_size a multiple of num_generations (groups within a process)",
        default=False)
    dynamic_sampling_max_rounds: int = doc("refill rounds per batch at most (each costs a "
                                           "generation of the replacement groups)", default=3)

    def __post_init__(self):
        for name in ("answer_collapse_agreement", "answer_collapse_entropy_fraction",
                     "answer_collapse_max_accuracy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.answer_collapse_patience < 1 or self.answer_collapse_early_steps < 1:
            raise ValueError("answer_collapse_patience and answer_collapse_early_steps must be >= 1")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high ({self.epsilon_high}) below epsilon ({self.epsilon}) "
                             "would clip the upside harder, the opposite of clip-higher")
        if self.num_iterations < 1 or self.dynamic_sampling_max_rounds < 1:
            raise ValueError("num_iterations and dynamic_sampling_max_rounds must be >= 1")
        if self.entropy_coef < 0 or (self.entropy_floor is not None and self.entropy_floor <= 0):
            raise ValueError("entropy_coef must be >= 0 and entropy_floor > 0 (or null)")

    def trl_fields(self) -> dict:
        """The GRPOConfig fields of the TRL-side remedies."""
        out = dict(epsilon=self.epsilon, epsilon_high=self.epsilon_high,
                   num_iterations=self.num_iterations, entropy_coef=self.entropy_coef)
        if self.entropy_floor is not None:
            out.update(use_adaptive_entropy=True, entropy_target=self.entropy_floor,
                       entropy_coef_delta=self.entropy_coef_step,
                       entropy_coef_max=self.entropy_coef_max)
        return out


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def _answer_key(answer: str) -> str:
    return re.sub(r"\s+", " ", answer.strip().lower())


def group_statistics(answers: Sequence[str], accuracies: Sequence[float | None],
                     group_size: int) -> dict[str, float]:
    """The group-level collapse statistics of a batch: `answers` (extracted, "" when none) and
    `accuracies` (None = unscored) per completion, in TRL's layout (groups of `group_size`
    consecutive completions)."""
    if not answers or len(answers) % group_size:
        raise ValueError(f"{len(answers)} completions are not whole groups of {group_size}")
    keys = [_answer_key(a) for a in answers]
    zero_var = agree = 0
    entropy = 0.0
    groups = len(keys) // group_size
    for g in range(groups):
        part = keys[g * group_size:(g + 1) * group_size]
        scored = [a for a in accuracies[g * group_size:(g + 1) * group_size] if a is not None]
        zero_var += len(scored) > 0 and max(scored) == min(scored)
        counts = Counter(part)
        agree += len(counts) == 1
        entropy -= sum(c / group_size * math.log(c / group_size) for c in counts.values())
    scored = [a for a in accuracies if a is not None]
    return {
        "thyme/collapse/zero_variance_groups": zero_var / groups,
        "thyme/collapse/answer_agreement": agree / groups,
        "thyme/collapse/answer_entropy": entropy / groups,
        "thyme/collapse/top_answer_share": Counter(keys).most_common(1)[0][1] / len(keys),
        "thyme/collapse/accuracy": sum(scored) / len(scored) if scored else math.nan,
    }


def answer_token_entropy(token_ids: Sequence[int], logprobs: Sequence[float],
                         model_mask: Sequence[int], decode: Callable[[list[int]], str]) -> float | None:
    """Mean -log pi of the model's tokens inside the last `<answer>…</answer>` (None without an
    answer). Walks back from the end, since the answer closes the completion."""
    opening = None
    tail: list[int] = []
    for i in range(len(token_ids) - 1, -1, -1):
        tail.insert(0, i)
        if "<answer>" in decode([token_ids[j] for j in tail]):
            opening = i
            break
        if len(tail) > 256:          # no answer near the end
            return None
    if opening is None:
        return None
    # the answer's own tokens: after the one that completes "<answer>", before "</answer>"
    inside = [i for i in tail[1:] if model_mask[i]
              and "<" not in decode([token_ids[i]]) and ">" not in decode([token_ids[i]])]
    if not inside:
        return None
    return -sum(logprobs[i] for i in inside) / len(inside)


# ---------------------------------------------------------------------------------------------
# The warning
# ---------------------------------------------------------------------------------------------

class AnswerCollapseMonitor:
    """Warns after `patience` collapsed steps in a row (this module's docstring), naming the
    step the collapse started; `since` is that step while the collapse lasts, else None."""

    def __init__(self, cfg: CollapseConfig):
        self.cfg = cfg
        self.entropies: list[float] = []
        self.streak_start: int | None = None
        self.streak = 0
        self.since: int | None = None

    def record(self, step: int, stats: dict[str, float]) -> str | None:
        cfg = self.cfg
        entropy = stats.get("thyme/collapse/answer_token_entropy", math.nan)
        if not math.isnan(entropy):
            self.entropies.append(entropy)
        early = self.entropies[:cfg.answer_collapse_early_steps]
        entropy_low = (len(self.entropies) > cfg.answer_collapse_early_steps and sum(early) > 0
                       and entropy < cfg.answer_collapse_entropy_fraction * sum(early) / len(early))
        agreement = stats["thyme/collapse/answer_agreement"]
        accuracy = stats["thyme/collapse/accuracy"]
        collapsed = (not accuracy >= cfg.answer_collapse_max_accuracy
                     and (agreement >= cfg.answer_collapse_agreement or entropy_low))
        if not collapsed:
            self.streak, self.streak_start, self.since = 0, None, None
            return None
        self.streak += 1
        self.streak_start = step if self.streak_start is None else self.streak_start
        if self.streak < cfg.answer_collapse_patience:
            return None
        self.since = self.streak_start
        why = [f"{agreement:.0%} of groups agree on one answer"] if agreement >= cfg.answer_collapse_agreement else []
        if entropy_low:
            why.append(f"answer-token entropy {entropy:.3f} < {cfg.answer_collapse_entropy_fraction:g}"
                       f" x its early value {sum(early) / len(early):.3f}")
        return (f"answer collapse since step {self.since}: {' and '.join(why)} at accuracy "
                f"{accuracy:.2f}, top answer {stats['thyme/collapse/top_answer_share']:.0%} of the "
                "batch (remedies: README, 'When a GRPO run collapses')")


def untruncated(sampling):
    """The same sampling with text drawn from the full distribution (no top-p, no top-k)."""
    return replace(sampling, top_p=1.0, top_k=0)


class ToolUseMonitor:
    """Warns when the tool-call rate collapses below `fraction` of its early value (a known
    failure of tool RL: the policy learns to answer without looking)."""

    def __init__(self, fraction: float = 0.5, early_steps: int = 5):
        self.fraction, self.early_steps = fraction, early_steps
        self.rates: list[float] = []

    def record(self, rate: float) -> str | None:
        self.rates.append(rate)
        if len(self.rates) <= self.early_steps:
            return None
        early = sum(self.rates[:self.early_steps]) / self.early_steps
        if early > 0 and rate < self.fraction * early:
            return (f"tool-call rate collapsed: {rate:.2f} < {self.fraction:g} x its early value "
                    f"{early:.2f}")
        return None
