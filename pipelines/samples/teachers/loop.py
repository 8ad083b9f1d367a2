"""Model teachers in the loop: a trajectory written turn by turn with the sandbox in the loop,
the message-level form of the rollout loop RL and inference use (`thyme_train.rollout`, which
works on tokens and is not imported here). A generation call stops after `</code>`; the code runs
in the trajectory's own sandbox session (variables persist across its blocks); its
`<sandbox_output>` — the produced image, the printed text or the error — is shown to the teacher,
which continues. A second round is therefore written by a model that saw what its first round
produced: further enhancement after looking at a wide crop, error correction after reading an
error or a crop that missed.

How the teacher is shown the output (`LoopConfig.continuation`):
- `prefill` (vLLM and SGLang servers, vLLM offline): the assistant message so far — its text,
  and at each sandbox output the produced image as an image part — is sent back as the last
  message with `continue_final_message: true, add_generation_prompt: false`; the model
  continues its own message, exactly as a Thyme model reads `<sandbox_output>` in RL.
- `turns` (APIs without prefill): the sandbox output comes back as a user message (the block,
  its image inside it) and the teacher answers with the next piece; the pieces are reassembled
  into one assistant turn in the Thyme protocol.

Per call: `stop: ["</code>"]` (a server that ignores it is cut client-side at the first
`</code>`; one that swallows the stop string gets it back). A trajectory ends when the teacher
answers or stops without code, at the token limit, at `max_turns` generation calls (still
writing code: quarantined `turn_cap`), when a result would exceed `max_images`, or when the
sandbox itself fails. The pieces are parsed like a one-pass output (`parse.parse_output`); every
code block must be one the loop ran (else `blind_code`). Results are attached to the turns and
written to the execution cache, so the executions stage reuses them. The first call asks for all
`candidates` at once (`n`); each becomes its own trajectory from there.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from pipelines.core.images import ImageStore, store_path
from pipelines.core.llm import image_part
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Result, Trajectory, render_result
from pipelines.samples.execute import ExecutionCache, stored_result
from pipelines.samples.teachers import parse, plans, prompts
from sandbox.protocol import CODE_CLOSE, CODE_OPEN, OUTPUT_CLOSE, OUTPUT_OPEN, extract_code

CONTINUATIONS = ("prefill", "turns")
PREFILL = {"continue_final_message": True, "add_generation_prompt": False}   # vLLM / SGLang
TURNS_REMINDER = "Continue your response from where it stopped."
_CODE_OPEN = re.compile(re.escape(CODE_OPEN), re.IGNORECASE)
_CODE_CLOSE = re.compile(re.escape(CODE_CLOSE), re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)


@dataclass(frozen=True)
class LoopConfig:
    """The loop's limits, as the rollout loop's (`thyme_train.rollout.RolloutConfig`)."""

    continuation: str = "prefill"    # prefill | turns (see the module docstring)
    max_turns: int = 5               # generation calls per trajectory (the paper's ~5)
    max_images: int = 8              # input + produced images one conversation may hold
                                     # (keep <= the server's limit_mm_per_prompt)
    max_output_chars: int = 4000     # printed sandbox text shown to the teacher
    sandbox_timeout: float = 10.0    # seconds per code block; the executions stage's timeout,
                                     # so its cache finds these results
    multi_round_share: float = 0.0   # crop/rotate samples given a two-round plan (plans.py)

    def __post_init__(self):
        if self.continuation not in CONTINUATIONS:
            raise ValueError(f"continuation must be one of {CONTINUATIONS} (got {self.continuation!r})")
        if self.max_turns < 1 or self.max_images < 1:
            raise ValueError("max_turns and max_images must be >= 1")
        if not 0.0 <= self.multi_round_share <= 1.0:
            raise ValueError(f"multi_round_share must be in [0, 1] (got {self.multi_round_share})")


@dataclass
class InLoop:
    """What a model teacher needs to write in the loop: a started `sandbox.Sandbox`, the image
    store produced images go into (the pool's), and optionally the executions stage's cache."""

    sandbox: object
    store: ImageStore
    cache: ExecutionCache | None = None
    config: LoopConfig = field(default_factory=LoopConfig)


@dataclass
class _Rollout:
    sample: Sample
    plan: str
    hidden: dict
    base: list[dict]                  # system + user messages
    pieces: list[str] = field(default_factory=list)      # the model's writing, one per call
    codes: list[str] = field(default_factory=list)       # the code blocks run, in order
    results: list[Result] = field(default_factory=list)
    finishes: list[str] = field(default_factory=list)
    images: int = 1                   # the input image
    end: str = ""                     # "" while running
    detail: str = ""
    session: object = None
    replay: bool = False              # earlier blocks came from the cache: run them first


def split_piece(text: str, finish: str) -> tuple[str, bool]:
    """(the piece up to and including its first `</code>`, whether a code block closed there).
    A server that returned text past `</code>` is cut there (what the stop would have done); one
    that swallowed the stop string with a `<code>` open gets it back."""
    opened = _CODE_OPEN.search(text)
    if opened is None:
        return text, False
    closed = _CODE_CLOSE.search(text, opened.end())
    if closed is not None:
        return text[:closed.end()], True
    if finish == "stop":
        return text + CODE_CLOSE, True
    return text, False


def last_code(piece: str) -> str:
    start = [m.start() for m in _CODE_OPEN.finditer(piece)][-1]
    return extract_code(piece[start:]) or ""


def run_loop(teacher, samples: list[Sample], operations: list[str | None], in_loop: InLoop,
             trajectories: list[Trajectory], quarantine: list[dict], stats: Counter,
             hints: dict[str, list[str]] | None = None) -> None:
    """Write every sample whose operation is known in the loop; trajectories and quarantine rows
    are appended; `stats` counts end reasons (`end:*`), plans (`plan:*`) and code runs. `hints`:
    more private hints per sample id."""
    hints = hints or {}
    cfg, tc = in_loop.config, teacher.config
    rollouts: list[_Rollout] = []
    first: list[tuple[Sample, str, list[dict], dict]] = []
    for sample, op in zip(samples, operations, strict=True):
        if op is None:
            continue
        plan = plans.draw_plan(sample, op, tc.seed or 0, cfg.multi_round_share)
        messages, hidden = prompts.generation_messages(
            sample, op, teacher._image(sample), tc.give_answer, tc.prompt_set,
            [*plans.plan_hints(sample, op, plan, tc.seed or 0), *hints.get(sample.id, ())],
            cfg.continuation)
        first.append((sample, plan, messages, hidden))
        stats[f"plan:{plan}"] += 1
    sampling = {**tc.sampling(), "stop": [CODE_CLOSE]}
    results = teacher.complete([m for _, _, m, _ in first], sampling)
    for (sample, plan, messages, hidden), result in zip(first, results, strict=True):
        if isinstance(result, Exception):
            quarantine.append(parse.quarantine_row(sample.id, teacher.name, "request_failed",
                                                   f"call 1: {type(result).__name__}: {result}", ""))
            continue
        for text, finish in zip(result.texts, result.finish_reasons, strict=True):
            r = _Rollout(sample, plan, hidden, messages)
            _take(r, text, finish, cfg)
            rollouts.append(r)
    try:
        for call in range(1, cfg.max_turns + 1):
            _execute([r for r in rollouts if not r.end], in_loop, stats)
            active = [r for r in rollouts if not r.end]
            if not active:
                break
            again = {**tc.sampling(), "n": 1, "stop": [CODE_CLOSE]}
            if tc.seed is not None:
                again["seed"] = tc.seed + call
            if cfg.continuation == "prefill":
                again.update(PREFILL)
            outs = teacher.complete([_conversation(r, in_loop) for r in active], again)
            for r, out in zip(active, outs, strict=True):
                if isinstance(out, Exception):
                    r.end, r.detail = "request_failed", f"call {len(r.pieces) + 1}: {type(out).__name__}: {out}"
                else:
                    _take(r, out.texts[0], out.finish_reasons[0], cfg)
    finally:
        for r in rollouts:
            _close(r)
    for r in rollouts:
        stats[f"end:{r.end}"] += 1
        trajectory, row = _finish(r, teacher.name, cfg, tc.max_code_blocks)
        if row is not None:
            quarantine.append(row)
        else:
            trajectories.append(trajectory)


def _take(r: _Rollout, text: str, finish: str, cfg: LoopConfig) -> None:
    """One generation call's text: cut at the code block, or the end of the trajectory."""
    piece, closed = split_piece(text or "", finish)
    if r.pieces and cfg.continuation == "turns":
        piece = piece.lstrip("\n")  # a new message: the joint is ours to make
    r.pieces.append(piece)
    r.finishes.append(finish)
    if closed:
        r.codes.append(last_code(piece))
        if len(r.pieces) >= cfg.max_turns:
            r.end, r.detail = "turn_cap", f"{len(r.pieces)} generation calls, the last ending in code"
    elif finish == "length":
        r.end = "length"
    else:
        r.end = "answer" if _ANSWER_CLOSE.search(piece) else "eos"


def _execute(runnable: list[_Rollout], in_loop: InLoop, stats: Counter) -> None:
    """Run each rollout's newest code block (its session's earlier blocks already ran)."""
    if not runnable:
        return
    sandbox = in_loop.sandbox
    workers = max(1, min(len(runnable), getattr(sandbox, "workers", 1) * 2))
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda r: _run_block(r, in_loop, stats), runnable))
    for r, (result, internal) in zip(runnable, outcomes, strict=True):
        if internal:
            r.end, r.detail = "sandbox_failed", internal
            continue
        if r.images + len(result.images) > in_loop.config.max_images:
            r.end, r.detail = "image_cap", f"{r.images} + {len(result.images)} images > {in_loop.config.max_images}"
            continue
        r.results.append(result)
        r.images += len(result.images)


