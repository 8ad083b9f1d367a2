"""Framework exports (not partitioned): the published datasets in TRL, ms-swift, LLaMA-Factory and
verl form, each labelled so the framework's own loader trains the model's writing only.

    exports/{trl, swift, llamafactory}  <- datasets/thyme_sft      exports/verl  <- datasets/thyme_rl

Each reads the published directory (exactly what a user downloads) through
`pipelines.datasets.exports`; the export's README says how to train it. Heavy imports stay inside
the bodies so loading the code location stays fast.
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.resources import ThymeStorage
from assets.training import choose_prompt_set

_SOURCES = {"trl": "thyme-sft", "swift": "thyme-sft", "llamafactory": "thyme-sft", "verl": "thyme-rl"}
_TITLES = {"trl": "TRL", "swift": "ms-swift", "llamafactory": "LLaMA-Factory", "verl": "verl"}


class ExportSettings(Config):
    last_round_only: bool = Field(False, description="SFT: no loss before the last round of multi-round "
                                                     "rows (Thyme's stage-1 recipe)")
    system_prompt: bool = Field(True, description="SFT: write the system prompt of the set the "
                                "published dataset records (off: the model template's default applies)")


def _export_asset(fmt: str):
    published = _SOURCES[fmt]
    source = AssetKey(["datasets", published.replace("-", "_")])

    @asset(name=fmt, key_prefix="exports", group_name="exports", kinds={"python", fmt},
           deps=[source],
           description=f"{published} as a {_TITLES[fmt]} training set, with a README on how to train it")
    def _export(context: AssetExecutionContext, config: ExportSettings,
                storage: ThymeStorage) -> MaterializeResult:
        from pipelines.core.prompts import load_prompt_set
        from pipelines.datasets.exports import ExportConfig, export

        # SFT rows get the system prompt of the set the dataset's rows were rendered with
        prompt_set, prompt_meta = choose_prompt_set(context, storage, source, published, None,
                                                    parts=("system",)) \
            if config.system_prompt and fmt != "verl" else (None, {})
        cfg = ExportConfig(format=fmt, train_last_round_only=config.last_round_only,
                           system_prompt=load_prompt_set(prompt_set).system if prompt_set else None)
        out = storage.path("exports", fmt)
        report = export(storage.path("published", published), out, cfg)
        if report["quarantined"]:
            context.log.warning(f"{sum(report['quarantined'].values())} rows left out: "
                                f"{report['quarantined']} (see quarantine.jsonl)")
        return MaterializeResult(metadata={
            "dagster/row_count": sum(report["rows"].values()),
            "rows": MetadataValue.json(report["rows"]),
            "quarantined": MetadataValue.json(report["quarantined"]),
            "image_files": report["image_files"],
            "path": MetadataValue.path(storage.relative(out)),
            **prompt_meta,
            "readme": MetadataValue.md((out / "README.md").read_text()[:6000]),
        })

    return _export


EXPORT_ASSETS = [_export_asset(fmt) for fmt in _SOURCES]
