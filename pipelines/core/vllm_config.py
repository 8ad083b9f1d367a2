"""How an offline vLLM engine is built: one config for the teacher (`pipelines.samples.teachers.
vllm`) and the rollout engines (`thyme_train.vllm_engine`). vLLM is imported only in `build`, so
this module imports in environments without it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VLLMConfig:
    """How the engine is built (`vllm.LLM` arguments)."""

    model: str                        # a hub id or a local model directory
    tensor_parallel_size: int = 1     # GPUs per engine (72B: 4-8)
    max_model_len: int = 8192         # prompt (image tokens included) + completion
    max_images: int = 1               # images per prompt (limit_mm_per_prompt); videos: none
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False       # True skips CUDA graphs / compilation (CPU tests)
    seed: int = 0
    engine_kwargs: dict = field(default_factory=dict)   # any other vllm.LLM argument, as is
                                      # (e.g. mm_processor_kwargs={"max_pixels": ...})

    def build(self):
        from vllm import LLM
        return LLM(model=self.model, tensor_parallel_size=self.tensor_parallel_size,
                   max_model_len=self.max_model_len, dtype=self.dtype,
                   limit_mm_per_prompt={"image": self.max_images, "video": 0},
                   gpu_memory_utilization=self.gpu_memory_utilization,
                   enforce_eager=self.enforce_eager, seed=self.seed, **self.engine_kwargs)
