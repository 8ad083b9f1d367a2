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
`tool_collapse_fraction` of its early value. Every logged record goes to `metrics.jsonl` and the
curves of the rewards and of tool use are redrawn as PNGs in `output_dir` at every save and at the
end (thyme_train.plots); `metrics.json`, written last, marks a finished run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from thyme_train.config import doc, parse_config
from thyme_train.rewards import RewardConfig
from thyme_train.rollout import END_REASONS, RolloutConfig

log = logging.getLogger("thyme_train.grpo")


@dataclass
class GRPOATSConfig(RolloutConfig, RewardConfig):
    """GRPO-ATS. Defaults are the paper's GPU schedule (THYME.md §4); rl_tiny.yaml shrinks it
    for the CPU. Rollout and reward fields are RolloutConfig's and RewardConfig's."""

    model: str = doc("policy checkpoint (the SFT stage-2 output) or a tiny model directory",
                     default="")
    data: str = doc("RL prompts: a published RL dataset directory (pipelines.datasets.publish), a "
                    "released Thyme-RL or DeepEyes parquet (or a folder of its shards), or a "
                    "JSONL / parquet file of simple rows (see thyme_train.rl_data)", default="")
    data_split: str = doc("split of a dataset directory to train on", default="train")
    prompt_set: str | None = doc(
        "null: each row keeps its own system and user messages (published and Thyme-RL rows: "
        "the prompts the data was made with); rows without Thyme messages (DeepEyes, simple) "
        "get the default set. A set name (thyme, thyme-release), a prompt-set YAML path or "
        "from:<dataset file>: every prompt re-rendered with that set (pipelines.core.prompts)",
        default=None)
    skip_bad_rows: bool = doc("quarantine rows that cannot become prompts (a missing or "
                              "unreadable image, no ground truth, ...) to rl_data/quarantine.jsonl "
                              "and count them, instead of stopping with the row's error",
                              default=False)
    data_cache_dir: str | None = doc("where images the data carries as bytes are written once, "
                                     "by content hash, and the prepared prompts kept for later "
                                     "runs (null: output_dir/rl_data/cache)", default=None)
    rollout_samples: int = doc("rollouts of each logged step written to rollouts.jsonl (prompt, "
                               "images, completion, code and sandbox outputs, rewards, end "
                               "reason); 0: none", default=4)
    output_dir: str = doc("checkpoints, the final model, metrics.json (written last: a finished "
                          "run), metrics.jsonl (every log record) and the curve PNGs",
                          default="data/checkpoints/grpo_ats")
    num_generations: int = doc("rollouts per prompt, G (paper: 4)", default=4)
    per_device_train_batch_size: int = doc("completions per device per step (a multiple of G "
                                           "over the devices)", default=8)
    gradient_accumulation_steps: int = doc("steps per optimizer update; paper batch ~256 "
                                           "completions = 8 x 4 x 8 GPUs", default=4)
    learning_rate: float = doc("peak learning rate (paper: 5e-7)", default=5e-7)
    min_lr_rate: float = doc("cosine schedule floor as a share of the peak (paper: 10%)", default=0.1)
    warmup_ratio: float = doc("share of steps spent warming up (paper: 3%)", default=0.03)
    beta: float = doc("KL weight with the k3 estimator (paper: 0.001; the released scripts 0.01)",
                      default=0.001)
    loss_type: str = doc("TRL loss aggregation (grpo, dapo, dr_grpo, bnpo)", default="grpo")
    num_train_epochs: float = doc("epochs over the prompts (paper: 1-2)", default=1.0)
    shuffle_dataset: bool = doc("shuffle the prompts each epoch; false keeps the data's order "
                                "(a curriculum, or batches balanced by construction)", default=True)
    max_steps: int = doc("stop after this many steps (-1 = by epochs)", default=-1)
    max_pixels: int | None = doc("pixel budget per image, prompt and sandbox images alike (paper: "
                                 "3,072 visual tokens = 3,072 x 28 x 28); null = the processor's",
                                 default=3072 * 28 * 28)
    bf16: bool = doc("bfloat16 training (GPUs)", default=True)
    gradient_checkpointing: bool = doc("trade compute for memory", default=True)
    deepspeed: str | None = doc("DeepSpeed config (thyme_train/configs/zero3.json on GPUs)",
                                default=None)
    logging_steps: int = doc("log every this many steps", default=1)
    save_steps: int = doc("checkpoint every this many steps", default=100)
    save_total_limit: int | None = doc("checkpoints kept", default=3)
    resume: str = doc("`auto`: continue from the newest checkpoint in output_dir if any; "
                      "`never`: start fresh; or a checkpoint directory", default="auto")
    report_to: str = doc("metrics destination(s), comma-separated: none, tensorboard, wandb, ...",
                         default="tensorboard")
    engine: str = doc("rollout engine: hf (transformers generate). The vLLM engines "
                      "(thyme_train.vllm_engine) are not wired into training yet", default="hf")
    engine_batch_size: int = doc("requests per generate() call of the hf engine", default=8)
    sandbox_workers: int | None = doc("sandbox worker processes (null = one per core)", default=None)
    sandbox_url: str | None = doc("a sandbox service (`python -m sandbox serve`) to run the "
                                  "rollouts' code on, e.g. http://host:8080; null: a sandbox in "
                                  "this process", default=None)
    sandbox_token_file: str | None = doc("the service's token file (null: $THYME_SANDBOX_TOKEN)",
                                         default=None)
    tool_collapse_fraction: float = doc("warn when the tool-call rate falls below this share of "
                                        "its early value", default=0.5)
    tool_collapse_early_steps: int = doc("steps that set the early tool-call rate", default=5)
    judge_base_url: str | None = doc("OpenAI-compatible judge server (null = rules only)",
                                     default=None)
    judge_model: str = doc("judge model name as served", default="")
    judge_max_calls: int | None = doc("judge call budget for the run (null = unlimited)",
                                      default=None)
    judge_cache_dir: str | None = doc("judge response cache", default=None)
    seed: int = doc("seed of training and rollouts", default=0)

    def __post_init__(self):
        RolloutConfig.__post_init__(self)
        RewardConfig.__post_init__(self)
        if self.prompt_set:
            from pipelines.core.prompts import load_prompt_set
            load_prompt_set(self.prompt_set)      # a bad name or file fails here, not mid-run
        if self.engine != "hf":
            raise ValueError(f"engine {self.engine!r}: only `hf` is available here (the vLLM "
                             "engines plug into thyme_train.engine.Engine)")

    def rollout(self) -> RolloutConfig:
        return RolloutConfig(**{f.name: getattr(self, f.name) for f in fields(RolloutConfig)})

    def rewards(self) -> RewardConfig:
        return RewardConfig(**{f.name: getattr(self, f.name) for f in fields(RewardConfig)})


