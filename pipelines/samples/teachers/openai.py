"""The teacher behind any OpenAI-compatible endpoint (vLLM or SGLang servers, commercial APIs),
over `pipelines.core.llm.LLMClient`: concurrency limit, retries, response cache, token accounting.

    teacher = OpenAITeacher(LLMClient(LLMConfig(base_url=..., model=...)), image_root)
    out = teacher.generate(samples)       # TeacherOutput(trajectories, quarantine, stats)
    teacher.client.usage.as_dict()        # requests, retries, cache hits, tokens (the client's life;
                                          # out.stats["usage"]: this call's)

In the loop (`in_loop=InLoop(sandbox, store, cache, LoopConfig(continuation=...))`): `prefill`
for vLLM and SGLang servers (the assistant message is continued: `continue_final_message`),
`turns` for APIs without prefill (the sandbox output comes back as a user message).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.llm import Completion, LLMClient
from pipelines.samples.teachers.loop import InLoop
from pipelines.samples.teachers.model import ModelTeacher, TeacherConfig


class OpenAITeacher(ModelTeacher):
    def __init__(self, client: LLMClient, image_root: str | Path,
                 config: TeacherConfig | None = None, in_loop: InLoop | None = None):
        super().__init__(image_root, config, in_loop)
        self.client = client
        self.name = f"openai:{client.config.model}"

    def complete(self, conversations: list[list[dict]], sampling: dict) -> list[Completion | Exception]:
        return self.client.chat_many(conversations, **sampling)

    def generate(self, samples, hints=None, operation=None):
        before = self.client.usage.as_dict()
        out = super().generate(samples, hints, operation)
        out.stats["usage"] = self.client.usage.since(before)    # this call's, not the client's life
        return out