def _run_block(r: _Rollout, in_loop: InLoop, stats: Counter) -> tuple[Result | None, str]:
    """(the stored result of the newest block, "" or why the sandbox itself failed)."""
    from sandbox.result import INTERNAL

    cfg, store, cache = in_loop.config, in_loop.store, in_loop.cache
    inputs = [im.hash for im in r.sample.images[:1]]
    key = ExecutionCache.key(r.codes, inputs, cfg.sandbox_timeout,
                             getattr(in_loop.sandbox, "namespace", "compat"))
    if cache is not None and (hit := cache.get(key)) is not None and all(
            store_path(store.root, p).exists() for p in hit.images):
        stats["code_cached"] += 1
        r.replay = True
        return hit, ""
    try:
        if r.session is None:
            files = [str(store.path(im)) for im in r.sample.images[:1]]
            r.session = in_loop.sandbox.session(inputs=files, timeout=cfg.sandbox_timeout)
        if r.replay:      # the session must hold what the cached blocks defined
            for code in r.codes[:-1]:
                r.session.run(code)
            r.replay = False
        raw = r.session.run(r.codes[-1])
    except Exception as exc:  # noqa: BLE001  the sandbox failed for this trajectory only
        return None, f"{type(exc).__name__}: {exc}"
    if raw.error is not None and raw.error.kind == INTERNAL:
        return None, raw.error.message
    result = stored_result(raw, store)
    stats["code_run"] += 1
    stats["code_errors"] += result.kind == "error"
    if cache is not None:
        cache.put(key, result)
    return result, ""


