"""vLLM engines for the rollout loop (`thyme_train.engine.Engine`): an offline `vllm.LLM` in
this process (`VLLMEngine`) and an OpenAI-compatible vLLM server (`VLLMServerEngine`).

    engine = VLLMEngine(VLLMConfig(model=path, max_model_len=12288, max_images=8), processor,
                        config.sampling())
    runner = RolloutRunner(engine, ChatCodec(processor), sandbox, config)

Both send the whole context as token ids plus its images, one request per sample (vLLM 0.32
does not recognise an already expanded `<|image_pad|>` run: it would expand each pad again, so
each run is cut to one pad, vLLM expands it, and the prompt vLLM reports must equal the context
token for token, else that request fails), and apply adaptive temperature INSIDE that request through the engine-level
logits processor `thyme_train.vllm_ats.ATSLogitsProcessor` (greedy in `<code>…</code>`, the
text temperature / top-p / top-k / repetition penalty elsewhere; never a vision token).

A generation ends after `</code>`, `</answer>` (vLLM stop strings, kept in the output, and our
own case-insensitive tag tracker), at EOS, at its token budget, or when the request's `watch`
(the repetition detector, fed every token as it streams) says stop: the request is then aborted
in the engine and its output cut after that token. Each request fails alone: its exception is
its result, the other requests go on.

What comes back per token (`GenerationResult`):
- `logprobs`: vLLM's log-prob of the token. In vLLM's default `raw_logprobs` mode this is the
  policy at T = 1: the log-softmax of the model's raw logits over the whole vocabulary, before
  our processor, penalties, temperature and top-k/top-p. (The transformers engine normalises
  after banning the vision tokens: identical for a model that never puts mass on them.) In
  `processed_logprobs` mode vLLM returns the behaviour log-prob instead; `logprobs` is then NaN.
- `behaviour_logprobs`: under the distribution actually sampled from. Exactly 0.0 for greedy
  (T = 0) and forced tokens (probability 1, our processor leaves one finite logit). For sampled
  tokens: vLLM's value in `processed_logprobs` mode (exact); in `raw_logprobs` mode the policy
  log-prob when no transform was active (T = 1, top-p 1, top-k off, penalty 1), else NaN —
  vLLM returns one of the two per engine, never both.
- `temperatures`, `in_code`: from the same tag tracker the processor runs (the code
  temperature inside `<code>…</code>`, the text one elsewhere); `finish`: code | answer | eos |
  length | watch.

`GenerationRequest.force` (scripted policies): vLLM samples out of our reach, so the engines
turn `force` into a forced PREFIX — the tokens it returns on an empty call, then on that token,
and so on until it returns None — which the processor forces (policy log-probs still vLLM's).
A `force` that would force a token after the model has taken over fails that request.

Server choice: vLLM 0.32's `/v1/completions` takes token ids but no images, and
`/v1/chat/completions` takes images but re-renders the text through the chat template (the
ids of the context, sandbox outputs included, are not preserved). Its tokens-in/tokens-out
endpoint `/inference/v1/generate` takes both — `token_ids` plus `content_parts` (images as data
URLs) — with the full `SamplingParams` (our `extra_args` included) and streams token ids with
their log-probs; it is served with `--enable-scale-out`:

    python -m vllm.entrypoints.openai.api_server --model DIR --enable-scale-out \\
        --logits-processors thyme_train.vllm_ats:ATSLogitsProcessor \\
        --limit-mm-per-prompt '{"image": 8, "video": 0}'

vLLM is imported only when an engine is built, so this module imports without vLLM.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import itertools
import json
import math
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipelines.core.vllm_config import VLLMConfig
from sandbox.protocol import ANSWER_CLOSE, CODE_CLOSE
from thyme_train.ats import SamplingConfig, SegmentTracker, stop_reason
from thyme_train.engine import ChatCodec, GenerationRequest, GenerationResult

PROCESSOR = "thyme_train.vllm_ats:ATSLogitsProcessor"    # what `--logits-processors` takes
STOP_STRINGS = [CODE_CLOSE, ANSWER_CLOSE]
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")

# The processor's per-request switch (`SamplingParams.extra_args`, HTTP `vllm_xargs`: flat values).
KEY = "thyme_ats"                         # 1: apply the rule to this request
KEY_TEXT = "thyme_temperature_text"
KEY_CODE = "thyme_temperature_code"
KEY_BANNED = "thyme_banned"               # token ids never generated
KEY_FORCE = "thyme_force"                 # token ids forced as the first generated tokens


def request_temperature(temperature_text: float, temperature_code: float) -> float:
    """The temperature the request itself carries: the text one, or the code one when text is
    greedy (vLLM samples a request at T = 0 greedily, whatever a processor does)."""
    return temperature_text if temperature_text > 0 else temperature_code


def ats_extra_args(temperature_text: float, temperature_code: float, banned=(), force=()) -> dict:
    """The `extra_args` that switch `ATSLogitsProcessor` on for one request."""
    return {KEY: 1, KEY_TEXT: float(temperature_text), KEY_CODE: float(temperature_code),
            KEY_BANNED: [int(t) for t in banned], KEY_FORCE: [int(t) for t in force]}


class _Engine:
    """What both engines share: request parameters and the per-token bookkeeping."""

    def __init__(self, processor, sampling: SamplingConfig | None, logprobs_mode: str):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r} "
                             "(vLLM's raw_logits/processed_logits are not log-probs)")
        self.codec = processor if isinstance(processor, ChatCodec) else ChatCodec(processor)
        self.sampling = sampling or SamplingConfig()
        self.logprobs_mode = logprobs_mode
        self.eos_ids = set(self.codec.eos_ids)
        self._pieces: dict[int, str] = {}
        self._ids = itertools.count()

    def sampling_fields(self, req: GenerationRequest, force: list[int], max_tokens: int) -> dict:
        """`SamplingParams` fields of one request (also its JSON body on the server)."""
        s = self.sampling
        return dict(
            n=1, temperature=request_temperature(s.temperature_text, s.temperature_code),
            top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
            max_tokens=max_tokens, seed=req.seed, logprobs=0, stop=list(STOP_STRINGS),
            include_stop_str_in_output=True, skip_special_tokens=False,
            extra_args=ats_extra_args(s.temperature_text, s.temperature_code,
                                      self.codec.environment_only_ids, force))

    def piece(self, token: int) -> str:
        text = self._pieces.get(token)
        if text is None:
            text = self._pieces[token] = self.codec.tokenizer.decode([token])
        return text

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        """The context with each image's run of image tokens cut to one: vLLM 0.32 expands
        every image placeholder itself (it does not recognise an expanded run), and
        `_Call.verify_prompt` checks that its expansion gives back the context exactly."""
        pad, out = self.codec.image_token_id, []
        for t in req.input_ids:
            if not (t == pad and out and out[-1] == pad):
                out.append(t)
        return out

    def check(self, req: GenerationRequest, max_images: int | None) -> None:
        """What vLLM would reject less clearly (or not at all): image counts."""
        have = sum(1 for t in req.input_ids if t == self.codec.image_token_id)
        if req.images and not have:
            raise ValueError(f"{len(req.images)} image(s) but no image tokens in the context")
        if have and not req.images:
            raise ValueError(f"{have} image tokens in the context but no images")
        if max_images is not None and len(req.images) > max_images:
            raise ValueError(f"{len(req.images)} images > the engine's limit of {max_images} "
                             "per prompt (limit_mm_per_prompt)")


def _forced_prefix(req: GenerationRequest) -> list[int]:
    if req.force is None:
        return []
    prefix: list[int] = []
    while len(prefix) < req.max_new_tokens:
        token = req.force(list(prefix))
        if token is None:
            break
        prefix.append(int(token))
    return prefix


class _Call:
    """One request: fed its tokens as they come, decides when it is done, builds the result."""

    def __init__(self, engine: _Engine, req: GenerationRequest, max_tokens: int):
        self.engine, self.req, self.max_tokens = engine, req, max_tokens
        self.force = _forced_prefix(req)
        self.tracker = SegmentTracker()
        self.result = GenerationResult([], [], [], [], [], "")
        self.finish: str | None = None
        self.verified = False

    def verify_prompt(self, prompt_ids) -> None:
        """vLLM's prompt after its image expansion must be the context itself (else the image
        processors disagree, e.g. on the pixel budget, and the positions would be wrong)."""
        if self.verified or prompt_ids is None:
            return
        ids = list(prompt_ids)
        if ids != list(self.req.input_ids):
            raise ValueError(f"vLLM expanded the context to {len(ids)} tokens "
                             f"({sum(1 for t in ids if t == self.engine.codec.image_token_id)} "
                             f"image tokens), not the {len(self.req.input_ids)} of the request "
                             f"({sum(1 for t in self.req.input_ids if t == self.engine.codec.image_token_id)}): "
                             "its image processor disagrees with the codec's (pixel budget?)")
        self.verified = True

    def feed(self, tokens: Sequence[int], logprobs: Sequence[float]) -> bool:
        """Add generated tokens (with vLLM's log-prob of each); True once the call is done
        (tokens after that point are dropped)."""
        s, r, raw = self.engine.sampling, self.result, self.engine.logprobs_mode == "raw_logprobs"
        untransformed = s.top_p >= 1.0 and s.top_k == 0 and s.repetition_penalty == 1.0
        for token, lp in zip(tokens, logprobs, strict=True):
            if self.finish is not None:
                break
            inside = self.tracker.inside_code
            temperature = s.temperature_code if inside else s.temperature_text
            if len(r.token_ids) < len(self.force) or temperature == 0:
                behaviour = 0.0                       # probability 1
            elif not raw:
                behaviour = lp
            else:
                behaviour = lp if (temperature == 1.0 and untransformed) else math.nan
            r.token_ids.append(int(token))
            r.logprobs.append(lp if raw else math.nan)
            r.behaviour_logprobs.append(behaviour)
            r.temperatures.append(float(temperature))
            r.in_code.append(inside)
            tags = self.tracker.feed(self.engine.piece(int(token)))
            self.finish = stop_reason(int(token), tags, self.engine.eos_ids, self.req.watch,
                                      len(r.token_ids), self.max_tokens)
        return self.finish is not None

    def close(self, finish_reason: str | None, stop_reason) -> GenerationResult:
        """vLLM finished the request; `finish_reason`/`stop_reason` are its own."""
        if not self.verified:
            raise RuntimeError("vLLM did not return the prompt's token ids (nothing to check "
                               "its image expansion against)")
        if self.finish is None:
            if finish_reason == "length":
                self.finish = "length"
            elif finish_reason == "stop" and (stop_reason is None or isinstance(stop_reason, int)):
                self.finish = "eos"                   # an EOS id of the model's generation config
            else:
                raise RuntimeError(f"vLLM ended the request with {finish_reason!r} "
                                   f"(stop reason {stop_reason!r}) before any of ours")
        if self.req.force is not None:
            tokens = self.result.token_ids
            for k in range(len(self.force), len(tokens)):
                if self.req.force(tokens[:k]) is not None:
                    raise ValueError(f"force returned a token at position {k}, after the model "
                                     "took over: the vLLM engines only force a prefix")
        self.result.finish = self.finish
        return self.result


def _token_logprob(entry, token: int) -> float:
    if not entry:
        raise RuntimeError("vLLM returned no log-prob for a generated token")
    found = entry.get(token)
    return float(found.logprob if hasattr(found, "logprob") else found)


# ---------------------------------------------------------------------------------------------
# Offline engine
# ---------------------------------------------------------------------------------------------

class VLLMEngine(_Engine):
    """A `vllm.LLM` in this process, driven step by step (so `watch` can stop a request at
    once). `engine`: a `VLLMConfig` (built with our logits processor added) or a ready `LLM`
    that was built with `logits_processors=[ATSLogitsProcessor]` (or its path, PROCESSOR)."""

    def __init__(self, engine, processor, sampling: SamplingConfig | None = None):
        if isinstance(engine, VLLMConfig):
            kwargs = dict(engine.engine_kwargs)
            kwargs["logits_processors"] = [*kwargs.get("logits_processors", []), PROCESSOR]
            engine = dataclasses.replace(engine, engine_kwargs=kwargs).build()
        self.llm = engine
        vllm_config = engine.llm_engine.vllm_config
        registered = [p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}"
                      for p in vllm_config.model_config.logits_processors or []]
        if PROCESSOR not in [p.replace(".ATSLogitsProcessor", ":ATSLogitsProcessor") for p in registered]:
            raise ValueError(f"the vLLM engine was built without our logits processor ({PROCESSOR}; "
                             f"it has {registered}): build it with logits_processors=[PROCESSOR], "
                             "or pass a VLLMConfig")
        super().__init__(processor, sampling, vllm_config.model_config.logprobs_mode)
        self.max_model_len = vllm_config.model_config.max_model_len
        mm = vllm_config.model_config.multimodal_config
        limit = mm.limit_per_prompt.get("image") if mm is not None else None
        self.max_images_per_prompt = getattr(limit, "count", limit)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        results: list[GenerationResult | BaseException | None] = [None] * len(requests)
        live: dict[str, tuple[int, str, _Call]] = {}      # external id -> (index, internal id, call)
        for i, req in enumerate(requests):
            try:
                self.check(req, self.max_images_per_prompt)
                max_tokens = min(req.max_new_tokens, self.max_model_len - len(req.input_ids))
                if max_tokens < 1:
                    raise ValueError(f"a {len(req.input_ids)}-token context leaves no room in "
                                     f"max_model_len {self.max_model_len}")
                call = _Call(self, req, max_tokens)
                params = SamplingParams(**self.sampling_fields(req, call.force, max_tokens))
                params.output_kind = RequestOutputKind.DELTA
                prompt = {"prompt_token_ids": self.prompt_ids(req)}
                if req.images:
                    prompt["multi_modal_data"] = {"image": list(req.images)}
                external = f"thyme-{next(self._ids)}"
                internal = engine.add_request(external, self._render(prompt), params)
                live[external] = (i, internal, call)
            except Exception as exc:  # noqa: BLE001  this request fails alone
                results[i] = exc
        try:
            while live:
                for out in engine.step():
                    entry = live.get(out.request_id)
                    if entry is None:
                        continue
                    i, internal, call = entry
                    choice = out.outputs[0]
                    try:
                        call.verify_prompt(out.prompt_token_ids)
                        done = call.feed(choice.token_ids, [_token_logprob(e, t) for e, t in
                                                            zip(choice.logprobs or [], choice.token_ids, strict=True)])
                        if done and not out.finished:
                            engine.abort_request([internal], internal=True)
                        if done or out.finished:
                            del live[out.request_id]
                            results[i] = call.close(choice.finish_reason, choice.stop_reason)
                    except Exception as exc:  # noqa: BLE001
                        live.pop(out.request_id, None)
                        if not out.finished:
                            engine.abort_request([internal], internal=True)
                        results[i] = exc
        except Exception as exc:  # noqa: BLE001  the engine itself failed: what is left fails
            if live:
                engine.abort_request([internal for _, internal, _ in live.values()], internal=True)
            for i, _, _ in live.values():
                results[i] = exc
        return results  # type: ignore[return-value]

    def _render(self, prompt: dict):
        # What LLM.generate does before add_request (the private helper of vLLM 0.32; a raw
        # prompt also works, with a deprecation warning).
        render = getattr(self.llm, "_preprocess_cmpl_one", None)
        return render(prompt) if render is not None else prompt


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible server
# ---------------------------------------------------------------------------------------------

class VLLMServerEngine(_Engine):
    """A vLLM server's `/inference/v1/generate` (started with `--enable-scale-out` and our
    `--logits-processors`, see the module doc), one streamed HTTP request per sample, up to
    `max_concurrency` at a time; a request stopped by `watch` is cancelled by closing its
    stream. `limit_mm_per_prompt`: the server's image limit (int or vLLM's dict), reported as
    `max_images_per_prompt`; `logprobs_mode`: the server's `--logprobs-mode`."""

    def __init__(self, base_url: str, processor, sampling: SamplingConfig | None = None, *,
                 model: str | None = None, limit_mm_per_prompt: int | dict | None = None,
                 max_model_len: int | None = None, logprobs_mode: str = "raw_logprobs",
                 max_concurrency: int = 64, timeout_s: float = 600.0, api_key: str | None = None):
        super().__init__(processor, sampling, logprobs_mode)
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/v1], got {base_url!r}")
        self.url = url
        self.path = (url.path[:-3] if url.path.endswith("/v1") else url.path) + "/inference/v1/generate"
        self.model = model
        limit = limit_mm_per_prompt
        if isinstance(limit, dict):      # vLLM's {"image": N, ...} or {"image": {"count": N}}
            limit = limit.get("image")
            limit = limit.get("count") if isinstance(limit, dict) else limit
        self.max_images_per_prompt = limit
        self.max_model_len = max_model_len
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.api_key = api_key

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        if not requests:
            return []

        def one(req):
            try:
                return self._one(req)
            except Exception as exc:  # noqa: BLE001  this request fails alone
                return exc

        with ThreadPoolExecutor(min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))

    def _one(self, req: GenerationRequest) -> GenerationResult:
        self.check(req, self.max_images_per_prompt)
        max_tokens = req.max_new_tokens
        if self.max_model_len is not None:
            max_tokens = min(max_tokens, self.max_model_len - len(req.input_ids))
            if max_tokens < 1:
                raise ValueError(f"a {len(req.input_ids)}-token context leaves no room in "
                                 f"max_model_len {self.max_model_len}")
        call = _Call(self, req, max_tokens)
        body = {"token_ids": self.prompt_ids(req), "stream": True, "output_mode": "tokens",
                "return_token_ids": True,
                "request_id": f"thyme-{next(self._ids)}",
                "sampling_params": self.sampling_fields(req, call.force, max_tokens)}
        if self.model:
            body["model"] = self.model
        if req.images:
            body["content_parts"] = [{"type": "image_url", "url": _data_url(img)} for img in req.images]
        conn_type = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(self.url.hostname, self.url.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request("POST", self.path, body=json.dumps(body), headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"the vLLM server answered {response.status}: "
                                   f"{response.read(2000).decode('utf-8', 'replace')}")
            finish_reason = stop_reason = None
            for line in response:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"the vLLM server failed the request: {chunk['error']}")
                call.verify_prompt(chunk.get("prompt_token_ids"))
                for choice in chunk.get("choices", []):
                    tokens = choice.get("token_ids") or []
                    content = (choice.get("logprobs") or {}).get("content") or []
                    if len(content) != len(tokens):
                        raise RuntimeError(f"{len(tokens)} tokens but {len(content)} log-probs in "
                                           "a stream chunk")
                    if call.feed(tokens, [float(c["logprob"]) for c in content]):
                        return call.close(None, None)      # closing the stream cancels it
                    if choice.get("finish_reason") is not None:
                        finish_reason, stop_reason = choice["finish_reason"], choice.get("stop_reason")
            if finish_reason is None:
                raise RuntimeError("the vLLM server's stream ended without a finish reason")
            return call.close(finish_reason, stop_reason)
        finally:
            conn.close()


def _data_url(image) -> str:
    """A PNG data URL (lossless: the server sees the pixels the codec counted tokens for)."""
    buf = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
