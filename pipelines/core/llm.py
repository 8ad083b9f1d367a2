"""An OpenAI-compatible chat client for teachers and judges: any vLLM or SGLang server, or a
commercial API (`POST {base_url}/chat/completions`), over the official `openai` SDK's async
client.

    client = LLMClient(LLMConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen2.5-VL-7B",
                                 api_key_env="OPENAI_API_KEY", cache_dir="data/cache/llm"))
    messages = [system_message("You judge answers."),
                user_message("Is this a cat?", images=["cat.jpg"])]
    completion = await client.chat(messages, temperature=0.0, max_tokens=64)   # async code
    completions = client.chat_many([messages, ...], temperature=0.0)            # plain code
    completion.text, completion.prompt_tokens, client.usage.as_dict()

- At most `max_concurrency` requests are in flight (an asyncio semaphore per event loop).
- The SDK retries 408, 409, 429, 5xx, timeouts and connection errors up to `max_retries` times
  and honours `Retry-After` (seconds, milliseconds or an HTTP date; a wait over 120 s is not
  retried); the wait between attempts is ours: `backoff_base_s` doubling per retry, capped at
  `backoff_max_s`, with jitter, and at least the server's `Retry-After` (capped likewise), where
  the SDK's own is fixed at 0.5 s doubling to 8 s. Other 4xx errors fail at once. A request that
  still fails raises `LLMError` (`chat`) or comes back as one (`chat_many`). A 200 whose body
  is not a chat completion (an overloaded server's error object, a proxy's page) is retried
  the same way, up to `max_retries` times.
- Every connect, send and read has a timeout (`timeout_s`): a server that stalls, before or in
  the middle of its response, is given up on and the request retried.
- Responses are cached on disk (one JSON file per key, written atomically), keyed by the model,
  the messages (images by the SHA-256 of their data URL) and every sampling parameter; a cached
  answer costs no request. Sampling at T > 0 is cached too: a re-run reproduces the same data.
- `usage` counts requests sent, retries, cache hits, failures and prompt/completion tokens.
- Images travel as base64 data URLs (`image_part`), which every OpenAI-compatible server takes.
- Sampling fields the OpenAI API does not define (vLLM's `top_k`, `repetition_penalty`,
  `vllm_xargs`) travel in the request body as given (the SDK's `extra_body`).

The API key is never configuration: `api_key_env` names the environment variable that holds it;
an unset variable sends no Authorization header at all (the SDK would otherwise fall back to
`OPENAI_API_KEY`, sending that key to whatever server `base_url` names).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.core.atomic import remove_stale_temporaries, write_json

if TYPE_CHECKING:
    from pipelines.core.llm_sdk import SDKClient

_MIME = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"RIFF": "image/webp",
         b"GIF8": "image/gif"}


@dataclass(frozen=True)
class LLMConfig:
    """Where the model is served and how politely to call it."""

    base_url: str = "http://127.0.0.1:8000/v1"   # the server's OpenAI root (ends in /v1)
    model: str = ""                   # the served model name, as the server lists it
    api_key_env: str | None = "OPENAI_API_KEY"   # env var holding the key; unset var: no auth
                                      # header (local vLLM/SGLang servers need none)
    max_concurrency: int = 8          # requests in flight at once (a server's batch, an API's
                                      # rate limit)
    timeout_s: float = 300.0          # seconds a connect, send or read may wait for progress (a
                                      # long reasoning at a few tokens/s on a busy server)
    max_retries: int = 6              # retries after the first attempt (429/5xx/timeouts)
    backoff_base_s: float = 1.0       # first retry waits ~this; doubles per retry, with jitter
    backoff_max_s: float = 60.0       # cap for one wait, Retry-After included
    cache_dir: str | None = None      # response cache directory; None: no cache

    def __post_init__(self):
        if not self.model:
            raise ValueError("LLMConfig.model is required (the served model name)")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 (got {self.max_concurrency})")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_base_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries and backoff_base_s >= 0")


class LLMError(RuntimeError):
    """A request that failed for good: a non-retryable status, or retries exhausted."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Completion:
    """One chat response: `n` texts (choices) and the tokens it cost."""

    texts: list[str]
    finish_reasons: list[str]          # stop | length | ... per choice
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False               # served from the response cache

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


