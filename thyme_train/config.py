"""Training configuration files: a dataclass per stage, loaded from YAML and overridden from the
command line with `--set key=value`; and what the stages' configs mean alike (the TrainingArguments
fields they share, `resume`).

    cfg = parse_config(ThymeSFTConfig, ["--config", "stage1.yaml", "--set", "learning_rate=2e-5"])

Each field carries its documentation as `field(metadata={"help": ...})`; `--help` prints it. An
unknown key (in the file or a `--set`) is an error naming the key and where it came from, so a
typo never silently trains with a default. Values from `--set` are converted to the field's type
(`true`/`false`, numbers such as `1e-5`, lists as `a,b` or YAML `[a, b]`, `null`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml


def doc(help: str, **kwargs):
    """A dataclass field with its documentation (shown by `--help`)."""
    return dataclasses.field(metadata={"help": help}, **kwargs)


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """An instance of the dataclass `cls`: defaults, then the YAML file, then `key=value`s."""
    values = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        known = _types(cls)
        for key, value in _checked(cls, data, str(path)).items():
            # PyYAML reads `1e-5` as text: convert text to the field's type as --set does.
            if isinstance(value, str) and known[key] not in (str, str | None):
                value = _coerce(value, known[key], key)
            values[key] = value
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        key = key.strip()
        _checked(cls, {key: raw}, f"--set {item}")
        values[key] = _coerce(raw, _types(cls)[key], key)
    return cls(**values)


def parse_config(cls, argv: list[str] | None = None, description: str = ""):
    """`--config FILE [--set key=value ...]` parsed into `cls`. Launcher arguments
    (`--local_rank`, which `deepspeed` passes) are accepted and ignored: ranks come from the
    environment."""
    parser = argparse.ArgumentParser(
        description=description, epilog=describe(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with the config fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.set)


def describe(cls) -> str:
    """Every field with its type, default and documentation."""
    lines = ["config fields:"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"  {f.name} = {default!r}")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def trainer_arguments(cfg) -> dict:
    """The `TrainingArguments` fields SFT and GRPO share, from either stage's config (TRL's
    SFTConfig / GRPOConfig take them; each stage adds its own). `report_to` may be a list or a
    comma-separated string; empty means none."""
    report_to = cfg.report_to.split(",") if isinstance(cfg.report_to, str) else cfg.report_to
    report_to = [name.strip() for name in report_to if name.strip()]
    return dict(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,          # a float below 1 is a ratio of the total steps
        bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        report_to=report_to or "none",
        remove_unused_columns=False,            # our collator / rollout reads the raw columns
    )


def resume_checkpoint(resume: str, output_dir: str | Path) -> str | None:
    """A config's `resume`: `auto` = the newest checkpoint in output_dir (None when there is
    none), `never` = None, else the checkpoint directory it names."""
    if resume == "never":
        return None
    if resume != "auto":
        return resume
    if not Path(output_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir))


def prompt_set_callback(prompts):
    """A transformers TrainerCallback recording `prompts` (a PromptSet) in every checkpoint
    folder the trainer saves, so an intermediate checkpoint is asked with its prompts too."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from pipelines.core.prompts import record_prompt_set

    class RecordPromptSet(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                record_prompt_set(prompts, folder)

    return RecordPromptSet()


def _types(cls) -> dict:
    return typing.get_type_hints(cls)


def _checked(cls, data: dict, where: str) -> dict:
    known = _types(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown} for {cls.__name__}; "
                         f"known: {sorted(known)}")
    return data


def _coerce(raw: str, kind, key: str):
    """A command-line string as a value of type `kind`."""
    text = raw.strip()
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional and text.lower() in ("null", "none", "~", ""):
        return None
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(raw, inner[0], key)
        return yaml.safe_load(text)  # a union of several types: let YAML decide
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return raw
        if typing.get_origin(kind) is list:
            value = yaml.safe_load(text) if text.startswith("[") else \
                [part.strip() for part in text.split(",") if part.strip()]
            (item,) = typing.get_args(kind) or (str,)
            return [_coerce(str(v), item, key) for v in value]
        if typing.get_origin(kind) is dict or kind is dict:
            value = yaml.safe_load(text)
            if not isinstance(value, dict):
                raise ValueError("expected a YAML mapping")
            return value
    except ValueError as exc:
        raise ValueError(f"--set {key}={raw}: {exc}") from None
    return yaml.safe_load(text)
