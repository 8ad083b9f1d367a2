"""The one `Definitions` of the project (`dagster dev -m assets.definitions`).

Assets arrive with the pipeline issues (source pool, code samples, splits, training); each module
of this package contributes its assets, checks and resources here.
"""

from dagster import Definitions

defs = Definitions(assets=[], asset_checks=[], resources={})
