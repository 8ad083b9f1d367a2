"""The OpenAI-compatible client (pipelines.core.llm) against a loopback server that misbehaves on
purpose (429 with Retry-After, 500, stalls, 400), and the OpenAI teacher end to end: a fake
OpenAI server answers in the Thyme protocol, the output is parsed, executed in the sandbox and
audited."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from email.utils import formatdate
from types import SimpleNamespace

import httpx2
import pytest
from fake_openai import FakeOpenAI, guided_reply

from pipelines.core.images import ImageStore
from pipelines.core.llm import (
    LLMClient,
    LLMConfig,
    LLMError,
    image_part,
    request_key,
    system_message,
    user_message,
)
from pipelines.pool.generate import generate_samples
from pipelines.samples.audit import audit
from pipelines.samples.execute import execute
from pipelines.samples.teachers import OpenAITeacher, TeacherConfig


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def _client(fake: FakeOpenAI, **kw) -> LLMClient:
    cfg = dict(base_url=fake.url, model="fake-vlm", api_key_env=None, max_concurrency=4,
               timeout_s=5.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=3.0)
    cfg.update(kw)
    return LLMClient(LLMConfig(**cfg))


HELLO = [system_message("be brief"), user_message("hello")]


# ---------------------------------------------------------------------------------------------
# Retries, timeouts, errors
# ---------------------------------------------------------------------------------------------

def test_429_waits_for_retry_after_then_succeeds(fake):
    fake.script = ["429"]
    client = _client(fake)
    t0 = time.perf_counter()
    completion = client.chat_sync(HELLO, temperature=0.0)
    waited = time.perf_counter() - t0
    assert completion.text == "<think>ok</think> <answer>A</answer>"
    assert waited >= 0.95, f"Retry-After: 1 was not honoured (retried after {waited:.2f} s)"
    assert client.usage.as_dict() == {"requests": 2, "retries": 1, "cache_hits": 0, "failures": 0,
                                      "prompt_tokens": 11, "completion_tokens": 7}


def test_500s_are_retried_with_backoff(fake):
    fake.script = ["500", "503", "502"]
    client = _client(fake)
    assert client.chat_sync(HELLO).finish_reasons == ["stop"]
    assert fake.requests == 4 and client.usage.retries == 3


def test_a_stalled_response_times_out_and_is_retried(fake):
    fake.script = ["stall"]
    client = _client(fake, timeout_s=0.4)
    t0 = time.perf_counter()
    client.chat_sync(HELLO)
    elapsed = time.perf_counter() - t0
    assert 0.4 <= elapsed < fake.stall_s, elapsed        # gave up on the stall, did not wait it out
    assert fake.requests == 2 and client.usage.retries == 1


def test_giving_up_raises_with_the_last_error(fake):
    fake.script = ["503"] * 10
    client = _client(fake, max_retries=2)
    with pytest.raises(LLMError, match="gave up after 3 attempts.*HTTP 503"):
        client.chat_sync(HELLO)
    assert fake.requests == 3 and client.usage.failures == 1


def test_client_errors_are_not_retried(fake):
    fake.script = ["400"]
    client = _client(fake)
    with pytest.raises(LLMError) as info:
        client.chat_sync(HELLO)
    assert info.value.status == 400 and fake.requests == 1
    # in a batch, the failure comes back in its slot and the others succeed
    fake.script = ["ok", "400", "ok"]
    results = _client(fake, max_concurrency=1).chat_many([HELLO] * 3)
    assert [type(r).__name__ for r in results] == ["Completion", "LLMError", "Completion"]


def test_a_malformed_response_is_retried_then_an_error_not_a_crash(fake):
    fake.script = ["malformed", "garbage"]          # two bad 200s, then a good answer
    client = _client(fake, max_retries=2, backoff_base_s=0.01)
    assert client.chat_sync(HELLO).text == "<think>ok</think> <answer>A</answer>"
    assert fake.requests == 3 and client.usage.retries == 2
    fake.script = ["malformed"] * 3
    client = _client(fake, max_retries=2, backoff_base_s=0.01)
    with pytest.raises(LLMError, match="gave up after 3 malformed responses"):
        client.chat_sync(HELLO)
    assert client.usage.failures == 1


def test_retry_after_accepts_seconds_and_http_dates_and_the_backoff_is_ours(fake):
    client = _client(fake, max_retries=3, backoff_base_s=0.5, backoff_max_s=30.0)

    async def sdk_client():
        return client._session()[0]

    sdk = asyncio.run(sdk_client())
    options = SimpleNamespace(get_max_retries=lambda default: default)   # as the SDK passes it

    def wait(headers: dict, remaining: int = 3) -> float:
        return sdk._calculate_retry_timeout(remaining, options, httpx2.Headers(headers))

    assert 3.0 <= wait({"retry-after": "3"}) <= 3.0 + 0.5
    assert 8 <= wait({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10.5
    assert wait({"retry-after": "600"}) <= 30.0                 # capped at backoff_max_s
    assert 0.25 <= wait({"retry-after": "soon"}) <= 0.5         # unreadable: our backoff
    assert 0.25 <= wait({}, remaining=3) <= 0.5                 # first retry: ~backoff_base_s
    assert 1.0 <= wait({}, remaining=1) <= 2.0                  # third retry: doubled twice


def test_our_backoff_replaces_the_sdks(fake):
    """The SDK's own wait (0.5 s doubling to 8 s) would take >= 2.6 s for three 500s; ours, at
    backoff_base_s=0.01, a few hundredths. Catches an SDK that stops calling our hook."""
    fake.script = ["500", "500", "500"]
    client = _client(fake, backoff_base_s=0.01)
    t0 = time.perf_counter()
    client.chat_sync(HELLO)
    assert time.perf_counter() - t0 < 2.0 and client.usage.retries == 3


# ---------------------------------------------------------------------------------------------
# Concurrency, accounting, cache, messages
# ---------------------------------------------------------------------------------------------

def test_concurrency_limit_is_respected():
    server = FakeOpenAI(delay=0.15)
    try:
        client = _client(server, max_concurrency=3)
        conversations = [[user_message(f"q{i}")] for i in range(12)]
        t0 = time.perf_counter()
        results = client.chat_many(conversations, n=2)
        elapsed = time.perf_counter() - t0
    finally:
        server.close()
    assert server.max_inflight == 3                     # never more, and really parallel
    assert elapsed < 12 * 0.15                          # faster than one at a time
    assert all(len(r.texts) == 2 for r in results)
    assert client.usage.as_dict() == {"requests": 12, "retries": 0, "cache_hits": 0, "failures": 0,
                                      "prompt_tokens": 12 * 11, "completion_tokens": 12 * 14}


def test_responses_are_cached_by_model_messages_images_and_params(fake, tmp_path, sample_image):
    client = _client(fake, cache_dir=str(tmp_path / "cache"))
    with_image = [user_message("what is this?", images=[sample_image])]
    first = client.chat_sync(with_image, temperature=0.0)
    again = client.chat_sync(with_image, temperature=0.0)
    assert not first.cached and again.cached and again.texts == first.texts
    assert fake.requests == 1 and client.usage.cache_hits == 1
    assert again.prompt_tokens == 11                    # the cached entry keeps its accounting
    assert client.usage.prompt_tokens == 11             # ...but tokens are not counted twice

    client.chat_sync(with_image, temperature=0.5)       # other sampling: a new request
    other_image = [user_message("what is this?", images=[b"\x89PNG\r\n\x1a\n" + b"0" * 300])]
    client.chat_sync(other_image, temperature=0.0)      # other image bytes: a new request
    assert fake.requests == 3
    # a new client on the same directory (a re-run) is served from disk
    rerun = _client(fake, cache_dir=str(tmp_path / "cache"))
    assert rerun.chat_sync(with_image, temperature=0.0).cached and fake.requests == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))     # writes were atomic
    # a damaged entry is a miss, not a crash
    key = request_key("fake-vlm", with_image, {"temperature": 0.0})
    (tmp_path / "cache" / key[:2] / f"{key}.json").write_text("{trunc")
    assert not rerun.chat_sync(with_image, temperature=0.0).cached and fake.requests == 4


def test_images_travel_as_data_urls_and_the_key_only_by_env_var(fake, sample_image, monkeypatch):
    monkeypatch.setenv("THYME_TEST_KEY", "sk-test-123")
    _client(fake, api_key_env="THYME_TEST_KEY").chat_sync(
        [user_message("describe", images=[sample_image])])
    (body,), (headers,) = fake.bodies, fake.headers
    assert headers["Authorization"] == "Bearer sk-test-123"
    image, text = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "describe"}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    with open(sample_image, "rb") as f:
        assert base64.b64decode(url.split(",", 1)[1]) == f.read()
    monkeypatch.delenv("THYME_TEST_KEY")
    _client(fake, api_key_env="THYME_TEST_KEY").chat_sync(HELLO)
    assert "Authorization" not in fake.headers[-1]
    with pytest.raises(ValueError, match="unknown image format"):
        image_part(b"not an image")


def test_async_api_and_the_sync_wrapper_inside_a_loop(fake):
    client = _client(fake)

    async def main():
        results = await asyncio.gather(*(client.chat(HELLO, seed=i) for i in range(3)))
        with pytest.raises(RuntimeError, match="running event loop"):
            client.chat_sync(HELLO)
        await client.aclose()
        return results

    assert len(asyncio.run(main())) == 3 and fake.requests == 3
    with pytest.raises(ValueError, match="model is required"):
        LLMConfig(model="")


# ---------------------------------------------------------------------------------------------
# The OpenAI teacher end to end: fake server -> parse -> sandbox -> audit
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    store = ImageStore(tmp_path_factory.mktemp("llm-teacher-store"))
    return store, list(generate_samples(0, 20, 0, store))


def test_openai_teacher_end_to_end(pool, sandbox, tmp_path):
    store, samples = pool
    server = FakeOpenAI(reply=guided_reply)
    try:
        client = LLMClient(LLMConfig(base_url=server.url, model="fake-vlm", api_key_env=None,
                                     max_concurrency=4, backoff_base_s=0.01,
                                     cache_dir=str(tmp_path / "llm-cache")))
        teacher = OpenAITeacher(client, store.root, TeacherConfig(batch_size=8))
        server.script = ["429", "500"]      # transient trouble along the way changes nothing
        out = teacher.generate(samples)
        tasks = {s.id: s.task for s in samples}
        served = [s for s in samples if s.task in ("crop", "rotate", "no_code")]
        assert len(out.trajectories) == len(served) and teacher.name == "openai:fake-vlm"
        assert {tasks[r["sample_id"]] for r in out.quarantine} == {"contrast", "computation"}
        assert {r["reason"] for r in out.quarantine} == {"no_answer"}
        assert out.stats["usage"]["requests"] == len(samples) + 2
        assert out.stats["usage"]["retries"] == 2

        by_id = {s.id: s for s in samples}
        execute(out.trajectories, by_id, store, sandbox)
        audited = [audit(t, by_id[t.sample_id], store.root) for t in out.trajectories]
        failures = [(t.task, [(c.name, c.reason) for c in t.audit if c.verdict == "fail"])
                    for t in audited if not t.passed]
        assert not failures, failures
        assert {t.kind for t in audited} == {"direct", "single"}
        assert all(t.code_turns[0].result.kind == "image" for t in audited if t.kind == "single")

        # a re-run is served from the response cache: no new request
        before = server.requests
        again = teacher.generate(samples)
        assert server.requests == before
        assert [t.id for t in again.trajectories] == [t.id for t in out.trajectories]

        # a sample of unknown task goes through the decision prompt first
        real = dataclasses.replace(samples[0], task="real_world")
        decided = teacher.generate([real])
        assert decided.stats["by_operation"] == {"none": 1}
        assert [t.kind for t in decided.trajectories] == ["direct"]
        asked = [b for b in server.bodies[before:] if "Decide how" in json.dumps(b["messages"])]
        assert len(asked) == 1 and asked[0]["temperature"] == 0.0
    finally:
        server.close()
