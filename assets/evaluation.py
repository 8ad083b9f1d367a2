"""Evaluation of each trained checkpoint, one partition per benchmark, with the sandbox, prompts
and rollout loop of training, as its own process (Dagster Pipes):

    training/sft_stage2 -> evaluation/sft_stage2_scores    training/grpo_ats -> evaluation/grpo_ats_scores

Partitions (`benchmarks`): `heldout` (the published RL dataset's held-out split) and every
benchmark listed in a benchmarks file: `$THYME_BENCHMARKS`, else `<data>/benchmarks/
benchmarks.yaml` when it exists; each entry a name and a file (relative to the YAML file):

    vstar: VStarBench.tsv                          # the kind read from the name
    hrbench4k: {path: hr_bench_4k.tsv, kind: hrbench}

The prompts are those the checkpoint was trained with: the set its folder records
(`prompt_set.yaml`, written by SFT and GRPO; a training run that overrode the dataset's set
recorded the override), else the set its published dataset records (thyme-sft for SFT stage 2,
thyme-rl for GRPO-ATS); `prompt_set` overrides both, with a warning when it differs from the
dataset's. A new checkpoint is
evaluated on every partition automatically (eager). Each materialization
records the benchmark's score with its confidence interval, with and without tools (the
ablation), tool use, the markdown report, a table of every metric and the bar chart. The work
is `python -m thyme_train.evaluate` (docs/evaluation.md).
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

import json
import os
import re
import sys
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    StaticPartitionsDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from assets import ui
from assets.resources import SandboxResource, ThymeStorage
from assets.training import RL_DATASET, SFT_DATASET, choose_prompt_set, launch
from pipelines.core.prompts import FROM_DATASET, RECORD_FILE

HELDOUT = "heldout"
BENCHMARKS_ENV = "THYME_BENCHMARKS"


def benchmarks_file() -> Path | None:
    """The benchmarks file: $THYME_BENCHMARKS, else <data>/benchmarks/benchmarks.yaml if any."""
    if os.environ.get(BENCHMARKS_ENV):
        return Path(os.environ[BENCHMARKS_ENV])
    try:
        path = ThymeStorage().path("benchmarks", "benchmarks.yaml")
    except RuntimeError:                  # no DAGSTER_HOME / THYME_DATA: no data root to look in
        return None
    return path if path.is_file() else None


def configured_benchmarks() -> dict[str, dict]:
    """name -> {"path": absolute file, "kind": kind or ""} from the benchmarks file; a broken
    file fails loudly, naming the file and the entry."""
    path = benchmarks_file()
    if path is None:
        return {}
    import yaml

    if not path.is_file():
        raise ValueError(f"{BENCHMARKS_ENV}={path}: no such file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of benchmark names to files")
    out = {}
    for name, entry in data.items():
        entry = {"path": entry} if isinstance(entry, str) else entry
        if not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", str(name)) or name == HELDOUT:
            raise ValueError(f"{path}: benchmark name {name!r}: letters, digits, '.', '_', '+', "
                             f"'-' (and not {HELDOUT!r}, the held-out split's)")
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"{path}: {name}: give a file, or {{path: FILE, kind: KIND}}")
        out[str(name)] = {"path": str((path.parent / entry["path"]).resolve()),
                          "kind": str(entry.get("kind") or "")}
    return out


BENCHMARKS = configured_benchmarks()
benchmarks = StaticPartitionsDefinition([HELDOUT, *BENCHMARKS])


class EvaluationConfig(Config):
    benchmark: str = Field(
        "", description="override this partition's file (a VLMEvalKit .tsv, V*'s vstar_bench "
                        "folder, a .jsonl or a published dataset directory); empty: the partition's")
    split: str = Field("test", description="split of a published dataset")
    limit: int = Field(0, description="evaluate at most this many items (0: all)")
    prompt_set: str = Field("", description="empty: the set the published datasets record (the "
                            "one the checkpoints' data was rendered with); or thyme, thyme-release "
                            "(a released checkpoint's prompts), a YAML file or from:<dataset>")
    samples: int = Field(1, description="samples per item (Avg@k, pass@k); > 1 needs a temperature")
    temperature: float = Field(0.0, description="text temperature (0: greedy)")
    max_new_tokens: int = Field(2048, description="new tokens per generation call")
    on_code_error: str = Field("rollback", description="rollback (the original evaluation) or show")
    ablation: bool = Field(True, description="also answer with tools disabled")
    engine: str = Field("hf", description="hf or vllm")
    servers: list[str] = Field([], description="vLLM servers' URLs (engine vllm): the items are "
                                               "shared over them")
    judge_model: str = Field("", description="an OpenAI-compatible judge for open answers no "
                                             "rule decides (empty: none)")
    judge_url: str = Field("http://127.0.0.1:8000/v1", description="the judge's base URL")


def _evaluation_asset(checkpoint: str):
    upstream = AssetKey(["training", checkpoint])
    # the published dataset the checkpoint was last trained on: its prompts are the model's
    trained_on = (SFT_DATASET, "thyme-sft") if checkpoint == "sft_stage2" else (RL_DATASET, "thyme-rl")

    @asset(name=f"{checkpoint}_scores", key_prefix="evaluation", group_name="evaluation",
           kinds={"python", "pytorch"}, deps=[upstream, RL_DATASET], partitions_def=benchmarks,
           automation_condition=AutomationCondition.eager(),
           description=f"The {checkpoint} checkpoint on one benchmark per partition (the held-out "
                       f"RL split, and the configured benchmarks): its own metrics with confidence "
                       f"intervals, with and without tools, and tool use, with the same sandbox, "
                       f"prompts and rollout loop as training.")
    def _evaluate(context: AssetExecutionContext, config: EvaluationConfig, storage: ThymeStorage,
                  sandbox: SandboxResource,
                  pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
        model = storage.path("checkpoints", *(("sft", "stage2") if checkpoint == "sft_stage2"
                                              else ("grpo_ats",)))
        if not (model / "config.json").is_file():
            raise Failure(description=f"no model at {storage.relative(model)}: materialize "
                                      f"{upstream.to_user_string()} first")
        name = context.partition_key
        spec = config.benchmark or (BENCHMARKS[name]["path"] if name in BENCHMARKS
                                    else str(storage.path("published", "thyme-rl")))
        kind = BENCHMARKS.get(name, {}).get("kind", "")
        out = storage.path("evaluation", checkpoint)
        # the checkpoint's own record first: a training override is what the model learnt
        own = f"{FROM_DATASET}{model}" if (model / RECORD_FILE).is_file() else None
        prompt_set, prompt_meta = choose_prompt_set(context, storage, *trained_on,
                                                    config.prompt_set or own,
                                                    parts=("system", "user", "user_text"))
        prompt_meta["prompt_set_source"] = MetadataValue.text(
            "config" if config.prompt_set else "checkpoint" if own else "dataset")
        command = [sys.executable, "-m", "thyme_train.evaluate", "--model", str(model),
                   "--benchmark", f"{name}{':' + kind if kind else ''}={spec}", "--split", config.split,
                   "--out", str(out), "--max-new-tokens", str(config.max_new_tokens),
                   "--engine", config.engine, "--on-code-error", config.on_code_error,
                   "--prompt-set", prompt_set, "--samples", str(config.samples),
                   "--temperature", str(config.temperature)]
        command += [a for url in config.servers for a in ("--server", url)]
        if config.judge_model:
            command += ["--judge-model", config.judge_model, "--judge-url", config.judge_url]
        if config.limit:
            command += ["--limit", str(config.limit)]
        if not config.ablation:
            command.append("--no-ablation")
        if sandbox.isolation is not None:
            command += ["--sandbox-isolation", sandbox.isolation]
        result = launch(context, pipes_subprocess_client, command,
                        storage.path("evaluation", f".{checkpoint}-{name}-error.json"),
                        f"evaluation of {checkpoint} on {name}")
        images = {} if config.benchmark or name in BENCHMARKS else _rl_test_images(storage, config.split)
        # the trainer's markdown `report` is replaced by the same numbers as tables
        metadata = {k: v for k, v in (result.metadata or {}).items() if k != "report"}
        settings = json.loads((out / name / "results.json").read_text()).get("settings", {})
        metadata["sandbox_isolation"] = MetadataValue.json(settings.get("sandbox_isolation", []))
        return result._replace(metadata={**metadata, **prompt_meta,
                                         "metrics": metrics_table(out / name / "results.json"),
                                         **_report(storage, out / name, f"{checkpoint}_{name}", images)})

    return _evaluate


def _report(storage: ThymeStorage, out, checkpoint: str, images: dict) -> dict:
    """The evaluation as tables and a labelled chart, from its results.json."""

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
                       f"{checkpoint}: score with and without tools", "score")
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


def metrics_table(results: Path) -> MetadataValue:
    """Every metric of the benchmark, per mode: Avg@k, its interval, pass@k (results.json)."""
    summaries = json.loads(results.read_text())["summaries"]
    pct = (lambda v: None if v is None else round(100 * v, 2))   # noqa: E731
    rows = [TableRecord({"mode": mode, "metric": name, "score": pct(m["avg"]),
                         "ci_low": pct(m["ci"][0]), "ci_high": pct(m["ci"][1]),
                         "pass_at_k": pct(m["pass"]), "items": s["items"], "samples": s["samples"]})
            for mode, s in summaries.items() for name, m in s["metrics"].items()]
    schema = TableSchema(columns=[
        TableColumn("mode", "string"), TableColumn("metric", "string"),
        TableColumn("score", "float", description="Avg@k, percent"),
        TableColumn("ci_low", "float", description="95% bootstrap interval, percent"),
        TableColumn("ci_high", "float"), TableColumn("pass_at_k", "float"),
        TableColumn("items", "int"), TableColumn("samples", "int")])
    return MetadataValue.table(rows, schema=schema)


EVALUATION_ASSETS = [_evaluation_asset("sft_stage2"), _evaluation_asset("grpo_ats")]
