"""GRPO-ATS: TRL's `GRPOTrainer` with the Thyme rollout loop (sandbox in the loop, adaptive
temperature, repetition stop, turn cap) as its `rollout_func`, and the accuracy / format /
consistency rewards.

    python -m thyme_train.grpo --config thyme_train/configs/rl.yaml [--set key=value ...]
    accelerate launch --config_file ... -m thyme_train.grpo --config rl.yaml    # multi-GPU

Data (`data`): the published RL dataset (pipelines.datasets.publish; its `data/hf` parquet and image
files), or a JSONL / parquet file with `question`, `solution` (or `answer`), optional `image` (a
path, relative to the file's folder or absolute), `options` (lines "A. text"), `category`, or
`generated:N` (the generated pool, for CPU runs). Each prompt is the Thyme prompt (system prompt +
user message with the image's absolute path and size, pipelines.core.prompts): the rollout hands the
sandbox the file that path names.

What TRL's hooks do and do not cover (TRL 1.16):
  - `rollout_func` returns prompt/completion ids, log-probs and `env_mask` (0 = sandbox tokens:
    no loss), and extra fields that reach the reward functions (`sandbox_texts`). Covered.
  - Images the sandbox produced inside a completion: NOT covered. On the `rollout_func` path
    TRL builds the vision inputs of the training forward pass from the dataset's prompt images
    only; its own path for images inside completions is reserved for its `tools=` loop. So
    `ThymeGRPOTrainer` overrides one private method, `_generate`: it hands TRL each
    completion's images (prompt's + sandbox's) and marks the batch as holding tool images, so
    TRL builds pixel values and `mm_token_type_ids` from the full sequences. Nothing else of
    TRL changes; `tests/test_grpo.py` trains through it.
  - Per-token temperatures: TRL's loss knows none; `code_token_loss: mask` removes greedy code
    tokens through `env_mask` (see RolloutConfig). The k3 KL estimator is TRL's (beta > 0).
Rollout statistics are logged through the trainer's metric hook (`_log_metric`, the one reward
functions use): tool-call rate, execution success, code calls / images / turns per rollout,
end-reason shares, sandbox tokens, and a warning (plus `thyme/tool_collapse` = 1) when the
tool-call rate falls below `tool_collapse_fraction` of its early value. Curves of the rewards and
of tool use are saved as PNGs in `output_dir` at every save and at the end, with every logged
record in `metrics.jsonl`.
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
    data: str = doc("RL prompts: a published RL dataset directory (pipelines.datasets.publish), a JSONL "
                    "or parquet file (see the module docstring), or `generated:N` for N prompts "
                    "of the generated pool (CPU demo)", default="")
    data_split: str = doc("split of a published dataset to train on", default="train")
    output_dir: str = doc("checkpoints, the final model, metrics.json (written last: a finished "
                          "run), metrics.jsonl (every log record) and the curve PNGs",
                          default="data/checkpoints/grpo_ats")
    system_prompt: str | None = doc("system prompt; null = pipelines.core.prompts.DEFAULT_SYSTEM_PROMPT",
                                    default=None)
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
    engine: str = doc("rollout engine: hf (transformers generate). The vLLM engine is separate "
                      "work; see the module docstring of thyme_train.rollout", default="hf")
    engine_batch_size: int = doc("requests per generate() call of the hf engine", default=8)
    sandbox_workers: int | None = doc("sandbox worker processes (null = one per core)", default=None)
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
        if self.engine != "hf":
            raise ValueError(f"engine {self.engine!r}: only `hf` is available here (the vLLM "
                             "engine plugs into thyme_train.rollout.Engine)")

    def rollout(self) -> RolloutConfig:
        return RolloutConfig(**{f.name: getattr(self, f.name) for f in fields(RolloutConfig)})

    def rewards(self) -> RewardConfig:
        return RewardConfig(**{f.name: getattr(self, f.name) for f in fields(RewardConfig)})


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def load_rl_rows(path: str | os.PathLike, system_prompt: str | None = None,
                 split: str = "train") -> list[dict]:
    """TRL rows: `prompt` (the Thyme chat, naming the image by its absolute path so the sandbox
    gets that file), `images` (paths), `solution`, `question`, `options`, `image_path`.

    `path`: a JSONL or parquet file of simple rows (see the module docstring), or a published
    RL dataset directory (pipelines.datasets.publish: `data/hf/<split>-*.parquet`, images under the
    directory, named by each prompt's "User Image Path"). Bad rows raise ValueError naming the
    file, the row and the reason."""
    from PIL import Image

    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user
    from thyme_train.chat import thyme_messages

    rows = []
    for where, base, r in _raw_rl_rows(Path(path), split):
        question = r.get("question")
        truth = r.get("solution", r.get("answer"))
        if not question or truth is None or str(truth).strip() == "":
            raise ValueError(f"{where}: needs a non-empty `question` and `solution` (or `answer`)")
        image = r.get("image")
        images, image_path = [], None
        if image:
            image_path = image if os.path.isabs(image) else str((base / image).resolve())
            try:
                with Image.open(image_path) as im:
                    size = im.size
            except OSError as exc:
                raise ValueError(f"{where}: image {image!r} does not open ({exc})") from None
            user = render_user(question, image_path, size)
            images = [image_path]
        else:
            user = render_user(question)
        rows.append({
            "prompt": thyme_messages(user, None, system_prompt or DEFAULT_SYSTEM_PROMPT),
            "images": images, "solution": str(truth), "question": question,
            "options": list(r.get("options") or []), "image_path": image_path or "",
        })
    if not rows:
        raise ValueError(f"{path} holds no rows" + (f" for split {split!r}" if Path(path).is_dir() else ""))
    return rows


def _raw_rl_rows(path: Path, split: str):
    """(where, folder image paths are relative to, {question, solution, image, options})."""
    import pyarrow.parquet as pq

    from pipelines.core.prompts import parse_user

    if path.is_dir():                               # a published RL dataset (hf encoding)
        files = sorted((path / "data" / "hf").glob(f"{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path}: no data/hf/{split}-*.parquet (a published RL "
                                    "dataset, pipelines.datasets.publish)")
        for file in files:
            for i, r in enumerate(pq.read_table(file).to_pylist()):
                user = next((m for m in r.get("messages") or [] if m.get("role") == "user"), None)
                image = parse_user(user["content"])[1].get("original_path") if user else None
                meta = json.loads(r.get("meta") or "{}")
                yield f"{file} row {i}", path, {
                    "question": r.get("question"), "solution": r.get("solution"),
                    "image": image if r.get("images") else None, "options": meta.get("options")}
        return
    if not path.is_file():
        raise FileNotFoundError(f"RL data {path} does not exist")
    if path.suffix == ".parquet":
        raw = pq.read_table(path).to_pylist()
    else:
        raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, r in enumerate(raw):
        yield f"{path} row {i}", path.parent, r


GENERATED_PREFIX = "generated:"


def write_generated_rl_data(folder: str | os.PathLike, count: int, seed: int = 0) -> Path:
    """RL prompts from the generated pool (pipelines.pool.generate: crop, rotate, contrast,
    computation... with ground truth), for the demo and CPU runs: images in an image store
    under `folder`, prompts in `folder/rl.jsonl`. Reused when already written."""
    from pipelines.core.images import ImageStore
    from pipelines.pool.generate import generate_samples

    folder = Path(folder)
    target = folder / f"rl_{count}_{seed}.jsonl"
    if target.is_file():
        return target
    store = ImageStore(folder / "images")
    lines = []
    for s in generate_samples(0, count, seed, store):
        row = {"question": s.question, "solution": s.answer, "category": s.task,
               "options": s.meta.get("options") or []}
        if s.images:
            row["image"] = os.path.relpath(store.path(s.images[0]), folder)
        lines.append(json.dumps(row))
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, target)
    return target


def rl_dataset(rows: list[dict]):
    from datasets import Dataset, Image, Sequence

    return Dataset.from_list(rows).cast_column("images", Sequence(Image()))


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
    repeats each prompt G times), with the sandbox in the loop."""

    def __init__(self, config: GRPOATSConfig, processor, sandbox, force=None):
        from thyme_train.engine import ChatCodec

        self.config, self.processor, self.sandbox = config, processor, sandbox
        self.force = force                # a scripted policy (tests, demos): see RolloutRunner.run
        self.codec = ChatCodec(processor)
        self.monitor = ToolUseMonitor(config.tool_collapse_fraction, config.tool_collapse_early_steps)
        self.runner = None

    def __call__(self, prompts: list, trainer) -> dict:
        from trl.models.utils import unwrap_model_for_generation

        from thyme_train.hf_engine import HFEngine
        from thyme_train.rollout import RolloutRunner

        cfg = self.config
        encoded = [self.codec.prompt(messages) for messages in prompts]
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
                rollouts = self.runner.run(encoded, force=self.force)
            finally:
                model.train(was_training)
        stats = rollout_statistics(rollouts)
        warning = self.monitor.record(stats["thyme/tool_call_rate"])
        stats["thyme/tool_collapse"] = float(warning is not None)
        if warning:
            log.warning(warning)
        for name, value in stats.items():
            trainer._log_metric(name, value)
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": [r.logprobs for r in rollouts],
            "env_mask": [r.loss_mask(cfg.code_token_loss) for r in rollouts],
            "sandbox_texts": [r.sandbox_texts for r in rollouts],
            "end_reason": [r.end_reason for r in rollouts],
            "rollout_images": [r.images for r in rollouts],
            "prompt_image_count": [len(p.images) for p in encoded],
        }


