"""Teachers write candidate trajectories (reasoning + code) for pool samples.

Every teacher has a `name` (recorded in each trajectory) and
`candidates(sample) -> list[Trajectory]`, deterministic for a given configuration. Results are
attached later by execution (`pipelines.execute`), never by the teacher.
"""

from pipelines.teachers.template import TemplateTeacher

__all__ = ["TemplateTeacher"]
