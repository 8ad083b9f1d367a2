"""The `openai` SDK's async client as pipelines.core.llm uses it, imported only when a request is
made (the SDK takes about a second to import, and most users of llm.py never send one).

- `SDKClient`: `openai.AsyncOpenAI` with LLMConfig's wait between attempts. The SDK retries
  (408/409/429/5xx, timeouts, connection errors) and reads Retry-After; its wait is fixed at
  0.5 s doubling to 8 s, so `_calculate_retry_timeout`, the SDK's hook for that wait, is
  overridden (tests/test_llm_client.py checks the hook is still called).
- `counting_attempts`: HTTP attempts of the request in flight in this task, retries included,
  counted by an httpx event hook (the SDK retries inside one call).
- `split_params`: sampling fields the SDK names, and the rest for `extra_body` (vLLM's extras).
"""

from __future__ import annotations

import contextvars
import inspect
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import openai
from openai.resources.chat.completions import AsyncCompletions

from pipelines.core.llm import LLMConfig

_SDK_FIELDS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self", "messages", "model", "stream", "timeout", "extra_headers", "extra_query", "extra_body"}
_attempts: contextvars.ContextVar[list[int]] = contextvars.ContextVar("llm_attempts")


class SDKClient(openai.AsyncOpenAI):
    """`AsyncOpenAI` with our backoff; `request_headers` go with every request."""

    def __init__(self, *, backoff_base_s: float, backoff_max_s: float,
                 request_headers: dict, **kwargs):
        super().__init__(**kwargs)
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.request_headers = request_headers

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None) -> float:
        attempt = options.get_max_retries(self.max_retries) - remaining_retries
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        delay = backoff * (0.5 + random.random() / 2)      # jitter: spread out a herd
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay


def sdk_client(config: LLMConfig, api_key: str | None) -> SDKClient:
    """A client for one event loop: `max_concurrency` connections, `timeout_s` on every connect,
    send and read, `max_retries`. No key: no Authorization header at all (the SDK would
    otherwise fall back to OPENAI_API_KEY, whatever server `base_url` names)."""
    timeout = httpx2.Timeout(config.timeout_s)
    http = openai.DefaultAsyncHttpxClient(
        timeout=timeout, event_hooks={"request": [_count_attempt]},
        limits=httpx2.Limits(max_connections=config.max_concurrency,
                             max_keepalive_connections=config.max_concurrency))
    return SDKClient(base_url=config.base_url, api_key=api_key or "unused", timeout=timeout,
                     max_retries=config.max_retries, http_client=http,
                     backoff_base_s=config.backoff_base_s, backoff_max_s=config.backoff_max_s,
                     request_headers={} if api_key else {"Authorization": openai.Omit()})


@contextmanager
def counting_attempts() -> Iterator[list[int]]:
    """`[n]`: the HTTP attempts sent inside this block, in this task."""
    counter = [0]
    token = _attempts.set(counter)
    try:
        yield counter
    finally:
        _attempts.reset(token)


async def _count_attempt(request: httpx2.Request) -> None:
    counter = _attempts.get(None)
    if counter is not None:
        counter[0] += 1


def split_params(params: dict) -> tuple[dict, dict]:
    """(fields `chat.completions.create` takes by name, the rest for `extra_body`)."""
    named = {k: v for k, v in params.items() if k in _SDK_FIELDS}
    return named, {k: v for k, v in params.items() if k not in _SDK_FIELDS}
