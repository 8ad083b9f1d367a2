"""SFT stage 1 and stage 2 (DESIGN.md §5), each launched as its own process through Dagster
Pipes, never inside the Dagster process:

    datasets/thyme_sft -> training/sft_stage1 -> training/sft_stage2

The trainer (`python -m thyme_train.sft`, or under torchrun / accelerate / deepspeed) streams its
log lines and its loss at every logged step into the run, and reports the checkpoint, the final
and best loss, the steps, the samples dropped, the loss curve and the dataset version it trained
on. A failed run fails the asset with the trainer's own error.

The prompt set is the published dataset's: SFT gets `prompt_set=from:<data/published/thyme-sft>`
(the set its rows were rendered with, `pipelines.core.prompts`), GRPO keeps each RL row's own
messages. A `prompt_set` in `overrides` or the config file wins; one that differs from the
dataset's set is a warning in the run's log and the metadata (`prompt_set_warning`).
(No `from __future__ import annotations` here: Dagster reads the config annotations.)
"""

import importlib.util
import json
import sys
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from assets.pipes_reader import WholeLineTempFileMessageReader
from assets.resources import SandboxResource, ThymeStorage
from assets.ui import chart

SFT_DATASET = AssetKey(["datasets", "thyme_sft"])
ERROR_FILE_ENV = "THYME_TRAIN_ERROR_FILE"  # = thyme_train.pipes.ERROR_FILE_ENV (kept import-free)


class SFTStageConfig(Config):
    config_file: str = Field(
        "stage1_tiny.yaml",
        description="the stage's YAML for thyme_train.sft: an absolute path or the name of a "
                    "config shipped in thyme_train/configs (stage1.yaml / stage2.yaml are the "
                    "GPU recipes)")
    model: str = Field(
        "tiny", description="stage 1's base model: 'tiny' (the tiny Qwen2.5-VL, built under the "
                            "storage's models/tiny) or a hub id / local path. Stage 2 always "
                            "continues from stage 1's checkpoint")
    overrides: list[str] = Field(
        [], description="extra `key=value` settings for thyme_train.sft (its --set)")
    launcher: list[str] = Field(
        [], description="command placed before the module name: [] runs `python -m`; e.g. "
                        "['torchrun', '--nproc-per-node', '8', '-m'], ['accelerate', 'launch', "
                        "'-m'] or ['deepspeed', '--module']")


class SFTStage2Config(SFTStageConfig):
    config_file: str = Field(
        "stage2_tiny.yaml",
        description="the stage's YAML for thyme_train.sft: an absolute path or a shipped config's name")


def config_path(name: str) -> str:
    """A training config: an absolute path as given, else a file shipped in thyme_train/configs
    (found without importing thyme_train, which would load the training stack)."""
    if Path(name).is_absolute():
        return name
    shipped = Path(importlib.util.find_spec("thyme_train").origin).parent / "configs" / name
    if not shipped.is_file():
        raise Failure(description=f"config {name!r}: not an absolute path and not shipped in "
                                  f"thyme_train/configs ({sorted(p.name for p in shipped.parent.glob('*.yaml'))})")
    return str(shipped)


def explicit_setting(config_file: str, overrides: list[str], key: str) -> str | None:
    """A setting the user gave the launched process: the last `key=value` of `overrides`, else
    the config file's `key` (None when neither sets it, or sets it to null)."""
    import yaml

    data = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
    value = data.get(key) if isinstance(data, dict) else None
    for item in overrides:
        name, sep, raw = item.partition("=")
        if sep and name.strip() == key:
            value = None if raw.strip().lower() in ("", "null", "none", "~") else raw.strip()
    return None if value is None else str(value)


