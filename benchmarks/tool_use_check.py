"""Tool-use learning check (issue 19): does the flow teach the tiny model to think with code?

A task the tiny Qwen2.5-VL cannot solve in its head but can delegate: multi-digit arithmetic
("What is 4821 × 937?"; a product, a sum of three numbers, a product plus a number). The code
copies the numbers from the question, the sandbox computes, the answer copies the printed result.

    python benchmarks/tool_use_check.py sft  --seeds 0 1 2     SFT; tools vs direct on held-out items
    python benchmarks/tool_use_check.py grpo --seeds 0 1 2     GRPO-ATS on top (after `sft`)
    python benchmarks/tool_use_check.py demo                   `make demo`'s smaller check

`sft`, per seed, everything through the project's own code, each step its own process:
  1. data: the generated pool's arithmetic task -> template teacher -> sandbox -> audit -> splits
     -> published SFT and RL datasets (benchmarks/tool_use_data.py; its own seed per seed);
  2. a tiny Qwen2.5-VL (`thyme_train.tiny`, the preset named by --preset) built with the seed;
  3. SFT (`python -m thyme_train.sft`, stage2_tiny.yaml) on the `computation` split, a checkpoint
     every --eval-every steps;
  4. every --curve-every steps a checkpoint evaluated (`python -m thyme_train.evaluate`: the
     rollout loop, sandbox and prompts of training, greedy) on --curve-items held-out items (the
     RL dataset's `test` split: questions no SFT row or GRPO prompt has); the last one on
     --final-items held-out items (default all), with the ablation (tools disabled: the direct
     system prompt, one generation call);
  5. the control: the same SFT (rows, steps, learning rate) on the same rows answered without
     code (tool_use_data.direct_rows) under the direct system prompt, evaluated alike: what the
     tiny model reaches when it is trained to answer in its head.
  Passes when every seed reaches --min-tools accuracy with tools, at least --min-gap above
  direct answering, and above the control.

`grpo`, per seed, from the `sft` run's checkpoint at --from-step (deliberately under-trained):
GRPO-ATS (`python -m thyme_train.grpo`, rl_tiny.yaml: rollouts with the sandbox in the loop, ATS
sampling, the unchanged rewards) on the RL dataset's `train` prompts, and the same run with
learning rate 0 (the same rollouts, no update): the curves of accuracy, execution success and
tool-call rate per step, and both final policies evaluated on the held-out items (the same
items, greedy, with tools and without). Passes when for every seed held-out accuracy with tools
beats the no-update policy's, execution success rises or holds its ceiling (>= 0.95), and the
rollouts call the sandbox (tool-call rate >= 0.5 on average), and when the items only one policy
gets right favour the updates beyond chance over all seeds together (exact McNemar test, p <
0.05). The rollouts' accuracy against the no-update run on the same steps (same prompts: paired)
is reported beside it, not judged: with 4-8 prompts a step it swings by +-0.2 within 20 steps.

`--prompt-set benchmarks/tool_use_prompts.yaml` renders the data, SFT and evaluation with a short
prompt set (about 100 fewer tokens a row than `thyme`'s); `--task arithmetic_small` draws fewer
digits (3-digit x 2-digit products, sums of three 3-digit numbers): less to copy;
`--task arithmetic_fixed --wording fixed` asks one shape ("What is 482 × 937?", six-digit
products) answered in one wording, so every copy is at a constant offset.

Each run and evaluation folder records the command that made it (check_settings.json): a re-run
with the same settings keeps what is finished and resumes an interrupted SFT from its newest
checkpoint; other settings start that folder afresh. GRPO runs live in one folder per learning
rate (`grpo_lr0` is the no-update run), so trying another --lr re-runs only the run with updates.
Writes run folders under --work, the figures and numbers to docs/img/tool_use_{sft,grpo}.{png,
json} (`demo`: under data/demo/tool_use/); exits 1 unless every seed passes. Results and their
reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tool_use_data  # noqa: E402
from grpo_learning_check import _mean, compare  # noqa: E402  (one first-vs-last-K rule)

from pipelines.core.atomic import write_json  # noqa: E402

WORK = ROOT / "data" / "benchmarks" / "tool_use_check"
# `make demo`'s smaller check (`demo`): seed 0 of the setting that left the copy plateau fastest
# (docs/benchmarks.md, run 4d: batch 32 learned the copy in ~250 steps where batch 8 took
# 1,600-2,100+); it passes when tools beat direct by 30 points with at least 50% right.
DEMO = dict(seeds=[0], task="arithmetic_fixed", wording="fixed", preset="deep", batch=32,
            sft_steps=300, sft_lr=2e-3, schedule="constant_with_warmup", control=False,
            prompt_set="benchmarks/tool_use_prompts.yaml", final_items=20, curve_items=16,
            curve_every=300, eval_every=100, min_tools=0.5, min_gap=0.3,
            work=str(ROOT / "data" / "demo" / "tool_use"),
            out=str(ROOT / "data" / "demo" / "tool_use" / "tool_use_demo"))
IMG = ROOT / "docs" / "img"
SETTINGS = "check_settings.json"   # in each run/evaluation folder: the command that made it


# ---------------------------------------------------------------------------------------------
# Processes: the project's own command lines
# ---------------------------------------------------------------------------------------------

def _run(cmd: list[str], log_file: Path, threads: int) -> float:
    started = time.time()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); log "
                           f"{log_file}:\n{log_file.read_text()[-3000:]}")
    return time.time() - started


def _settings_match(out: Path, settings: dict) -> bool:
    """A run folder is reused (resumed or kept) only when made with the same settings; otherwise
    it is removed and the settings recorded for the new run."""
    marker = out / SETTINGS
    if marker.is_file() and json.loads(marker.read_text())["command"] == settings["command"]:
        return True
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_json(marker, settings)
    return False


def sft(model: Path, data: Path, out: Path, args, seed: int, threads: int, log: Path,
        splits: str = "[computation]", system_prompt: str | None = None) -> float:
    """`python -m thyme_train.sft` with stage2_tiny.yaml, a checkpoint every --eval-every steps.
    A finished run with the same settings is kept; an interrupted one resumes from its newest
    checkpoint (the trainer's resume=auto)."""
    cmd = [sys.executable, "-m", "thyme_train.sft", "--config", "thyme_train/configs/stage2_tiny.yaml",
           "--set", f"model={model}", "--set", f"data={data}", "--set", f"splits={splits}",
           "--set", f"output_dir={out}", "--set", "resume=auto",
           "--set", f"max_steps={args.sft_steps}", "--set", f"per_device_train_batch_size={args.batch}",
           "--set", f"learning_rate={args.sft_lr}", "--set", f"lr_scheduler_type={args.schedule}",
           "--set", f"warmup_ratio={args.warmup_ratio}", "--set", f"seed={seed}",
           "--set", f"save_steps={args.eval_every}", "--set", "save_total_limit=null",
           "--set", "logging_steps=10", "--set", f"prompt_set={args.prompt_set}"]
    if system_prompt is not None:
        cmd += ["--set", f"system_prompt={system_prompt}"]
    settings = {"command": [c.replace(f"{ROOT}{os.sep}", "") for c in cmd[1:]]}
    if _settings_match(out, settings) and (out / "metrics.json").is_file():
        return json.loads((out / SETTINGS).read_text()).get("seconds")   # None: not recorded
    seconds = _run(cmd, log, threads)
    write_json(out / SETTINGS, settings | {"seconds": round(seconds, 1)})
    return seconds


def evaluate(model: Path, rl: Path, out: Path, limit: int | None, ablation: bool, threads: int,
             max_new_tokens: int, prompt_set: str = "thyme") -> dict:
    """`python -m thyme_train.evaluate` on the held-out split; {mode: summary}."""
    cmd = [sys.executable, "-m", "thyme_train.evaluate", "--model", str(model), "--benchmark",
           str(rl), "--split", "test", "--out", str(out), "--max-new-tokens", str(max_new_tokens),
           "--prompt-set", prompt_set]
    if limit:
        cmd += ["--limit", str(limit)]
    if not ablation:
        cmd.append("--no-ablation")
    settings = {"command": [c.replace(f"{ROOT}{os.sep}", "") for c in cmd[1:]]}
    results = out / rl.name / "results.json"      # evaluate writes one folder per benchmark
    if _settings_match(out, settings) and results.is_file():
        seconds = json.loads((out / SETTINGS).read_text()).get("seconds", 0.0)
    else:
        seconds = _run(cmd, out.with_suffix(".log"), threads)
        write_json(out / SETTINGS, settings | {"seconds": round(seconds, 1)})
    return {mode: _summary(s) | {"seconds": round(seconds, 1)}
            for mode, s in json.loads(results.read_text())["summaries"].items()}


def _summary(mode: dict) -> dict:
    """The figures the check reads from one mode of thyme_train.evaluate's results.json."""
    use = mode["tool_use"]
    return {"items": mode["items"], "accuracy": mode["metrics"]["overall"]["avg"],
            **{k: use.get(k) for k in ("used_code", "executions_per_answer", "execution_success",
                                       "fell_back", "end_reasons")}}


# ---------------------------------------------------------------------------------------------
# sft: the check
# ---------------------------------------------------------------------------------------------

def prepare(seed: int, args, work: Path) -> tuple[dict, Path]:
    """The seed's data (pipeline) and tiny model (reused when already built). The model is
    built in its own process: in a thread beside other seeds' sandbox forks it deadlocked."""
    data = tool_use_data.build(work / f"seed{seed}" / "data", count=args.count, seed=seed,
                               workers=args.sandbox_workers, prompt_set=args.prompt_set,
                               task=args.task, wording=args.wording)
    tiny = work / f"seed{seed}" / f"tiny_{args.preset}"
    _run([sys.executable, "-m", "thyme_train.tiny", "--out", str(tiny), "--preset", args.preset,
          "--seed", str(seed)], work / f"seed{seed}" / "tiny.log", threads=1)
    return data, tiny


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*"))
    return found


def run_sft_seed(seed: int, args, work: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    folder = work / f"seed{seed}"
    print(f"seed {seed}: data through the pipeline (pool -> template teacher -> sandbox -> audit "
          f"-> splits -> published datasets) and a tiny model", flush=True)
    data, tiny = prepare(seed, args, work)
    sft_dir, rl_dir = Path(data["sft"]), Path(data["rl"])
    timing = {}
    out = folder / "sft"
    print(f"seed {seed}: SFT, {args.sft_steps} steps of {args.batch} rows (progress: "
          f"{os.path.relpath(folder / 'sft.log')}), then the held-out evaluation", flush=True)
    timing["sft"] = sft(tiny, sft_dir, out, args, seed, threads, folder / "sft.log")

    curve = []
    for step, ckpt in checkpoints(out):
        last = step == args.sft_steps
        if step % args.curve_every and not last:
            continue
        result = evaluate(ckpt, rl_dir, folder / "eval" / f"step{step}",
                          args.final_items if last else args.curve_items, last, threads,
                          args.max_new_tokens, args.prompt_set)
        report = folder / "eval" / f"step{step}" / rl_dir.name / "report.md"  # evaluate's own table
        curve.append({"step": step, **result, "report": os.path.relpath(report, ROOT)})
        print(f"seed {seed} step {step}: tools {result['tools']['accuracy']:.3f} "
              f"(code {result['tools']['used_code']:.2f}, exec ok "
              f"{result['tools']['execution_success']:.2f}, {result['tools']['items']} items)"
              + (f", direct {result['direct']['accuracy']:.3f}" if "direct" in result else ""),
              flush=True)
    timing["evaluation"] = round(sum(c["tools"]["seconds"] for c in curve), 1)

    control = None
    if args.control:
        from thyme_train.infer import DIRECT_SYSTEM_PROMPT

        rows = tool_use_data.direct_rows(sft_dir, folder / "direct_rows.parquet")
        cout = folder / "sft_direct"
        timing["control_sft"] = sft(tiny, rows, cout, args, seed, threads,
                                    folder / "sft_direct.log", splits="[]",
                                    system_prompt=DIRECT_SYSTEM_PROMPT)
        control = evaluate(cout, rl_dir, folder / "eval" / "control", args.final_items, True,
                           threads, args.max_new_tokens, args.prompt_set)
        print(f"seed {seed} control (trained to answer directly): direct "
              f"{control['direct']['accuracy']:.3f}, tools mode {control['tools']['accuracy']:.3f}",
              flush=True)

    final = curve[-1]
    losses = json.loads((out / "metrics.json").read_text())["losses"]
    tools, direct = final["tools"]["accuracy"], final["direct"]["accuracy"]
    best_direct = max(direct, control["direct"]["accuracy"] if control else 0.0)
    passed = tools >= args.min_tools and tools - best_direct >= args.min_gap
    return {"seed": seed, "data": {k: data[k] for k in ("samples", "passed_audit", "published",
                                                          "seconds")},
            "curve": curve, "control": control, "losses": losses, "tools": tools,
            "direct": direct, "gap": tools - best_direct, "passed": passed, "seconds": timing,
            "run_dir": os.path.relpath(folder, ROOT)}


# ---------------------------------------------------------------------------------------------
# grpo: GRPO-ATS on top
# ---------------------------------------------------------------------------------------------

def grpo_command(model: Path, rl: Path, out: Path, args, seed: int, lr: float) -> list[str]:
    batch = args.prompts_per_step * args.num_generations
    return [sys.executable, "-m", "thyme_train.grpo", "--config", "thyme_train/configs/rl_tiny.yaml",
           "--set", f"model={model}", "--set", f"data={rl}", "--set", f"output_dir={out}",
           "--set", "resume=never", "--set", f"max_steps={args.steps}",
           "--set", "num_train_epochs=1000", "--set", f"num_generations={args.num_generations}",
           "--set", f"per_device_train_batch_size={batch}", "--set", f"engine_batch_size={batch}",
           "--set", f"learning_rate={lr}", "--set", "min_lr_rate=1.0",
           "--set", f"warmup_ratio={args.warmup}", "--set", f"beta={args.beta}",
           "--set", f"max_new_tokens={args.max_new_tokens}", "--set", "max_turns=3",
           "--set", f"sandbox_workers={args.sandbox_workers}", "--set", f"seed={seed}",
           "--set", f"save_steps={args.steps}", "--set", "save_total_limit=1",
           "--set", "rollout_samples=2"]       # prompts: the rows' own (the data's prompt set)


def grpo(model: Path, rl: Path, out: Path, args, seed: int, lr: float, threads: int) -> float | None:
    """A finished run with the same settings is kept (its recorded seconds returned): the
    no-update run does not depend on --lr, so trying another learning rate re-runs only the run
    with updates. An unfinished one starts afresh."""
    cmd = grpo_command(model, rl, out, args, seed, lr)
    settings = {"command": [c.replace(f"{ROOT}{os.sep}", "") for c in cmd[1:]]}
    if _settings_match(out, settings):
        if (out / f"checkpoint-{args.steps}").is_dir():
            return json.loads((out / SETTINGS).read_text()).get("seconds")
        shutil.rmtree(out)
        out.mkdir(parents=True)
    seconds = _run(cmd, out.parent / f"{out.name}.log", threads)   # not with_suffix: "lr0.0002"
    write_json(out / SETTINGS, settings | {"seconds": round(seconds, 1)})
    return seconds


def series(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    get = lambda key: [r.get(key) for r in steps]   # noqa: E731
    return {"step": get("step"), "reward": get("reward"),
            "accuracy": get("rewards/accuracy_reward/mean"),
            "format": get("rewards/format_reward/mean"),
            "tool_call_rate": get("thyme/tool_call_rate"),
            "exec_success": get("thyme/exec_success"),
            "end_answer": get("thyme/end/answer")}


def paired(updated: list[float], frozen: list[float], k: int, min_rise: float) -> dict:
    """The last K steps of the run with updates against the same steps of the run without: both
    runs draw the same prompts in the same order (same seed), so the per-step difference removes
    the prompts' own difficulty, which moves a 4-8-prompt batch mean far more than learning does.
    `rose` = the mean difference beats `min_rise` and 2 standard errors of the differences."""
    diffs = [u - f for u, f in zip(updated[-k:], frozen[-k:], strict=True)]
    mean = _mean(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5 \
        if len(diffs) > 1 else float("inf")
    return {"updates": _mean(updated[-k:]), "no_updates": _mean(frozen[-k:]), "rise": mean,
            "rise_se": se, "rose": bool(mean > min_rise and mean > 2 * se)}


def item_outcomes(eval_out: Path, rl: Path) -> dict[str, bool]:
    """Held-out item id -> answered right with tools (thyme_train.evaluate's own records)."""
    from thyme_train.eval_store import read_records

    records, _ = read_records(eval_out / rl.name)
    return {r["id"]: bool(r["correct"]) for r in records if r["mode"] == "tools" and r["sample"] == 0}


def mcnemar(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar test: the chance, if the updates changed nothing, that the items
    only one policy gets right split at least this unevenly between the two."""
    n, k = fixed + broken, min(fixed, broken)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def run_grpo_seed(seed: int, args, work: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    folder = work / f"seed{seed}"
    build = json.loads((folder / "data" / tool_use_data.MARKER).read_text())
    rl = Path(build["rl"])
    from_step = args.from_step[args.seeds.index(seed) if len(args.from_step) > 1 else 0]
    start = folder / "sft" / f"checkpoint-{from_step}"
    if not (start / "config.json").is_file():
        raise FileNotFoundError(f"{start}: run `tool_use_check.py sft` first (with a checkpoint "
                                f"at step {from_step})")
    runs, timing = {}, {}
    for name, lr in (("updates", args.lr), ("no_updates", 0.0)):
        # one folder per learning rate (the no-update run is lr 0, shared by every --lr tried);
        # its held-out evaluation inside it, so a run made afresh never keeps an old evaluation
        out = folder / f"grpo_lr{lr:g}"
        timing[name] = grpo(start, rl, out, args, seed, lr, threads)
        runs[name] = {"series": series(out),
                      "heldout": evaluate(out, rl, out / "heldout", args.final_items, True,
                                          threads, args.max_new_tokens, args.prompt_set)}
    start_eval = folder / "eval" / f"step{from_step}"
    start_results = start_eval / rl.name / "results.json"
    heldout_start = {mode: _summary(m) for mode, m in
                     json.loads(start_results.read_text())["summaries"].items()} \
        if start_results.is_file() else None
    s, frozen = runs["updates"]["series"], runs["no_updates"]["series"]
    summary = {"accuracy": compare(s["accuracy"], args.k, args.min_rise),
               "accuracy_vs_no_updates": paired(s["accuracy"], frozen["accuracy"], args.k,
                                                args.min_rise),
               "exec_success": compare(s["exec_success"], args.k, 0.0),
               "exec_success_vs_no_updates": paired(s["exec_success"], frozen["exec_success"],
                                                    args.k, 0.0),
               "tool_call_rate_min": min(s["tool_call_rate"]),
               "tool_call_rate_mean": _mean(s["tool_call_rate"]),
               "no_updates_accuracy": compare(frozen["accuracy"], args.k, args.min_rise)}
    # Judged on the held-out items, the same items for both policies (greedy, with tools): the
    # training rollouts (4-8 prompts a step, sampled) swing by +-0.2 within 20 steps, so their
    # curves are reported, not judged. Execution success already ~1.0 at a start that calls the
    # sandbox cannot rise: holding the ceiling (>= 0.95) counts.
    up, fr = runs["updates"]["heldout"]["tools"], runs["no_updates"]["heldout"]["tools"]
    items_up = item_outcomes(folder / f"grpo_lr{args.lr:g}" / "heldout", rl)
    items_fr = item_outcomes(folder / "grpo_lr0" / "heldout", rl)
    fixed = sum(items_up[i] and not items_fr[i] for i in items_up)
    broken = sum(items_fr[i] and not items_up[i] for i in items_up)
    summary["heldout"] = {"items": len(items_up), "updates": sum(items_up.values()),
                          "no_updates": sum(items_fr.values()), "fixed": fixed,
                          "broken": broken, "mcnemar_p": mcnemar(fixed, broken)}
    exec_ok = (up["execution_success"] > fr["execution_success"]
               or up["execution_success"] >= 0.95)
    passed = (up["accuracy"] > fr["accuracy"] and exec_ok
              and summary["tool_call_rate_mean"] >= 0.5)
    return {"seed": seed, "from_step": from_step, "runs": runs, "summary": summary,
            "passed": passed,
            "heldout_start_curve_items": heldout_start, "seconds": timing,
            "run_dir": os.path.relpath(folder, ROOT)}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)

    def common_options(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
        common.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        common.add_argument("--jobs", type=int, default=1,
                            help="seeds run at once, the cores shared between them")
        common.add_argument("--sandbox-workers", type=int, default=1)
        common.add_argument("--max-new-tokens", type=int, default=256,
                            help="tokens per generation call (a trajectory's longest call is ~150)")
        common.add_argument("--final-items", type=int, default=None,
                            help="held-out items for final evaluations (default all)")
        common.add_argument("--work", default=str(WORK))
        common.add_argument("--prompt-set", default="thyme",
                            help="prompt set of the data, SFT and evaluation: a name or a YAML path, "
                                 "e.g. benchmarks/tool_use_prompts.yaml (short: cheaper steps)")
        common.add_argument("--out", default=None, help="figure and numbers (default docs/img/...)")
        return common

    def sft_options(s: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """`sft`'s options, made afresh for `demo` (parents would share the actions, and
        `set_defaults` on one would change the other's)."""
        s.add_argument("--count", type=int, default=2400, help="generated samples per seed")
        s.add_argument("--task", default="arithmetic",
                       choices=("arithmetic", "arithmetic_small", "arithmetic_fixed"),
                       help="the generated pool's task (arithmetic_small: fewer digits to copy; "
                            "arithmetic_fixed: one phrasing, 3x3-digit products of six digits)")
        s.add_argument("--wording", default="varied", choices=("varied", "fixed"),
                       help="the template teacher's wording (fixed: the first option of every "
                            "choice, so copied numbers sit at constant offsets)")
        s.add_argument("--preset", default="default", help="thyme_train.tiny preset")
        s.add_argument("--sft-steps", type=int, default=600)
        s.add_argument("--sft-lr", type=float, default=3e-3)
        s.add_argument("--schedule", default="cosine")
        s.add_argument("--warmup-ratio", type=float, default=0.03)
        s.add_argument("--batch", type=int, default=8)
        s.add_argument("--eval-every", type=int, default=100, help="checkpoint (and curve point) interval")
        s.add_argument("--curve-every", type=int, default=200, help="steps between curve points")
        s.add_argument("--curve-items", type=int, default=20, help="held-out items per curve point")
        s.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                       help="also train the control that answers without code")
        s.add_argument("--min-tools", type=float, default=0.8)
        s.add_argument("--min-gap", type=float, default=0.5)
        return s

    sft_options(common_options(sub.add_parser(
        "sft", help="SFT, then tools vs direct on held-out items")))
    demo = sft_options(common_options(sub.add_parser(
        "demo", help="`make demo`'s smaller check: one seed, the setting that learns the copy "
                     "fastest, 300 SFT steps, 20 held-out items")))
    demo.set_defaults(**DEMO)

    g = common_options(sub.add_parser("grpo", help="GRPO-ATS from an under-trained SFT checkpoint"))
    g.add_argument("--from-step", type=int, nargs="+", default=[200],
                   help="the SFT checkpoint to start from: one step for every seed, or one per "
                        "seed (the copy forms at a different step in each)")
    g.add_argument("--steps", type=int, default=60)
    g.add_argument("--prompts-per-step", type=int, default=4)
    g.add_argument("--num-generations", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-4,
                   help="1e-4 raised held-out accuracy on three seeds; 2e-4 did not, 1e-3 gave up the tool")
    g.add_argument("--warmup", type=float, default=0.1)
    g.add_argument("--beta", type=float, default=0.04)
    g.add_argument("--k", type=int, default=10, help="steps averaged at each end")
    g.add_argument("--min-rise", type=float, default=0.1, help="smallest accuracy rise that counts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    run = run_grpo_seed if args.part == "grpo" else run_sft_seed
    done = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, seed, args, work) for seed in args.seeds]
        for future in as_completed(futures):
            done.append(future.result())
    results = sorted(done, key=lambda r: args.seeds.index(r["seed"]))
    out = Path(args.out) if args.out else IMG / f"tool_use_{args.part}"
    from tool_use_plots import plot_grpo, plot_sft
    (plot_grpo if args.part == "grpo" else plot_sft)(results, out.with_suffix(".png"))
    pooled = None
    if args.part == "grpo":   # every seed's held-out items together: the rise beyond noise
        fixed = sum(r["summary"]["heldout"]["fixed"] for r in results)
        broken = sum(r["summary"]["heldout"]["broken"] for r in results)
        pooled = {"fixed": fixed, "broken": broken, "mcnemar_p": mcnemar(fixed, broken)}
    payload = {
        "command": f"python benchmarks/tool_use_check.py {' '.join(argv or sys.argv[1:])}",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "config": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "all_passed": all(r["passed"] for r in results) and (pooled is None
                                                             or pooled["mcnemar_p"] < 0.05),
        "pooled_heldout": pooled,
        "seconds_total": round(time.time() - started, 1),
        "seeds": results,
    }
    write_json(out.with_suffix(".json"), payload)
    for r in results:
        print(f"seed {r['seed']}: {'PASSED' if r['passed'] else 'not passed'}")
        if args.part == "grpo":
            h = r["summary"]["heldout"]
            print(f"  held-out with tools: {h['updates']} vs {h['no_updates']} of {h['items']} "
                  f"without updates ({h['fixed']} fixed, {h['broken']} broken, McNemar p "
                  f"{h['mcnemar_p']:.3g})")
        if args.part == "demo":
            final = r["curve"][-1]
            table = next(block for block in (ROOT / final["report"]).read_text().split("\n\n")
                         if block.startswith("| mode"))                   # tools vs direct
            print(f"\n{final['report']}:\n{table}\n")
            print(f"held-out products ({final['tools']['items']} items, never trained on), "
                  f"after {final['step']} SFT steps: with the sandbox "
                  f"{final['tools']['accuracy']:.0%}, without it (direct) "
                  f"{final['direct']['accuracy']:.0%}")
    if pooled:
        print(f"all seeds' held-out items: {pooled['fixed']} fixed, {pooled['broken']} broken by "
              f"the updates (McNemar p {pooled['mcnemar_p']:.3g}; a rise needs p < 0.05)")
    print(f"all passed: {payload['all_passed']}; {payload['seconds_total']} s; wrote "
          f"{os.path.relpath(out.with_suffix('.png'), ROOT)}, {os.path.relpath(out.with_suffix('.json'), ROOT)}")
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
