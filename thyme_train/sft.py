"""Thyme SFT (stage 1 and stage 2 "computation annealing", THYME.md §4) on TRL's `SFTTrainer`.

    python -m thyme_train.sft --config thyme_train/configs/stage1.yaml [--set key=value ...]
    accelerate launch -m thyme_train.sft --config ...   |   torchrun --nproc-per-node 8 -m ...
    deepspeed --module thyme_train.sft --config ...      (set `deepspeed` to a ZeRO config)

TRL's trainer takes our collator (`thyme_train.chat.ThymeCollator`), which owns the labels: TRL's
own `assistant_only_loss` would still train the sandbox outputs inside the assistant turn. Rows
are kept raw (images stay encoded until a batch needs them); a first pass measures every row and
drops, and counts, those over `max_length` (never cut). At the end the output directory holds the
model and processor, `prompt_set.yaml` (the prompts it was trained with, in the format the
datasets record them: `python -m thyme_train.evaluate` and `thyme_train.infer` ask it with them by
default), `metrics.json` and `loss_curve.png`.

Launched by a Dagster asset (assets/training.py), rank 0 talks Dagster Pipes (thyme_train.pipes):
every logged step goes to the run's log and the metrics become the asset's materialization; a
failure is written where the asset reads it, so the asset fails with the trainer's error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.core.atomic import write_json
from pipelines.core.prompts import (
    DEFAULT_PROMPT_SET,
    FROM_DATASET,
    PromptSet,
    load_prompt_set,
    record_prompt_set,
    recorded_spec,
)
from thyme_train.config import (
    doc,
    parse_config,
    prompt_set_callback,
    resume_checkpoint,
    to_dict,
    trainer_arguments,
)
from thyme_train.data import data_files, fingerprint, load_rows, measure_and_filter
from thyme_train.freezing import freeze
from thyme_train.pipes import launched_process, log_callback
from thyme_train.plots import loss_curve
from thyme_train.tiny import resolve_model
from thyme_train.trl_adapter import sft_trainer_class

log = logging.getLogger("thyme_train.sft")
METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"


@dataclass
class ThymeSFTConfig:
    """One SFT stage. Defaults are a GPU run of stage 1 as the paper (THYME.md §4): 8 GPUs x 1
    sample x 16 accumulation steps = global batch 128."""

    model: str = doc("Model to fine-tune: a hub id, a local directory, or `tiny:DIR` for the tiny "
                     "Qwen2.5-VL built into DIR (thyme_train.tiny; built if missing).",
                     default="Qwen/Qwen2.5-VL-7B-Instruct")
    data: list[str] = doc("Training data: published dataset directories, split directories or "
                          "parquet files in the Thyme-SFT format (image, question, response). A "
                          "directory contributes every parquet file under it (see `splits`).",
                          default_factory=list)
    splits: list[str] = doc("Splits to read from the dataset directories in `data`: a parquet file "
                            "is used when a path component or its file name starts with a split "
                            "name. Empty: every parquet file. Stage 1: "
                            "wo_thinking_thyme_single_round and 2round; stage 2: computation.",
                            default_factory=lambda: ["wo_thinking_thyme_single_round", "2round"])
    encoding: str = doc("Image encoding to read from a published dataset directory laid out as "
                        "data/<encoding>/<split>-*.parquet: thyme (base64 list) or hf "
                        "(Sequence(Image)).", default="thyme")
    cache_dir: str | None = doc("Where `datasets` keeps its Arrow copy of the rows and the length "
                                "pass (null: the Hugging Face default, ~/.cache/huggingface).",
                                default=None)
    stage: str = doc("Name of the stage (stage1, stage2): a label in logs and metrics.",
                     default="stage1")
    dataset_version: str | None = doc("Version label of the data given by the launcher (e.g. "
                                      "the Dagster data version); recorded in the metrics next to "
                                      "the fingerprint computed from the files.", default=None)
    output_dir: str = doc("Where checkpoints, the final model, metrics.json and loss_curve.png "
                          "go.", default="data/checkpoints/sft/stage1")
    resume: str = doc("`auto`: continue from the newest checkpoint in output_dir if there is one; "
                      "`never`: start fresh; or a checkpoint directory.", default="auto")
    learning_rate: float = doc("Peak learning rate (paper: 1e-5 stage 1, 1e-6 stage 2).",
                               default=1e-5)
    num_train_epochs: float = doc("Epochs over the data (paper: 3).", default=3.0)
    max_steps: int = doc("Stop after this many optimizer steps (-1: run the epochs).", default=-1)
    per_device_train_batch_size: int = doc("Samples per device per step.", default=1)
    gradient_accumulation_steps: int = doc("Steps accumulated per update (global batch = devices "
                                           "x per-device batch x this; paper: 128).", default=16)
    warmup_ratio: float = doc("Fraction of the steps for linear warmup (paper: 5%).",
                              default=0.05)
    lr_scheduler_type: str = doc("Schedule after warmup (paper: cosine).", default="cosine")
    weight_decay: float = doc("AdamW weight decay.", default=0.0)
    max_grad_norm: float = doc("Gradient clipping norm.", default=1.0)
    max_length: int = doc("Longest sample in tokens, images included (paper: 10240). Longer rows "
                          "are dropped and counted, never cut mid-code.", default=10240)
    min_pixels: int = doc("Smallest image size in pixels after resizing (Qwen default 56x56).",
                          default=3136)
    max_pixels: int = doc("Largest image size in pixels (paper: 3,211,264 = 4,096 visual tokens).",
                          default=3211264)
    freeze_vision_tower: bool = doc("Keep the vision encoder's blocks fixed (paper: frozen).",
                                    default=True)
    freeze_merger: bool = doc("Keep the vision-to-language merger fixed too (default: it trains, "
                              "as in Qwen2.5-VL's own fine-tuning recipe).", default=False)
    mask_sandbox_outputs: bool = doc("No loss on <sandbox_output> spans (tags, text, image "
                                     "tokens). The paper's ablation: off, the model learns to "
                                     "hallucinate sandbox results.", default=True)
    train_last_round_only: bool = doc("No loss on rounds before the last in multi-round samples "
                                      "(paper: on for stage 1, off for stage 2).", default=True)
    prompt_set: str | None = doc("Prompt set whose system prompt every sample gets: a name "
                                 "(thyme, thyme-release: the released checkpoints' prompts), a "
                                 "prompt-set YAML path, or from:<dataset file or folder> "
                                 "(pipelines.core.prompts). null: the set the published datasets "
                                 "in `data` record (the one their rows were rendered with), else "
                                 "thyme. The user message is each row's own `question`, as the "
                                 "splits rendered it.", default=None)
    system_prompt: str | None = doc("A system prompt text overriding the set's; \"\" in YAML: "
                                    "none (the chat template's default); null: the set's.",
                                    default=None)
    skip_malformed: bool = doc("Drop and count malformed rows (unbalanced <sandbox_output> tags, "
                               "wrong image count, undecodable image) instead of stopping with "
                               "the row's error.", default=False)
    deepspeed: str | None = doc("DeepSpeed config file (thyme_train/configs/deepspeed/"
                                "zero2.json or zero3.json) or null.",
                                default="thyme_train/configs/deepspeed/zero2.json")
    bf16: bool = doc("Train in bfloat16 (GPU). Off on CPU.", default=True)
    gradient_checkpointing: bool = doc("Recompute activations to save memory (slower).",
                                       default=True)
    attn_implementation: str = doc("Attention kernel: sdpa, flash_attention_2, eager.",
                                   default="sdpa")
    padding_free: bool = doc("Pack each batch's rows into one sequence without padding, each "
                             "row keeping its own positions (thyme_train.packing): the same loss; "
                             "it can only be faster with attn_implementation flash_attention_2 "
                             "(varlen kernels; not measured yet). With sdpa/eager the packed rows share one dense "
                             "block-diagonal mask, slower than padding (0.72x tokens/s on CPU, "
                             "docs/benchmarks.md).", default=False)
    report_to: list[str] = doc("Trackers for metrics (tensorboard, wandb, trackio, ...); empty: "
                               "none. TensorBoard logs go under output_dir/runs.",
                               default_factory=lambda: ["tensorboard"])
    logging_steps: int = doc("Log the loss every this many steps.", default=10)
    save_steps: int = doc("Checkpoint every this many steps.", default=500)
    save_total_limit: int | None = doc("Keep at most this many checkpoints (null: all).",
                                       default=2)
    seed: int = doc("Seed of data order and initialisation.", default=42)
    dataloader_num_workers: int = doc("Processes decoding images for the batches.", default=4)
    dataset_num_proc: int = doc("Processes measuring rows in the length pass.", default=8)

    def __post_init__(self):
        if not self.data:
            raise ValueError("config: `data` is empty: name published dataset dirs or parquet "
                             "files")
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise ValueError(f"config: resume={self.resume!r} is neither auto, never nor a "
                             f"checkpoint directory")
        if self.max_length <= 0:
            raise ValueError("config: max_length must be positive")
        if self.deepspeed:
            self.deepspeed = str(_shipped(self.deepspeed))
        recorded = recorded_spec(self.data)
        if self.prompt_set is None:
            self.prompt_set = recorded or DEFAULT_PROMPT_SET
        load_prompt_set(self.prompt_set)          # a bad name or file fails here, not mid-run
        if recorded and (self.system() or "") != load_prompt_set(recorded).system:
            log.warning("the system prompt (prompt_set %s%s) is not the one of %s, the set %s "
                        "was rendered with", self.prompt_set,
                        ", system_prompt set" if self.system_prompt is not None else "",
                        load_prompt_set(recorded).name, recorded.removeprefix(FROM_DATASET))

    def system(self) -> str | None:
        """The system prompt of every sample (None: none)."""
        text = self.system_prompt if self.system_prompt is not None \
            else load_prompt_set(self.prompt_set).system
        return text or None

    def trained_prompt_set(self) -> PromptSet:
        """The prompts the model learns, as its output folder records them: the user messages
        of the rows (rendered with the set the data records, when it records one) under
        `system()`; the chosen set itself when that is all the same text."""
        chosen = load_prompt_set(self.prompt_set)
        recorded = recorded_spec(self.data)
        users = load_prompt_set(recorded) if recorded else chosen
        system = self.system() or ""
        if (system, users.user, users.user_text) == (chosen.system, chosen.user, chosen.user_text):
            return chosen
        origin = "system_prompt" if self.system_prompt is not None else chosen.name
        return replace(users, name=f"{users.name} (system: {origin})", system=system,
                                   description=f"the rows' user messages ({users.name}) under "
                                               f"the system prompt of {origin}")


def _shipped(path: str) -> Path:
    """A config file as given, or else relative to the repository (the shipped configs)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        if not p.is_file():
            raise FileNotFoundError(f"config: {path} does not exist")
        return p
    shipped = Path(__file__).resolve().parent.parent / p
    if not shipped.is_file():
        raise FileNotFoundError(f"config: {path} exists neither here nor at {shipped}")
    return shipped


