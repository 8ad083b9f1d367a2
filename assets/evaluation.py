"""Evaluation of each trained checkpoint on the held-out split (or any benchmark file), with the
sandbox, prompts and rollout loop of training, as its own process (Dagster Pipes):

    training/sft_stage2 -> evaluation/sft_stage2_scores    training/grpo_ats -> evaluation/grpo_ats_scores

A new checkpoint is evaluated automatically (eager automation condition).

Each records accuracy with tools and without (the ablation), tool use, the markdown table and
the bar chart. The work is `python -m thyme_train.evaluate`.
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

import sys

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from assets import ui
from assets.resources import ThymeStorage
from assets.training import RL_DATASET, launch


class EvaluationConfig(Config):
    benchmark: str = Field(
        "", description="a VLMEvalKit .tsv, a .jsonl or a published dataset directory; empty: "
                        "the published RL dataset's held-out split")
    split: str = Field("test", description="split of a published dataset")
    limit: int = Field(0, description="evaluate at most this many items (0: all)")
    max_new_tokens: int = Field(2048, description="new tokens per generation call")
    on_code_error: str = Field("rollback", description="rollback (the original evaluation) or show")
    ablation: bool = Field(True, description="also answer with tools disabled")
    engine: str = Field("hf", description="hf or vllm")


def _evaluation_asset(checkpoint: str):
    upstream = AssetKey(["training", checkpoint])

    @asset(name=f"{checkpoint}_scores", key_prefix="evaluation", group_name="evaluation",
           kinds={"python", "pytorch"}, deps=[upstream, RL_DATASET],
           automation_condition=AutomationCondition.eager(),
           description=f"Accuracy (overall, per category, with and without tools) and tool use of "
                       f"the {checkpoint} checkpoint on the held-out RL split (or the configured "
                       f"benchmark), with the same sandbox, prompts and rollout loop as training.")
    def _evaluate(context: AssetExecutionContext, config: EvaluationConfig, storage: ThymeStorage,
                  pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
        model = storage.path("checkpoints", *(("sft", "stage2") if checkpoint == "sft_stage2"
                                              else ("grpo_ats",)))
        if not (model / "config.json").is_file():
            raise Failure(description=f"no model at {storage.relative(model)}: materialize "
                                      f"{upstream.to_user_string()} first")
        benchmark = config.benchmark or str(storage.path("published", "thyme-rl"))
        out = storage.path("evaluation", checkpoint)
        command = [sys.executable, "-m", "thyme_train.evaluate", "--model", str(model),
                   "--benchmark", benchmark, "--split", config.split, "--out", str(out),
                   "--max-new-tokens", str(config.max_new_tokens), "--engine", config.engine,
                   "--on-code-error", config.on_code_error]
        if config.limit:
            command += ["--limit", str(config.limit)]
        if not config.ablation:
            command.append("--no-ablation")
        result = launch(context, pipes_subprocess_client, command,
                        storage.path("evaluation", f".{checkpoint}-error.json"),
                        f"evaluation of {checkpoint}")
        images = {} if config.benchmark else _rl_test_images(storage, config.split)
        # the trainer's markdown `report` is replaced by the same numbers as a table
        metadata = {k: v for k, v in result.metadata.items() if k != "report"}
        return result._replace(metadata={**metadata, **_report(storage, out, checkpoint, images)})

    return _evaluate


def _report(storage: ThymeStorage, out, checkpoint: str, images: dict) -> dict:
    """The evaluation as tables and a labelled chart, from its results.json."""
    import json

    from pipelines.core.previews import grouped_bars
    from pipelines.core.reports import (
        evaluation_bars,
        evaluation_items,
        evaluation_items_markdown,
        evaluation_summary,
    )

    results = json.loads((out / "results.json").read_text())
    groups, bars = evaluation_bars(results)
    png = grouped_bars(groups, bars, storage.path("reports", f"evaluation_{checkpoint}.png"),
                       f"{checkpoint}: accuracy (%) with and without tools", "accuracy (%)")
    items = evaluation_items(results)
    return {"summary": ui.table(evaluation_summary(results)), "chart": ui.chart(png, "accuracy"),
            "items_preview": MetadataValue.md(evaluation_items_markdown(items, images) + (
                "" if images else "\n\n(thumbnails: only for the published RL test split)")),
            "results": MetadataValue.path(storage.relative(out / "results.json"))}


def _rl_test_images(storage: ThymeStorage, split: str) -> dict:
    """id -> image files of the RL split the default benchmark was published from."""
    import pyarrow.parquet as pq

    path = storage.path("splits", "rl", f"{split}.parquet")
    if not path.is_file():
        return {}
    rows = pq.read_table(path, columns=["id", "images"]).to_pylist()
    return {r["id"]: [storage.path("pool", p) for p in r["images"]] for r in rows}


EVALUATION_ASSETS = [_evaluation_asset("sft_stage2"), _evaluation_asset("grpo_ats")]