def _shown(result: Result, cfg: LoopConfig) -> Result:
    if result.text and len(result.text) > cfg.max_output_chars:
        return replace(result, text=result.text[:cfg.max_output_chars] + " …[cut]")
    return result


def _output_parts(result: Result, in_loop: InLoop) -> list[dict]:
    """A result as content parts: text, with each produced image as an image part inside the
    `<sandbox_output>` block (where a Thyme model reads its `<image>` tokens)."""
    if result.kind != "image":
        return [{"type": "text", "text": render_result(_shown(result, in_loop.config))}]
    images = [image_part(store_path(in_loop.store.root, p)) for p in result.images]
    return [{"type": "text", "text": OUTPUT_OPEN}, *images, {"type": "text", "text": OUTPUT_CLOSE}]


def _conversation(r: _Rollout, in_loop: InLoop) -> list[dict]:
    if in_loop.config.continuation == "turns":
        messages = list(r.base)
        for piece, result in zip(r.pieces, r.results, strict=True):
            messages.append({"role": "assistant", "content": piece})
            messages.append({"role": "user", "content": _merge(
                [*_output_parts(result, in_loop), {"type": "text", "text": "\n" + TURNS_REMINDER}])})
        return messages
    parts: list[dict] = []
    for k, piece in enumerate(r.pieces):
        parts.append({"type": "text", "text": piece})
        if k < len(r.results):
            parts += _output_parts(r.results[k], in_loop)
    return [*r.base, {"role": "assistant", "content": _merge(parts)}]