def choose_prompt_set(context: AssetExecutionContext, storage: ThymeStorage, dataset: AssetKey,
                      folder: str, explicit: str | None, parts: tuple[str, ...],
                      row_own: bool = False) -> tuple[str | None, dict]:
    """The prompt set a consumer of the published dataset `folder` uses, and its metadata: an
    explicit choice wins; else the set the dataset records, passed as `from:<folder>` (`row_own`:
    nothing is passed, the process keeps each row's own messages, which that set rendered); else
    (nothing recorded) the process's default. A choice whose `parts` (system, user, user_text)
    are not the recorded set's, or a dataset that records none, is a warning in the run's log
    and the metadata."""
    from pipelines.core.prompts import (
        DEFAULT_PROMPT_SET,
        FROM_DATASET,
        PromptSetError,
        load_prompt_set,
        prompt_set_differences,
        recorded_prompt_set,
    )

    where = storage.path("published", folder)
    try:
        recorded = recorded_prompt_set(where)
        chosen = load_prompt_set(explicit) if explicit else None
    except PromptSetError as exc:
        raise Failure(description=str(exc)) from None
    warning = None
    if chosen is not None:
        spec, name = explicit, chosen.name
        differ = prompt_set_differences(chosen, recorded, parts) if recorded else []
        if differ:
            warning = (f"prompt_set {explicit!r} overrides {recorded.name!r}, the set "
                       f"{dataset.to_user_string()} was rendered with: its {', '.join(differ)} "
                       f"differ, so the model sees other prompts than its data was made with")
    elif row_own:
        spec, name = None, "each row's own" + (f" ({recorded.name})" if recorded else "")
    elif recorded is not None:
        spec, name = f"{FROM_DATASET}{where}", recorded.name
    else:
        spec, name = DEFAULT_PROMPT_SET, DEFAULT_PROMPT_SET
        warning = (f"{dataset.to_user_string()} records no prompt set ({storage.relative(where)} "
                   f"was published before sets were recorded, or by hand): using "
                   f"{DEFAULT_PROMPT_SET!r}; rematerialize the splits and the dataset to record "
                   f"the set its rows were rendered with")
    metadata = {"prompt_set": MetadataValue.text(name),
                "prompt_set_of_dataset": MetadataValue.text(recorded.name if recorded else "(not recorded)")}
    if warning:
        context.log.warning(warning)
        metadata["prompt_set_warning"] = MetadataValue.text(warning)
    return spec, metadata


def _dataset_version(context: AssetExecutionContext) -> str:
    """The data version of the published SFT dataset's latest materialization, if any."""
    event = context.instance.get_latest_materialization_event(SFT_DATASET)
    if event is None:
        return ""
    mat = event.asset_materialization
    version = mat.tags.get("dagster/data_version") if mat and mat.tags else None
    return version or f"run:{event.run_id}"


def _launch(context: AssetExecutionContext, config: SFTStageConfig, storage: ThymeStorage,
            pipes_subprocess_client: PipesSubprocessClient, stage: str,
            model: str) -> MaterializeResult:
    out = storage.path("checkpoints", "sft", stage)
    error_file = storage.path("checkpoints", "sft", f".{stage}-error.json")
    config_file = config_path(config.config_file)
    prompt_set, prompt_meta = choose_prompt_set(
        context, storage, SFT_DATASET, "thyme-sft",
        explicit_setting(config_file, config.overrides, "prompt_set"), parts=("system",))
    settings = [f"data={storage.path('published', 'thyme-sft')}", f"output_dir={out}",
                f"model={model}", f"stage={stage}", f"cache_dir={storage.path('cache', 'hf')}",
                f"dataset_version={_dataset_version(context)}", f"prompt_set={prompt_set}",
                *config.overrides]
    prefix = config.launcher or [sys.executable, "-m"]
    command = [*prefix, "thyme_train.sft", "--config", config_file]
    for item in settings:
        command += ["--set", item]
    stale = out / "metrics.json"  # a finished run is never continued: a new one starts fresh
    if stale.is_file():
        command += ["--set", "resume=never"]
    result = launch(context, pipes_subprocess_client, command, error_file, f"SFT {stage}",
                    images={"loss_curve": out / "loss_curve.png"})
    from pipelines.core.reports import SFT_STEP_METRICS, sft_history

    records, source = sft_history(out)
    result = with_history(context, storage, result, out, records, source, SFT_STEP_METRICS,
                          {"curves_training": (f"SFT {stage}: per-step metrics", SFT_STEP_METRICS)})
    # the trainer names its files relative to its own working directory; show the data folder's
    return result._replace(metadata={**result.metadata, **prompt_meta, "loss_curve_file":
                                     MetadataValue.path(storage.relative(out / "loss_curve.png"))})


