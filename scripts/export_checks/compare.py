"""What each framework's own code labels on our exports, row by row, against thyme_train.chat.

    bash scripts/export_frameworks_env.sh                       # once: the scratch environments
    .venv/bin/python scripts/export_checks/compare.py [--work DIR] [--json OUT.json]

Writes a published dataset of the crafted rows (tests/export_data.py: single round, two rounds
with an error message, computation text-only and with an image), exports it for TRL, ms-swift and
LLaMA-Factory (all rounds, and last round only), and encodes each export with the framework's
own code: TRL's `SFTTrainer` collator here; ms-swift's `load_dataset` + `get_template` and
LLaMA-Factory's `get_dataset` in their environments ($THYME_EXPORT_ENVS, default
~/.cache/thyme/export-envs). For contrast it also runs TRL with its own Qwen2.5-VL training
template and LLaMA-Factory with its built-in `qwen2_vl` template. Prints a markdown table per
setting; exits 1 unless every export labels 0 sandbox and 0 image tokens and exactly our
collator's tokens of the model's writing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import export_data  # noqa: E402  (tests/export_data.py: the crafted rows)

from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from pipelines.datasets.exports import ExportConfig, export  # noqa: E402
from pipelines.datasets.exports.labels import label_counts  # noqa: E402

ENVS = Path(os.environ.get("THYME_EXPORT_ENVS", Path.home() / ".cache" / "thyme" / "export-envs"))
CHECKS = Path(__file__).resolve().parent


def _sources() -> list[tuple[str, int, dict, dict]]:
    """(split, index in split, row, images) in export order."""
    return [(split, i, row, images) for split, items in export_data.rows().items()
            for i, (row, images) in enumerate(items)]


def reference(processor, last_round_only: bool) -> dict[str, tuple[list[int], list[int]]]:
    from thyme_train.chat import ThymeChat

    chat = ThymeChat(processor, system_prompt=DEFAULT_SYSTEM_PROMPT, train_last_round_only=last_round_only)
    out = {}
    for _, _, row, images in _sources():
        enc = chat.encode(export_data.thyme_row(row, images))
        out[row["id"]] = (enc.input_ids, enc.labels)
    return out


def trl_encode(model_dir: Path, export_dir: Path, work: Path, shipped_template: bool) -> dict:
    """{file: [{input_ids, labels}]} from TRL's SFTTrainer collator (padding stripped)."""
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    result = {}
    for file in sorted(export_dir.glob("*.parquet")):
        dataset = load_dataset("parquet", data_files=str(file), split="train", cache_dir=str(work / "hf"))
        args = SFTConfig(output_dir=str(work / "trl-out"), assistant_only_loss=True, max_length=None,
                         chat_template_path=str(export_dir / "chat_template.jinja") if shipped_template else None,
                         report_to="none", use_cpu=True, save_strategy="no")
        trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(model_dir), args=args,
                             train_dataset=dataset, processing_class=AutoProcessor.from_pretrained(model_dir))
        batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
        result[file.name] = [{"input_ids": ids[mask.bool()].tolist(), "labels": labels[mask.bool()].tolist()}
                             for ids, labels, mask in zip(batch["input_ids"], batch["labels"],
                                                          batch["attention_mask"], strict=True)]
    return result