def _merge(parts: list[dict]) -> list[dict] | str:
    """Adjacent text parts joined; text alone as a plain string (what every server takes)."""
    merged: list[dict] = []
    for part in parts:
        if part["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + part["text"]}
        else:
            merged.append(dict(part))
    if len(merged) == 1 and merged[0]["type"] == "text":
        return merged[0]["text"]
    return merged


def _close(r: _Rollout) -> None:
    if r.session is not None:
        try:
            r.session.close()
        except Exception:  # noqa: BLE001, S110  closing a dead session must not fail the batch
            pass
        r.session = None


def _finish(r: _Rollout, teacher: str, cfg: LoopConfig,
            max_code_blocks: int) -> tuple[Trajectory | None, dict | None]:
    text = "".join(r.pieces)
    if r.end in ("turn_cap", "image_cap", "sandbox_failed", "request_failed"):
        return None, parse.quarantine_row(r.sample.id, teacher, r.end, r.detail, text)
    try:
        parsed = parse.parse_output(text, r.finishes[-1], max_code_blocks)
        ran = [c.strip() for c in r.codes]
        written = [t.code.strip() for t in parsed.turns if t.code is not None]
        if written != ran:
            raise parse.Unparseable("blind_code", f"the loop ran {len(ran)} code block(s), the "
                                                  f"text holds {len(written)}")
        leak = parse.reveals_ground_truth(parsed.turns, r.hidden)
        if leak:
            raise parse.Unparseable("reveals_ground_truth", leak)
    except parse.Unparseable as exc:
        return None, parse.quarantine_row(r.sample.id, teacher, exc.reason, exc.detail, text)
    code_turns = [t for t in parsed.turns if t.code is not None]
    for turn, result in zip(code_turns, r.results, strict=True):
        turn.result = result
    trajectory = Trajectory(sample_id=r.sample.id, teacher=teacher, kind=_kind(r.plan, code_turns),
                            task=r.sample.task, turns=parsed.turns, answer=parsed.answer,
                            lineage={"mode": "loop", "continuation": cfg.continuation,
                                     "plan": r.plan, "calls": len(r.pieces),
                                     "finish_reasons": r.finishes, "end": r.end,
                                     "notes": parsed.notes})
    return trajectory, None


def _kind(plan: str, code_turns: list) -> str:
    """The plan's kind when the teacher followed it (two or more rounds), else what happened:
    an error shown and then fixed is error correction."""
    if len(code_turns) >= 2 and plan != "single":
        return plan
    if len(code_turns) >= 2 and any(t.result.kind == "error" for t in code_turns[:-1]):
        return "error_correction"
    return parse.infer_kind(len(code_turns))
