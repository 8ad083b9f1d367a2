"""Evaluation: run a policy over a benchmark with the sandbox and prompts of training, score the
answers with the shared rule cascade (pipelines.core.answers) and an optional judge, and report.

    python -m thyme_train.evaluate --model DIR --benchmark bench.tsv [--limit N] [--out DIR]

The policy is anything that turns an `EvalItem` into an `Answered` (thyme_train.infer binds the
rollout loop; tests pass fakes whose accuracy is known). The report holds accuracy overall and per
category, tool use (share of answers that used code, executions per answer, execution success),
the same with tools disabled (direct answering) for an ablation, and is written as
`results.json`, `report.md` and `accuracy.png` in the output folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipelines.core.answers import score_answer
from pipelines.core.atomic import write_json, write_text
from thyme_train.eval_data import EvalItem
from thyme_train.plots import accuracy_bars


@dataclass
class Answered:
    """What a policy returned for one item."""
    response: str                      # the whole assistant text (reasoning, code, outputs, answer)
    code_blocks: int = 0               # code blocks the sandbox ran
    code_ok: int = 0                   # of those, ran without error
    end_reason: str = "answer"         # why the loop stopped (answer, eos, turn_cap, ...)
    fell_back: bool = False            # answered directly after the loop gave no answer
    error: str | None = None           # the engine failed on this item


@dataclass
class ItemResult:
    id: str
    category: str
    truth: str
    given: str
    correct: bool
    how: str                           # which rule decided (or the judge, or the error)
    code_blocks: int
    code_ok: int
    end_reason: str
    fell_back: bool
    error: str | None = None


Policy = Callable[[EvalItem, bool], Answered]          # (item, tools enabled) -> Answered
Judge = Callable[[str, str, str], bool]                # (question, answer, truth) -> correct


def score_item(item: EvalItem, answered: Answered, judge: Judge | None = None) -> ItemResult:
    if answered.error is not None:
        verdict_ok, how, given = False, f"engine error: {answered.error}", ""
    else:
        v = score_answer(answered.response, item.answer, item.options or None)
        verdict_ok, how, given = v.correct, v.how, v.given
        if not v.decisive and judge is not None and given:
            verdict_ok, how = judge(item.prompt_text(), given, item.answer), "judge"
    return ItemResult(id=item.id, category=item.category, truth=item.answer, given=given,
                      correct=verdict_ok, how=how, code_blocks=answered.code_blocks,
                      code_ok=answered.code_ok, end_reason=answered.end_reason,
                      fell_back=answered.fell_back, error=answered.error)


def run(items: list[EvalItem], policy: Policy, tools: bool = True, judge: Judge | None = None,
        desc: str = "evaluate") -> list[ItemResult]:
    """Score every item; one item's engine failure is recorded on that item, never raised."""
    results = []
    for item in tqdm(items, desc=desc, unit="item"):
        try:
            answered = policy(item, tools)
        except Exception as exc:               # noqa: BLE001 - recorded per item, the batch goes on
            answered = Answered(response="", error=f"{type(exc).__name__}: {exc}")
        results.append(score_item(item, answered, judge))
    return results


@dataclass
class Summary:
    items: int
    accuracy: float
    by_category: dict[str, float]
    used_code: float                   # share of answers with at least one code block
    executions_per_answer: float
    execution_success: float           # share of code blocks that ran without error
    fell_back: int
    errors: int
    end_reasons: dict[str, int] = field(default_factory=dict)


