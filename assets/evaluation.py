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
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

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
        return launch(context, pipes_subprocess_client, command,
                      storage.path("evaluation", f".{checkpoint}-error.json"),
                      f"evaluation of {checkpoint}", images={"chart": out / "accuracy.png"})

    return _evaluate


EVALUATION_ASSETS = [_evaluation_asset("sft_stage2"), _evaluation_asset("grpo_ats")]
