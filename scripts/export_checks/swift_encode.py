"""Encode an ms-swift export with ms-swift's own loader and template (runs in the ms-swift env).

    VENV/bin/python swift_encode.py EXPORT_DIR MODEL_DIR OUT.json

Loads every `*.jsonl` of the export with `swift.load_dataset`, encodes each row with
`get_template("qwen2_5_vl")` in training mode (loss_scale `default`, as `swift sft` does) and
collates them with the template's own data collator; writes {file: [{input_ids, labels}, ...]}
in file order.
"""

import json
import os
import sys
from pathlib import Path

from swift import get_processor, get_template, load_dataset


def main(export_dir: str, model_dir: str, out: str) -> None:
    export_dir, model_dir = Path(export_dir).resolve(), Path(model_dir).resolve()
    os.chdir(export_dir)  # image paths are relative to the export, as its README says
    processor = get_processor(str(model_dir), model_type="qwen2_5_vl")
    template = get_template(processor, template_type="qwen2_5_vl", loss_scale="default")
    template.set_mode("train")
    # ms-swift's Qwen2-VL templates hard-code the real Qwen vocabulary's image/video pad ids
    # (151655/151656); the tiny test tokenizer numbers its tokens from 0, so point them at its ids.
    for kind in ("image", "video"):
        setattr(template, f"{kind}_token_id", processor.tokenizer.convert_tokens_to_ids(f"<|{kind}_pad|>"))
    result = {}
    for file in sorted(export_dir.glob("*.jsonl")):
        if file.name == "quarantine.jsonl":
            continue
        dataset, _ = load_dataset([str(file)], remove_unused_columns=False)
        rows = [template.encode(dict(src)) for src in dataset]  # lazy_tokenize, swift's default for MLLMs
        batch = template.data_collator(rows)  # the trainer's collator: padding, labels
        result[file.name] = []
        for k, row in enumerate(rows):
            n = len(row["input_ids"])
            assert batch["input_ids"][k, :n].tolist() == list(row["input_ids"])
            result[file.name].append({"input_ids": list(row["input_ids"]),
                                      "labels": batch["labels"][k, :n].tolist()})
    Path(out).write_text(json.dumps(result))
    print(f"ms-swift encoded {sum(map(len, result.values()))} rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
