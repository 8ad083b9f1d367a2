"""GRPO-ATS rewards (THYME.md §4): total = accuracy + 0.5 * format + 0.5 * consistency * [accuracy > 0].

    rewards = ThymeRewards(RewardConfig(), judge=None)            # or judge=Judge(LLMClient(...))
    scores = rewards.score(completions, truths, options=..., questions=..., sandbox_texts=...)
    GRPOTrainer(reward_funcs=rewards.reward_funcs(), args=GRPOConfig(reward_weights=rewards.weights()))

accuracy     the rule cascade of `pipelines.core.answers.score_answer` (option letters, yes/no, numbers
             with tolerance and units, normalised text, symbolic math). Only when the rules cannot
             decide (an open answer worded differently from the truth; free text naming no
             option) and a `Judge` is configured does an LLM judge decide. Without a judge, an
             undecided answer scores 0 (as the rules say: it does not match).
format       `strict` (the original): exactly one `<think>`, `</think>`, `<answer>`, `</answer>`,
             in that order, exactly one whitespace character between `</think>` and `<answer>`,
             nothing after `</answer>`. `lenient`: tags in any case, any whitespace (or none)
             between `</think>` and `<answer>`, trailing whitespace allowed, `<think>` may be
             missing (templates that pre-fill it), but still exactly one answer after the
             reasoning. Sandbox outputs are removed first: the format judges the model's writing,
             and code may print anything.
consistency  does the end of the reasoning support the answer? A rule where it can know: the
             last sandbox output printed a number and the answer states one (the chosen option's
             text for a letter) — they must agree (rounding to the answer's decimals allowed).
             Otherwise the judge, shown the last `consistency_tail_chars` of the reasoning. With
             neither, it is not scored (None: TRL leaves it out of the sum). The returned value
             is already gated: consistency * [accuracy > 0].

Two optional rewards of other recipes, off by default (weight 0), each its own TRL reward function
when its weight is set:
tool         DeepEyes' tool reward: 1 when the answer is right (accuracy > 0) AND a sandbox call
             produced an image in this rollout, else 0 (DeepEyes weighs it 1.2 against accuracy
             0.8, i.e. `tool_weight: 1.5` beside our accuracy weight of 1).
length       Kimi k1.5 / Kimi-VL's length penalty, within each group of G rollouts of one prompt:
             lambda = 0.5 - (len - min_len) / (max_len - min_len) over the group's model-written
             tokens (sandbox outputs excluded); a right answer gets lambda, a wrong one
             min(0, lambda); 0 when the group's lengths are all equal. Off before
             `length_penalty_start_step` (Kimi warms up without it).

A judge failure (network, budget exhausted, unreadable reply) is recorded in the scores and the
statistics, never silently scored 0: every reward of that completion is None, which TRL treats as
unscorable (left out of the group baseline, advantage 0). So is a rollout the engine or the
sandbox broke (`end_reason` engine_error / sandbox_error): the model is not punished for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipelines.core.answers import (
    agrees_with_printed,
    last_printed_number,
    parse_options,
    score_answer,
    stated_number,
)
from pipelines.core.judge import Judge as JudgeCore
from pipelines.core.trajectory import FORMAT_RULES, follows_format
from sandbox.protocol import (
    ANSWER_OPEN,
    THINK_CLOSE,
)
from thyme_train.config import doc

BROKEN_ENDS = ("engine_error", "sandbox_error")   # rollout end reasons that make it unscorable

@dataclass
class RewardConfig:
    """Reward weights and rules."""

    accuracy_weight: float = doc("weight of the accuracy reward (paper: 1)", default=1.0)
    format_weight: float = doc("weight of the format reward (paper: 0.5)", default=0.5)
    consistency_weight: float = doc("weight of the consistency reward, which only counts when "
                                    "accuracy > 0 (paper: 0.5)", default=0.5)
    format_rule: str = doc("strict (the original's rule) or lenient (see thyme_train.rewards)",
                           default="strict")
    numeric_tolerance: float = doc("relative tolerance for numbers (absolute below 1)", default=1e-6)
    consistency_tail_chars: int = doc("characters of the end of the reasoning shown to the "
                                      "consistency judge", default=1500)
    judge_accuracy: bool = doc("ask the judge when the accuracy rules cannot decide (needs a "
                               "judge)", default=True)
    judge_consistency: bool = doc("ask the judge for consistency where no rule applies (needs "
                                  "a judge)", default=True)
    tool_weight: float = doc("weight of DeepEyes' tool reward: 1 when the answer is right and a "
                             "sandbox call produced an image (0 = off; DeepEyes' ratio to "
                             "accuracy: 1.5)", default=0.0)
    length_penalty_weight: float = doc("weight of Kimi's length penalty within each group of G "
                                       "rollouts (0 = off)", default=0.0)
    length_penalty_start_step: int = doc("optimizer step from which the length penalty counts "
                                         "(before it: 0)", default=0)

    def __post_init__(self):
        if self.length_penalty_start_step < 0:
            raise ValueError("length_penalty_start_step must be >= 0")
        if self.format_rule not in FORMAT_RULES:
            raise ValueError(f"format_rule must be one of {FORMAT_RULES}, got {self.format_rule!r}")


# ---------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------

def format_score(completion: str, rule: str = "strict") -> float:
    """1.0 when the completion follows the tag format (`rule`: strict | lenient; the one rule of
    `pipelines.core.trajectory.follows_format`), else 0.0."""
    return 1.0 if follows_format(completion, rule) else 0.0


# ---------------------------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------------------------

ACCURACY_PROMPT = (
    "You grade answers to questions about images. Decide whether the model's answer means the "
    "same as the reference answer (same entity, value or choice; wording, units and formatting "
    "may differ). Reply with exactly one word: yes or no.\n\n"
    "Question: {question}\nReference answer: {truth}\nModel's answer: {answer}\n\nSame meaning?")
CONSISTENCY_PROMPT = (
    "You check reasoning. Below is the end of a model's reasoning (it may include outputs of "
    "code it ran) and the final answer it gave. Decide whether the reasoning supports that "
    "answer, i.e. the answer follows from what the reasoning concluded, without contradicting "
    "it. Do not judge whether the answer is correct. Reply with exactly one word: yes or no.\n\n"
    "Question: {question}\nEnd of the reasoning:\n{reasoning}\n\nFinal answer: {answer}\n\n"
    "Does the reasoning support the answer?")


class Judge(JudgeCore):
    """The rewards' LLM judge: `pipelines.core.judge.Judge` (budget, stats, yes/no verdicts at
    temperature 0 through any OpenAI-compatible server, cached by the client) with our two
    prompts. A verdict is True, False, or None when it could not be had (the reason is kept in
    `stats`)."""

    def accuracy(self, items: Sequence[tuple[str, str, str]]) -> list[bool | None]:
        """Verdicts for (question, reference answer, model answer) triples."""
        return self.ask([ACCURACY_PROMPT.format(question=q, truth=t, answer=a) for q, t, a in items])

    def consistency(self, items: Sequence[tuple[str, str, str]]) -> list[bool | None]:
        """Verdicts for (question, end of the reasoning, answer) triples."""
        return self.ask([CONSISTENCY_PROMPT.format(question=q, reasoning=r, answer=a)
                         for q, r, a in items])


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

@dataclass
class Scores:
    """One completion's rewards. None = not scored (see the module docstring)."""

    accuracy: float | None
    format: float | None
    consistency: float | None          # already gated by accuracy > 0
    accuracy_by: str = ""              # rule name, "judge", or why unscored
    consistency_by: str = ""           # "rule", "judge", "gated", "none", or why unscored
    judge_failed: bool = False

    def total(self, config: RewardConfig) -> float:
        """The weighted sum, None counting as 0 (TRL's nansum does the same)."""
        return sum(w * (v or 0.0) for w, v in ((config.accuracy_weight, self.accuracy),
                                                (config.format_weight, self.format),
                                                (config.consistency_weight, self.consistency)))


