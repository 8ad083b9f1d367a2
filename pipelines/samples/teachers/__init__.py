"""Teachers write candidate trajectories (reasoning + code) for pool samples.

Every teacher has a `name` (recorded in each trajectory) and
`candidates(sample) -> list[Trajectory]`, deterministic for a given configuration. Results are
attached later by execution (`pipelines.samples.execute`), never by the teacher.

Model teachers (`OpenAITeacher` over any OpenAI-compatible endpoint, `VLLMTeacher` offline) also
have `generate(samples) -> TeacherOutput(trajectories, quarantine, stats)`, which batches
requests; output that cannot be parsed is quarantined with a reason code (`parse.REASONS`).
Given `in_loop=InLoop(sandbox, store, cache, LoopConfig())` they write turn by turn with the
sandbox in the loop (`loop.py`), and `ChainedTeacher(reasoner, coder)` hands one model's
reasoning to another that writes lean code (`chain.py`).
"""

from pipelines.samples.teachers.chain import ChainConfig, ChainedTeacher
from pipelines.samples.teachers.loop import InLoop, LoopConfig
from pipelines.samples.teachers.model import ModelTeacher, TeacherConfig, TeacherOutput
from pipelines.samples.teachers.openai import OpenAITeacher
from pipelines.samples.teachers.template import TemplateTeacher
from pipelines.samples.teachers.vllm import VLLMTeacher

__all__ = ["ChainConfig", "ChainedTeacher", "InLoop", "LoopConfig", "ModelTeacher",
           "OpenAITeacher", "TeacherConfig", "TeacherOutput", "TemplateTeacher", "VLLMTeacher"]