def with_history(context: AssetExecutionContext, storage: ThymeStorage, result: MaterializeResult,
                 out: Path, records: list[dict], source: str, observed: tuple[str, ...],
                 charts: dict[str, tuple[str, tuple[str, ...]]]) -> MaterializeResult:
    """Record a finished run's per-step history on the asset: one observation per logged step
    (thinned to 500) with the `observed` metrics, so Dagster's Plots show each one's curve, and
    a PNG per entry of `charts` (metadata name -> (title, metric names)) drawn from it. The
    checkpoint is shown relative to the data folder."""
    from pipelines.core.previews import line_charts
    from pipelines.core.reports import series, thin

    for record in thin(records):
        values = {n: float(record[n]) for n in observed if isinstance(record.get(n), int | float)}
        if values:
            context.log_event(AssetObservation(asset_key=context.asset_key,
                                               metadata={"step": int(record["step"]), **values}))
    meta = {"checkpoint": MetadataValue.path(storage.relative(out)),
            "history": MetadataValue.text(f"{len(records)} logged steps from {source}")}
    for name, (title, metrics) in charts.items():
        png = storage.path("reports", f"{context.asset_key.path[-1]}_{name}.png")
        meta[name] = chart(line_charts(series(records, metrics), png, title), name)
    return result._replace(metadata={**(result.metadata or {}), **meta})


def launch(context: AssetExecutionContext, client: PipesSubprocessClient, command: list[str],
           error_file, what: str, images: dict | None = None) -> MaterializeResult:
    """Run `command` as its own process through Pipes; a failure fails the asset with the
    process's own error (written to `error_file` by thyme_train.pipes.write_error). `images`
    (metadata name -> PNG path the process wrote) are embedded here, not sent through Pipes,
    whose messages are lines in a file that a reader can catch half-written when long."""
    error_file.unlink(missing_ok=True)
    context.log.info("launching: " + " ".join(command))
    try:
        invocation = client.run(context=context, command=command,
                                env={ERROR_FILE_ENV: str(error_file)})
    except Exception as exc:
        if not error_file.is_file():
            raise  # the process died before it could say why (killed, out of memory, ...)
        error = json.loads(error_file.read_text())
        raise Failure(description=f"{what} failed: {error['error']}",
                      metadata={"traceback": MetadataValue.text(error["traceback"])}) from exc
    result = invocation.get_materialize_result()
    if not result.metadata:
        raise Failure(description=f"{what} finished but its report never arrived through Pipes "
                                  f"(no metadata): see the run's logs")
    embedded = {name: chart(path, name) for name, path in (images or {}).items() if path.is_file()}
    return result._replace(metadata={**(result.metadata or {}), **embedded})


@asset(key_prefix="training", group_name="training", kinds={"python", "pytorch"},
       deps=[SFT_DATASET])