# ---------------------------------------------------------------------------------------------
# Rollouts as TRL's rollout_func, with their statistics
# ---------------------------------------------------------------------------------------------

class ToolUseMonitor:
    """Warns when the tool-call rate collapses below `fraction` of its early value (a known
    failure of tool RL: the policy learns to answer without looking)."""

    def __init__(self, fraction: float = 0.5, early_steps: int = 5):
        self.fraction, self.early_steps = fraction, early_steps
        self.rates: list[float] = []

    def record(self, rate: float) -> str | None:
        self.rates.append(rate)
        if len(self.rates) <= self.early_steps:
            return None
        early = sum(self.rates[:self.early_steps]) / self.early_steps
        if early > 0 and rate < self.fraction * early:
            return (f"tool-call rate collapsed: {rate:.2f} < {self.fraction:g} x its early value "
                    f"{early:.2f}")
        return None


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


class ThymeRolloutFunc:
    """TRL's `rollout_func(prompts, trainer)`: one Thyme rollout per prompt entry (TRL already
    repeats each prompt G times), with the sandbox in the loop. Each prompt's image parts carry
    the row's image files (TRL fills them from the `images` column)."""

    def __init__(self, config: GRPOATSConfig, processor, sandbox, force=None, rollout_log=None):
        from thyme_train.engine import ChatCodec

        self.config, self.processor, self.sandbox = config, processor, sandbox
        self.force = force                # a scripted policy (tests, demos): see RolloutRunner.run
        self.rollout_log = rollout_log    # thyme_train.rollout_log.RolloutLog, on the main process
        self.codec = ChatCodec(processor)
        self.monitor = ToolUseMonitor(config.tool_collapse_fraction, config.tool_collapse_early_steps)
        self.runner = None
        self.statistics: dict[str, float] = {}   # the last batch's, until a reward function logs them

    def __call__(self, prompts: list, trainer) -> dict:
        from trl.models.utils import unwrap_model_for_generation

        from thyme_train.hf_engine import HFEngine
        from thyme_train.rollout import RolloutRunner

        cfg = self.config
        encoded = [self.codec.prompt(messages) for messages in prompts]
        step = trainer.state.global_step + 1
        samples = self.rollout_log if trainer.accelerator.is_main_process else None
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            was_training = model.training
            model.eval()
            try:
                if self.runner is None:
                    rollout_cfg = cfg.rollout()
                    rollout_cfg.seed = cfg.seed * 1000 + trainer.accelerator.process_index
                    engine = HFEngine(model, self.processor, rollout_cfg.sampling(), cfg.engine_batch_size)
                    self.runner = RolloutRunner(engine, self.codec, self.sandbox, rollout_cfg)
                self.runner.engine.model = model
                rollouts = self.runner.run(encoded, force=self.force,
                                           on_event=samples.watch(step) if samples else None)
            finally:
                model.train(was_training)
        if samples is not None:
            samples.collect(step, prompts, rollouts, self.codec)
        stats = rollout_statistics(rollouts)
        warning = self.monitor.record(stats["thyme/tool_call_rate"])
        stats["thyme/tool_collapse"] = float(warning is not None)
        if warning:
            log.warning(warning)
        self.statistics = stats
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": [r.logprobs for r in rollouts],
            "env_mask": [r.loss_mask(cfg.code_token_loss) for r in rollouts],
            "sandbox_texts": [r.sandbox_texts for r in rollouts],
            "end_reason": [r.end_reason for r in rollouts],
            "rollout_images": [r.images for r in rollouts],          # read by trl_adapter
            "prompt_image_count": [len(p.images) for p in encoded],
        }


