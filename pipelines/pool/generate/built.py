"""`Built`: what every task builder returns, before `generate_samples` adds the multiple-choice
wrapper and puts the images in the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Built:
    """What a task builder produces, before the multiple-choice wrapper and the store."""
    task: str
    kind: str
    question: str
    answer: str
    images: list[bytes]
    meta: dict
    pool: list[str] = field(default_factory=list)       # multiple-choice distractors, best first
    perturb: Callable | None = None                      # (rng, answer) -> another distractor
    multiple_choice: bool = True                         # False: always asked as an open question
