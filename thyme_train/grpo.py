"""GRPO-ATS: TRL's `GRPOTrainer` with the Thyme rollout loop (sandbox in the loop, adaptive
temperature, repetition stop, turn cap) as its `rollout_func`, and the accuracy / format /
consistency rewards.

    python -m thyme_train.grpo --config thyme_train/configs/rl.yaml [--set key=value ...]
    accelerate launch --config_file ... -m thyme_train.grpo --config rl.yaml    # multi-GPU

The prompts come from thyme_train.rl_data (a published RL dataset, a released Thyme-RL or
DeepEyes parquet, a JSONL / parquet file of simple rows); each row carries all its image files,
which the rollout hands to the sandbox. A sample of each logged step's rollouts is written to
`rollouts.jsonl` (thyme_train.rollout_log).

What TRL's hooks cover (TRL 1.16): `rollout_func` returns prompt/completion ids, log-probs and
`env_mask` (0 = sandbox tokens: no loss), and extra fields that reach the reward functions
(`sandbox_texts`). Images the sandbox produced inside a completion are not covered: the one
override of a private TRL method, in thyme_train.trl_adapter (with strict resume). Per-token
temperatures: TRL's loss knows none; `code_token_loss: mask` removes greedy code tokens through
`env_mask` (see RolloutConfig). The k3 KL estimator is TRL's (beta > 0).

Rollout statistics are logged through the `log_metric` TRL hands every reward function:
tool-call rate, execution success, code calls / images / turns per rollout, end-reason shares,
sandbox tokens, and a warning (plus `thyme/tool_collapse` = 1) when the tool-call rate falls below
`tool_collapse_fraction` of its early value; beside them the answer-collapse statistics and their
warning (thyme_train.collapse, with the remedies' settings; dynamic sampling in
thyme_train.dynamic_sampling). Every logged record goes to `metrics.jsonl` and the curves of the
rewards, of tool use and of answer collapse are redrawn as PNGs in `output_dir` at every save and
at the end (thyme_train.plots); `metrics.json`, written last, marks a finished run. The model
folder and each checkpoint record the prompts the rows were rendered with (`prompt_set.yaml`,
thyme_train.rl_data.rows_prompt_set): evaluate and infer ask the policy with them by default.
The config, every field documented: GRPOATSConfig (thyme_train.grpo_config).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from thyme_train.collapse import (
    AnswerCollapseMonitor,
    ToolUseMonitor,
    answer_token_entropy,
    untruncated,
)
from thyme_train.config import parse_config
from thyme_train.grpo_config import GRPOATSConfig
from thyme_train.rollout import END_REASONS

log = logging.getLogger("thyme_train.grpo")


# ---------------------------------------------------------------------------------------------
# Rollouts as TRL's rollout_func, with their statistics
# ---------------------------------------------------------------------------------------------

def rollout_statistics(rollouts) -> dict[str, float]:
    """Batch statistics of a list of `Rollout`s (the `thyme/...` metrics)."""
    n = max(len(rollouts), 1)
    calls = sum(r.code_calls for r in rollouts)
    stats = {
        "thyme/tool_call_rate": sum(r.code_calls > 0 for r in rollouts) / n,
        "thyme/code_calls_per_rollout": calls / n,
        "thyme/exec_success": (calls - sum(r.code_errors for r in rollouts)) / calls if calls else 0.0,
        "thyme/images_per_rollout": sum(r.sandbox_image_count for r in rollouts) / n,
        "thyme/turns_per_rollout": sum(r.turns for r in rollouts) / n,
        "thyme/model_tokens": sum(sum(r.env_mask) for r in rollouts) / n,
        "thyme/sandbox_tokens": sum(len(r.env_mask) - sum(r.env_mask) for r in rollouts) / n,
    }
    for reason in END_REASONS:
        stats[f"thyme/end/{reason}"] = sum(r.end_reason == reason for r in rollouts) / n
    return stats


def isolation_metrics(sandbox) -> dict[str, float]:
    """`thyme/sandbox/<mechanism>`: 1 when it confined this batch's code, 0 when it was missing
    (the sandbox ran under a weaker isolation policy)."""
    from sandbox.policy import MECHANISMS

    report = getattr(sandbox, "isolation_report", None)
    if report is None:  # a stand-in sandbox (tests) reports nothing
        return {}
    return {f"thyme/sandbox/{m}": float(m in report["active"]) for m in MECHANISMS}


class ThymeRolloutFunc:
    """TRL's `rollout_func(prompts, trainer)`: one Thyme rollout per prompt entry (TRL already
    repeats each prompt G times), with the sandbox in the loop, on the configured engine
    (thyme_train.rollout_engines: synced to the policy before each batch). Each prompt's image
    parts carry the row's image files (TRL fills them from the `images` column)."""

    def __init__(self, config: GRPOATSConfig, processor, sandbox, force=None, rollout_log=None,
                 model_path: str = ""):
        from thyme_train.engine import ChatCodec

        self.config, self.processor, self.sandbox = config, processor, sandbox
        self.force = force                # a scripted policy (tests, demos): see RolloutRunner.run
        self.rollout_log = rollout_log    # thyme_train.rollout_log.RolloutLog, on the main process
        self.model_path = model_path      # what a colocated vLLM engine loads
        self.codec = ChatCodec(processor)
        self.monitor = ToolUseMonitor(config.tool_collapse_fraction, config.tool_collapse_early_steps)
        self.rollouts = None              # thyme_train.rollout_engines, built on the first batch
        self.runner = None
        self.statistics: dict[str, float] = {}   # the last batch's, until a reward function logs them
        self.prepared = None              # (rollouts, encoded) of a batch dynamic sampling built
        self.untruncated = False          # text sampled without top-p/top-k (collapse remedy)
        self.rollout_seconds = 0.0

    def __call__(self, prompts: list, trainer) -> dict:
        if self.prepared is not None:
            (rollouts, encoded), self.prepared = self.prepared, None
            if len(rollouts) != len(prompts):
                raise RuntimeError(f"dynamic sampling prepared {len(rollouts)} rollouts for a batch "
                                   f"of {len(prompts)} prompts")
        else:
            rollouts, encoded = self.run(prompts, trainer)
        return self.package(rollouts, encoded)

    def run(self, prompts: list, trainer) -> tuple[list, list]:
        """The rollouts of `prompts` (TRL's message lists) and their encoded prompts."""
        import time

        from thyme_train.rollout import RolloutRunner
        from thyme_train.rollout_engines import build_rollouts

        cfg = self.config
        encoded = [self.codec.prompt(messages) for messages in prompts]
        step = trainer.state.global_step + 1
        samples = self.rollout_log if trainer.accelerator.is_main_process else None
        if self.rollouts is None:
            self.rollouts = build_rollouts(cfg, self.processor, trainer, self.model_path)
        started = time.perf_counter()
        with self.rollouts.session(trainer) as engine:
            if self.untruncated:
                engine.sampling = untruncated(engine.sampling)
            if self.runner is None:
                rollout_cfg = cfg.rollout()
                rollout_cfg.seed = cfg.seed * 1000 + trainer.accelerator.process_index
                self.runner = RolloutRunner(engine, self.codec, self.sandbox, rollout_cfg)
            self.runner.engine = engine
            rollouts = self.runner.run(encoded, force=self.force,
                                       on_event=samples.watch(step) if samples else None)
        self.rollout_seconds += time.perf_counter() - started
        if all(r.end_reason == "engine_error" for r in rollouts):
            raise RuntimeError(f"the rollout engine failed every sample of the batch: {rollouts[0].error}")
        for r in rollouts:
            if not r.completion_ids:     # broke before its first token (unscorable, see rewards):
                r.append_environment([self.codec.tokenizer.eos_token_id])   # TRL needs one token
        if samples is not None:
            samples.collect(step, prompts, rollouts, self.codec)
        return rollouts, encoded

    def package(self, rollouts: list, encoded: list) -> dict:
        """TRL's rollout_func output for a batch, its statistics kept for logging."""
        cfg = self.config
        stats = rollout_statistics(rollouts)
        timings = self.rollouts.timings
        stats["thyme/time/rollout_s"], self.rollout_seconds = self.rollout_seconds, 0.0
        stats["thyme/time/generate_s"] = timings.get("generate", 0.0)
        stats["thyme/time/weight_sync_s"] = timings.get("sync", 0.0)
        stats.update(behaviour_statistics(rollouts))
        decode = self.codec.tokenizer.decode
        # the policy's log-probs; where the engine reports none (vLLM's processed mode), the
        # behaviour's: then the estimate is of the sampling distribution's entropy
        entropies = [e for r in rollouts if (e := answer_token_entropy(
            r.completion_ids, [p if p == p else b for p, b in zip(r.logprobs, r.behaviour_logprobs, strict=True)],
            r.env_mask, decode)) is not None]
        stats["thyme/collapse/answer_token_entropy"] = (sum(entropies) / len(entropies)
                                                        if entropies else float("nan"))
        stats["thyme/untruncated_sampling"] = float(self.untruncated)
        warning = self.monitor.record(stats["thyme/tool_call_rate"])
        stats["thyme/tool_collapse"] = float(warning is not None)
        stats.update(isolation_metrics(self.sandbox))
        if warning:
            log.warning(warning)
        self.statistics = stats
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            # what TRL's importance-sampling correction reads (Rollout.sampling_logprobs)
            "logprobs": [r.sampling_logprobs(cfg.code_token_loss) for r in rollouts],
            "env_mask": [r.loss_mask(cfg.code_token_loss) for r in rollouts],
            "sandbox_texts": [r.sandbox_texts for r in rollouts],
            "sandbox_image_count": [r.sandbox_image_count for r in rollouts],
            "model_tokens": [sum(r.env_mask) for r in rollouts],
            "end_reason": [r.end_reason for r in rollouts],
            "rollout_images": [r.images for r in rollouts],          # read by trl_adapter
            "prompt_image_count": [len(p.images) for p in encoded],
        }