def thyme_grpo_trainer_class():
    """`ThymeGRPOTrainer`, defined on first use so importing this module stays light."""
    from trl import GRPOTrainer

    def _sandbox(code: str) -> str:
        """Runs Python in the Thyme sandbox (executed by the rollout loop, never by TRL)."""
        raise RuntimeError("the Thyme sandbox runs inside the rollout loop, not as a TRL tool")

    class ThymeGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose rollout_func may return the images inside each completion
        (`rollout_images`: the prompt's images, then the sandbox's). See the module docstring:
        the one thing TRL's `rollout_func` hook cannot express."""

        def _generate(self, prompts):
            self.tools = []   # TRL's own tool loop must not run: our rollouts ran the sandbox
            out = list(super()._generate(prompts))
            extra = out[5]
            images = extra.pop("rollout_images", None)
            counts = extra.pop("prompt_image_count", None)
            if images is not None:
                tool_images = [imgs[n:] for imgs, n in zip(images, counts, strict=True)]
                if any(tool_images):
                    out[6], out[7] = [list(i) for i in images], tool_images
                    self.tools = [_sandbox]   # makes TRL build vision inputs from full sequences
                    self._check_image_tokens(out[0], out[1], images)
                self.last_image_counts = [len(i) for i in images]   # for inspection
            return tuple(out)

        def _check_image_tokens(self, prompt_ids, completion_ids, images):
            """TRL silently drops every image of the batch when a sequence's image tokens do not
            match its images; fail loudly instead (a rollout/processor disagreement)."""
            ip = self.processing_class.image_processor
            merge = getattr(ip, "merge_size", 1) ** 2
            for i, (p, c, imgs) in enumerate(zip(prompt_ids, completion_ids, images, strict=True)):
                have = sum(t == self._image_pad_token_id for t in list(p) + list(c))
                want = int(ip(images=imgs, return_tensors="pt")["image_grid_thw"].prod(-1).sum()) // merge
                if have != want:
                    raise RuntimeError(f"completion {i}: {have} image tokens but its {len(imgs)} "
                                       f"image(s) make {want}")

    return ThymeGRPOTrainer


