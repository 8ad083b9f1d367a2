"""What the model teachers (OpenAI-compatible API, offline vLLM) share: prompts in, parsed
trajectories and quarantined rows out. A subclass only says how a batch of chats is completed.

    teacher.generate(samples) -> TeacherOutput(trajectories, quarantine, stats)
    teacher.candidates(sample) -> [Trajectory]      # TemplateTeacher's interface; the sample's
                                                    # quarantined rows accumulate in teacher.quarantine

Per batch: samples whose task names no operation (real pools) first get the decision prompt
(`prompts.decision_messages`, greedy, a few tokens); then every sample gets its generation
prompt, `candidates` completions each, at the configured sampling; each completion is parsed
(`parse.parse_trajectory`). A failed request, an unusable decision or an unparseable text
becomes a quarantine row with a reason code; nothing is dropped silently.

One pass (the default, fastest) writes the whole trajectory in one call, blind to what its code
produces. Given `in_loop` (`loop.InLoop`: a sandbox, the image store, the execution cache), the
teacher writes turn by turn with the sandbox in the loop instead (`loop.py`): each round sees
the previous round's image or error, and round plans (`plans.py`) ask for two-round data.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.images import store_path
from pipelines.core.llm import Completion, image_part
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory
from pipelines.samples.teachers import parse, prompts
from pipelines.samples.teachers.loop import InLoop, run_loop


@dataclass(frozen=True)
class TeacherConfig:
    """Sampling and prompting of a model teacher."""

    candidates: int = 1               # completions per sample (the request's n)
    temperature: float = 0.7          # some variety across candidates and samples
    top_p: float = 0.95
    max_tokens: int = 2048            # a Thyme trajectory is a few hundred tokens; headroom
    seed: int | None = 0              # per-request seed where the engine takes one (reproducible
                                      # data); None: unseeded
    decide: str = "auto"              # auto: the decision prompt only for samples whose task
                                      # names no operation; always; never (such samples skipped)
    give_answer: bool = True          # tell the teacher the ground-truth answer (never to be
                                      # revealed), as the paper's guided prompts did
    max_code_blocks: int = parse.MAX_CODE_BLOCKS
    batch_size: int = 64              # samples whose requests (images inlined) are built and
                                      # sent together; bounds memory, keeps the engine busy
    prompt_set: str | None = None     # the student's prompts shown to the teacher (None: default)

    def __post_init__(self):
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1 (got {self.candidates})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.decide not in ("auto", "always", "never"):
            raise ValueError(f"decide must be auto, always or never (got {self.decide!r})")

    def sampling(self) -> dict:
        params = {"temperature": self.temperature, "top_p": self.top_p,
                  "max_tokens": self.max_tokens, "n": self.candidates}
        if self.seed is not None:
            params["seed"] = self.seed
        return params


# Greedy and short: one word in a tag.
DECISION_SAMPLING = {"temperature": 0.0, "max_tokens": 16, "n": 1}


@dataclass
class TeacherOutput:
    trajectories: list[Trajectory]
    quarantine: list[dict]            # rows of parse.TEACHER_QUARANTINE_SCHEMA
    stats: dict = field(default_factory=dict)


class ModelTeacher:
    """Base of the model teachers; subclasses implement `complete`."""

    name = "model"

    def __init__(self, image_root: str | Path, config: TeacherConfig | None = None,
                 in_loop: InLoop | None = None):
        self.image_root = Path(image_root)     # the image store root the samples' refs live in
        self.config = config or TeacherConfig()
        self.in_loop = in_loop                 # None: one pass
        self.quarantine: list[dict] = []

    def complete(self, conversations: list[list[dict]], sampling: dict) -> list[Completion | Exception]:
        """One result per conversation, in order: a `Completion` or the exception it failed with."""
        raise NotImplementedError

    # -- the teacher interface ----------------------------------------------------------------

    def candidates(self, sample: Sample) -> list[Trajectory]:
        out = self.generate([sample])
        self.quarantine.extend(out.quarantine)
        return out.trajectories

    def generate(self, samples: list[Sample], hints: dict[str, list[str]] | None = None,
                 operation: str | None = None) -> TeacherOutput:
        """Trajectories for `samples`. `hints`: more private hints per sample id (a chained
        teacher's handed-over reasoning); `operation`: the same operation for every sample (no
        decision asked)."""
        t0 = time.perf_counter()
        hints = hints or {}
        trajectories: list[Trajectory] = []
        quarantine: list[dict] = []
        operations: Counter = Counter()
        looped: Counter = Counter()
        size = self.config.batch_size
        for start in range(0, len(samples), size):
            batch = samples[start:start + size]
            ops = [operation] * len(batch) if operation else self._decide(batch, quarantine)
            operations.update(op or "skipped" for op in ops)
            if self.in_loop is not None:
                run_loop(self, batch, ops, self.in_loop, trajectories, quarantine, looped, hints)
            else:
                self._generate_batch(batch, ops, trajectories, quarantine, hints)
        stats = {"samples": len(samples), "trajectories": len(trajectories),
                 "quarantined": len(quarantine),
                 "quarantine_reasons": dict(Counter(r["reason"] for r in quarantine)),
                 "by_operation": dict(operations), "seconds": round(time.perf_counter() - t0, 3),
                 "mode": "one_pass" if self.in_loop is None else
                         f"loop:{self.in_loop.config.continuation}"}
        if self.in_loop is not None:
            stats["loop"] = dict(sorted(looped.items()))
        return TeacherOutput(trajectories, quarantine, stats)

    def _generate_batch(self, samples: list[Sample], operations: list[str | None],
                        trajectories: list[Trajectory], quarantine: list[dict],
                        hints: dict[str, list[str]]) -> None:
        todo = [(s, op) for s, op in zip(samples, operations, strict=True) if op is not None]
        requests = [prompts.generation_messages(s, op, self._image(s), self.config.give_answer,
                                                 self.config.prompt_set, hints.get(s.id, ()))
                    for s, op in todo]
        results = self.complete([messages for messages, _ in requests], self.config.sampling())
        for (sample, _), (_, hidden), result in zip(todo, requests, results, strict=True):
            if isinstance(result, Exception):
                quarantine.append(parse.quarantine_row(sample.id, self.name, "request_failed",
                                                       f"{type(result).__name__}: {result}", ""))
                continue
            for text, reason in zip(result.texts, result.finish_reasons, strict=True):
                trajectory, row = parse.parse_trajectory(
                    text, sample, self.name, finish_reason=reason, hidden=hidden,
                    max_code_blocks=self.config.max_code_blocks)
                if row is not None:
                    quarantine.append(row)
                else:
                    trajectories.append(trajectory)

    # -- steps --------------------------------------------------------------------------------

    def _image(self, sample: Sample) -> dict | None:
        return image_part(store_path(self.image_root, sample.images[0].relpath)) if sample.images else None

    def _decide(self, samples: list[Sample], quarantine: list[dict]) -> list[str | None]:
        """The operation per sample: from its task, or asked of the model."""
        decide = self.config.decide
        operations = [None if decide == "always" else prompts.operation_for(s) for s in samples]
        ask = [i for i, op in enumerate(operations) if op is None]
        if not ask or decide == "never":
            return operations
        conversations = [prompts.decision_messages(samples[i], self._image(samples[i])) for i in ask]
        results = self.complete(conversations, DECISION_SAMPLING)
        for i, result in zip(ask, results, strict=True):
            if isinstance(result, Exception):
                quarantine.append(parse.quarantine_row(samples[i].id, self.name, "request_failed",
                                                       f"decision: {type(result).__name__}: {result}", ""))
                continue
            operations[i] = prompts.parse_decision(result.text)
            if operations[i] is None:
                quarantine.append(parse.quarantine_row(samples[i].id, self.name, "no_decision",
                                                       "the decision names no operation", result.text))
        return operations
