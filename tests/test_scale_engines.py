"""The engines' placement rules that need no cluster: the OpenAI teacher's concurrency shared over
the cluster, and the vLLM teacher's engine kept for every shard and run of a process."""

import itertools

import pytest

from pipelines.samples.stages import TeacherSpec
from pipelines.scale import local
from pipelines.scale.ray_engine import _share


@pytest.mark.parametrize("total,shards,cpus", itertools.product([1, 2, 7, 8, 64], [1, 3, 40],
                                                               [1, 2, 16]))
def test_requests_in_flight_over_the_cluster_never_exceed_the_limit(total, shards, cpus):
    in_flight, per_shard = _share(total, shards, cpus)
    assert 1 <= in_flight <= min(shards, cpus, total) and per_shard >= 1
    assert in_flight * per_shard <= total


def test_the_vllm_teacher_engine_is_built_once_per_process(monkeypatch):
    from pipelines.core.vllm_config import VLLMConfig
    built = []
    monkeypatch.setattr(VLLMConfig, "build", lambda self: built.append(self) or object())
    monkeypatch.setattr(local, "_VLLM_ENGINES", {})
    spec = TeacherSpec(kind="vllm", model="some/model-dir")
    first = local.vllm_engine(spec)
    assert local.vllm_engine(spec) is first                   # the next shard, or the next run
    assert local.vllm_engine(TeacherSpec(kind="vllm", model="some/model-dir", seed=0)) is first
    other = local.vllm_engine(TeacherSpec(kind="vllm", model="other/model"))
    assert other is not first and len(built) == 2
