"""The vLLM side of the policy -> engine weight sync (thyme_train.weight_sync is the trainer
side): reloading a running model's weights, and a gloo weight-transfer backend for vLLM's
weight-transfer API.

Reloading. vLLM post-processes weights when it loads them (on CPU it repacks every linear
layer's weight into a GEMM kernel handle and leaves an empty parameter; quantized layers
requantize), so a plain `model.load_weights` into a running engine fails or is ignored. vLLM's
layerwise reload (`initialize_layerwise_reload` ... `finalize_layerwise_reload`, what its own
NCCL engine runs) redoes that processing per layer; `reload_weights` wraps it, and re-processes
the LM head when it is tied to the embeddings (vLLM's reload processes a tied tensor through
the embedding only: its documented limitation 2; the head would keep the old weights).

Gloo backend. vLLM 0.32's weight-transfer API (`--weight-transfer-config`, the
`/init_weight_transfer_engine`, `/start_weight_update`, `/update_weights`,
`/finish_weight_update` routes, `WeightTransferTrainerFactory` on the trainer side) ships NCCL
and CUDA-IPC backends. `thyme_gloo` is the same protocol over a torch gloo group (CPU tensors, no
GPU): what runs on CPU machines, and between a CPU trainer and a server anywhere. vLLM builds
its weight-transfer engine when a worker loads the model; a server finds `thyme_gloo` when this
module is imported in its workers first, which `--worker-extension-cls
thyme_train.vllm_weights.GlooBackend` does (vLLM imports a worker extension before it loads
the model):

    VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server --model DIR \\
        --weight-transfer-config '{"backend": "thyme_gloo"}' \\
        --worker-extension-cls thyme_train.vllm_weights.GlooBackend ...

This module imports vLLM at import time; nothing outside vLLM processes imports it eagerly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import (
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)

GLOO_BACKEND = "thyme_gloo"


# ---------------------------------------------------------------------------------------------
# Reloading a running model
# ---------------------------------------------------------------------------------------------

def begin_reload(model) -> None:
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    initialize_layerwise_reload(model)


def finish_reload(model, model_config) -> None:
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    finalize_layerwise_reload(model, model_config)
    # a head tied to the embeddings shares their parameter object (Qwen2.5-VL-3B, the tiny model)
    embeddings = {id(m.weight) for m in model.modules()
                  if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    for module in model.modules():
        if (isinstance(module, ParallelLMHead) and id(module.weight) in embeddings
                and module.quant_method is not None):
            module.quant_method.process_weights_after_loading(module)


def reload_weights(model, model_config, weights) -> set[str]:
    """Load `(name, tensor)` pairs (Hugging Face names, every parameter) into a running vLLM
    model; returns the vLLM parameter names loaded."""
    begin_reload(model)
    try:
        loaded = set(model.load_weights(weights) or ())
    finally:
        finish_reload(model, model_config)
    return loaded


# ---------------------------------------------------------------------------------------------
# The gloo weight-transfer backend
# ---------------------------------------------------------------------------------------------

@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def __post_init__(self):
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(f"{len(self.names)} names, {len(self.dtype_names)} dtypes and "
                             f"{len(self.shapes)} shapes")


def _group(address: str, port: int, rank: int, world_size: int):
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(address, port, rank, world_size, "gloo")


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Worker side: joins the trainer's gloo group, receives each tensor by broadcast from the
    trainer (rank 0) and reloads the model with it (`reload_weights`' lifecycle)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        pc = self.parallel_config
        rank = pc.data_parallel_index * pc.world_size + pc.rank + init_info.rank_offset
        self.group = _group(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def start_weight_update(self) -> None:
        begin_reload(self.model)

    def finish_weight_update(self) -> None:
        finish_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        # the base class synchronizes an accelerator afterwards; gloo on CPU tensors is synchronous
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_weight_transfer_engine")
        for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names,
                                           update_info.shapes, strict=True):
            tensor = torch.empty(shape, dtype=getattr(torch, dtype_name))
            self.group.broadcast(tensor, 0).wait()
            self.model.load_weights([(name, tensor.to(self.device))])

    def shutdown(self) -> None:
        self.group = None


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: the group's rendezvous (the trainer is rank 0 and hosts it) and its size,
    1 + the server's workers (tensor x pipeline x data parallel)."""

    backend: ClassVar[str] = GLOO_BACKEND
    master_address: str
    master_port: int
    world_size: int


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side, the protocol of vLLM's NCCL trainer engine: the sender (rank 0) drives the
    server's routes and broadcasts; the other trainer ranks only iterate the source (its
    gathers are collectives)."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool = True):
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError("the gloo trainer engine needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if not engine.is_sender:
            return engine
        worker = GlooInitInfo(init_info.master_address, init_info.master_port, 1, init_info.world_size)
        # the workers block in the rendezvous inside their init call: run it beside ours
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(client.init_weight_transfer_engine, asdict(worker))
            engine.group = _group(init_info.master_address, init_info.master_port, 0, init_info.world_size)
            future.result()
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        if not self.is_sender:
            for _ in self.source:
                pass
            return
        update = GlooUpdateInfo([m.name for m in meta],
                                [str(m.dtype).removeprefix("torch.") for m in meta],
                                [list(m.shape) for m in meta])
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            future = pool.submit(self.client.update_weights, asdict(update))
            for k, ((name, tensor), m) in enumerate(zip(self.source, meta, strict=True)):
                if name != m.name or tuple(tensor.shape) != tuple(m.shape):
                    raise ValueError(f"weight {k}: the source yielded {name} {tuple(tensor.shape)}, "
                                     f"its metadata declared {m.name} {tuple(m.shape)}")
                self.group.broadcast(tensor.detach().to("cpu", m.dtype).contiguous(), 0).wait()
            future.result()
        finally:
            pool.shutdown(wait=False)   # a failed broadcast leaves the worker blocked: never join it
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


class GlooBackend:
    """The worker extension (`--worker-extension-cls thyme_train.vllm_weights.GlooBackend`)
    whose only job is that vLLM imports this module in its workers, registering `thyme_gloo`
    before the weight-transfer engine is built. It adds nothing to the worker."""


def _register() -> None:
    for factory, engine in ((WeightTransferEngineFactory, GlooWeightTransferEngine),
                            (WeightTransferTrainerFactory, GlooTrainerWeightTransferEngine)):
        try:
            factory.register_engine(GLOO_BACKEND, engine)
        except ValueError:      # already registered (the module was imported before)
            pass


_register()