# ---------------------------------------------------------------------------------------------
# Curves and metrics on disk
# ---------------------------------------------------------------------------------------------

REWARD_CURVES = ("reward", "rewards/accuracy_reward/mean", "rewards/format_reward/mean",
                 "rewards/consistency_reward/mean")
TOOL_CURVES = ("thyme/tool_call_rate", "thyme/exec_success", "thyme/images_per_rollout",
               "thyme/turns_per_rollout")


def save_curves(records: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Reward and tool-use curves (PNG) from logged records; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, written = Path(out_dir), []
    for name, keys in (("curves_rewards.png", REWARD_CURVES), ("curves_tool_use.png", TOOL_CURVES)):
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=key.split("/")[-2 if key.endswith("/mean") else -1])
        ax.set_xlabel("step")
        ax.set_title(name[:-4].replace("_", " "))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, out / name)
        written.append(out / name)
    return written


def _metrics_callback(out_dir: str):
    from transformers import TrainerCallback

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
            with open(Path(out_dir) / "metrics.jsonl", "a") as f:
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

    return GRPOConfig(
        output_dir=cfg.output_dir, num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_rate}, warmup_steps=cfg.warmup_ratio,
        beta=cfg.beta, loss_type=cfg.loss_type, num_train_epochs=cfg.num_train_epochs,
        shuffle_dataset=cfg.shuffle_dataset,
        max_steps=cfg.max_steps, max_completion_length=cfg.max_total_tokens,
        reward_weights=rewards.weights(), scale_rewards="group",
        bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, seed=cfg.seed, remove_unused_columns=False,
        report_to=[s.strip() for s in cfg.report_to.split(",") if s.strip()],
    )


