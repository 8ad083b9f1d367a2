"""The transformers engine of the rollout loop (thyme_train.engine.Engine): `model.generate`
with adaptive temperature sampling (thyme_train.ats) done per row by our own logits processor.
For CPU tests, the demo, inference and small GPUs; thyme_train.vllm_engine is the fast one.

    engine = HFEngine(model, processor, RolloutConfig().sampling(), batch_size=8)
    results = engine.generate(requests)      # a GenerationResult or the exception, per request

`ATSLogitsProcessor` samples each row itself (the ATS rule, a per-row seeded generator) and hands
`generate` a one-hot row, so greedy decoding emits exactly that token; `ATSStoppingCriteria`
records each token and stops a row where `ats.stop_reason` says. Requests are batched
(left-padded, grouped by context length); a batch that fails is retried one request at a time,
so one bad request fails alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria

from thyme_train.ats import SamplingConfig, SegmentTracker, sample_token, stop_reason
from thyme_train.engine import ChatCodec, GenerationRequest, GenerationResult


class HFEngine:
    """`model.generate` with the ATS processor, `batch_size` requests per call."""

    def __init__(self, model, processor, sampling: SamplingConfig | None = None, batch_size: int = 8):
        self.model, self.processor = model, processor
        self.sampling = sampling or SamplingConfig()
        self.batch_size = batch_size
        self.codec = ChatCodec(processor)
        self.tokenizer = self.codec.tokenizer
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | self.codec.eos_ids
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.last_inputs: dict[str, tuple] = {}       # shapes of the last batch's model inputs

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        """Results in request order; batches are formed from requests of similar context length
        (sorted), so a batch pads little."""
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].input_ids))
        out: list[GenerationResult | BaseException | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            try:
                for i, result in zip(chunk, self._batch([requests[i] for i in chunk]), strict=True):
                    out[i] = result
            except Exception:  # noqa: BLE001  find the request that fails; the others go on
                for i in chunk:
                    try:
                        (out[i],) = self._batch([requests[i]])
                    except Exception as exc:  # noqa: BLE001
                        out[i] = exc
        return out  # type: ignore[return-value]

    def _batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        ip = self.processor.image_processor
        merge = getattr(ip, "merge_size", 1) ** 2
        flat, grids = [], []
        for k, req in enumerate(requests):
            want = 0
            if req.images:
                vision = ip(images=req.images, return_tensors="pt")
                flat.append(vision["pixel_values"])
                grids.append(vision["image_grid_thw"])
                want = int(vision["image_grid_thw"].prod(-1).sum()) // merge
            have = sum(1 for t in req.input_ids if t == self.codec.image_token_id)
            if have != want:
                raise ValueError(f"request {k}: {have} image tokens in the context but its "
                                 f"{len(req.images)} image(s) make {want}")
        width = max(len(r.input_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.input_ids):] = torch.tensor(r.input_ids)
            mask[i, width - len(r.input_ids):] = 1
        kwargs = {"input_ids": ids, "attention_mask": mask,
                  "mm_token_type_ids": (ids == self.codec.image_token_id).long() * mask}
        if flat:
            kwargs["pixel_values"] = torch.cat(flat)
            kwargs["image_grid_thw"] = torch.cat(grids)
        device = next(self.model.parameters()).device
        rows = [RowState(max_new_tokens=r.max_new_tokens,
                         generator=torch.Generator(device=device).manual_seed(r.seed),
                         watch=r.watch, force=r.force) for r in requests]
        processor = ATSLogitsProcessor(rows, self.sampling, self.codec.environment_only_ids)
        stopper = ATSStoppingCriteria(rows, lambda t: self.tokenizer.decode(t), self.eos_ids)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        self.last_inputs = {k: tuple(v.shape) for k, v in kwargs.items()}   # for inspection
        with torch.no_grad():
            self.model.generate(
                **kwargs, max_new_tokens=max(r.max_new_tokens for r in requests), do_sample=False,
                logits_processor=[processor], stopping_criteria=[stopper],
                pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids), temperature=None,
                top_k=None, top_p=None, repetition_penalty=None, use_cache=True)
        return [GenerationResult(row.tokens, row.logprobs, row.behaviour_logprobs, row.temperatures,
                                 row.in_code, row.finish or "length") for row in rows]


@dataclass
class RowState:
    """One generation row: its budget, its stream state and what was recorded."""

    max_new_tokens: int
    generator: torch.Generator | None = None
    tracker: SegmentTracker = field(default_factory=SegmentTracker)
    watch: Callable[[int], bool] | None = None        # True = stop now (repetition)
    force: Callable[[list[int]], int | None] | None = None   # a token to force (tests, steering)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    behaviour_logprobs: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    in_code: list[bool] = field(default_factory=list)
    finish: str | None = None                          # ats.FINISHES
    _pending: tuple | None = None


class ATSLogitsProcessor(LogitsProcessor):
    """Samples each row itself (ATS rule, per-row generator) and returns a one-hot row, so
    `generate` (greedy) emits exactly that token. Must be the only processor: call `generate`
    with `do_sample=False` and no temperature/top-k/top-p/repetition-penalty of its own."""

    def __init__(self, rows: list[RowState], cfg: SamplingConfig, banned: Sequence[int] = ()):
        self.rows, self.cfg = rows, cfg
        self.banned = list(banned)       # tokens only the environment may write (vision tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.banned:
            scores = scores.clone()
            scores[:, self.banned] = -math.inf
        out = torch.full_like(scores, -math.inf)
        for i, row in enumerate(self.rows):
            if row.finish is not None:
                out[i, 0] = 0.0                         # ignored: generate pads finished rows
                continue
            forced = row.force(row.tokens) if row.force is not None else None
            if forced is not None:
                logp = float(torch.log_softmax(scores[i].float(), dim=-1)[forced])
                temp = self.cfg.temperature_code if row.tracker.inside_code else self.cfg.temperature_text
                row._pending = (forced, logp, 0.0, temp, row.tracker.inside_code)   # probability 1
                out[i, forced] = 0.0
                continue
            inside = row.tracker.inside_code
            row._pending = (*sample_token(scores[i], input_ids[i], inside, self.cfg, row.generator),
                            inside)
            out[i, row._pending[0]] = 0.0
        return out


class ATSStoppingCriteria(StoppingCriteria):
    """Records each row's new token and decides when the row is done."""

    def __init__(self, rows: list[RowState], decode: Callable[[list[int]], str], eos_ids: set[int]):
        self.rows, self.decode, self.eos_ids = rows, decode, eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(len(self.rows), dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(self.rows):
            if row.finish is not None:
                done[i] = True
                continue
            token, logp, blogp, temp, in_code = row._pending
            if int(input_ids[i, -1]) != token:
                raise RuntimeError(f"generate emitted {int(input_ids[i, -1])}, ATS chose {token}: "
                                   "another logits processor or sampler interfered")
            row.tokens.append(token)
            row.logprobs.append(logp)
            row.behaviour_logprobs.append(blogp)
            row.temperatures.append(temp)
            row.in_code.append(in_code)
            tags = row.tracker.feed(self.decode([token]))
            row.finish = stop_reason(token, tags, self.eos_ids, row.watch, len(row.tokens),
                                     row.max_new_tokens)
            done[i] = row.finish is not None
        return done
