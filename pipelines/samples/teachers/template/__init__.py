"""The embedded default teacher: templated reasoning and code built from a sample's ground truth,
so the whole flow runs without a model (THYME.md §3, how the paper's generator was briefed).

    TemplateTeacher(seed=0, multi_round_share=0.25, wording="varied").candidates(sample) -> [Trajectory]

Per task (the generated pool's `meta` conventions, `pipelines.pool.generate`), one module each:
- crop (`crop.py`): a box = ground-truth box + a random margin (inside the image, sides >= 64 px),
  zoomed 2-4x with OpenCV or PIL, saved under the virtual output directory, path printed;
- rotate (`rotate.py`): the image rotated back (PIL `rotate(expand=True)` or OpenCV `warpAffine`
  on the enlarged canvas);
- contrast (`contrast.py`): CLAHE, histogram equalisation, gamma, a percentile stretch or PIL
  enhancers, sometimes on a crop around the target;
- computation (`computation.py`): the values read off the chart/table (or the word problem), then
  exact Python (fractions, decimal, sympy, numpy) printing the result in the sample's
  `answer_format`;
- no_code (`no_code.py`): one turn of reasoning and the answer (kind "direct").
What they share (the random draw, the sample's facts, box geometry, code writing) is in
`common.py`.

Multi-round: `multi_round_share` of crop samples get two code rounds, half "further_enhancement"
(a wide crop, then a tight one) and half "error_correction" (a realistic mistake: wrong region,
a box that cuts the target off, a misspelled variable, `Image.crop` with four arguments, numpy
indices swapped); rotate samples get "error_correction" at half that share (rotated the wrong
way, a wrong keyword, the canvas size used before it was computed). The reasoning never states
the ground-truth box or angle: it reads as if the model located the target itself; the numbers
appear only in the code, as in the paper's data.

Everything varies (phrasing, library, variable and file names, margins, zoom, method) from one
`numpy.random.default_rng` seeded by (seed, sample id): the same configuration and sample always
give the same trajectory. `wording="fixed"` takes the first option of every choice instead (one
phrasing per task; the tool-use learning check's setting). Samples a template cannot serve (no ground truth, unknown task, empty
answer) get no candidate.
"""

from __future__ import annotations

import hashlib

import numpy as np

from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory
from pipelines.samples.teachers.template.common import Draw, Facts, FixedDraw, Skip
from pipelines.samples.teachers.template.computation import build_computation
from pipelines.samples.teachers.template.contrast import build_contrast
from pipelines.samples.teachers.template.crop import build_crop
from pipelines.samples.teachers.template.no_code import build_no_code
from pipelines.samples.teachers.template.rotate import build_rotate

__all__ = ["TemplateTeacher"]

# Each builder: (facts, draw, u, multi_round_share) -> (kind, turns, answer), or raises Skip.
_BUILDERS = {"crop": build_crop, "rotate": build_rotate, "contrast": build_contrast,
             "computation": build_computation, "no_code": build_no_code}


class TemplateTeacher:
    name = "template/1"

    def __init__(self, seed: int = 0, multi_round_share: float = 0.25, wording: str = "varied"):
        if wording not in ("varied", "fixed"):
            raise ValueError(f"wording must be 'varied' or 'fixed' (got {wording!r})")
        if not 0.0 <= multi_round_share <= 1.0:
            raise ValueError(f"multi_round_share must be in [0, 1] (got {multi_round_share})")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (got {seed})")
        self.seed = int(seed)
        self.multi_round_share = float(multi_round_share)
        self.wording = wording
        if wording == "fixed":      # other trajectories: another name (caches, provenance)
            self.name = f"{TemplateTeacher.name}:fixed"

    def candidates(self, sample: Sample) -> list[Trajectory]:
        build = _BUILDERS.get(sample.task)
        if build is None or not sample.answer:
            return []
        key = int.from_bytes(hashlib.blake2b(sample.id.encode(), digest_size=8).digest(), "big")
        draw = (FixedDraw if self.wording == "fixed" else Draw)(
            np.random.default_rng([self.seed, key, 0x7E4C]))
        # The round structure has its own stream, so the share is exact in expectation.
        u = float(np.random.default_rng([self.seed, key, 0x40D5]).random())
        try:
            kind, turns, answer = build(Facts.of(sample), draw, u, self.multi_round_share)
        except Skip:
            return []
        return [Trajectory(sample_id=sample.id, teacher=self.name, kind=kind, task=sample.task,
                           turns=turns, answer=answer)]