class ThymeRewards:
    """The rewards, computed once per batch and served to TRL as one reward function each
    (`reward_funcs()`, in the order of `weights()`), so each is logged under its own name.

    `group_size` (G) and `gather` are what the length penalty needs: its groups are TRL's (G
    consecutive completions of the batch gathered over the processes, in process order);
    `gather(local list) -> (whole batch's list, offset of the local part)`."""

    def __init__(self, config: RewardConfig | None = None, judge: Judge | None = None,
                 group_size: int = 1, gather: Callable[[list], tuple[list, int]] | None = None):
        self.config = config or RewardConfig()
        self.judge = judge
        self.group_size = group_size
        self.gather = gather or (lambda local: (local, 0))
        self._memo: tuple[tuple, list[Scores]] | None = None

    def score(self, completions: Sequence[str], truths: Sequence[str],
              options: Sequence | None = None, questions: Sequence[str] | None = None,
              sandbox_texts: Sequence[Sequence[str]] | None = None) -> list[Scores]:
        """Score a batch. `options`: per completion, {letter: text} or option lines (or None);
        `questions`: the bare questions (for the judge); `sandbox_texts`: per completion, the
        printed text of each successful sandbox call, in order (for the consistency rule)."""
        cfg, n = self.config, len(completions)
        options = options or [None] * n
        questions = questions or [""] * n
        sandbox_texts = sandbox_texts or [[] for _ in range(n)]
        tables = [o if isinstance(o, dict) else parse_options(o) for o in options]
        verdicts = [score_answer(c, t, tab or None, cfg.numeric_tolerance)
                    for c, t, tab in zip(completions, truths, tables, strict=True)]
        accuracy: list[float | None] = [1.0 if v.correct else 0.0 for v in verdicts]
        acc_by = [v.how for v in verdicts]
        failed = [False] * n
        undecided = [i for i, v in enumerate(verdicts) if not v.decisive and v.given]
        if undecided and self.judge is not None and cfg.judge_accuracy:
            answers = self.judge.accuracy([(questions[i], truths[i], verdicts[i].given) for i in undecided])
            for i, verdict in zip(undecided, answers, strict=True):
                if verdict is None:
                    accuracy[i], acc_by[i], failed[i] = None, "judge failed", True
                else:
                    accuracy[i], acc_by[i] = float(verdict), "judge"
        consistency: list[float | None] = [None] * n
        cons_by = ["none"] * n
        to_judge = []
        for i in range(n):
            if failed[i]:
                continue
            if not accuracy[i]:
                consistency[i], cons_by[i] = 0.0, "gated"
                continue
            rule = _consistency_rule(verdicts[i].given, sandbox_texts[i], tables[i],
                                     cfg.numeric_tolerance)
            if rule is not None:
                consistency[i], cons_by[i] = float(rule), "rule"
            elif self.judge is not None and cfg.judge_consistency:
                to_judge.append(i)
        if to_judge:
            tails = [_reasoning_tail(completions[i], cfg.consistency_tail_chars) for i in to_judge]
            answers = self.judge.consistency([(questions[i], tail, verdicts[i].given)
                                              for i, tail in zip(to_judge, tails, strict=True)])
            for i, verdict in zip(to_judge, answers, strict=True):
                if verdict is None:
                    failed[i], cons_by[i] = True, "judge failed"
                else:
                    consistency[i], cons_by[i] = float(verdict), "judge"
        out = []
        for i in range(n):
            if failed[i]:   # unscorable: every reward None, so TRL gives it no advantage
                out.append(Scores(None, None, None, acc_by[i], cons_by[i], judge_failed=True))
            else:
                out.append(Scores(accuracy[i], format_score(completions[i], cfg.format_rule),
                                  consistency[i], acc_by[i], cons_by[i]))
        return out

    # -- TRL reward functions ----------------------------------------------------------------

    def weights(self) -> list[float]:
        c = self.config
        return [c.accuracy_weight, c.format_weight, c.consistency_weight,
                *([c.tool_weight] if c.tool_weight else []),
                *([c.length_penalty_weight] if c.length_penalty_weight else [])]

    def reward_funcs(self) -> list:
        c = self.config
        return [self.accuracy_reward, self.format_reward, self.consistency_reward,
                *([self.tool_reward] if c.tool_weight else []),
                *([self.length_reward] if c.length_penalty_weight else [])]

    def accuracy_reward(self, completions, **kwargs) -> list[float | None]:
        return [s.accuracy for s in self._batch(completions, kwargs)]

    def format_reward(self, completions, **kwargs) -> list[float | None]:
        return [s.format for s in self._batch(completions, kwargs)]

    def consistency_reward(self, completions, **kwargs) -> list[float | None]:
        return [s.consistency for s in self._batch(completions, kwargs)]

    def tool_reward(self, completions, sandbox_image_count=None, **kwargs) -> list[float | None]:
        """DeepEyes' tool reward; `sandbox_image_count`: images the sandbox produced per
        completion (a field of our rollout_func)."""
        if sandbox_image_count is None:
            raise KeyError("the tool reward needs `sandbox_image_count` per completion (the "
                           "rollout_func's field)")
        return [None if s.accuracy is None else float(bool(s.accuracy) and images > 0)
                for s, images in zip(self._batch(completions, kwargs), sandbox_image_count, strict=True)]

    def length_reward(self, completions, model_tokens=None, trainer_state=None,
                      **kwargs) -> list[float | None]:
        """Kimi's length penalty over TRL's groups; `model_tokens`: tokens the model wrote per
        completion (sandbox outputs excluded)."""
        if model_tokens is None:
            raise KeyError("the length penalty needs `model_tokens` per completion (the "
                           "rollout_func's field)")
        scores = self._batch(completions, kwargs)
        step = trainer_state.global_step if trainer_state is not None else 0
        local = [(int(n), s.accuracy) for n, s in zip(model_tokens, scores, strict=True)]
        everything, offset = self.gather(local)
        if len(everything) % self.group_size:
            raise ValueError(f"{len(everything)} completions are not whole groups of {self.group_size}")
        rewards = length_penalties([n for n, _ in everything],
                                   [bool(a) for _, a in everything], self.group_size)
        mine = rewards[offset:offset + len(local)]
        if step < self.config.length_penalty_start_step:
            mine = [0.0] * len(local)
        return [None if s.accuracy is None else r for s, r in zip(scores, mine, strict=True)]

    def _batch(self, completions, kwargs) -> list[Scores]:
        """Scores of a TRL batch (memoised: the reward functions see the same batch).
        Columns: `solution` (or `answer`), optional `options`, `question`, and the rollout's
        `sandbox_texts` and `end_reason`: a rollout the infrastructure broke (BROKEN_ENDS) is
        unscorable, not wrong — every reward None, no judge asked."""
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        truths = kwargs.get("solution") or kwargs.get("answer")
        if truths is None:
            raise KeyError("the dataset needs a `solution` (or `answer`) column with the ground truth")
        truths = [str(t) for t in truths]
        ends = list(kwargs.get("end_reason") or [""] * len(texts))
        key = (tuple(texts), tuple(truths), tuple(ends))
        if self._memo is None or self._memo[0] != key:
            keep = [i for i, end in enumerate(ends) if end not in BROKEN_ENDS]

            def pick(values):
                return None if values is None else [values[i] for i in keep]

            kept = self.score(pick(texts), pick(truths), pick(kwargs.get("options")),
                              pick(kwargs.get("question")), pick(kwargs.get("sandbox_texts")))
            scores = [Scores(None, None, None, f"the rollout broke ({end})", "", judge_failed=False)
                      for end in ends]
            for i, score in zip(keep, kept, strict=True):
                scores[i] = score
            log = kwargs.get("log_metric")
            if log is not None:
                log("rewards/judge_failures", float(sum(s.judge_failed for s in scores)))
                log("rewards/accuracy_by_judge", float(sum(s.accuracy_by == "judge" for s in scores)))
            self._memo = (key, scores)
        return self._memo[1]


