"""The offline vLLM teacher: a VLM (e.g. Qwen2.5-VL-72B-Instruct) loaded in this process,
batched `LLM.chat` with images, our prompts (`prompts`), tolerant parsing (`parse`).

    teacher = VLLMTeacher(VLLMConfig(model="Qwen/Qwen2.5-VL-72B-Instruct",
                                     tensor_parallel_size=8), image_root)
    out = teacher.generate(samples)       # TeacherOutput(trajectories, quarantine, stats)

vLLM is imported only when the engine is built, so this module imports in the main environment
(which has no vLLM; GPU machines install the `gpu` extra, CPU test machines `.venv-vllm` from
`scripts/vllm_cpu_env.sh`). A ready `vllm.LLM` can be passed instead of a config, to share one
engine between teachers or tests.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.llm import Completion, Usage
from pipelines.core.vllm_config import VLLMConfig
from pipelines.samples.teachers.loop import InLoop
from pipelines.samples.teachers.model import ModelTeacher, TeacherConfig


class VLLMTeacher(ModelTeacher):
    def __init__(self, engine, image_root: str | Path, config: TeacherConfig | None = None,
                 name: str | None = None, in_loop: InLoop | None = None):
        """`engine`: a `VLLMConfig` (the engine is built at first use) or a ready `vllm.LLM`.
        `in_loop`: write with the sandbox in the loop (continuation `prefill`: `LLM.chat`'s
        `continue_final_message`)."""
        super().__init__(image_root, config, in_loop)
        if isinstance(engine, VLLMConfig):
            self._engine_config, self._llm = engine, None
            model = engine.model
        else:
            self._engine_config, self._llm = None, engine
            model = engine.llm_engine.model_config.model
        self.name = name or f"vllm:{Path(model).name}"
        self.usage = Usage()

    @property
    def llm(self):
        if self._llm is None:
            self._llm = self._engine_config.build()
        return self._llm

    def complete(self, conversations: list[list[dict]], sampling: dict) -> list[Completion | Exception]:
        if not conversations:
            return []
        sampling = dict(sampling)
        # the chat template's switches (a continued assistant message) are LLM.chat arguments
        chat = {k: sampling.pop(k) for k in CHAT_OPTIONS if k in sampling}
        params = _sampling_params(sampling)
        try:
            outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False, **chat)
        except Exception:  # noqa: BLE001  one bad request must not fail the batch: isolate it
            return [self._one(c, params, chat) for c in conversations]
        return [self._completion(o) for o in outputs]

    def _one(self, conversation: list[dict], params, chat: dict) -> Completion | Exception:
        try:
            (output,) = self.llm.chat([conversation], sampling_params=params, use_tqdm=False, **chat)
        except Exception as exc:  # noqa: BLE001  reported as this sample's quarantine reason
            self.usage.add(failures=1)
            return exc
        return self._completion(output)

    def _completion(self, output) -> Completion:
        choices = sorted(output.outputs, key=lambda c: c.index)
        completion = Completion(texts=[c.text for c in choices],
                                finish_reasons=[c.finish_reason or "" for c in choices],
                                prompt_tokens=len(output.prompt_token_ids or ()),
                                completion_tokens=sum(len(c.token_ids) for c in choices))
        self.usage.add(requests=1, prompt_tokens=completion.prompt_tokens,
                       completion_tokens=completion.completion_tokens)
        return completion

    def generate(self, samples, hints=None, operation=None):
        before = self.usage.as_dict()
        out = super().generate(samples, hints, operation)
        out.stats["usage"] = self.usage.since(before)    # this call's, not the teacher's life
        return out


CHAT_OPTIONS = ("continue_final_message", "add_generation_prompt")


def _sampling_params(sampling: dict):
    """vLLM's SamplingParams from the OpenAI-style fields the teachers use."""
    from vllm import SamplingParams
    return SamplingParams(**sampling)
