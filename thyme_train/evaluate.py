"""Evaluation: run a policy over benchmarks with the sandbox, prompts and rollout loop of training,
score the answers with each benchmark's own rule or the shared cascade (pipelines.core.answers)
and an optional LLM judge, and report the benchmarks' own metrics with confidence intervals.

    python -m thyme_train.evaluate --model DIR --benchmark vstar=VStarBench.tsv \\
        --benchmark hrbench4k=hr_bench_4k.tsv [--prompt-set thyme-release] [--samples 4 \\
        --temperature 0.7] [--engine vllm [--server URL ...]] [--judge-model NAME --judge-url URL]

Many items are in flight at once: a wave of `--batch-items` items (times `--samples`) goes
through one rollout loop, so the engine batches their generation calls and the sandbox pool runs
their code concurrently; several vLLM servers (`--server` repeated) or devices (`--devices 0,1`:
one process each) share the items. Every finished (mode, item, sample) is written at once
(thyme_train.eval_store): a killed evaluation continues where it stopped. Each benchmark gets a
folder with `settings.json`, its records, `results.json`, `report.md` and `accuracy.png`; the run
gets `summary.md`/`summary.json`/`summary.png`, one line per benchmark. docs/evaluation.md has the
formats, metrics and the meaning of every number.

The policy is anything that turns a wave of items into answers (`thyme_policy` binds a loaded
`thyme_train.infer.Thyme`; tests pass fakes whose accuracy is known).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.answers import score_answer
from thyme_train import benchmarks
from thyme_train.eval_data import EvalItem
from thyme_train.eval_report import summarize, write_benchmark_report
from thyme_train.eval_store import RecordStore

MODES = {"tools": True, "direct": False}


@dataclass
class Answered:
    """What a policy returned for one sample of one item."""
    response: str                      # the whole assistant text (reasoning, code, outputs, answer)
    code_blocks: int = 0               # code blocks the sandbox ran
    code_ok: int = 0                   # of those, ran without error
    end_reason: str = "answer"         # why the loop stopped (answer, eos, turn_cap, ...)
    fell_back: bool = False            # answered directly after the loop gave no answer
    error: str | None = None           # the engine failed on this item
    calls: list[dict] = field(default_factory=list)   # per code run: ops, ok, crop (see crops)
    turns: int = 0


Policy = Callable[[list[EvalItem], bool, int], list[list[Answered]]]   # (items, tools, k)
JudgeFn = Callable[[list[tuple[str, str, str]]], list[bool | None]]    # (question, truth, answer)


def per_item(answer: Callable[[EvalItem, bool], Answered]) -> Policy:
    """A wave policy from a one-item function (called once per sample)."""
    def policy(items: list[EvalItem], tools: bool, samples: int) -> list[list[Answered]]:
        return [[answer(item, tools) for _ in range(samples)] for item in items]
    return policy


def item_key(item_id: str) -> int:
    """A stable integer per item id: seeds its samples (RolloutRunner.run `keys`)."""
    return zlib.crc32(item_id.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def score(kind: str, item: EvalItem, answered: Answered) -> tuple[bool, bool, str, str]:
    """(correct, decisive, how, given) by the benchmark's own rule, else the cascade."""
    if answered.error is not None:
        return False, True, f"engine error: {answered.error}", ""
    from pipelines.core.answers import extract

    given = extract(answered.response).text
    own = benchmarks.own_rule(kind, given, item.answer, item.category)
    if own is not None:
        return own[0], True, own[1], given
    v = score_answer(answered.response, item.answer, item.options or None)
    return v.correct, v.decisive, v.how, v.given


def make_record(kind: str, mode: str, item: EvalItem, sample: int, answered: Answered) -> dict:
    correct, decisive, how, given = score(kind, item, answered)
    meta = {k: v for k, v in item.meta.items() if k not in ("boxes", "targets")}
    crops = [c["crop"] for c in answered.calls if c.get("crop")]
    record = {"mode": mode, "id": item.id, "sample": sample, "category": item.category,
              "truth": item.answer, "given": given, "correct": bool(correct), "how": how,
              "decisive": decisive, "code_calls": answered.code_blocks, "code_ok": answered.code_ok,
              "calls": answered.calls, "boxes": len(item.boxes),
              "faithful": any(c["contains"] for c in crops) if crops and item.boxes else None,
              "end_reason": answered.end_reason, "fell_back": answered.fell_back,
              "error": answered.error, "turns": answered.turns, "meta": meta}
    record["cluster"] = benchmarks.cluster_key(kind, {**record, "image": item.image,
                                                      "question": item.question})
    return record