def sft_stage1(context: AssetExecutionContext, config: SFTStageConfig, storage: ThymeStorage,
               pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
    """SFT stage 1 on the single-round and 2round splits: sandbox outputs masked, only the last
    round of multi-round samples trained (THYME.md §4)."""
    model = config.model
    if model == "tiny":
        model = f"tiny:{storage.path('models', 'tiny')}"
    return _launch(context, config, storage, pipes_subprocess_client, "stage1", model)


@asset(key_prefix="training", group_name="training", kinds={"python", "pytorch"},
       deps=[SFT_DATASET, sft_stage1])
def sft_stage2(context: AssetExecutionContext, config: SFTStage2Config, storage: ThymeStorage,
               pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
    """SFT stage 2, computation annealing: stage 1's model on the computation split, rows with
    and without images in the same run."""
    stage1 = storage.path("checkpoints", "sft", "stage1")
    if not (stage1 / "config.json").is_file():
        raise Failure(description=f"stage 1's model is missing at {storage.relative(stage1)}: "
                                  f"materialize training/sft_stage1 first")
    return _launch(context, config, storage, pipes_subprocess_client, "stage2", str(stage1))


RL_DATASET = AssetKey(["datasets", "thyme_rl"])


class GRPOConfig(Config):
    config_file: str = Field(
        "rl_tiny.yaml",
        description="the YAML for thyme_train.grpo: an absolute path or a shipped config's name "
                    "(rl.yaml is the GPU recipe)")
    overrides: list[str] = Field([], description="extra `key=value` settings (its --set)")
    launcher: list[str] = Field(
        [], description="command placed before the module name: [] runs `python -m`; e.g. "
                        "['deepspeed', '--module'] with a ZeRO-3 config in overrides")


@asset(key_prefix="training", group_name="training", kinds={"python", "pytorch"},
       deps=[RL_DATASET, sft_stage2])
def grpo_ats(context: AssetExecutionContext, config: GRPOConfig, storage: ThymeStorage,
             sandbox: SandboxResource,
             pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
    """GRPO-ATS from SFT stage 2's model on the published RL prompts: rollouts with the sandbox
    in the loop, greedy code inside sampled text, repetition stop, accuracy/format/consistency
    rewards. Records the checkpoint, the reward, tool-use and answer-collapse curves and the run
    summary (with the tool- and answer-collapse warnings)."""
    stage2 = storage.path("checkpoints", "sft", "stage2")
    if not (stage2 / "config.json").is_file():
        raise Failure(description=f"SFT stage 2's model is missing at {storage.relative(stage2)}: "
                                  f"materialize training/sft_stage2 first")
    out = storage.path("checkpoints", "grpo_ats")
    config_file = config_path(config.config_file)
    # null (the default) keeps each row's own messages: those the dataset's set rendered
    _, prompt_meta = choose_prompt_set(
        context, storage, RL_DATASET, "thyme-rl",
        explicit_setting(config_file, config.overrides, "prompt_set"),
        parts=("system", "user", "user_text"), row_own=True)
    settings = [f"model={stage2}", f"data={storage.path('published', 'thyme-rl')}",
                f"output_dir={out}"]
    if sandbox.isolation is not None:  # (an override below still wins)
        settings.append(f"sandbox_isolation={sandbox.isolation}")
    settings += config.overrides
    if (out / "metrics.json").is_file():  # a finished run is never continued: start fresh
        settings.append("resume=never")
    command = [*(config.launcher or [sys.executable, "-m"]), "thyme_train.grpo",
               "--config", config_file]
    for item in settings:
        command += ["--set", item]
    result = launch(context, pipes_subprocess_client, command,
                    storage.path("checkpoints", ".grpo_ats-error.json"), "GRPO-ATS",
                    images={"curves_rewards": out / "curves_rewards.png",
                            "curves_tool_use": out / "curves_tool_use.png",
                            "curves_collapse": out / "curves_collapse.png"})
    from pipelines.core.reports import GRPO_OPTIMISER, GRPO_STEP_METRICS, grpo_history

    result = with_history(context, storage, result, out, grpo_history(out), "metrics.jsonl",
                          GRPO_STEP_METRICS,
                          {"curves_optimiser": ("GRPO-ATS: loss, KL, learning rate", GRPO_OPTIMISER)})
    return result._replace(metadata={**result.metadata, **prompt_meta})


TRAINING_ASSETS = [sft_stage1, sft_stage2, grpo_ats]
TRAINING_RESOURCES = {"pipes_subprocess_client": PipesSubprocessClient(
    message_reader=WholeLineTempFileMessageReader())}
