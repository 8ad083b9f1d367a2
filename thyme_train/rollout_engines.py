"""The engine GRPO-ATS rolls out with, as a researcher deploys it (`engine` in the config):

- `hf`: transformers `generate` on the policy itself (CPU tests, small GPUs);
- `vllm`, `vllm_mode: colocate`: a `vllm.LLM` in each trainer process, sharing its accelerator
  (`vllm_gpu_memory_utilization`), sleeping between rollouts where vLLM supports it
  (`vllm_sleep_level`: 1 offloads the weights, 2 drops them — they are pushed again anyway — and
  the KV cache goes in both), one engine per rank as TRL colocates
  (`distributed_executor_backend=external_launcher`);
- `vllm`, `vllm_mode: server`: a vLLM server on other devices or nodes, shared by every rank
  (`/inference/v1/generate`, thyme_train.vllm_engine.VLLMServerEngine), whose config is read and
  checked at start (`/server_info`: our ATS logits processor, a weight-transfer backend, the
  log-prob mode the importance-sampling correction needs, the image limit, the context length).

Both vLLM ways: adaptive temperature inside one request (thyme_train.vllm_ats), behaviour
log-probs (`logprobs_mode: processed_logprobs`), and after every optimizer step the engine's
weights made equal to the policy's before the next rollout (thyme_train.weight_sync). A request
that crashes the engine's step fails every request of that step; `Isolating` retries those one by
one, so only the sample that crashes it ends (`engine_error`), and when every sample of a batch
fails the run stops with the engine's error instead of training on nothing.

`session(trainer)` wraps one batch of rollouts: wake the engine, sync the weights if the policy
moved, hand out the `Engine`, then sleep. `timings` holds the last batch's seconds: `sync`,
`generate` (inside the engine) — the rest of a rollout is the sandbox and bookkeeping.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass

from thyme_train.config import doc

ENGINES = ("hf", "vllm")
VLLM_MODES = ("colocate", "server")


@dataclass
class VLLMTrainingConfig:
    """How the vLLM rollout engine runs beside the trainer (GPU defaults: colocated, the paper's)."""

    vllm_mode: str = doc("colocate: a vLLM engine in each trainer process, sharing its GPU; "
                         "server: a vLLM server elsewhere (vllm_server_url)", default="colocate")
    vllm_gpu_memory_utilization: float = doc("share of each GPU the colocated engine takes "
                                             "(weights + KV cache)", default=0.3)
    vllm_tensor_parallel_size: int = doc("GPUs per colocated engine", default=1)
    vllm_max_model_len: int | None = doc("the engine's context (null = max_total_tokens)", default=None)
    vllm_dtype: str = doc("the colocated engine's dtype (auto = the checkpoint's)", default="auto")
    vllm_enforce_eager: bool = doc("no CUDA graphs / compilation (CPU, debugging)", default=False)
    vllm_sleep_level: int = doc("sleep the colocated engine between rollouts: 0 = never (CPUs: vLLM "
                                "has no sleep mode there), 1 = offload the weights to CPU memory, "
                                "2 = drop them (they are pushed again before the next rollout)",
                                default=2)
    vllm_executor: str | None = doc("the colocated engine's distributed_executor_backend: "
                                    "external_launcher (one engine per torchrun/accelerate rank, "
                                    "as TRL colocates) or null (one process: vLLM's own)",
                                    default="external_launcher")
    vllm_engine_kwargs: dict = doc("any other vllm.LLM argument of the colocated engine",
                                   default_factory=dict)
    vllm_server_url: str = doc("server mode: the vLLM server (started as README shows)",
                               default="http://127.0.0.1:8000")
    vllm_server_timeout: float = doc("server mode: seconds to wait for the server at start, and "
                                     "for one request or weight update", default=600.0)
    vllm_max_concurrency: int = doc("server mode: requests in flight per trainer rank", default=64)
    vllm_group_address: str | None = doc("server mode: this trainer's address as the server "
                                         "reaches it, for the weight-transfer group (null = found "
                                         "from the route to the server)", default=None)
    vllm_group_port: int = doc("server mode: the weight-transfer group's port on the trainer",
                               default=51216)

    def __post_init__(self):
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        if self.vllm_sleep_level not in (0, 1, 2):
            raise ValueError(f"vllm_sleep_level must be 0, 1 or 2, got {self.vllm_sleep_level}")


class Isolating:
    """An engine whose step-crashing requests fail alone (see the module doc); times `generate`."""

    def __init__(self, engine):
        self.engine = engine
        self.max_images_per_prompt = getattr(engine, "max_images_per_prompt", None)
        self.generate_s = 0.0

    @property
    def sampling(self):
        """The engine's SamplingConfig (replaced whole to change it: the collapse remedy)."""
        return self.engine.sampling

    @sampling.setter
    def sampling(self, value):
        self.engine.sampling = value

    def generate(self, requests):
        started = time.perf_counter()
        try:
            results = list(self.engine.generate(requests))
            shared = [i for i, r in enumerate(results) if isinstance(r, BaseException)
                      and sum(r is other for other in results) > 1]
            for i in shared:             # one exception for several requests: a crashed step
                (results[i],) = self.engine.generate([requests[i]])
            return results
        finally:
            self.generate_s += time.perf_counter() - started


class HFRollouts:
    """transformers `generate` on the policy being trained."""

    def __init__(self, cfg, processor, sampling):
        self.processor, self.sampling, self.batch_size = processor, sampling, cfg.engine_batch_size
        self.hf = self.engine = None
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def session(self, trainer):
        from trl.models.utils import unwrap_model_for_generation

        from thyme_train.hf_engine import HFEngine

        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            was_training = model.training
            model.eval()
            if self.hf is None:
                self.hf = HFEngine(model, self.processor, self.sampling, self.batch_size)
                self.engine = Isolating(self.hf)
            self.hf.model = model               # under ZeRO-3: this batch's gathered model
            self.engine.generate_s = 0.0
            try:
                yield self.engine
            finally:
                model.train(was_training)
                self.timings = {"sync": 0.0, "generate": self.engine.generate_s}


class _VLLMRollouts:
    """What both vLLM ways share: the isolating engine, the sync when the policy moved."""

    engine: Isolating
    sync: object
    synced_step = 0                      # the engine starts with the checkpoint's weights
    timings: dict[str, float] = {}

    def _sync_if_moved(self, trainer, force: bool = False) -> float:
        step = trainer.state.global_step
        if step == self.synced_step and not force:
            return 0.0
        started = time.perf_counter()
        self.sync.push(trainer.accelerator.unwrap_model(trainer.model), trainer.accelerator)
        self.synced_step = step
        return time.perf_counter() - started


class ColocatedVLLM(_VLLMRollouts):
    def __init__(self, cfg, processor, sampling, model_path: str, accelerator):
        from pipelines.core.vllm_config import VLLMConfig
        from thyme_train.vllm_engine import VLLMEngine
        from thyme_train.weight_sync import ColocatedSync

        kwargs = {"logprobs_mode": "processed_logprobs", "enable_prefix_caching": True,
                  "max_num_seqs": max(cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps, 8),
                  **cfg.vllm_engine_kwargs}
        if cfg.vllm_sleep_level:
            kwargs["enable_sleep_mode"] = True
        if cfg.vllm_executor:
            kwargs["distributed_executor_backend"] = cfg.vllm_executor
            if cfg.vllm_executor == "external_launcher":   # what vLLM reads under torchrun (TRL's setup)
                os.environ.setdefault("RANK", str(accelerator.process_index))
                os.environ.setdefault("LOCAL_RANK", str(accelerator.local_process_index))
                os.environ.setdefault("WORLD_SIZE", str(accelerator.num_processes))
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29500")
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"   # the engine in this process
        if cfg.max_pixels is not None:
            kwargs.setdefault("mm_processor_kwargs", {"max_pixels": cfg.max_pixels})
        config = VLLMConfig(model=model_path, tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                            max_model_len=cfg.vllm_max_model_len or cfg.max_total_tokens,
                            max_images=cfg.max_images, dtype=cfg.vllm_dtype,
                            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                            enforce_eager=cfg.vllm_enforce_eager,
                            seed=cfg.seed * 1000 + accelerator.process_index, engine_kwargs=kwargs)
        self.vllm = VLLMEngine(config, processor, sampling)
        self.engine = Isolating(self.vllm)
        self.sync = ColocatedSync(self.vllm.llm)
        self.sleep_level = cfg.vllm_sleep_level
        self.asleep = False

    @contextlib.contextmanager
    def session(self, trainer):
        llm = self.vllm.llm
        dropped = self.asleep and self.sleep_level == 2
        if self.asleep:
            llm.wake_up(tags=["weights"])
        sync_s = self._sync_if_moved(trainer, force=dropped)
        if self.asleep:
            llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.engine.generate_s = 0.0
        try:
            yield self.engine
        finally:
            self.timings = {"sync": sync_s, "generate": self.engine.generate_s}
            if self.sleep_level:
                llm.sleep(level=self.sleep_level)
                self.asleep = True


class ServerVLLM(_VLLMRollouts):
    def __init__(self, cfg, processor, sampling, model, accelerator, importance_sampling: bool):
        from thyme_train.vllm_engine import PROCESSOR, VLLMServerEngine
        from thyme_train.weight_sync import ServerSync

        url = cfg.vllm_server_url
        info = _wait_for_server(url, cfg.vllm_server_timeout)
        checked = check_server(info, importance_sampling, cfg.max_images, PROCESSOR)
        self.vllm = VLLMServerEngine(
            url, processor, sampling, model=checked["model"],
            limit_mm_per_prompt=checked["max_images"], max_model_len=checked["max_model_len"],
            logprobs_mode=checked["logprobs_mode"], max_concurrency=cfg.vllm_max_concurrency,
            timeout_s=cfg.vllm_server_timeout)
        self.engine = Isolating(self.vllm)
        address = cfg.vllm_group_address or _address_towards(url)
        self.sync = ServerSync(url, accelerator.unwrap_model(model), accelerator,
                               backend=checked["backend"], master_address=address,
                               master_port=cfg.vllm_group_port, server_workers=checked["workers"],
                               rank=accelerator.process_index, timeout_s=cfg.vllm_server_timeout)

    @contextlib.contextmanager
    def session(self, trainer):
        sync_s = self._sync_if_moved(trainer)
        self.engine.generate_s = 0.0
        try:
            yield self.engine
        finally:
            self.timings = {"sync": sync_s, "generate": self.engine.generate_s}


def check_server(info: dict, importance_sampling: bool, max_images: int, processor_path: str) -> dict:
    """What the trainer needs from a server's `/server_info` config, checked: our logits
    processor registered, a weight-transfer backend, processed log-probs when the correction
    is on, room for `max_images` images."""
    model = info.get("model_config") or {}
    parallel = info.get("parallel_config") or {}
    processors = [str(p) for p in model.get("logits_processors") or []]
    if not any(p.replace(".ATSLogitsProcessor", ":ATSLogitsProcessor") == processor_path
               for p in processors):
        raise ValueError(f"the vLLM server runs without our logits processor (it has "
                         f"{processors}): start it with --logits-processors {processor_path}")
    transfer = info.get("weight_transfer_config") or {}
    if not transfer.get("backend"):
        raise ValueError("the vLLM server has no weight-transfer backend: start it with "
                         "VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config "
                         "'{\"backend\": \"nccl\"}' (or thyme_gloo on CPUs)")
    mode = model.get("logprobs_mode", "raw_logprobs")
    if importance_sampling and mode != "processed_logprobs":
        raise ValueError(f"the vLLM server reports {mode}: the importance-sampling correction "
                         "needs the sampled distribution's log-probs (--logprobs-mode "
                         "processed_logprobs), or set importance_sampling: off")
    limit = (((info.get("model_config") or {}).get("multimodal_config") or {})
             .get("limit_per_prompt") or {}).get("image")
    limit = limit.get("count") if isinstance(limit, dict) else limit
    if limit is not None and limit < max_images:
        raise ValueError(f"the vLLM server takes {limit} images per prompt but a rollout may hold "
                         f"max_images = {max_images}: raise --limit-mm-per-prompt or lower max_images")
    served = model.get("served_model_name")
    served = served[0] if isinstance(served, list) else served
    workers = (parallel.get("tensor_parallel_size", 1) * parallel.get("pipeline_parallel_size", 1)
               * parallel.get("data_parallel_size", 1))
    return {"model": served, "max_images": limit, "max_model_len": model.get("max_model_len"),
            "logprobs_mode": mode, "backend": transfer["backend"], "workers": workers}


def _wait_for_server(url: str, timeout_s: float) -> dict:
    from thyme_train.weight_sync import server_info

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return server_info(url, timeout_s=10)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _address_towards(url: str) -> str:
    """This machine's address on the route to the server (no packet is sent)."""
    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def build_rollouts(cfg, processor, trainer, model_path: str):
    """The rollout engine `cfg.engine` names, for this trainer process."""
    sampling = cfg.rollout().sampling()
    if cfg.engine == "hf":
        return HFRollouts(cfg, processor, sampling)
    if cfg.vllm_mode == "colocate":
        return ColocatedVLLM(cfg, processor, sampling, model_path, trainer.accelerator)
    return ServerVLLM(cfg, processor, sampling, trainer.model, trainer.accelerator,
                      cfg.importance_sampling != "off")