def judge_undecided(records: list[dict], items: dict[str, EvalItem], judge: JudgeFn) -> None:
    """The judge decides the records no rule could (an open answer worded differently)."""
    asked = [r for r in records if not r["decisive"] and r["given"] and r["error"] is None]
    if not asked:
        return
    triples = []
    for r in asked:
        item = items[r["id"]]
        truth = f"{item.answer}. {item.options[item.answer]}" if item.answer in item.options \
            else item.answer
        triples.append((item.prompt_text(), truth, r["given"]))
    for r, verdict in zip(asked, judge(triples), strict=True):
        r["correct"] = bool(verdict)
        r["how"] = "judge" if verdict is not None else "judge gave no verdict (counted wrong)"


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def run(kind: str, items: list[EvalItem], policy: Policy, store: RecordStore, mode: str = "tools",
        samples: int = 1, judge: JudgeFn | None = None, batch_items: int = 32,
        progress: Callable[[str], None] | None = None) -> int:
    """Every (item, sample) not yet in `store`, in waves of `batch_items` items; one wave's
    engine failure is recorded on its items, never raised. Returns the records written."""
    done = store.done(mode)
    todo = [it for it in items if any((it.id, j) not in done for j in range(samples))]
    by_id = {it.id: it for it in items}
    written = 0
    for start in range(0, len(todo), batch_items):
        wave = todo[start:start + batch_items]
        try:
            answered = policy(wave, MODES[mode], samples)
            if len(answered) != len(wave) or any(len(a) != samples for a in answered):
                raise RuntimeError(f"the policy returned {[len(a) for a in answered]} answers for "
                                   f"{len(wave)} items x {samples} samples")
        except Exception as exc:               # noqa: BLE001 - recorded per item, the run goes on
            error = Answered(response="", error=f"{type(exc).__name__}: {exc}")
            answered = [[error] * samples for _ in wave]
        records = [make_record(kind, mode, item, j, a) for item, per in zip(wave, answered, strict=True)
                   for j, a in enumerate(per) if (item.id, j) not in done]
        if judge is not None:
            judge_undecided(records, by_id, judge)
        store.append(records)
        written += len(records)
        if progress:
            progress(f"{mode}: {min(start + batch_items, len(todo))}/{len(todo)} items")
    return written


def evaluate(items: list[EvalItem], policy: Policy, out_dir: Path, title: str,
             ablation: bool = True, judge: JudgeFn | None = None, kind: str = "generic",
             samples: int = 1, settings: dict | None = None, batch_items: int = 32,
             bootstrap: int = 1000, name: str | None = None, restart: bool = False) -> dict:
    """Run with tools (and, for the ablation, without), write the reports, return the summary
    ({mode: ...}, see thyme_train.eval_report.summarize)."""
    settings = dict(settings or {}, samples=samples, modes=["tools", "direct"] if ablation else ["tools"])
    store = RecordStore(out_dir, settings, restart=restart)
    for mode in settings["modes"]:
        run(kind, items, policy, store, mode, samples, judge, batch_items)
    return report(kind, store, settings, out_dir, title, name or out_dir.name, bootstrap)


def report(kind: str, store: RecordStore, settings: dict, out_dir: Path, title: str, name: str,
           bootstrap: int = 1000) -> dict:
    records = store.records()
    if not records:
        raise ValueError(f"{out_dir}: no results to report")
    summary = summarize(kind, records, settings["samples"], bootstrap, settings.get("seed", 0))
    write_benchmark_report(name, kind, summary, settings, records, out_dir, title)
    return summary


# ---------------------------------------------------------------------------------------------
# The policy over a loaded checkpoint
# ---------------------------------------------------------------------------------------------

def thyme_policy(thyme, keep_images: bool = False, force=None) -> Policy:
    """The evaluator's policy over a loaded `thyme_train.infer.Thyme`: a wave in one
    `ask_many`; each code run's operations, and for items with target boxes where each crop lies
    and whether it holds a target (thyme_train.crops). The sandbox's produced images are deleted
    once analysed unless `keep_images`. `force`: a scripted policy (tests, demos)."""
    from thyme_train.crops import FAITHFUL_COVERAGE, coverage, locate_crop, operations

    def policy(items: list[EvalItem], tools: bool, samples: int) -> list[list[Answered]]:
        transcripts = thyme.ask_many([(it.image, it.prompt_text()) for it in items], tools=tools,
                                     samples=samples, keys=[item_key(it.id) for it in items],
                                     force=force)
        out = []
        for item, ts in zip(items, transcripts, strict=True):
            per = []
            for t in ts:
                calls = []
                for call in t.calls:
                    # a run that printed a result instead of an image computed something
                    printed = call["ok"] and not call["images"]
                    info = {"ops": ["compute"] if printed else operations(call["code"]),
                            "ok": call["ok"], "images": len(call["images"]), "crop": None}
                    if call["ok"] and item.boxes and item.image and "crop" in info["ops"]:
                        info["crop"] = _crop_info(item, call["images"][0], locate_crop, coverage,
                                                  FAITHFUL_COVERAGE)
                    calls.append(info)
                    if not keep_images:
                        for path in call["images"]:
                            Path(path).unlink(missing_ok=True)
                per.append(Answered(
                    response=t.response if not t.fell_back else f"<answer>{t.answer}</answer>",
                    code_blocks=t.code_calls, code_ok=t.code_calls - t.code_errors,
                    end_reason=t.end_reason, fell_back=t.fell_back, calls=calls, turns=t.turns,
                    error=t.error if t.end_reason == "engine_error" else None))
            out.append(per)
        return out
    return policy


def _crop_info(item: EvalItem, produced: str, locate, coverage, threshold: float) -> dict | None:
    from PIL import Image

    found = locate(item.image, produced)
    if found is None:
        return None
    with Image.open(item.image) as img:
        width, height = img.size
    best = max(coverage(b, found.box) for b in item.boxes)
    return {"box": [round(v, 1) for v in found.box], "score": round(found.score, 3),
            "area_share": round(found.area_share(width, height), 4), "coverage": round(best, 3),
            "contains": best >= threshold}


def main(argv: list[str] | None = None) -> int:
    """The command line (thyme_train.eval_cli: arguments, engines, data parallelism, Pipes)."""
    from thyme_train.eval_cli import main as cli
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
