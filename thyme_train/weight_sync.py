"""After every optimizer step the rollout engine's weights must equal the policy's: the trainer
side of that sync (thyme_train.vllm_weights is vLLM's side). TRL's own vLLM sync
(`trl[vllm]`) stops at vLLM 0.31 (STACK.md), so the engines here sync through vLLM itself:

- colocated (`ColocatedSync`): the engine runs in this process (vLLM's in-process engine core:
  `distributed_executor_backend: external_launcher` under torchrun/accelerate, as TRL colocates,
  or `VLLM_ENABLE_V1_MULTIPROCESSING=0`), so each parameter is handed to the worker by
  reference through `LLM.collective_rpc` and reloaded there (`vllm_weights.reload_weights`),
  one gathered parameter at a time;
- server (`ServerSync`): vLLM's weight-transfer API — the HTTP routes of a server started with
  `VLLM_SERVER_DEV_MODE=1 --weight-transfer-config '{"backend": ...}'` and the trainer engine of
  `vllm.distributed.weight_transfer` for the data — with vLLM's `nccl` backend on GPUs, or
  our `thyme_gloo` (CPU tensors over gloo).

Either way every parameter is sent (frozen ones too: the engine may have slept its weights away,
and it costs one copy per step), under its Hugging Face name, gathered from its shards under
DeepSpeed ZeRO-3 (TRL's `DistributedBackend`) or FSDP2 (`full_tensor`): every trainer rank
iterates them in step, only the first sends. After the load the engine's prefix and encoder
caches are reset (they hold keys and image embeddings computed with the old weights).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import torch


def policy_weights(model, accelerator=None) -> Iterator[tuple[str, torch.Tensor]]:
    """`(Hugging Face name, full tensor)` for every parameter of the (unwrapped) policy, one at a
    time; under ZeRO-3 each is gathered for the duration of its yield (a collective: every rank
    must iterate)."""
    gather = None
    if accelerator is not None:
        from trl.distributed import DistributedBackend

        gather = DistributedBackend(accelerator).gather_params
    for name, param in model.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")
        if gather is not None:
            with gather([param]):
                yield name, _full(param.data)
        else:
            yield name, _full(param.data)


def weight_shapes(model) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, full shape) of every parameter, without gathering (ZeRO-3 keeps the full
    shape in `ds_shape`)."""
    return [(name.replace("_checkpoint_wrapped_module.", ""), p.dtype,
             tuple(getattr(p, "ds_shape", None) or p.shape)) for name, p in model.named_parameters()]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full = getattr(tensor, "full_tensor", None)          # an FSDP2 DTensor: all-gather it
    return full() if callable(full) else tensor


def _load_on_worker(worker, weights):
    """Runs inside vLLM's worker (in this process): reload every weight, check none is left."""
    from vllm.config import set_current_vllm_config

    from thyme_train.vllm_weights import reload_weights

    model = worker.model_runner.model
    with set_current_vllm_config(worker.vllm_config):
        loaded = reload_weights(model, worker.model_runner.model_config, weights)
    missing = sorted({name for name, _ in model.named_parameters()} - loaded)
    if missing:
        raise RuntimeError(f"the policy's weights did not cover vLLM's {missing[:5]} "
                           f"({len(missing)} parameters): the engine would keep stale weights")
    return len(loaded)


class ColocatedSync:
    """Pushes the policy into a `vllm.LLM` that runs in this process."""

    def __init__(self, llm):
        if getattr(llm.llm_engine, "model_executor", None) is None:
            raise ValueError("colocated weight sync needs vLLM's engine in this process: build it "
                             "with distributed_executor_backend=external_launcher (torchrun, "
                             "accelerate) or with VLLM_ENABLE_V1_MULTIPROCESSING=0")
        self.llm = llm

    def push(self, model, accelerator=None) -> int:
        """Load every policy weight into the engine; returns how many vLLM parameters loaded."""
        (count,) = self.llm.collective_rpc(_load_on_worker, args=(policy_weights(model, accelerator),))
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        return count


class ServerSync:
    """Pushes the policy to a vLLM server through vLLM's weight-transfer API. `base_url`: the
    server (with or without `/v1`); `backend`: the server's `--weight-transfer-config` backend
    (`nccl` or `thyme_gloo`); `master_address`/`master_port`: where the trainer's rank 0 opens
    the transfer group; `server_workers`: the server's workers (tensor x pipeline x data
    parallel). Build on every trainer rank (`rank`); only rank 0 talks to the server."""

    def __init__(self, base_url: str, model, accelerator=None, *, backend: str = "nccl",
                 master_address: str = "127.0.0.1", master_port: int = 51216,
                 server_workers: int = 1, rank: int = 0, timeout_s: float = 600.0):
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.rank, self.timeout_s = rank, timeout_s
        if backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo as Info
        elif backend == "thyme_gloo":
            from thyme_train.vllm_weights import GlooTrainerInitInfo as Info
        else:
            raise ValueError(f"weight-transfer backend {backend!r}: nccl (GPUs) or thyme_gloo")
        info = Info(master_address=master_address, master_port=master_port,
                    world_size=1 + server_workers, rank=rank)
        client = HTTPVLLMWeightSyncClient(self.base_url, timeout=timeout_s)
        self.engine = WeightTransferTrainerFactory.trainer_init(
            info, client=client, source=_source(model, accelerator))

    def push(self, model=None, accelerator=None) -> None:
        """Send every policy weight (the model given at construction), then reset the server's
        caches."""
        self.engine.send_weights()
        if self.rank == 0:
            for route in ("reset_prefix_cache", "reset_encoder_cache"):
                self._post(route)

    def _post(self, route: str) -> None:
        request = urllib.request.Request(f"{self.base_url}/{route}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            if response.status != 200:
                raise RuntimeError(f"the vLLM server answered {response.status} to /{route}")


def server_info(base_url: str, timeout_s: float = 30.0) -> dict:
    """A dev-mode vLLM server's config (`/server_info?config_format=json`)."""
    url = base_url.rstrip("/").removesuffix("/v1") + "/server_info?config_format=json"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())["vllm_config"]
    except OSError as exc:
        raise RuntimeError(f"{url}: no server info ({exc}); start the server with "
                           "VLLM_SERVER_DEV_MODE=1 (its weight-update routes need it too)") from exc


def _source(model, accelerator):
    """The policy as vLLM's `WeightSource` (its trainer engines read metadata, then iterate)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class PolicySource(WeightSource):
        def metadata(self):
            return [ParamMeta(name, dtype, shape) for name, dtype, shape in weight_shapes(model)]

        def __iter__(self):
            return policy_weights(model, accelerator)

    return PolicySource()
