"""Human review (`pipelines.samples.review`): export a stratified sample of the audited
trajectories for reviewers, then import their verdicts. Launched deliberately (not part of
`data_flow`): reviewers take days. The splits leave the imported rejections out
(`SplitsConfig.exclude_review_rejections`).

    review/export     data/review/export/: index.html, verdicts-template.csv, items.jsonl
    review/verdicts   the filled CSVs dropped into data/review/returned/ -> data/review/
                      verdicts.parquet, rejected.parquet, report.json (agreement with the audit)

(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.code_samples import audited
from assets.resources import ThymeStorage


class ReviewExportSettings(Config):
    per_stratum: int = Field(20, description="trajectories per (task, audit verdict)")
    seed: int = Field(0, description="which trajectories are drawn")
    overwrite: bool = Field(False, description="replace an earlier export with another selection "
                                               "(verdicts returned for it no longer match)")


@asset(key_prefix="review", group_name="review", kinds={"html", "csv"}, deps=[audited])
def export(context: AssetExecutionContext, config: ReviewExportSettings,
           storage: ThymeStorage) -> MaterializeResult:
    """A static page (images inline as files beside it) and a CSV form over a stratified sample
    of audited trajectories, for reviewers; `data/review/export/`."""
    from pipelines.samples.review import ReviewConfig, export_review

    audited_files = sorted(str(p) for p in storage.path("audited").glob("shard-*.parquet"))
    sample_files = sorted(str(p) for d in (("pool", "samples"), ("augmented", "samples"))
                          for p in storage.path(*d).glob("shard-*.parquet"))
    out = storage.path("review", "export")
    manifest = export_review(audited_files, sample_files, storage.path("pool", "images"), out,
                             ReviewConfig(per_stratum=config.per_stratum, seed=config.seed,
                                          overwrite=config.overwrite))
    storage.path("review", "returned").mkdir(parents=True, exist_ok=True)
    return MaterializeResult(metadata={
        "dagster/row_count": len(manifest["items"]), "export_id": manifest["export_id"],
        "strata": MetadataValue.json(manifest["strata"]),
        "page": MetadataValue.path(storage.relative(out / "index.html")),
        "form": MetadataValue.path(storage.relative(out / "verdicts-template.csv")),
        "returned_folder": MetadataValue.path(storage.relative(storage.path("review", "returned"))),
    })


class ReviewImportSettings(Config):
    rule: str = Field("any", description="how reviewers' verdicts combine: any (one reject "
                                         "rejects), majority, all")


@asset(key_prefix="review", group_name="review", kinds={"parquet"}, deps=[export])
def verdicts(context: AssetExecutionContext, config: ReviewImportSettings,
             storage: ThymeStorage) -> MaterializeResult:
    """The reviewers' filled CSVs (`data/review/returned/*.csv`) imported: every verdict, the
    rejected trajectories (which the splits leave out), agreement with the audit (plain and
    Cohen's kappa) and between reviewers. Lines that name no exported item or no known verdict
    are left out and listed."""
    from pipelines.samples.review import import_verdicts

    files = sorted(storage.path("review", "returned").glob("*.csv"))
    report = import_verdicts(storage.path("review", "export"), files, config.rule,
                             out_dir=storage.path("review"))
    for p in report["problems"]:
        context.log.warning(f"{p['file']} line {p['line']}: {p['reason']} (left out)")
    combined = report["audit_vs_combined"]
    return MaterializeResult(metadata={
        "dagster/row_count": report["lines_imported"], "files": MetadataValue.json(report["files"]),
        "items_reviewed": report["items_reviewed"], "verdicts": MetadataValue.json(report["verdicts"]),
        "rejected_trajectories": report["rejected_trajectories"],
        "agreement_with_audit": combined["agreement"] if combined["agreement"] is not None else -1.0,
        "kappa_with_audit": combined["kappa"] if combined["kappa"] is not None else -1.0,
        "by_reviewer": MetadataValue.json(report["audit_vs_reviewer"]),
        "between_reviewers": MetadataValue.json(report["between_reviewers"]),
        "problems": MetadataValue.json(report["problems"][:50]),
    })


REVIEW_ASSETS = [export, verdicts]
