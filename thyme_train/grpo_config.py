"""The GRPO-ATS config read by thyme_train.grpo: one dataclass with every field documented
(`python -m thyme_train.grpo --help` prints them) and its checks, so a wrong value fails when the
config is read, not mid-run. `rollout()` and `rewards()` hand back the parts the rollout loop and
the rewards take."""

from __future__ import annotations

from dataclasses import dataclass, fields

from thyme_train.collapse import CollapseConfig
from thyme_train.config import doc
from thyme_train.rewards import RewardConfig
from thyme_train.rollout import RolloutConfig
from thyme_train.rollout_engines import ENGINES, VLLMTrainingConfig
from thyme_train.sampling import PromptSamplingConfig

IMPORTANCE_SAMPLING = ("off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class GRPOATSConfig(RolloutConfig, RewardConfig, VLLMTrainingConfig, PromptSamplingConfig,
                    CollapseConfig):
    """GRPO-ATS. Defaults are the paper's GPU schedule (THYME.md §4); rl_tiny.yaml shrinks it
    for the CPU. Rollout, reward, vLLM-engine, prompt-sampling and answer-collapse fields are
    RolloutConfig's, RewardConfig's, VLLMTrainingConfig's, PromptSamplingConfig's and
    CollapseConfig's."""

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
    loss_type: str = doc(
        "TRL's loss aggregation: grpo (each completion's token mean, then the mean over "
        "completions: the paper's), dapo (token-level normalisation: every token of the batch "
        "weighs the same, so long completions are not diluted; DAPO), dr_grpo (a constant "
        "normaliser, no length bias), bnpo", default="grpo")
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
    engine: str = doc("rollout engine: vllm (colocated or a server: vllm_mode; "
                      "thyme_train.rollout_engines) or hf (transformers generate)", default="vllm")
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
    importance_sampling: str = doc(
        "correct for the engine's sampling distribution (top-p/top-k, penalties, greedy code, "
        "engine/trainer numerics) with TRL's truncated importance sampling on the behaviour "
        "log-probs the engine reports: token_truncate (ratio min(pi/mu, cap) per token, TIS), "
        "token_mask, sequence_truncate, sequence_mask, or off", default="token_truncate")
    importance_sampling_cap: float = doc("upper bound of the importance ratio (truncate: clip; "
                                         "mask: tokens/sequences above it get no loss)", default=2.0)
    importance_sampling_floor: float | None = doc("lower bound for the mask modes (null = none)",
                                                  default=None)
    freeze_vision_tower: bool = doc("keep the vision encoder's blocks fixed in RL (as SFT can; "
                                    "the paper is silent on RL)", default=False)
    freeze_merger: bool = doc("keep the vision-to-language merger fixed in RL", default=False)

    def __post_init__(self):
        RolloutConfig.__post_init__(self)
        RewardConfig.__post_init__(self)
        if self.prompt_set:
            from pipelines.core.prompts import load_prompt_set
            load_prompt_set(self.prompt_set)      # a bad name or file fails here, not mid-run
        VLLMTrainingConfig.__post_init__(self)
        PromptSamplingConfig.__post_init__(self)
        CollapseConfig.__post_init__(self)
        if self.dynamic_sampling and self.per_device_train_batch_size % self.num_generations:
            raise ValueError("dynamic_sampling refills whole groups within a process: "
                             f"per_device_train_batch_size ({self.per_device_train_batch_size}) must "
                             f"be a multiple of num_generations ({self.num_generations})")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.importance_sampling not in IMPORTANCE_SAMPLING:
            raise ValueError(f"importance_sampling must be one of {IMPORTANCE_SAMPLING}, got "
                             f"{self.importance_sampling!r}")
        if self.code_token_loss == "correct" and not self.importance_sampling.startswith("token"):
            raise ValueError("code_token_loss: correct weighs each greedy code token by its own "
                             "ratio: it needs importance_sampling token_truncate or token_mask (a "
                             "sequence ratio would multiply every code token's probability in)")

    def rollout(self) -> RolloutConfig:
        return RolloutConfig(**{f.name: getattr(self, f.name) for f in fields(RolloutConfig)})

    def rewards(self) -> RewardConfig:
        return RewardConfig(**{f.name: getattr(self, f.name) for f in fields(RewardConfig)})