def behaviour_statistics(rollouts) -> dict[str, float]:
    """Shares of the model's tokens that were greedy code, and of the sampled ones the engine
    gave no behaviour log-prob (NaN: TRL leaves those uncorrected)."""
    model = greedy = unscored = 0
    for r in rollouts:
        for m, code, t, lp in zip(r.env_mask, r.in_code, r.temperatures, r.behaviour_logprobs,
                                  strict=True):
            if m:
                model += 1
                greedy += bool(code and t == 0.0)
                unscored += not (code and t == 0.0) and lp != lp
    n = max(model, 1)
    return {"thyme/tokens/greedy_code_share": greedy / n, "thyme/tokens/no_behaviour_logprob_share": unscored / n}


class LoggingRolloutStatistics:
    """A reward function that first logs the rollout statistics of its batch through the
    `log_metric` TRL hands reward functions (the public way to add metrics; `rollout_func` is
    given none), then scores as the function it wraps (whose name TRL logs it under: the
    accuracy). With prompt sampling, the batch's accuracies (every process's) update each
    prompt's success rate (the dataset's `prompt_index` column names the prompt). The batch's
    answers and accuracies (every process's, in TRL's group layout) give the answer-collapse
    statistics and warning (thyme_train.collapse); with `untruncated_sampling_on_collapse`, the
    warning switches the rollouts to untruncated text sampling."""

    def __init__(self, reward, rollout_func: ThymeRolloutFunc, sampling=None, gather=None,
                 dynamic_sampling=None):
        self.reward, self.rollout_func = reward, rollout_func
        self.sampling, self.gather = sampling, gather or ProcessGather()
        self.dynamic_sampling = dynamic_sampling
        cfg = rollout_func.config
        self.collapse = AnswerCollapseMonitor(cfg)
        self.untruncate_on_collapse = cfg.untruncated_sampling_on_collapse
        self.group_size = cfg.num_generations
        self.batches = 0
        self.__name__ = reward.__name__

    def __call__(self, completions, log_metric=None, **kwargs):
        from pipelines.core.answers import extract
        from thyme_train.collapse import group_statistics

        statistics, self.rollout_func.statistics = self.rollout_func.statistics, {}
        scores = self.reward(completions, log_metric=log_metric, **kwargs)
        if self.sampling is not None:
            batch, _ = self.gather(list(zip(kwargs["prompt_index"], scores, strict=True)))
            self.sampling.record([i for i, _ in batch], [score for _, score in batch])
            statistics.update(self.sampling.statistics())
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        batch, _ = self.gather([(extract(t).text, a) for t, a in zip(texts, scores, strict=True)])
        statistics.update(group_statistics([g for g, _ in batch], [a for _, a in batch], self.group_size))
        self.batches += 1
        state = kwargs.get("trainer_state")    # the step this batch trains (TRL logs it under)
        step = state.global_step + 1 if state is not None else self.batches
        warning = self.collapse.record(step, statistics)
        del statistics["thyme/collapse/accuracy"]          # TRL logs the accuracy reward itself
        statistics["thyme/answer_collapse"] = float(warning is not None)
        if warning:
            statistics["thyme/answer_collapse_since"] = float(self.collapse.since)
            log.warning(warning)
            if self.untruncate_on_collapse and not self.rollout_func.untruncated:
                log.warning("answer collapse: text is sampled without top-p/top-k truncation from "
                            "the next batch on (untruncated_sampling_on_collapse)")
                self.rollout_func.untruncated = True
        if self.dynamic_sampling is not None:
            statistics.update(self.dynamic_sampling.statistics)
        if log_metric is not None:
            for name, value in statistics.items():
                log_metric(name, value)
        return scores