class LoggingRolloutStatistics:
    """A reward function that first logs the rollout statistics of its batch through the
    `log_metric` TRL hands reward functions (the public way to add metrics; `rollout_func` is
    given none), then scores as the function it wraps (whose name TRL logs it under)."""

    def __init__(self, reward, rollout_func: ThymeRolloutFunc):
        self.reward, self.rollout_func = reward, rollout_func
        self.__name__ = reward.__name__

    def __call__(self, completions, log_metric=None, **kwargs):
        statistics, self.rollout_func.statistics = self.rollout_func.statistics, {}
        if log_metric is not None:
            for name, value in statistics.items():
                log_metric(name, value)
        return self.reward(completions, log_metric=log_metric, **kwargs)


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

    return GRPOConfig(
        **trainer_arguments(cfg), num_generations=cfg.num_generations,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_rate},
        beta=cfg.beta, loss_type=cfg.loss_type, shuffle_dataset=cfg.shuffle_dataset,
        max_completion_length=cfg.max_total_tokens, reward_weights=rewards.weights(),
        scale_rewards="group",
    )


def train(cfg: GRPOATSConfig, force=None, callbacks: list | None = None):
    """Run GRPO-ATS; returns the trainer (its state holds the log history). `force`: a scripted
    policy for tests and demos (RolloutRunner.run); `callbacks`: extra `TrainerCallback`s."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pipelines.core.atomic import write_json
    from sandbox.client import open_sandbox
    from thyme_train.config import resume_checkpoint
    from thyme_train.rewards import Judge, ThymeRewards
    from thyme_train.rl_data import data_report, load_rl_rows, rl_dataset
    from thyme_train.rollout_log import RolloutLog
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
    rewards = ThymeRewards(cfg.rewards(), judge)
    args = trl_args(cfg, rewards)
    quarantine = [] if cfg.skip_bad_rows else None
    with args.main_process_first(desc="RL prompts"):     # the others read its prepared rows
        rows = load_rl_rows(cfg.data, cfg.data_split, cfg.prompt_set, quarantine=quarantine,
                            cache_dir=cfg.data_cache_dir or out / "rl_data" / "cache")
    data_counts = data_report(rows, quarantine, out / "rl_data")
    dataset = rl_dataset(rows)
    model = AutoModelForImageTextToText.from_pretrained(model_path)
    Trainer = grpo_trainer_class()
    with open_sandbox(cfg.sandbox_url, cfg.sandbox_token_file, timeout=cfg.sandbox_timeout,
                      workers=cfg.sandbox_workers) as sandbox:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        rollout_log = RolloutLog(out, cfg.rollout_samples, cfg.logging_steps, rewards.weights(), cfg.seed)
        rollout_func = ThymeRolloutFunc(cfg, processor, sandbox, force, rollout_log)
        first, *others = rewards.reward_funcs()
        trainer = Trainer(model=model, processing_class=processor, args=args,
                          reward_funcs=rollout_log.wrap([LoggingRolloutStatistics(first, rollout_func),
                                                         *others]),
                          train_dataset=dataset, rollout_func=rollout_func,
                          callbacks=[_metrics_callback(str(out)), *(callbacks or [])])
        resume = resume_checkpoint(cfg.resume, out)
        if resume:
            log.info("resuming from %s", resume)
        if trainer.is_world_process_zero():
            rollout_log.restart(resume)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            processor.save_pretrained(str(out))
            summary = run_summary(trainer.state.log_history, trainer.state.global_step)
            summary["resumed_from"] = os.path.relpath(resume, out) if resume else None
            summary["data"] = data_counts
            write_json(out / "metrics.json", summary, indent=1)
    return trainer


def run_summary(history: list[dict], steps: int) -> dict:
    """The run in a few numbers: steps, first and last reward and tool-call rate, end reasons."""
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
    for key in ("steps",):
        meta[key] = {"raw_value": summary[key], "type": "int"}
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
