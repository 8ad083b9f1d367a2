"""A scripted VLM inside a real vLLM engine, for the teacher in the loop where the engine is
built out of the test's reach (on Ray engine actors, from the teacher's settings): an engine-level
v1 logits processor, given by name in `engine_kwargs={"logits_processors": [SCRIPTED]}`, that
forces the text of a request with an image token by token: a crop with its code on a first
call, the answer once the prompt holds that code (the continued assistant message, with its
sandbox output). Requests without an image (computation samples) are left to the random tiny
model's seeded sampling. A script ends at a stop: `</code>` or the end of the turn."""

from __future__ import annotations

import math

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

SCRIPTED = "scripted_vlm:ScriptedCrop"
OUT = "/mnt/data/temp_processed_images"
CROP = ("<think>I look closer at the top-left quarter.\n<code>\n```python\nfrom PIL import Image\n"
        "img = Image.open(image_path)\npart = img.crop((0, 0, img.width // 2, img.height // 2))\n"
        f'part.save("{OUT}/quarter.png")\nprint("{OUT}/quarter.png")\n```\n</code>')
ANSWER = "\nThe enlarged quarter shows it.</think> <answer>scripted</answer>"
SHOWN = "quarter.png"       # in a prompt: the crop was written (and its output shown)


class ScriptedCrop(LogitsProcessor):
    @classmethod
    def validate_params(cls, params) -> None:
        pass

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        from transformers import AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.crop = self.tokenizer(CROP, add_special_tokens=False)["input_ids"]
        self.answer = self.tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [end]
        self.rows: dict[int, tuple[list[int], list[int]]] = {}   # index -> (script, output)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._script)

    def _script(self, params, prompt_ids, output_ids: list[int]):
        prompt = self.tokenizer.decode(prompt_ids or [])
        if SHOWN in prompt:
            return self.answer, output_ids
        return (self.crop, output_ids) if "<|image_pad|>" in prompt else None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (script, output) in self.rows.items():
            if len(output) < len(script):
                row = logits[index]
                token = script[len(output)]
                row.fill_(-math.inf)
                row[token] = 0.0
        return logits