# ------------------------------------------------------------------ training

@dataclass
class Run:
    """A trainer ready to run one stage, and what preparing it found."""
    trainer: object
    chat: object
    files: list
    rows: int                       # rows read
    dropped: dict                   # reason -> rows dropped
    parameters: dict                # trainable / total parameter counts


def build_trainer(cfg: ThymeSFTConfig, callbacks: list = ()) -> Run:
    """Model, processor, measured data and TRL's `SFTTrainer` with our collator."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig

    from thyme_train.chat import ThymeChat, ThymeCollator

    _check_trackers(cfg.report_to)
    if cfg.deepspeed and not torch.cuda.is_available():
        # DeepSpeed on the CPU accelerator: skip the shared-memory op's slow JIT build (STACK.md).
        import deepspeed

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    model_path = resolve_model(cfg.model)
    processor = AutoProcessor.from_pretrained(model_path)
    processor.image_processor.size = {"shortest_edge": cfg.min_pixels,
                                      "longest_edge": cfg.max_pixels}
    chat = ThymeChat(processor, system_prompt=cfg.system(),
                     mask_sandbox_outputs=cfg.mask_sandbox_outputs,
                     train_last_round_only=cfg.train_last_round_only)

    args = SFTConfig(
        **trainer_arguments(cfg),
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers,
        run_name=f"thyme-sft-{cfg.stage}",
        # Our collator reads the raw Thyme columns and owns the labels and the length limit.
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, torchrun/accelerate ranks join a gloo group only when told to use the
        # CPU (else each rank trains alone); DeepSpeed sets up its own group.
        use_cpu=not torch.cuda.is_available() and not cfg.deepspeed,
    )

    files = data_files(cfg.data, cfg.splits, cfg.encoding)
    with args.main_process_first(desc="measuring rows"):
        rows = load_rows(files, base=Path.cwd(), cache_dir=cfg.cache_dir)
        kept, dropped, _ = measure_and_filter(rows, chat, cfg.max_length, cfg.skip_malformed,
                                              cfg.dataset_num_proc)
    if len(kept) == 0:
        raise ValueError(f"no trainable rows: all {len(rows)} rows dropped ({dropped})")
    log.info("%s: %d rows kept of %d from %d file(s); dropped %s", cfg.stage, len(kept),
             len(rows), len(files), dropped or "none")

    model = AutoModelForImageTextToText.from_pretrained(
        model_path, dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        attn_implementation=cfg.attn_implementation)
    params = freeze(model, cfg.freeze_vision_tower, cfg.freeze_merger)
    collator = ThymeCollator(chat, cfg.max_length)
    if cfg.padding_free:
        from thyme_train.packing import PaddingFreeCollator

        collator = PaddingFreeCollator(collator, model.model.get_rope_index)
    trainer = sft_trainer_class()(model=model, args=args, train_dataset=kept,
                                  processing_class=processor,
                                  data_collator=collator,
                                  callbacks=[prompt_set_callback(cfg.trained_prompt_set()),
                                             *callbacks])
    return Run(trainer, chat, files, len(rows), dropped, params)


def train(cfg: ThymeSFTConfig, callbacks: list = ()) -> dict:
    """Run one SFT stage; returns the metrics (also written to output_dir/metrics.json) on the
    main process, {} on the others."""
    import time

    import torch

    started = time.time()
    if int(os.environ.get("RANK", "0")) == 0:  # metrics.json marks a finished run
        (Path(cfg.output_dir) / METRICS_FILE).unlink(missing_ok=True)
    run = build_trainer(cfg, callbacks)
    trainer = run.trainer
    resume = resume_checkpoint(cfg.resume, cfg.output_dir)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(cfg.output_dir)

    metrics = {}
    if trainer.is_world_process_zero():
        run.chat.processor.save_pretrained(cfg.output_dir)
        # the checkpoint carries its prompts: evaluate and infer ask it with them by default
        record_prompt_set(cfg.trained_prompt_set(), cfg.output_dir)
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        metrics = {
            "stage": cfg.stage,
            "model": cfg.model,
            "output_dir": os.path.relpath(cfg.output_dir),
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "final_loss": losses[-1][1] if losses else None,
            "best_loss": min(v for _, v in losses) if losses else None,
            "train_loss": result.training_loss,
            "losses": losses,
            "samples": run.rows,
            "samples_trained": len(trainer.train_dataset),
            "samples_dropped": sum(run.dropped.values()),
            "dropped_by_reason": run.dropped,
            "resumed_from": os.path.relpath(resume, cfg.output_dir) if resume else None,
            "parameters": run.parameters,
            "dataset": {"files": [os.path.relpath(f) for f in run.files],
                        "fingerprint": fingerprint(run.files), "version": cfg.dataset_version},
            "prompt_set": cfg.trained_prompt_set().name,
            "config": to_dict(cfg),
            "runtime_s": round(time.time() - started, 1),
        }
        loss_curve(losses, Path(cfg.output_dir) / LOSS_CURVE_FILE, cfg.stage)
        write_json(Path(cfg.output_dir) / METRICS_FILE, metrics, indent=1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # ZeRO-3 aborts at interpreter exit while a process group is alive (STACK.md).
        torch.distributed.destroy_process_group()
    return metrics


def _check_trackers(report_to: list[str]) -> None:
    import importlib.util

    if "tensorboard" in report_to and not any(
            importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise RuntimeError("report_to names tensorboard but neither tensorboard nor tensorboardX "
                           "is installed: `pip install tensorboard`, or set report_to to []")


# ------------------------------------------------------------------ launched by Dagster

def materialization_metadata(metrics: dict) -> dict:
    """What the Dagster asset records: checkpoint, losses, steps, drops, curve, data version."""
    out = Path(metrics["output_dir"])
    # The loss curve is not sent: Pipes messages are lines in a file, and a long line can be read
    # half-written. The launching asset embeds the PNG itself (assets.training.launch).
    meta = {
        "checkpoint": {"raw_value": os.path.relpath(out), "type": "path"},
        # None when no step was logged (logging_steps beyond the run's steps)
        "final_loss": {"raw_value": metrics["final_loss"],
                       "type": "null" if metrics["final_loss"] is None else "float"},
        "best_loss": {"raw_value": metrics["best_loss"],
                      "type": "null" if metrics["best_loss"] is None else "float"},
        "steps": {"raw_value": metrics["steps"], "type": "int"},
        "samples_trained": {"raw_value": metrics["samples_trained"], "type": "int"},
        "samples_dropped": {"raw_value": metrics["samples_dropped"], "type": "int"},
        "dropped_by_reason": {"raw_value": metrics["dropped_by_reason"], "type": "json"},
        "dataset_version": {"raw_value": metrics["dataset"]["version"] or "", "type": "text"},
        "dataset_fingerprint": {"raw_value": metrics["dataset"]["fingerprint"], "type": "text"},
        "loss_curve_file": {"raw_value": os.path.relpath(out / LOSS_CURVE_FILE), "type": "path"},
        "runtime_s": {"raw_value": metrics["runtime_s"], "type": "float"},
        "resumed_from": {"raw_value": metrics["resumed_from"] or "", "type": "text"},
        "prompt_set": {"raw_value": metrics["prompt_set"], "type": "text"},
    }
    return meta


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with launched_process() as pipes:
        cfg = parse_config(ThymeSFTConfig, argv, description=__doc__.split("\n\n")[0])
        metrics = train(cfg, [log_callback(pipes)] if pipes else [])
        if pipes is not None and metrics:
            pipes.report_asset_materialization(metadata=materialization_metadata(metrics))
    if metrics:
        print(json.dumps({k: metrics[k] for k in ("stage", "steps", "final_loss", "best_loss",
                                                  "samples_trained", "samples_dropped")}))


if __name__ == "__main__":
    sys.exit(main())