class ProcessGather:
    """`gather(local list) -> (the whole batch's list in process order, this process's offset)`
    over the trainer's processes (the order TRL gathers rewards in); set `accelerator` once the
    trainer exists."""

    def __init__(self):
        self.accelerator = None

    def __call__(self, local: list) -> tuple[list, int]:
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return list(local), 0
        from accelerate.utils import gather_object

        parts = gather_object([list(local)])
        offset = sum(len(part) for part in parts[:self.accelerator.process_index])
        return [item for part in parts for item in part], offset


SAMPLING_STATE = "thyme_prompt_sampling.json"


def _sampling_callback(sampling):
    """Saves the prompt-sampling state into each checkpoint (restored on resume)."""
    from transformers import TrainerCallback

    from pipelines.core.atomic import write_json

    class SamplingState(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_json(folder / SAMPLING_STATE, sampling.state_dict())

    return SamplingState()


def _metrics_callback(out_dir: str):
    from transformers import TrainerCallback

    from thyme_train.plots import save_curves

    class MetricsCallback(TrainerCallback):
        """Appends every log record to metrics.jsonl and redraws the curves on save/end."""

        def __init__(self):
            self.records: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, **{k: v for k, v in logs.items()
                                                    if isinstance(v, int | float)}}
            self.records.append(record)
            with open(Path(out_dir) / "metrics.jsonl", "a") as f:   # a log: appended line by line
                f.write(json.dumps(record) + "\n")

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.records:
                save_curves(self.records, out_dir)

        def on_train_end(self, args, state, control, **kwargs):
            self.on_save(args, state, control)

    return MetricsCallback()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def trl_args(cfg: GRPOATSConfig, rewards):
    """TRL's GRPOConfig for our config (`rewards`: the ThymeRewards whose weights TRL applies)."""
    from trl import GRPOConfig

    from thyme_train.config import trainer_arguments

    correct = cfg.importance_sampling != "off"
    return GRPOConfig(
        **trainer_arguments(cfg), num_generations=cfg.num_generations,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_rate},
        beta=cfg.beta, loss_type=cfg.loss_type, shuffle_dataset=cfg.shuffle_dataset,
        max_completion_length=cfg.max_total_tokens, reward_weights=rewards.weights(),
        scale_rewards="group",
        # the policy's log-probs at the text temperature, as the text was sampled
        temperature=cfg.temperature_text if cfg.temperature_text > 0 else 1.0,
        # TRL's correction on our engines' behaviour log-probs (thyme_train.trl_adapter, 2)
        vllm_importance_sampling_correction=correct,
        vllm_importance_sampling_mode=cfg.importance_sampling if correct else "token_truncate",
        vllm_importance_sampling_clip_max=cfg.importance_sampling_cap,
        vllm_importance_sampling_clip_min=cfg.importance_sampling_floor,
        # the collapse remedies TRL has (clip-higher, entropy bonus and floor; thyme_train.collapse)
        **cfg.trl_fields(),
    )


