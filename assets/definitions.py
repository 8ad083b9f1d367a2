"""The one `Definitions` of the project (`dagster dev -m assets.definitions`).

Modules of this package hold the assets of one stage each; this file only assembles them.
Heavy libraries are imported inside asset bodies, so loading the code location stays fast.
"""

from dagster import Definitions

from assets.pool import source_manifest, source_pool
from assets.resources import ThymeStorage

defs = Definitions(
    assets=[source_manifest, source_pool],
    resources={"storage": ThymeStorage()},
)