def env_encode(framework: str, export_dir: Path, model_dir: Path, work: Path, *extra: str) -> dict:
    python = ENVS / f"venv-{framework}" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: run scripts/export_frameworks_env.sh (THYME_EXPORT_ENVS={ENVS})")
    out = work / f"{framework}-{export_dir.name}-{'-'.join(extra) or 'default'}.json"
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / f"hf-{framework}"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(python), str(CHECKS / f"{framework}_encode.py"), str(export_dir),
                           str(model_dir), str(out), *extra], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{framework} encoding failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def llamafactory_train(export_dir: Path, model_dir: Path, work: Path) -> float:
    """Two training steps through the export's own `thyme_llamafactory.py` (as its README runs it)."""
    config = work / "llamafactory-train.yaml"
    datasets = ",".join(json.loads((export_dir / "dataset_info.json").read_text()))
    config.write_text(json.dumps({
        "model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "full",
        "freeze_vision_tower": True, "dataset_dir": str(export_dir), "media_dir": str(export_dir),
        "dataset": datasets, "template": "thyme_qwen2_vl", "cutoff_len": 4096, "max_steps": 2,
        "per_device_train_batch_size": 2, "output_dir": str(work / "llamafactory-out"),
        "overwrite_output_dir": True, "report_to": "none", "use_cpu": True, "save_strategy": "no",
        "overwrite_cache": True}))  # JSON is YAML
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-llamafactory"), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.run([str(ENVS / "venv-llamafactory" / "bin" / "python"),
                           str(export_dir / "thyme_llamafactory.py"), str(config)],
                          env=env, capture_output=True, text=True, cwd=work)
    if proc.returncode or "train_loss" not in proc.stdout + proc.stderr:
        raise RuntimeError(f"LLaMA-Factory training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - start


def measure(encoded: dict, ref: dict, processor) -> list[dict]:
    rows = []
    for split, index, row, _ in _sources():
        theirs = encoded[next(f for f in encoded if f.rsplit(".", 1)[0] == split)][index]
        ids, labels = ref[row["id"]]
        ours = label_counts(ids, labels, processor.tokenizer, processor.image_token)
        counts = label_counts(theirs["input_ids"], theirs["labels"], processor.tokenizer, processor.image_token)
        newline = processor.tokenizer.encode("\n")
        if theirs["input_ids"] == ids:
            id_note = "identical"
            label_note = "equal" if theirs["labels"] == labels else \
                "equal but the final newline (labelled)" if theirs["labels"][:-1] == labels[:-1] \
                and ids[-1:] == newline else "differ"
        elif theirs["input_ids"] == ids[:-1] and ids[-1:] == newline:
            id_note = "identical but the final newline"
            label_note = "equal" if theirs["labels"] == labels[:-1] else "differ"
        else:
            id_note, label_note = "differ", "differ"
        rows.append({"row": row["id"], **counts.as_dict(), "ours_own_labelled": len(ours.own),
                     "own_equal": counts.own == ours.own, "ids": id_note, "labels": label_note})
    return rows


def passes(rows: list[dict]) -> bool:
    return all(r["labelled_sandbox"] == r["labelled_image"] == r["label_mismatch"] == 0 and r["own_equal"]
               and r["ids"] != "differ" for r in rows)


def table(title: str, rows: list[dict], seconds: float) -> str:
    lines = [f"**{title}** ({seconds:.0f} s)", "",
             "| row | tokens | labelled | sandbox tokens (labelled) | image tokens (labelled) | own writing "
             "labelled (ours) | after end | ids vs ours | labels vs ours |", "|---|" + "---:|" * 6 + "---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['tokens']} | {r['labelled']} | {r['sandbox_tokens']} "
                     f"({r['labelled_sandbox']}) | {r['image_tokens']} ({r['labelled_image']}) | "
                     f"{r['own_labelled']} ({r['ours_own_labelled']}){'' if r['own_equal'] else ' ≠'} | "
                     f"{r['labelled_after_end']} | {r['ids']} | {r['labels']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write every row's figures here")
    parser.add_argument("--train", action="store_true",
                        help="also train 2 steps through the LLaMA-Factory export's thyme_llamafactory.py")
    args = parser.parse_args(argv)
    from transformers import AutoProcessor

    from thyme_train.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        model_dir = build_tiny_model(work / "tiny")
        processor = AutoProcessor.from_pretrained(model_dir)
        published = work / "published"
        if not published.exists():
            export_data.write_published(published, encodings=("thyme",))
        results, ok = {}, True
        for last_round_only in (False, True):
            ref = reference(processor, last_round_only)
            suffix = "-last-round" if last_round_only else ""
            runs = []
            for fmt in ("trl", "swift", "llamafactory"):
                out = work / f"{fmt}{suffix}"
                if not out.exists():
                    export(published, out, ExportConfig(format=fmt, train_last_round_only=last_round_only))
                runs.append((fmt, out))
            setting = "last round only" if last_round_only else "all rounds"
            jobs = [(f"TRL 1.16 SFTTrainer collator, shipped template ({setting})", True,
                     lambda o=runs[0][1]: trl_encode(model_dir, o, work, True)),
                    (f"ms-swift 4.6.0 load_dataset + get_template('qwen2_5_vl') ({setting})", True,
                     lambda o=runs[1][1]: env_encode("swift", o, model_dir, work)),
                    (f"LLaMA-Factory 0.9.5 get_dataset, template thyme_qwen2_vl ({setting})", True,
                     lambda o=runs[2][1]: env_encode("llamafactory", o, model_dir, work))]
            if not last_round_only:
                jobs += [("contrast: TRL with its own Qwen2.5-VL training template", False,
                          lambda o=runs[0][1]: trl_encode(model_dir, o, work, False)),
                         ("contrast: LLaMA-Factory built-in template qwen2_vl (tool turns)", False,
                          lambda o=runs[2][1]: env_encode("llamafactory", o, model_dir, work, "qwen2_vl"))]
            for title, required, job in jobs:
                start = time.monotonic()
                rows = measure(job(), ref, processor)
                seconds = time.monotonic() - start
                results[title] = {"rows": rows, "seconds": round(seconds, 1), "passes": passes(rows)}
                ok = ok and (passes(rows) or not required)
                print(table(title, rows, seconds) + ("" if passes(rows) or not required else "\n\nFAILED"))
                print()
        if args.train:
            seconds = llamafactory_train(work / "llamafactory", model_dir, work)
            print(f"LLaMA-Factory trained 2 steps through thyme_llamafactory.py ({seconds:.0f} s)")
            results["training"] = {"llamafactory_thyme_qwen2_vl_2_steps_seconds": round(seconds, 1)}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print("all exports label the model's writing only" if ok else "SOME EXPORTS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
