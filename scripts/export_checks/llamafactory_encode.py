"""Encode a LLaMA-Factory export with LLaMA-Factory's own loader and template (runs in the
LLaMA-Factory env).

    VENV/bin/python llamafactory_encode.py EXPORT_DIR MODEL_DIR OUT.json [TEMPLATE]

TEMPLATE: `thyme_qwen2_vl` (default; registered by the export's `thyme_llamafactory.py`, imported
here exactly as the export's README runs it) or the built-in `qwen2_vl`. Builds the SFT dataset of
every dataset in the export's `dataset_info.json` with `get_dataset` (what `run_exp` trains on:
ids and labels; the collator only pads them) and writes {file: [{input_ids, labels}, ...]} in
file order.
"""

import json
import sys
import tempfile
from pathlib import Path


def main(export_dir: str, model_dir: str, out: str, template: str = "thyme_qwen2_vl") -> None:
    export_dir = Path(export_dir).resolve()
    sys.path.insert(0, str(export_dir))
    import thyme_llamafactory  # noqa: F401  registers thyme_qwen2_vl
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    info = json.loads((export_dir / "dataset_info.json").read_text())
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in info.items():
            model_args, data_args, training_args, _, _ = get_train_args({
                "model_name_or_path": str(Path(model_dir).resolve()), "stage": "sft", "do_train": True,
                "finetuning_type": "full", "dataset_dir": str(export_dir), "media_dir": str(export_dir),
                "dataset": name, "template": template, "cutoff_len": 65536, "overwrite_cache": True,
                "output_dir": tmp, "report_to": "none"})
            tokenizer_module = load_tokenizer(model_args)
            chat_template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
            dataset = get_dataset(chat_template, model_args, data_args, training_args, "sft",
                                  **tokenizer_module)["train_dataset"]
            result[entry["file_name"]] = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in dataset]
    Path(out).write_text(json.dumps(result))
    print(f"LLaMA-Factory ({template}) encoded {sum(map(len, result.values()))} rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
