"""The one `Definitions` of the project (`dagster dev -m assets.definitions`).

Modules of this package hold the assets of one stage each, the resources and the jobs; this file
only assembles them. Heavy libraries are imported inside asset bodies, so loading the code
location stays fast.
"""

from dagster import Definitions

from assets.augment import augmented
from assets.code_samples import audited, code_samples, executions
from assets.datasets import DATASET_ASSETS
from assets.evaluation import EVALUATION_ASSETS
from assets.exports import EXPORT_ASSETS
from assets.jobs import AUTOMATION, JOBS
from assets.pool import source_manifest, source_pool
from assets.resources import (
    ClusterResource,
    JudgeResource,
    SandboxResource,
    TeacherResource,
    ThymeStorage,
)
from assets.review import REVIEW_ASSETS
from assets.training import TRAINING_ASSETS, TRAINING_RESOURCES

defs = Definitions(
    assets=[source_manifest, source_pool, augmented, code_samples, executions, audited,
            *DATASET_ASSETS, *EXPORT_ASSETS, *REVIEW_ASSETS, *TRAINING_ASSETS, *EVALUATION_ASSETS],
    jobs=JOBS,
    sensors=[AUTOMATION],
    resources={"storage": ThymeStorage(), "sandbox": SandboxResource(), "teacher": TeacherResource(),
               "judge": JudgeResource(), "cluster": ClusterResource(), **TRAINING_RESOURCES},
)
