"""The embedded default source pool: synthetic samples for every Thyme task (THYME.md §3), with
exact answers and ground truth, so the whole flow runs without any dataset and every later stage
can be checked against what was drawn.

    generate_samples(start, count, seed, store) -> Iterator[Sample]

Sample `i` depends only on `(seed, i)`: its pixels, text and choices come from
`numpy.random.default_rng([seed, i])` and its task slot from a per-block shuffle seeded with
`(seed, i // 20)`. Shards can therefore generate disjoint index ranges independently, and a re-run
gives identical ids, byte-identical image files and identical text. No global random state is
touched, and only fonts that ship with Pillow (its default TrueType face) and OpenCV 5 (its
embedded sans, italic and uni faces) are used, so the output does not depend on what the machine
has installed. Bytes are identical for the pinned numpy/Pillow/OpenCV versions (and any number of
OpenCV threads); other versions may rasterise differently, so `meta["generator"]` names the
generator version and should be bumped whenever the output for a (seed, index) changes.

Task mix: every aligned block of 20 indices holds exactly 6 crop, 6 no_code, 3 rotate,
2 contrast, 2 chart/table computation and 1 text-only computation sample (30/30/15/10/10/5 %),
shuffled per block; half of each task's samples are multiple choice, alternating by block.
`mix` chooses another mix (builder names and slots per block): `(("arithmetic", 1),)` is a pool of
multi-digit arithmetic only (`arithmetic`: open questions, never multiple choice; `arithmetic_small`:
the same with fewer digits; `arithmetic_fixed`: one phrasing, 3-digit x 3-digit products of six
digits), the task of the tool-use learning check (benchmarks/tool_use_check.py); a non-default mix is named in
`origin_file`.

Conventions in `meta`:
- `box` = [x1, y1, x2, y2] in pixels of the stored image, x2/y2 exclusive (`PIL.Image.crop`).
- `angle` (rotate) = degrees counter-clockwise, the convention of `PIL.Image.rotate` and of
  `cv2.getRotationMatrix2D`: the upright document was turned by +angle, so
  `Image.rotate(-angle, expand=True)` (clockwise) restores it.
- Multiple choice: the question lists the options ("A. ..."), the answer is the letter,
  `options` holds the option lines and `answer_text` the correct option's text.
- Computation: `values` (name -> number), `expression` (a sympy-parsable expression over those
  names) and `answer_format` ("integer", "fraction", or "decimal:N" = rounded to N places, half
  up; values that would land exactly on a rounding tie are never drawn).

Layout: this module schedules the mix and assembles samples (multiple choice included); one module
per task builds its image(s), question and exact answer (`crop`, `rotate`, `contrast`, `chart`,
`word_problems`, `arithmetic`, `no_code`), each returning a `built.Built`; they share the drawing
toolkit (`draw`, `scene`), the vocabulary (`words`), exact arithmetic (`numbers`) and `rand`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np

from pipelines.core.images import ImageStore
from pipelines.core.schema import TASKS, Sample
from pipelines.pool.generate.arithmetic import (
    build_arithmetic,
    build_arithmetic_fixed,
    build_arithmetic_small,
)
from pipelines.pool.generate.built import Built
from pipelines.pool.generate.chart import build_chart
from pipelines.pool.generate.contrast import build_contrast
from pipelines.pool.generate.crop import build_crop
from pipelines.pool.generate.no_code import build_no_code
from pipelines.pool.generate.rand import pick
from pipelines.pool.generate.rotate import build_rotate
from pipelines.pool.generate.word_problems import build_word_problem
from pipelines.pool.generate.words import perturb_text

GENERATOR = "thyme-generate/1"   # bump when the output for a (seed, index) changes
SOURCE = "generated"

# One block of consecutive indices holds exactly this mix, in a per-block shuffled order.
Mix = tuple[tuple[str, int], ...]      # ((builder key, slots per block), ...)
DEFAULT_MIX: Mix = (("crop", 6), ("no_code", 6), ("rotate", 3), ("contrast", 2), ("chart", 2),
                    ("word_problem", 1))

# Each slot's builder: (the sample's rng) -> Built, one module per task.
_BUILDERS: dict[str, Callable[[np.random.Generator], Built]] = {
    "crop": build_crop, "no_code": build_no_code, "rotate": build_rotate,
    "contrast": build_contrast, "chart": build_chart, "word_problem": build_word_problem,
    "arithmetic": build_arithmetic, "arithmetic_small": build_arithmetic_small,
    "arithmetic_fixed": build_arithmetic_fixed,
}
BUILDERS = tuple(_BUILDERS)


# ---------------------------------------------------------------------------------------------
# Public API and the schedule
# ---------------------------------------------------------------------------------------------

def generate_samples(start: int, count: int, seed: int, store: ImageStore,
                     mix: Mix | None = None) -> Iterator[Sample]:
    """Samples `start .. start+count-1` of the generated pool for `seed`, images put in `store`.
    `mix`: ((builder, slots per block), ...), default DEFAULT_MIX; e.g. (("arithmetic", 1),)
    for a pool of that task only."""
    if start < 0 or count < 0 or seed < 0:
        raise ValueError(f"start, count and seed must be >= 0 (got {start}, {count}, {seed})")
    slots = _slots(tuple(mix) if mix is not None else DEFAULT_MIX)
    origin = f"generated/seed={seed}" + ("" if mix is None or tuple(mix) == DEFAULT_MIX
                                          else "/mix=" + ",".join(f"{k}:{n}" for k, n in mix))
    for i in range(start, start + count):
        yield _sample(seed, i, store, slots, origin)


def _slots(mix: Mix) -> tuple[str, ...]:
    unknown = [key for key, _ in mix if key not in _BUILDERS]
    if unknown or not mix or any(n < 1 for _, n in mix):
        raise ValueError(f"mix {mix!r}: builders are {BUILDERS}, each with >= 1 slot")
    return tuple(key for key, n in mix for _ in range(n))


def _sample(seed: int, i: int, store: ImageStore, slots: tuple[str, ...], origin: str) -> Sample:
    key, variant = _schedule(seed, i, slots)
    rng = np.random.default_rng([seed, i])
    built = _BUILDERS[key](rng)
    assert built.task in TASKS, built.task
    if not built.multiple_choice:
        variant = "open"
    meta = {"generator": GENERATOR, "kind": built.kind, "variant": variant, **built.meta}
    question, answer = built.question, built.answer
    if variant == "mc":
        options, letter = _options(rng, built)
        question = _with_options(rng, question, options)
        meta["options"] = options
        meta["answer_text"] = built.answer
        answer = letter
    images = [store.put(data)[0] for data in built.images]
    return Sample(question=question, images=images, source=SOURCE,
                  origin_file=origin, origin_row=i, answer=answer,
                  task=built.task, meta=meta)


@lru_cache(maxsize=64)
def _block_order(seed: int, block: int, slots: tuple[str, ...]) -> tuple[str, ...]:
    perm = np.random.default_rng([seed, block, 0x5107]).permutation(len(slots))
    return tuple(slots[j] for j in perm)


def _schedule(seed: int, i: int, slots: tuple[str, ...]) -> tuple[str, str]:
    """(builder key, "mc" | "open") of index i: exact mix per block, MC alternating by block."""
    block, pos = divmod(i, len(slots))
    order = _block_order(seed, block, slots)
    key = order[pos]
    nth = order[:pos].count(key)
    return key, ("mc" if (nth + block) % 2 == 0 else "open")


# ---------------------------------------------------------------------------------------------
# Multiple choice: the answer among distractors, shuffled, with the instruction line
# ---------------------------------------------------------------------------------------------

_MC_TAILS = ("Answer with the option's letter.", "Answer with the letter of the correct option.",
             "Choose the correct option and reply with its letter.")


def _options(rng, built: Built) -> tuple[list[str], str]:
    """Four options (two for a two-way choice): the answer and distinct distractors, shuffled."""
    answer = built.answer
    chosen: list[str] = []
    for text in built.pool:
        if text != answer and text not in chosen and len(chosen) < 3:
            chosen.append(text)
    perturb = built.perturb or perturb_text
    for _ in range(50):
        if len(chosen) >= 3 or built.kind == "left_right":
            break
        text = perturb(rng, answer)
        if text != answer and text not in chosen:
            chosen.append(text)
    texts = [answer, *chosen]
    order = rng.permutation(len(texts))
    letters = "ABCDE"
    options = [f"{letters[k]}. {texts[j]}" for k, j in enumerate(order)]
    letter = letters[int(np.flatnonzero(order == 0)[0])]
    return options, letter


def _with_options(rng, question: str, options: list[str]) -> str:
    return f"{question}\nOptions:\n" + "\n".join(options) + "\n" + pick(rng, _MC_TAILS)
