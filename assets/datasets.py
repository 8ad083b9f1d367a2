"""Corpus-level datasets (not partitioned): the training splits built from every audited shard,
guarded by blocking checks, then the published SFT and RL datasets (HF layout + dataset card).

    splits/{wo_thinking_thyme_single_round, 2round, computation, rl}   <- samples/audited
    datasets/thyme_sft  <- the three SFT splits          datasets/thyme_rl  <- splits/rl

The work is in `pipelines.datasets.splits`, `pipelines.datasets.validate` and `pipelines.datasets.publish`; heavy imports
stay inside the bodies so loading the code location stays fast.
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)
from pydantic import Field

from assets import ui
from assets.code_samples import audited
from assets.resources import ThymeStorage
from pipelines.datasets.names import CHECKS, RL, SFT_SPLITS, SINGLE, SPLITS, split_checks


def _key(split: str) -> AssetKey:
    return AssetKey(["splits", split])


class SplitsConfig(Config):
    single_round_mix: dict[str, float] | None = Field(
        None, description="task -> weight for wo_thinking_thyme_single_round; None: the paper's "
                          "counts (pipelines.datasets.splits.PAPER_MIX); {}: keep every task as it comes")
    test_share: float = Field(0.05, description="share of images held out as the test part")
    rl_share: float = Field(0.2, description="share of eligible samples that become RL prompts")
    near_dup_threshold: float = Field(0.8, description="question similarity that merges same-image samples")
    seed: int = Field(0, description="salts every hash-based draw")
    prompt_set: str = Field("thyme", description="the prompts rows are rendered with: a shipped set "
                            "(thyme, thyme-release), a YAML path, or from:<dataset file>")
    rl_source: str = Field("audited", description="RL prompts from samples with an audit-passing "
                           "trajectory (audited) or from every pool sample with a checkable answer "
                           "and its image(s), no teacher needed (pool: a Thyme-RL or DeepEyes pool)")
    rl_answer_kinds: list[str] = Field(["option", "yes_no", "number", "math", "short_text"],
                                       description="ground truths RL prompts may have "
                                       "(pipelines.core.answers.truth_kind; also open, empty)")
    rl_min_image_side: int = Field(0, description="RL: every input image's shorter side, px, at least")
    rl_tasks: list[str] = Field([], description="RL: only these tasks (empty: all)")
    rl_difficulties: list[str] = Field([], description="RL: only these difficulties where a row "
                                                       "has one (empty: all)")
    decontaminate: list[str] = Field([], description="evaluation benchmark files (VLMEvalKit .tsv, "
                                     ".jsonl; absolute or relative to the data directory) whose "
                                     "images and questions no training row may share")
    phash_distance: int = Field(6, description="decontamination: perceptual-hash bits (of 64) at "
                                               "or below which two images are the same picture")
    question_threshold: float = Field(0.8, description="decontamination: question 5-gram Jaccard "
                                                       "that counts as the benchmark's question")
    min_question_chars: int = Field(40, description="decontamination: shorter questions are too "
                                                    "generic to match without their image")
    mix_tolerance: float = Field(0.05, description="blocking: allowed |share - target| per task")
    max_pixels: int | None = Field(None, description="blocking: pixel budget per image; null: "
                                   "the pool's ingest limit (so what the pool kept, validation accepts)")
    min_rows: int = Field(1, description="blocking: rows every split must have (0 for a split a "
                                         "pool cannot fill, e.g. SFT splits of an RL-only pool)")
    max_failure_rate: float = Field(0.01, description="blocking: share of a split's rows a row "
                                    "check may set aside (quarantine) before it blocks publishing")
    failure_rates: dict[str, float] = Field({}, description="per-check overrides of max_failure_rate")
    exclude_review_rejections: bool = Field(True, description="leave out the trajectories the "
                                            "imported human review rejected (review/verdicts)")
    workers: int = Field(1, description="processes rendering and validating the split rows (0: "
                                        "one per core); the files are the same whatever the number")


@multi_asset(
    specs=[AssetSpec(_key(s), group_name="datasets", kinds={"python", "parquet"}, deps=[audited],
                     description=f"the {s} split (train + held-out test), from every audited shard")
           for s in SPLITS],
    check_specs=[AssetCheckSpec(c, asset=_key(s), blocking=True, description=CHECKS[c])
                 for s in SPLITS for c in split_checks(s)],
    can_subset=False,
)
def splits(context: AssetExecutionContext, config: SplitsConfig, storage: ThymeStorage):
    """Splits from the audited trajectories: routed by rounds and task, deduplicated across
    splits, task mix applied, test part held out by image hash; then every validation."""
    import pyarrow.parquet as pq

    from pipelines.core.previews import Table
    from pipelines.core.prompts import load_prompt_set
    from pipelines.datasets.previews import corpus_funnel, counts_table, rows_markdown
    from pipelines.datasets.splits import SplitConfig, build_splits, split_file, validate_splits
    from pipelines.datasets.validate import ValidationConfig

    audited_files = sorted(str(p) for p in storage.path("audited").glob("shard-*.parquet"))
    sample_files = sorted(str(p) for d in (("pool", "samples"), ("augmented", "samples"))
                          for p in storage.path(*d).glob("shard-*.parquet"))
    rejected = storage.path("review", "rejected.parquet")      # assets/review.py
    decontaminate = None
    if config.decontaminate:
        from pipelines.datasets.decontaminate import DecontaminationConfig
        decontaminate = DecontaminationConfig(
            benchmarks=tuple(str(storage.path(b)) for b in config.decontaminate),  # absolute stays absolute
            phash_distance=config.phash_distance, question_threshold=config.question_threshold,
            min_question_chars=config.min_question_chars, cache_dir=str(storage.path("cache", "phash")))
    cfg = SplitConfig(test_share=config.test_share, rl_share=config.rl_share,
                      near_dup_threshold=config.near_dup_threshold, seed=config.seed,
                      prompt_set=config.prompt_set, rl_source=config.rl_source,
                      rl_answer_kinds=tuple(config.rl_answer_kinds),
                      rl_min_image_side=config.rl_min_image_side, rl_tasks=tuple(config.rl_tasks),
                      rl_difficulties=tuple(config.rl_difficulties), decontaminate=decontaminate,
                      exclude_ids_file=str(rejected) if config.exclude_review_rejections
                      and rejected.exists() else None)
    if config.single_round_mix is not None:
        cfg.mix = {SINGLE: dict(config.single_round_mix)}
    out = storage.path("splits")
    vcfg = ValidationConfig(max_pixels=config.max_pixels or _pool_max_pixels(storage),
                            mix_tolerance=config.mix_tolerance, min_rows=config.min_rows,
                            system_prompt=load_prompt_set(config.prompt_set).system,
                            max_failure_rate=config.max_failure_rate,
                            failure_rates=dict(config.failure_rates))
    report = build_splits(audited_files, sample_files, out, cfg, storage.path("pool", "images"), vcfg,
                          workers=config.workers)
    validation = validate_splits(out, storage.path("pool", "images"), cfg.mix, vcfg)
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    for split in SPLITS:
        first = pq.read_table(split_file(out, split, "train")).slice(0, 3).to_pylist()
        yield MaterializeResult(asset_key=_key(split), metadata={
            "dagster/row_count": sum(report["rows"][split].values()),
            "rows": ui.table(counts_table(report["rows"][split], "part")),
            "rows_by_task": ui.table(counts_table(report["splits"][split], "part")),
            "funnel": ui.table(corpus_funnel(report, split)),
            "quarantined": ui.counts(report["validated"]["quarantined"].get(split, {}), "check"),
            "rl_prompts": MetadataValue.json(report["rl_prompts"]),
            "decontamination": MetadataValue.json(report.get("decontamination", {}).get("benchmarks", {})),
            "preview": MetadataValue.md(rows_markdown(first, split, storage.path("pool"))),
            "path": MetadataValue.path(storage.relative(out / split)),
            "prompt_set": MetadataValue.text(load_prompt_set(config.prompt_set).name),
        })
        result = validation[split]
        for check in split_checks(split):
            failures = result.failures.get(check, [])
            set_aside = [{"row": q["id"], "origin": f"{q['origin_file']} row {q['origin_row']}",
                          "reason": q["reason"][:300]} for q in quarantine
                         if q["split"] == split and check in q["checks"]][:20]
            yield AssetCheckResult(asset_key=_key(split), check_name=check, passed=result.passed(check),
                                   metadata={"failures": result.counts.get(check, 0),
                                             "quarantined": result.quarantined.get(check, 0),
                                             "quarantine_rate": round(result.rate(check), 4),
                                             "allowed_rate": vcfg.allowed_rate(check),
                                             "examples": ui.table(Table(
                                                 [("row", "string"), ("origin", "string"),
                                                  ("reason", "string")],
                                                 [{"row": f.row_id, "origin": "", "reason": f.reason}
                                                  for f in failures[:20]] + set_aside))})


def _pool_max_pixels(storage: ThymeStorage) -> int:
    """The pixel limit the pool was ingested with (its plan), else the ingest default."""
    import json

    from pipelines.core.images import ImageLimits

    plan = storage.path("pool", "plan.json")
    if plan.is_file():
        return int(json.loads(plan.read_text())["config"].get("max_pixels") or ImageLimits.max_pixels)
    return ImageLimits.max_pixels


class PublishSettings(Config):
    repo_id: str = Field("", description="Hub dataset repo (user/name); empty: dry run")
    token_env: str = Field("HF_TOKEN", description="environment variable holding the Hub token")
    private: bool = Field(True, description="create the Hub repo private")
    encodings: list[str] = Field(["thyme", "hf"], description="image encodings; the first is the default config")
    license: str = Field("apache-2.0", description="the dataset card's license field")


def _publish(context: AssetExecutionContext, config: PublishSettings, storage: ThymeStorage,
             kind: str, name: str) -> MaterializeResult:
    import json

    from pipelines.datasets.previews import counts_table
    from pipelines.datasets.publish import PublishConfig, publish, push

    funnel = json.loads(storage.path("splits", "report.json").read_text())
    funnel = {k: funnel[k] for k in ("pool_samples", "trajectories", "passed", "routed", "dropped", "rows",
                                     "rl_prompts", "validated", "decontamination") if k in funnel}
    cfg = PublishConfig(kind=kind, encodings=tuple(config.encodings), license=config.license,
                        repo_id=config.repo_id, token_env=config.token_env, private=config.private,
                        funnel=funnel)
    out = storage.path("published", name)
    report = publish(storage.path("splits"), storage.path("pool", "images"), out, cfg)
    pushed = push(out, cfg)
    card = (out / "README.md").read_text()
    if report["prompt_set"] is None:
        context.log.warning("the splits record no prompt set (built before sets were recorded): "
                            "rematerialize splits, or training and evaluation fall back to "
                            "their configured sets")
    return MaterializeResult(metadata={
        "prompt_set": MetadataValue.text(report["prompt_set"] or "(not recorded)"),
        "dagster/row_count": sum(report["rows"].values()),
        "rows": ui.table(counts_table(report["rows"], "split")),
        "rows_by_task": ui.table(counts_table(report["rows_by_task"], "split")),
        "bytes": report["bytes"], "files": report["files"],
        "path": MetadataValue.path(storage.relative(out)),
        "card": MetadataValue.md(card.split("---\n", 2)[-1][:4000]),
        "hub": MetadataValue.json({k: v for k, v in pushed.items() if k != "files"}),
    })


@asset(key_prefix="datasets", group_name="datasets", kinds={"parquet", "huggingface"},
       deps=[_key(s) for s in SFT_SPLITS])
def thyme_sft(context: AssetExecutionContext, config: PublishSettings,
              storage: ThymeStorage) -> MaterializeResult:
    """The SFT dataset: single-round, 2round, computation and test splits in the `thyme` and `hf`
    encodings, with its dataset card; pushed to the Hub when configured."""
    return _publish(context, config, storage, "sft", "thyme-sft")


@asset(key_prefix="datasets", group_name="datasets", kinds={"parquet", "huggingface"},
       deps=[_key(RL)])
def thyme_rl(context: AssetExecutionContext, config: PublishSettings,
             storage: ThymeStorage) -> MaterializeResult:
    """The RL dataset: prompts (system + user), images (files shipped, base64 in `thyme`),
    solutions; train and test splits; pushed to the Hub when configured."""
    return _publish(context, config, storage, RL, "thyme-rl")


DATASET_ASSETS = [splits, thyme_sft, thyme_rl]
DATASET_CHECKS: list = []  # the checks are part of `splits` (check_specs): nothing to add separately