def train(cfg: GRPOATSConfig, force=None, callbacks: list | None = None):
    """Run GRPO-ATS; returns the trainer (its state holds the log history). `force`: a scripted
    policy for tests and demos (RolloutRunner.run); `callbacks`: extra `TrainerCallback`s."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sandbox import Sandbox
    from thyme_train.rewards import Judge, ThymeRewards
    from thyme_train.sft import last_checkpoint, resolve_model

    if not cfg.model or not cfg.data:
        raise ValueError("set `model` and `data` (in the YAML or with --set)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpo_config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    model_path = resolve_model(cfg.model)
    processor = AutoProcessor.from_pretrained(model_path)
    if cfg.max_pixels is not None:
        processor.image_processor.size["longest_edge"] = cfg.max_pixels
    model = AutoModelForImageTextToText.from_pretrained(model_path)
    data = cfg.data
    if data.startswith(GENERATED_PREFIX):
        data = write_generated_rl_data(out / "rl_data", int(data[len(GENERATED_PREFIX):]), cfg.seed)
    dataset = rl_dataset(load_rl_rows(data, cfg.system_prompt, cfg.data_split))

    judge = None
    if cfg.judge_base_url:
        from pipelines.core.llm import LLMClient, LLMConfig
        judge = Judge(LLMClient(LLMConfig(base_url=cfg.judge_base_url, model=cfg.judge_model,
                                          cache_dir=cfg.judge_cache_dir)), cfg.judge_max_calls)
    rewards = ThymeRewards(cfg.rewards(), judge)
    args = trl_args(cfg, rewards)
    Trainer = thyme_grpo_trainer_class()
    with Sandbox(workers=cfg.sandbox_workers, timeout=cfg.sandbox_timeout) as sandbox:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        trainer = Trainer(model=model, processing_class=processor, args=args,
                          reward_funcs=rewards.reward_funcs(), train_dataset=dataset,
                          rollout_func=ThymeRolloutFunc(cfg, processor, sandbox, force),
                          callbacks=[_metrics_callback(str(out)), *(callbacks or [])])
        resume = {"auto": last_checkpoint(str(out)), "never": None}.get(cfg.resume, cfg.resume)
        if resume:
            log.info("resuming from %s", resume)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            processor.save_pretrained(str(out))
            summary = run_summary(trainer.state.log_history, trainer.state.global_step)
            summary["resumed_from"] = os.path.relpath(resume, out) if resume else None
            tmp = out / ".metrics.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1))
            os.replace(tmp, out / "metrics.json")
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