def train(cfg: GRPOATSConfig, force=None, callbacks: list | None = None):
    """Run GRPO-ATS; returns the trainer (its state holds the log history). `force`: a scripted
    policy for tests and demos (RolloutRunner.run); `callbacks`: extra `TrainerCallback`s."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pipelines.core.atomic import write_json
    from pipelines.core.prompts import record_prompt_set
    from sandbox.client import open_sandbox
    from thyme_train.config import prompt_set_callback, resume_checkpoint
    from thyme_train.dynamic_sampling import DynamicSampling
    from thyme_train.freezing import freeze
    from thyme_train.rewards import Judge, ThymeRewards
    from thyme_train.rl_data import data_report, load_rl_rows, rl_dataset, rows_prompt_set
    from thyme_train.rollout_log import RolloutLog
    from thyme_train.sampling import PromptSampling
    from thyme_train.tiny import resolve_model
    from thyme_train.trl_adapter import grpo_trainer_class

    if not cfg.model or not cfg.data:
        raise ValueError("set `model` and `data` (in the YAML or with --set)")
    out = Path(cfg.output_dir)
    write_json(out / "grpo_config.json", asdict(cfg), indent=1)
    model_path = resolve_model(cfg.model)
    processor = AutoProcessor.from_pretrained(model_path)
    if cfg.max_pixels is not None:
        processor.image_processor.size["longest_edge"] = cfg.max_pixels

    judge = None
    if cfg.judge_base_url:
        from pipelines.core.llm import LLMClient, LLMConfig
        judge = Judge(LLMClient(LLMConfig(base_url=cfg.judge_base_url, model=cfg.judge_model,
                                          cache_dir=cfg.judge_cache_dir)), cfg.judge_max_calls)
    gather = ProcessGather()
    rewards = ThymeRewards(cfg.rewards(), judge, group_size=cfg.num_generations, gather=gather)
    args = trl_args(cfg, rewards)
    quarantine = [] if cfg.skip_bad_rows else None
    with args.main_process_first(desc="RL prompts"):     # the others read its prepared rows
        rows = load_rl_rows(cfg.data, cfg.data_split, cfg.prompt_set, quarantine=quarantine,
                            cache_dir=cfg.data_cache_dir or out / "rl_data" / "cache")
    data_counts = data_report(rows, quarantine, out / "rl_data")
    trained_prompts = rows_prompt_set(cfg.data, cfg.data_split, cfg.prompt_set)
    dataset = rl_dataset(rows)
    if "prompt_index" not in dataset.column_names:      # names the prompt to prompt sampling
        dataset = dataset.add_column("prompt_index", list(range(len(dataset))))
    sampling = PromptSampling.from_config(dataset, cfg, cfg.seed) if cfg.samples_prompts else None
    model = AutoModelForImageTextToText.from_pretrained(model_path)
    if cfg.freeze_vision_tower or cfg.freeze_merger:
        log.info("parameters: %s", freeze(model, cfg.freeze_vision_tower, cfg.freeze_merger))
    Trainer = grpo_trainer_class()
    with open_sandbox(cfg.sandbox_url, cfg.sandbox_token_file, timeout=cfg.sandbox_timeout,
                      workers=cfg.sandbox_workers, isolation=cfg.sandbox_isolation) as sandbox:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        rollout_log = RolloutLog(out, cfg.rollout_samples, cfg.logging_steps, rewards.weights(), cfg.seed)
        rollout_func = ThymeRolloutFunc(cfg, processor, sandbox, force, rollout_log, model_path)
        dynamic = (DynamicSampling(dataset, rollout_func, cfg.num_generations,
                                   cfg.dynamic_sampling_max_rounds, cfg.seed, cfg.numeric_tolerance,
                                   judged=judge is not None and cfg.judge_accuracy)
                   if cfg.dynamic_sampling else None)
        first, *others = rewards.reward_funcs()
        own_callbacks = [_metrics_callback(str(out)), prompt_set_callback(trained_prompts)] \
            + ([_sampling_callback(sampling)] if sampling else [])
        trainer = Trainer(model=model, processing_class=processor, args=args,
                          reward_funcs=rollout_log.wrap([
                              LoggingRolloutStatistics(first, rollout_func, sampling, gather, dynamic),
                              *others]),
                          train_dataset=dataset, rollout_func=rollout_func, prompt_sampling=sampling,
                          dynamic_sampling=dynamic,
                          callbacks=[*own_callbacks, *(callbacks or [])])
        gather.accelerator = trainer.accelerator
        resume = resume_checkpoint(cfg.resume, out)
        if resume:
            log.info("resuming from %s", resume)
            if sampling is not None and (Path(resume) / SAMPLING_STATE).is_file():
                sampling.load_state_dict(json.loads((Path(resume) / SAMPLING_STATE).read_text()))
        if trainer.is_world_process_zero():
            rollout_log.restart(resume)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            processor.save_pretrained(str(out))
            record_prompt_set(trained_prompts, out)   # evaluate and infer's default prompts
            summary = run_summary(trainer.state.log_history, trainer.state.global_step)
            summary["resumed_from"] = os.path.relpath(resume, out) if resume else None
            summary["data"] = data_counts
            summary["prompt_set"] = trained_prompts.name
            summary["sandbox_isolation"] = sandbox.isolation_report
            write_json(out / "metrics.json", summary, indent=1)
    return trainer


def run_summary(history: list[dict], steps: int) -> dict:
    """The run in a few numbers: steps, first and last reward and tool-call rate, end reasons,
    the collapse warnings (tool use; answers, with the step the first answer collapse started)."""
    def series(key):
        return [r[key] for r in history if key in r]

    def mean(values):
        return sum(values) / len(values) if values else None

    rewards, tools = series("reward"), series("thyme/tool_call_rate")
    k = max(1, len(rewards) // 4)
    return {
        "steps": steps,
        "reward_first_quarter": mean(rewards[:k]), "reward_last_quarter": mean(rewards[-k:]),
        "tool_call_rate_first": tools[0] if tools else None,
        "tool_call_rate_last": tools[-1] if tools else None,
        "tool_collapse_warnings": int(sum(series("thyme/tool_collapse"))),
        "answer_collapse_warnings": int(sum(series("thyme/answer_collapse"))),
        "answer_collapse_since": int(series("thyme/answer_collapse_since")[0])
                                 if series("thyme/answer_collapse_since") else None,
        "zero_variance_groups_last": (series("thyme/collapse/zero_variance_groups") or [None])[-1],
        "answer_agreement_last": (series("thyme/collapse/answer_agreement") or [None])[-1],
        "end_reasons_last": {reason: series(f"thyme/end/{reason}")[-1]
                             for reason in END_REASONS if series(f"thyme/end/{reason}")},
        "rewards_last": {name: series(f"rewards/{name}/mean")[-1] for name in
                         ("accuracy_reward", "format_reward", "consistency_reward")
                         if series(f"rewards/{name}/mean")},
    }


def materialization_metadata(out: Path, summary: dict) -> dict:
    """What the Dagster `grpo_ats` asset records: checkpoint, the run summary (the curve PNGs are
    embedded by the launching asset: a long Pipes line can be read half-written)."""
    meta = {"checkpoint": {"raw_value": os.path.relpath(out), "type": "path"},
            "summary": {"raw_value": summary, "type": "json"}}
    if summary.get("sandbox_isolation"):
        meta["sandbox_isolation"] = {"raw_value": summary["sandbox_isolation"], "type": "json"}
    for key in ("steps", "tool_collapse_warnings", "answer_collapse_warnings"):
        meta[key] = {"raw_value": summary.get(key, 0), "type": "int"}
    since = summary.get("answer_collapse_since")
    meta["answer_collapse_since"] = {"raw_value": since, "type": "null" if since is None else "int"}
    for key in ("reward_first_quarter", "reward_last_quarter"):
        value = summary.get(key)
        meta[key] = {"raw_value": value, "type": "null" if value is None else "float"}
    return meta


def main(argv: list[str] | None = None) -> None:
    from thyme_train.pipes import launched_process, log_callback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with launched_process() as pipes:
        cfg = parse_config(GRPOATSConfig, argv, description=__doc__.split("\n\n")[0])
        trainer = train(cfg, callbacks=[log_callback(pipes)] if pipes else [])
        out = Path(cfg.output_dir)
        if pipes is not None and trainer.is_world_process_zero():
            summary = json.loads((out / "metrics.json").read_text())
            pipes.report_asset_materialization(metadata=materialization_metadata(out, summary))


if __name__ == "__main__":
    main()
