"""Chained teachers for computation data (THYME.md §3: the paper's ~15K computation samples were
"long reasoning rewritten as lean code"): a first model, the reasoner (a long-chain-of-thought
model, possibly text-only), solves the problem in prose; a second, the coder, is handed that
reasoning and writes the trajectory — short reasoning that reads the values, lean executable
Python that computes the result exactly, the answer.

    chain = ChainedTeacher(reasoner, coder, ChainConfig())     # two ModelTeachers
    out = chain.generate(samples)         # TeacherOutput(trajectories, quarantine, stats)

- The reasoner sees the question (with the image when it takes images, `reasoner_sees_image`)
  and is asked to think it through and end with "Answer: …". It is not told the answer.
- Its answer is checked against the sample's ground truth with the project's answer cascade
  (`pipelines.core.answers`); reasoning that reaches a wrong answer, or none, is not handed on
  (quarantined `reasoner_failed` with the reason) unless `require_correct` is off.
- The coder gets the computation generation prompt (ground-truth values and answer as hints,
  as any model teacher) plus the reasoning as a private hint. It may write in the loop
  (`InLoop`): it then sees the value its code printed before it answers.
- Both are recorded: `teacher` = "chain:<reasoner>><coder>", and the trajectory's `lineage`
  holds each model's name and role, the reasoner's text (cut at `max_reasoning_chars`), its
  answer and how it was checked, and the coder's own lineage (loop calls, plan).
Only samples of the configured tasks go through the chain (by default computation); the coder
alone writes the others (`others`), as the teacher of a mixed shard.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

from pipelines.core.llm import system_message, user_message
from pipelines.core.schema import Sample
from pipelines.samples.teachers import parse
from pipelines.samples.teachers.model import ModelTeacher, TeacherOutput

REASONER_SYSTEM_PROMPT = """\
You are an expert problem solver. Think the problem through step by step, at whatever length it \
takes: identify the quantities involved, set up the calculation, carry it out carefully and check \
the result. Do not write code. End with a final line of the form "Answer: <final answer>" (for \
multiple choice, the option letter)."""

HANDOVER = """\
Another model worked this problem out at length; its solution follows between the markers. Use \
it to get the computation right, but write your own response in the required format: a few \
sentences that read the needed values off the image or the question, then lean Python that \
computes the result exactly and prints it, then the answer. Do not copy its deliberation or \
mention that it exists.
<<<solution
{reasoning}
solution>>>"""


@dataclass(frozen=True)
class ChainConfig:
    tasks: tuple[str, ...] = ("computation",)   # samples of these tasks go through the chain
    require_correct: bool = True       # hand on only reasoning whose answer matches the truth
    reasoner_sees_image: bool = True   # False for a text-only reasoner (the image is described
                                       # by the question alone)
    max_reasoning_chars: int = 20_000  # kept in the lineage (and handed on) at most
    others: bool = True                # samples of other tasks: written by the coder alone (a
                                       # shard mixes tasks); False: skipped


class ChainedTeacher:
    """See the module docstring."""

    def __init__(self, reasoner: ModelTeacher, coder: ModelTeacher, config: ChainConfig | None = None):
        self.reasoner, self.coder = reasoner, coder
        self.config = config or ChainConfig()
        self.name = f"chain:{reasoner.name}>{coder.name}"
        self.quarantine: list[dict] = []

    def candidates(self, sample: Sample):
        out = self.generate([sample])
        self.quarantine.extend(out.quarantine)
        return out.trajectories

    def generate(self, samples: list[Sample]) -> TeacherOutput:
        t0 = time.perf_counter()
        cfg = self.config
        chosen = [s for s in samples if s.task in cfg.tasks]
        quarantine: list[dict] = []
        stats: Counter = Counter(skipped=len(samples) - len(chosen))
        handed: dict[str, dict] = {}
        conversations = [self._reasoning_messages(s) for s in chosen]
        sampling = {**self.reasoner.config.sampling(), "n": 1}
        results = self.reasoner.complete(conversations, sampling) if chosen else []
        for sample, result in zip(chosen, results, strict=True):
            row = self._check(sample, result, handed)
            if row is not None:
                quarantine.append(row)
                stats[f"reasoner:{row['reason']}"] += 1
        stats["reasoner:handed_on"] = len(handed)
        hints = {sid: [HANDOVER.format(reasoning=h["text"])] for sid, h in handed.items()}
        coded = self.coder.generate([s for s in chosen if s.id in handed], hints=hints,
                                    operation="compute")
        trajectories = []
        for t in coded.trajectories:
            lineage = {"chain": [
                {"role": "reasoner", "teacher": self.reasoner.name, **handed[t.sample_id]},
                {"role": "coder", "teacher": self.coder.name, **({"lineage": t.lineage} if t.lineage else {})}]}
            trajectories.append(replace(t, teacher=self.name, lineage=lineage, id=""))
        for row in coded.quarantine:
            quarantine.append({**row, "teacher": self.name, "detail": f"coder: {row['detail']}"[:500]})
        alone = [s for s in samples if s.task not in cfg.tasks] if cfg.others else []
        if alone:
            rest = self.coder.generate(alone)
            trajectories += rest.trajectories
            quarantine += rest.quarantine
            stats["coder_alone"] = len(alone)
            stats["skipped"] = 0
        stats = {"samples": len(samples), "trajectories": len(trajectories),
                 "quarantined": len(quarantine),
                 "quarantine_reasons": dict(Counter(r["reason"] for r in quarantine)),
                 "chain": dict(stats), "coder": coded.stats,
                 "seconds": round(time.perf_counter() - t0, 3)}
        return TeacherOutput(trajectories, quarantine, stats)

    def _reasoning_messages(self, sample: Sample) -> list[dict]:
        image = self.reasoner._image(sample) if self.config.reasoner_sees_image else None
        return [system_message(REASONER_SYSTEM_PROMPT),
                user_message(sample.question, [image] if image else ())]

    def _check(self, sample: Sample, result, handed: dict) -> dict | None:
        """A quarantine row when the reasoning cannot be handed on, else None (and `handed`
        gets its record)."""
        if isinstance(result, Exception):
            return parse.quarantine_row(sample.id, self.name, "request_failed",
                                        f"reasoner: {type(result).__name__}: {result}", "")
        text = (result.text or "").strip()
        if not text:
            return parse.quarantine_row(sample.id, self.name, "reasoner_failed",
                                        "the reasoner returned no text", "")
        if result.finish_reasons and result.finish_reasons[0] == "length":
            return parse.quarantine_row(sample.id, self.name, "reasoner_failed",
                                        "the reasoning hit the length limit", text)
        text = text[-self.config.max_reasoning_chars:]   # the conclusion matters most
        record = {"text": text, "finish_reason": result.finish_reasons[0] if result.finish_reasons else ""}
        if sample.answer:
            from pipelines.core.answers import score_answer  # the cascade loads math-verify: on use

            verdict = score_answer(text, sample.answer, (sample.meta or {}).get("options"))
            record.update(answer=verdict.given, correct=verdict.correct, how=verdict.how)
            if self.config.require_correct and not verdict.correct:
                stated = verdict.given and verdict.source not in ("text", "empty")
                why = f"answered {verdict.given[:80]!r}" if stated else "no final answer stated"
                return parse.quarantine_row(sample.id, self.name, "reasoner_failed",
                                            f"{why}, the truth is {sample.answer!r} ({verdict.how})", text)
        handed[sample.id] = record
        return None