def length_penalties(lengths: Sequence[int], correct: Sequence[bool], group_size: int) -> list[float]:
    """Kimi k1.5's length reward for consecutive groups of `group_size` (see the module doc)."""
    out = []
    for start in range(0, len(lengths), group_size):
        group = lengths[start:start + group_size]
        lo, hi = min(group), max(group)
        for n, ok in zip(group, correct[start:start + group_size], strict=True):
            lam = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
            out.append(lam if ok else min(0.0, lam))
    return out


def _consistency_rule(answer: str, sandbox_texts: Sequence[str], options: dict | None,
                      tol: float) -> bool | None:
    """Answer vs the number the last sandbox output printed; None when the rule does not apply
    (no printed number, or an answer that is not a number)."""
    if not sandbox_texts:
        return None
    printed = last_printed_number(sandbox_texts[-1])
    if printed is None:
        return None
    stated, stated_text = stated_number(answer, options or None)
    if stated is None:
        return None
    return agrees_with_printed(stated, stated_text, printed, tol)


def _reasoning_tail(completion: str, chars: int) -> str:
    """The end of the reasoning: the text before `</think>` (or before the answer)."""
    cut = completion.rfind(THINK_CLOSE)
    if cut < 0:
        cut = completion.rfind(ANSWER_OPEN)
    body = completion[:cut] if cut >= 0 else completion
    return body[-chars:]