@dataclass
class Usage:
    """Counters over the client's life (thread-safe)."""

    requests: int = 0                  # HTTP attempts sent (retries included)
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0                  # calls that ended in LLMError
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def since(self, before: dict[str, int]) -> dict[str, int]:
        """The counts added since `before` (an earlier `as_dict`): one call's share of a client or
        engine that lives longer (kept across shards)."""
        return {name: value - before.get(name, 0) for name, value in self.as_dict().items()}


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------

def image_part(image: str | os.PathLike | bytes, mime: str | None = None) -> dict:
    """An `image_url` content part holding the image (a file path or encoded bytes) as a base64
    data URL."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    if mime is None:
        mime = next((m for magic, m in _MIME.items() if data.startswith(magic)), None)
        if mime is None:
            raise ValueError(f"unknown image format (first bytes {data[:8]!r}); pass mime=")
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def system_message(text: str) -> dict:
    return {"role": "system", "content": text}


def user_message(text: str, images: Sequence[str | os.PathLike | bytes | dict] = ()) -> dict:
    """A user message: the images first (paths, bytes or ready parts), then the text."""
    if not images:
        return {"role": "user", "content": text}
    parts = [im if isinstance(im, dict) else image_part(im) for im in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def request_key(model: str, messages: list[dict], params: dict) -> str:
    """The cache key: model, messages (image data URLs replaced by their SHA-256) and every
    sampling parameter."""

    def slim(value):
        if isinstance(value, dict):
            return {k: slim(v) for k, v in value.items()}
        if isinstance(value, list):
            return [slim(v) for v in value]
        if isinstance(value, str) and value.startswith("data:") and len(value) > 256:
            return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        return value

    payload = json.dumps([model, slim(messages), params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Completions on disk: `<root>/<key[:2]>/<key>.json`, each written atomically
    (pipelines.core.atomic), so a crash never leaves half an entry."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(*(d for d in self.root.iterdir() if d.is_dir()))  # killed writers'

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        try:
            return Completion(**json.loads(self._path(key).read_text()), cached=True)
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None     # absent, or damaged (a miss: the request is made again)

    def put(self, key: str, completion: Completion) -> None:
        data = asdict(completion)
        data.pop("cached")
        write_json(self._path(key), data, indent=None)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

class LLMClient:
    """See the module docstring. One client may serve several event loops (one SDK client and
    semaphore per loop); `chat_many` runs its own loop."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.usage = Usage()
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self._loops: dict[asyncio.AbstractEventLoop, tuple[SDKClient, asyncio.Semaphore]] = {}
        self._lock = threading.Lock()

    # -- async API --------------------------------------------------------------------------

    async def chat(self, messages: list[dict], **params) -> Completion:
        """One chat completion. `params` are the request's sampling fields (temperature, top_p,
        max_tokens, n, stop, seed, and server extras such as vLLM's `vllm_xargs`)."""
        key = request_key(self.config.model, messages, params) if self.cache else ""
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.usage.add(cache_hits=1)
            return hit
        client, semaphore = self._session()
        async with semaphore:
            try:
                completion = await self._create(client, messages, params)
            except LLMError:
                self.usage.add(failures=1)
                raise
        self.usage.add(prompt_tokens=completion.prompt_tokens,
                       completion_tokens=completion.completion_tokens)
        if self.cache is not None:
            self.cache.put(key, completion)
        return completion

    async def aclose(self) -> None:
        """Close this event loop's connections."""
        with self._lock:
            session = self._loops.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session[0].close()

    # -- sync API ---------------------------------------------------------------------------

    def chat_many(self, conversations: Sequence[list[dict]], **params) -> list[Completion | LLMError]:
        """Many chats at once from plain (non-async) code, `max_concurrency` in flight; each
        result is a `Completion` or the `LLMError` that request ended with, in input order."""

        async def run():
            async def one(messages):
                try:
                    return await self.chat(messages, **params)
                except LLMError as exc:
                    return exc
            try:
                return await asyncio.gather(*(one(m) for m in conversations))
            finally:
                await self.aclose()

        return _run_sync(run())

    def chat_sync(self, messages: list[dict], **params) -> Completion:
        """One chat from plain code; raises `LLMError` on failure."""
        (result,) = self.chat_many([messages], **params)
        if isinstance(result, LLMError):
            raise result
        return result

    # -- internals --------------------------------------------------------------------------

    def _session(self) -> tuple[SDKClient, asyncio.Semaphore]:
        from pipelines.core.llm_sdk import sdk_client  # the SDK takes ~1 s to import: on use

        loop = asyncio.get_running_loop()
        with self._lock:
            session = self._loops.get(loop)
            if session is None:
                cfg = self.config
                client = sdk_client(cfg, os.environ.get(cfg.api_key_env) if cfg.api_key_env else None)
                session = self._loops[loop] = (client, asyncio.Semaphore(cfg.max_concurrency))
            return session

    async def _create(self, client: SDKClient, messages: list[dict], params: dict) -> Completion:
        """One completion; a malformed 200 is asked again (the SDK retries only by status)."""
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            response = await self._request(client, messages, params)
            try:
                return _parse_completion(response)
            except LLMError as exc:
                if attempt == cfg.max_retries:
                    raise LLMError(f"{cfg.base_url}: gave up after {attempt + 1} malformed "
                                   f"responses; last: {exc}") from None
                self.usage.add(retries=1)
                await asyncio.sleep(random.uniform(0.5, 1.0)
                                    * min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** attempt))
        raise AssertionError("unreachable")

    async def _request(self, client: SDKClient, messages: list[dict], params: dict):
        import openai

        from pipelines.core.llm_sdk import counting_attempts, split_params

        cfg = self.config
        named, extra = split_params(params)
        with counting_attempts() as attempts:
            try:
                response = await client.chat.completions.create(
                    model=cfg.model, messages=messages, **named, extra_body=extra or None,
                    extra_headers=client.request_headers)
            except openai.APIStatusError as exc:
                status = exc.status_code
                last = f"HTTP {status}: {exc.response.text[:300]}"
                if (status in (408, 409, 429) or status >= 500) and attempts[0] > cfg.max_retries:
                    raise LLMError(f"{cfg.base_url}: gave up after {attempts[0]} attempts; last: "
                                   f"{last}", status) from None
                raise LLMError(f"{cfg.base_url}: {last}", status) from None
            except openai.APITimeoutError:
                raise LLMError(f"{cfg.base_url}: gave up after {attempts[0]} attempts; last: timed "
                               f"out after {cfg.timeout_s:g} s") from None
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                raise LLMError(f"{cfg.base_url}: gave up after {attempts[0]} attempts; last: "
                               f"{type(cause).__name__}: {cause}") from None
            except openai.OpenAIError as exc:
                raise LLMError(f"{cfg.base_url}: {type(exc).__name__}: {exc}") from None
            finally:
                self.usage.add(requests=attempts[0], retries=max(0, attempts[0] - 1))
        return response


def _parse_completion(response) -> Completion:
    try:
        choices = sorted(response.choices, key=lambda c: c.index or 0)
        texts = [c.message.content or "" for c in choices]
        reasons = [c.finish_reason or "" for c in choices]
    except (AttributeError, TypeError) as exc:
        raise LLMError(f"malformed response ({type(exc).__name__}: {exc}): "
                       f"{str(response)[:300]}") from None
    usage = response.usage
    return Completion(texts, reasons, int(getattr(usage, "prompt_tokens", 0) or 0),
                      int(getattr(usage, "completion_tokens", 0) or 0))


def _run_sync(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if running:
        coro.close()
        raise RuntimeError("called from inside a running event loop: use `await client.chat(...)`")
    return asyncio.run(coro)