def summarize(results: list[ItemResult]) -> Summary:
    n = len(results)
    per: dict[str, list[bool]] = defaultdict(list)
    ends: dict[str, int] = defaultdict(int)
    for r in results:
        per[r.category].append(r.correct)
        ends[r.end_reason] += 1
    blocks = sum(r.code_blocks for r in results)
    return Summary(
        items=n, accuracy=_mean([r.correct for r in results]),
        by_category={c: _mean(v) for c, v in sorted(per.items())},
        used_code=_mean([r.code_blocks > 0 for r in results]),
        executions_per_answer=blocks / n if n else 0.0,
        execution_success=sum(r.code_ok for r in results) / blocks if blocks else 0.0,
        fell_back=sum(r.fell_back for r in results), errors=sum(r.error is not None for r in results),
        end_reasons=dict(ends))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def write_report(summaries: dict[str, Summary], results: dict[str, list[ItemResult]], out_dir: Path,
                 title: str) -> dict[str, Path]:
    """results.json, report.md and accuracy.png (per category, one bar per mode), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, "summaries": {m: asdict(s) for m, s in summaries.items()},
               "items": {m: [asdict(r) for r in rs] for m, rs in results.items()}}
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "report.md",
             "chart": out_dir / "accuracy.png"}
    write_json(paths["json"], payload, indent=1)
    write_text(paths["markdown"], markdown_table(summaries, title))
    categories = sorted({c for s in summaries.values() for c in s.by_category})
    accuracy_bars(["overall", *categories],
                  {mode: [s.accuracy] + [s.by_category.get(c, 0.0) for c in categories]
                   for mode, s in summaries.items()}, paths["chart"], title)
    return paths


def markdown_table(summaries: dict[str, Summary], title: str) -> str:
    categories = sorted({c for s in summaries.values() for c in s.by_category})
    head = ["mode", "items", "accuracy", *categories, "used code", "exec/answer", "exec success"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, s in summaries.items():
        cells = [mode, str(s.items), f"{100 * s.accuracy:.1f}",
                 *(f"{100 * s.by_category[c]:.1f}" if c in s.by_category else "-" for c in categories),
                 f"{100 * s.used_code:.1f}%", f"{s.executions_per_answer:.2f}",
                 f"{100 * s.execution_success:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate(items: list[EvalItem], policy: Policy, out_dir: Path, title: str,
             ablation: bool = True, judge: Judge | None = None) -> dict[str, Summary]:
    """Run with tools (and, for the ablation, without), write the report, return the summaries."""
    modes = {"tools": True, "direct": False} if ablation else {"tools": True}
    results = {m: run(items, policy, tools=t, judge=judge, desc=m) for m, t in modes.items()}
    summaries = {m: summarize(rs) for m, rs in results.items()}
    write_report(summaries, results, out_dir, title)
    return summaries


def thyme_policy(thyme) -> Policy:
    """The evaluator's policy over a loaded `thyme_train.infer.Thyme`."""

    def policy(item: EvalItem, tools: bool) -> Answered:
        t = thyme.ask(item.image, item.prompt_text(), tools=tools)
        return Answered(response=t.response if not t.fell_back else f"<answer>{t.answer}</answer>",
                        code_blocks=t.code_calls, code_ok=t.code_calls - t.code_errors,
                        end_reason=t.end_reason, fell_back=t.fell_back,
                        error=t.error if t.end_reason == "engine_error" else None)
    return policy


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from thyme_train.eval_data import BenchmarkError, load_items
    from thyme_train.infer import InferConfig, InferenceError, Thyme, evaluation_rollout

    parser = argparse.ArgumentParser(prog="python -m thyme_train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint directory or a hub id")
    parser.add_argument("--benchmark", required=True,
                        help="a VLMEvalKit .tsv, a .jsonl, or a published dataset directory")
    parser.add_argument("--split", default="test", help="split of a published dataset")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=None, help="report folder (default: eval/<benchmark>)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--on-code-error", choices=("rollback", "show"), default="rollback")
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--no-ablation", action="store_true", help="skip the tools-disabled run")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="record unreadable benchmark rows and go on (default: stop)")
    args = parser.parse_args(argv)

    from thyme_train.pipes import launched_process, write_error

    bench = Path(args.benchmark)
    out = Path(args.out) if args.out else Path("eval") / bench.stem
    errors: list[BenchmarkError] = []
    with launched_process() as pipes:        # Pipes when the `evaluation` asset launched it
        try:
            items = load_items(bench, out / "images", limit=args.limit, split=args.split,
                               on_error="skip" if args.skip_bad_rows else "raise", errors=errors)
            config = InferConfig(model=args.model, engine=args.engine,
                                 rollout=evaluation_rollout(on_code_error=args.on_code_error,
                                                           max_new_tokens=args.max_new_tokens))
            with Thyme(config) as thyme:
                summaries = evaluate(items, thyme_policy(thyme), out,
                                     title=f"{bench.stem} ({Path(args.model).name})",
                                     ablation=not args.no_ablation)
        except (BenchmarkError, InferenceError) as exc:   # a clear message, exit status 2
            write_error(exc)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if pipes is not None:
            pipes.report_asset_materialization(metadata=materialization_metadata(summaries, out))
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    print((out / "report.md").read_text())
    print(f"results: {out / 'results.json'}, chart: {out / 'accuracy.png'}")
    return 0 if summaries["tools"].errors < summaries["tools"].items else 1


def materialization_metadata(summaries: dict[str, Summary], out: Path) -> dict:
    """What the Dagster `evaluation` asset records: accuracies, the table, the path (the chart is
    embedded by the launching asset: a long Pipes line can be read half-written)."""
    meta = {f"accuracy_{mode}": {"raw_value": round(s.accuracy, 4), "type": "float"}
            for mode, s in summaries.items()}
    meta.update({
        "items": {"raw_value": summaries["tools"].items, "type": "int"},
        "used_code": {"raw_value": round(summaries["tools"].used_code, 4), "type": "float"},
        "execution_success": {"raw_value": round(summaries["tools"].execution_success, 4),
                              "type": "float"},
        "report": {"raw_value": (out / "report.md").read_text(), "type": "md"},
        "results": {"raw_value": os.path.relpath(out / "results.json"), "type": "path"},
    })
    return meta


if __name__ == "__main__":
    raise SystemExit(main())
