"""GRPO-ATS learning check (issue 7): on a task the tiny model can learn in minutes on CPU, does
the mean reward over the last steps clearly exceed the first steps, for several seeds?

The task: "Is the image red or blue?" about a solid, slightly jittered red or blue picture; the
ground truth is the colour. Per seed, from scratch:

  1. a tiny Qwen2.5-VL (`thyme_train.tiny`, random weights, built with that seed);
  2. a short SFT warm start (`python -m thyme_train.sft`) on Thyme-format rows
     `<think>I look at the color of the image.</think> <answer>red|blue</answer>` whose answer is
     a coin flip, NOT the image's colour: it teaches the tag format and the two-word vocabulary,
     so the format reward is earned from step 1, while accuracy starts at chance (~50%);
  3. GRPO-ATS (`python -m thyme_train.grpo`, the real rollout loop, sandbox and rewards, the
     reward definition unchanged: accuracy + 0.5 format + 0.5 consistency * [accuracy > 0]) on
     fresh images; the only thing left to learn is to read the colour.

The defaults are the settings that passed (docs/benchmarks.md has the runs that led to them):
60 steps of 8 prompts x G = 8, lr 1e-3, KL beta 0.2, each step holding as many red as blue
images (`--balanced`), text sampled as ATS does (T = 1, top-p 0.9, top-k 50) until answer collapse
is detected, then without top-p/top-k (`--untruncated-on-collapse`, thyme_train.collapse; as
shipped before it, seeds 47 and 404 collapsed to one colour at step ~20 and never recovered).

The reward per step is TRL's logged batch mean (prompts x G completions). The check passes for
a seed when the mean over the last K steps exceeds the mean over the first K steps by more than
`--min-rise` AND by more than two standard errors of that difference (step means as samples).
The default seeds, 1000-1015, are held out: none chose a setting (TUNING_SEEDS did). The run
reports how many seeds rose with a 95% Wilson interval of that share and exits 1 when more than
`--allowed-failures` (1) did not. Writes per-seed curves and run folders under `--work`, the
combined curve to docs/img/grpo_learning_check.png and the numbers to
docs/img/grpo_learning_check.json. Results, and every configuration tried: docs/benchmarks.md.

    python benchmarks/grpo_learning_check.py --jobs 2     (16 seeds: ~36 min on 2 idle cores)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTION = "Is the image red or blue? Answer with one word: red or blue."
THINK = "I look at the color of the image."
COLOURS = ("red", "blue")
IMAGE_SIDE = 112            # 112 x 112 = 16 vision tokens at the tiny model's pixel budget
# Seeds whose runs chose the settings (docs/benchmarks.md): 0-7 the first session's, 47 and 404
# (the two that collapsed as shipped, issue 24) the collapse remedies'. Never count them as held out.
TUNING_SEEDS = frozenset(range(8)) | {47, 404}
HELD_OUT_SEEDS = list(range(1000, 1016))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def colour_image(colour: str, rng: random.Random):
    """A solid red or blue image with a jittered shade and per-pixel noise (no two alike)."""
    import numpy as np
    from PIL import Image

    strong, weak = rng.randint(170, 255), (rng.randint(0, 70), rng.randint(0, 70))
    rgb = (strong, *weak) if colour == "red" else (weak[0], weak[1], strong)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-20, 21, (IMAGE_SIDE, IMAGE_SIDE, 3))
    pixels = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype("uint8")
    return Image.fromarray(pixels, "RGB")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_data(folder: Path, seed: int, sft_rows: int, rl_prompts: int,
               sft_correct: float) -> tuple[Path, Path]:
    """The SFT parquet (answers right with probability `sft_correct`, 0.5 = coin flips) and the
    RL JSONL (answers are the colours), on disjoint images. Returns (sft parquet, rl jsonl)."""
    import io

    from pipelines.core.formats import SourceRow, thyme_sft_table, write_parquet

    rng = random.Random(f"grpo-learning-check-{seed}")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)

    rows = []
    for i in range(sft_rows):
        buf = io.BytesIO()
        colour = COLOURS[i % 2]
        colour_image(colour, rng).save(buf, "PNG")
        said = colour if rng.random() < sft_correct else COLOURS[1 - i % 2]
        rows.append(SourceRow(question=QUESTION, images=[buf.getvalue()],
                              image_path=f"/mnt/data/images/sft_{i:03d}.png",
                              image_size=(IMAGE_SIDE, IMAGE_SIDE),
                              response=f"<think>{THINK}</think> <answer>{said}</answer>"))
    sft = folder / "sft.parquet"
    tmp = folder / ".sft.parquet.tmp"
    write_parquet(thyme_sft_table(rows), tmp)
    os.replace(tmp, sft)

    lines = []
    for i in range(rl_prompts):
        colour = COLOURS[i % 2]
        name = f"rl_{i:03d}_{colour}.png"
        buf = io.BytesIO()
        colour_image(colour, rng).save(buf, "PNG")
        _atomic_write(images / name, buf.getvalue())
        lines.append(json.dumps({"question": QUESTION, "solution": colour,
                                 "image": f"images/{name}", "category": "colour"}))
    rl = folder / "rl.jsonl"
    _atomic_write(rl, ("\n".join(lines) + "\n").encode())
    return sft, rl


# ---------------------------------------------------------------------------------------------
# Training (the project's own command lines, one process each)
# ---------------------------------------------------------------------------------------------

def _run(cmd: list[str], log_file: Path, threads: int) -> float:
    started = time.time()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); log "
                           f"{log_file}:\n{tail}")
    return time.time() - started


def run_seed(seed: int, tiny: Path, args, work: Path) -> dict:
    """Warm start and GRPO for one seed (run in a thread: only subprocesses do the work)."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    folder = work / f"seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)          # metrics.jsonl appends: start every seed clean
    folder.mkdir(parents=True)
    sft_data, rl_data = write_data(folder / "data", seed, args.sft_rows, args.rl_prompts,
                                       args.sft_correct)
    py = sys.executable

    sft_out = folder / "sft"
    sft_s = _run([py, "-m", "thyme_train.sft", "--config", "thyme_train/configs/stage1_tiny.yaml",
                  "--set", f"model={tiny}", "--set", f"data={sft_data}", "--set", "splits=",
                  "--set", f"output_dir={sft_out}", "--set", "resume=never",
                  "--set", f"max_steps={args.sft_steps}", "--set", "per_device_train_batch_size=8",
                  "--set", f"learning_rate={args.sft_lr}", "--set", f"seed={seed}",
                  "--set", f"save_steps={args.sft_steps + 1}",
                  "--set", f"max_pixels={IMAGE_SIDE * IMAGE_SIDE}"],
                 folder / "sft.log", threads)

    rl_out = folder / "grpo"
    batch = args.prompts_per_step * args.num_generations
    grpo_s = _run([py, "-m", "thyme_train.grpo", "--config", "thyme_train/configs/rl_tiny.yaml",
                   "--set", f"model={sft_out}", "--set", f"data={rl_data}",
                   "--set", f"output_dir={rl_out}", "--set", "resume=never",
                   "--set", f"max_steps={args.steps}", "--set", "num_train_epochs=1000",
                   "--set", f"num_generations={args.num_generations}",
                   "--set", f"per_device_train_batch_size={batch}",
                   "--set", f"engine_batch_size={batch}",
                   "--set", f"learning_rate={args.lr}", "--set", "min_lr_rate=1.0",
                   "--set", f"warmup_ratio={args.warmup_ratio}", "--set", f"beta={args.beta}",
                   "--set", f"max_new_tokens={args.max_new_tokens}",
                   "--set", f"max_turns={args.max_turns}", "--set", "sandbox_workers=1",
                   "--set", f"top_p={args.top_p}", "--set", f"top_k={args.top_k}",
                   "--set", f"shuffle_dataset={str(not args.balanced).lower()}",
                   "--set", f"save_steps={args.steps + 1}", "--set", f"seed={seed}",
                   "--set", f"untruncated_sampling_on_collapse={str(args.untruncated_on_collapse).lower()}",
                   *[a for item in args.grpo_set for a in ("--set", item)]],
                  folder / "grpo.log", threads)

    records = [json.loads(line) for line in (rl_out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    series = {
        "step": [r["step"] for r in steps],
        "reward": [r["reward"] for r in steps],
        "accuracy": [r.get("rewards/accuracy_reward/mean") for r in steps],
        "format": [r.get("rewards/format_reward/mean") for r in steps],
        "completion_length": [r.get("completions/mean_length") for r in steps],
        "tool_call_rate": [r.get("thyme/tool_call_rate") for r in steps],
        "end_answer": [r.get("thyme/end/answer") for r in steps],
        # answer collapse (thyme_train.collapse)
        "answer_agreement": [r.get("thyme/collapse/answer_agreement") for r in steps],
        "zero_variance_groups": [r.get("thyme/collapse/zero_variance_groups") for r in steps],
        "answer_collapse": [r.get("thyme/answer_collapse") for r in steps],
        "untruncated_sampling": [r.get("thyme/untruncated_sampling") for r in steps],
    }
    if len(series["reward"]) < 2 * args.k:
        raise RuntimeError(f"seed {seed}: {len(series['reward'])} logged steps < 2 x K = {2 * args.k}")
    summary = compare(series["reward"], args.k, args.min_rise)
    summary["accuracy_first"] = _mean(series["accuracy"][:args.k])
    summary["accuracy_last"] = _mean(series["accuracy"][-args.k:])
    summary["format_first"] = _mean(series["format"][:args.k])
    summary["format_last"] = _mean(series["format"][-args.k:])
    since = [r["thyme/answer_collapse_since"] for r in steps if "thyme/answer_collapse_since" in r]
    summary["collapse_since"] = int(since[0]) if since else None
    summary["collapse_steps"] = int(sum(x or 0 for x in series["answer_collapse"]))
    summary["untruncated_from"] = next((st for st, u in zip(series["step"], series["untruncated_sampling"],
                                                             strict=True) if u), None)
    return {"seed": seed, "series": series, "summary": summary,
            "seconds": {"sft": round(sft_s, 1), "grpo": round(grpo_s, 1)},
            "run_dir": os.path.relpath(folder, ROOT)}


# ---------------------------------------------------------------------------------------------
# Numbers and pictures
# ---------------------------------------------------------------------------------------------

def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _se(xs):
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else 0.0


def compare(rewards: list[float], k: int, min_rise: float) -> dict:
    """First-K vs last-K step means; `rose` = the rise beats `min_rise` and 2 standard errors."""
    first, last = rewards[:k], rewards[-k:]
    rise = _mean(last) - _mean(first)
    se = math.sqrt(_se(first) ** 2 + _se(last) ** 2)
    return {"first": _mean(first), "last": _mean(last), "rise": rise, "rise_se": se,
            "rose": bool(rise > min_rise and rise > 2 * se)}


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def plot_seed(series: dict, k: int, seed: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("reward", "accuracy", "format"):
        ax.plot(series["step"], series[key], marker=".", label=key)
    steps = series["step"]
    ax.axvspan(steps[0], steps[k - 1], color="grey", alpha=0.15, label=f"first/last {k} steps")
    ax.axvspan(steps[-k], steps[-1], color="grey", alpha=0.15)
    ax.set_xlabel("GRPO step")
    ax.set_ylim(-0.05, 1.55)
    ax.set_title(f"GRPO-ATS learning check, red/blue task, seed {seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_combined(results: list[dict], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax in zip(("reward", "accuracy"), axes, strict=True):
        for r in results:
            ax.plot(r["series"]["step"], r["series"][key], marker=".", alpha=0.8,
                    label=f"seed {r['seed']}")
        ax.set_xlabel("GRPO step")
        ax.set_title(f"{key} (batch mean)" + (" = acc + 0.5 fmt + 0.5 cons" if key == "reward" else ""))
        ax.set_ylim(-0.05, 1.55 if key == "reward" else 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"GRPO-ATS learning check (tiny Qwen2.5-VL, red/blue; first/last {k} steps compared)")
    fig.tight_layout()
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=HELD_OUT_SEEDS,
                        help="seeds to run (default: 16 held-out seeds, 1000-1015, none of them "
                             f"used to choose settings; the tuning seeds were {sorted(TUNING_SEEDS)})")
    parser.add_argument("--allowed-failures", type=int, default=1,
                        help="seeds that may fail to rise for the check to pass (exit 0)")
    parser.add_argument("--steps", type=int, default=60,
                        help="GRPO steps per seed (at 40, one seed in eight had not yet started "
                             "to read the colour)")
    parser.add_argument("--k", type=int, default=10, help="steps averaged at each end")
    parser.add_argument("--min-rise", type=float, default=0.2,
                        help="smallest last-minus-first reward rise that counts (reward 0..1.5). "
                             "Cleaning up malformed answers alone gains ~0.1-0.15; reading the "
                             "colour gains up to 0.75")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="GRPO peak learning rate (constant after the warmup)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1,
                        help="share of the GRPO steps warming up: Adam's first steps move every "
                             "weight by ~lr whatever its gradient, which undoes the warm start")
    parser.add_argument("--beta", type=float, default=0.2,
                        help="KL weight towards the warm start (k3 estimator). The warm start "
                             "answers 50/50, so the KL is what pulls a policy back from drifting "
                             "to one colour; at 0.001 or 0.04 a third of the runs collapsed to a "
                             "constant answer (docs/benchmarks.md)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus mass for text (ATS default)")
    parser.add_argument("--top-k", type=int, default=50, help="top-k for text (0 = off)")
    parser.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the prompts in file order (colours alternate), so every step "
                             "holds as many red as blue images: a colour-blind policy then gains "
                             "nothing from drifting to one answer")
    parser.add_argument("--untruncated-on-collapse", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="the collapse remedy (thyme_train.collapse): text sampled without "
                             "top-p/top-k once answer collapse is detected (seeds 47 and 404 "
                             "collapsed without it)")
    parser.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra GRPO-ATS setting (repeatable), e.g. the collapse remedies "
                             "untruncated_sampling_on_collapse=true (thyme_train.collapse)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8,
                        help="G. With 4, a policy 90%% sure of one colour gives a group without "
                             "reward variance (no advantage) two times in three; with 8, 43%%")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--rl-prompts", type=int, default=64)
    parser.add_argument("--sft-rows", type=int, default=48)
    parser.add_argument("--sft-correct", type=float, default=0.5,
                        help="share of warm-start answers that name the image's colour (0.5 = "
                             "coin flips: format only)")
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained at once, the cores shared between them (2 jobs on 2 "
                             "cores take about as long per seed as 1 job)")
    parser.add_argument("--work", default=str(ROOT / "data" / "benchmarks" / "grpo_learning_check"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "img" / "grpo_learning_check.png"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "img" / "grpo_learning_check.json"))
    args = parser.parse_args(argv)
    if args.steps < 2 * args.k:
        parser.error(f"--steps {args.steps} must be at least 2 x --k ({2 * args.k})")
    if args.balanced and (args.prompts_per_step % 2 or args.rl_prompts % args.prompts_per_step):
        parser.error("--balanced needs an even --prompts-per-step that divides --rl-prompts")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from thyme_train.tiny import build_tiny_model

    tiny = {seed: build_tiny_model(work / f"tiny_seed{seed}", seed=seed) for seed in args.seeds}
    done = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_seed, seed, tiny[seed], args, work) for seed in args.seeds]
        for future in as_completed(futures):
            r = future.result()
            s = r["summary"]
            print(f"seed {r['seed']}: reward first {args.k} steps {s['first']:.3f}, last {args.k} "
                  f"{s['last']:.3f}, rise {s['rise']:+.3f} (se {s['rise_se']:.3f}) -> "
                  f"{'ROSE' if s['rose'] else 'no clear rise'}; accuracy {s['accuracy_first']:.2f}"
                  f" -> {s['accuracy_last']:.2f}, format {s['format_first']:.2f} -> "
                  f"{s['format_last']:.2f}; collapse warned from step {s['collapse_since']} "
                  f"({s['collapse_steps']} steps), untruncated text from step {s['untruncated_from']}"
                  f"; sft {r['seconds']['sft']}s, grpo {r['seconds']['grpo']}s", flush=True)
            done.append(r)
    results = sorted(done, key=lambda r: args.seeds.index(r["seed"]))
    for r in results:
        plot_seed(r["series"], args.k, r["seed"], work / f"seed{r['seed']}" / "curve.png")
    plot_combined(results, args.k, Path(args.png))
    rose = sum(r["summary"]["rose"] for r in results)
    lo, hi = wilson(rose, len(results))
    passed = len(results) - rose <= args.allowed_failures
    out = {
        "command": "python benchmarks/grpo_learning_check.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "task": {"question": QUESTION, "answers": list(COLOURS), "image_side": IMAGE_SIDE,
                 "sft_answers": "coin flips, independent of the image"},
        "config": {k: v for k, v in vars(args).items() if k not in ("work", "png", "json")},
        "all_rose": all(r["summary"]["rose"] for r in results),
        "rose": rose, "runs": len(results), "rose_share_ci95_wilson": [round(lo, 3), round(hi, 3)],
        "tuning_seeds_in_run": sorted(set(args.seeds) & TUNING_SEEDS),
        "passed": passed,
        "seconds_total": round(time.time() - started, 1),
        "seeds": results,
    }
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(json_path, (json.dumps(out, indent=1) + "\n").encode())
    tuned = out["tuning_seeds_in_run"]
    print(f"rose in {rose} of {len(results)} seeds (95% Wilson interval of the share: {lo:.2f}-{hi:.2f})"
          f"{'; NOT held out: ' + str(tuned) + ' chose the settings' if tuned else '; all held out'}; "
          f"{'PASS' if passed else 'FAIL'} (at most {args.allowed_failures} may fail); "
          f"{out['seconds_total']} s; wrote {os.path.relpath(args.png, ROOT)}, "
          f"{os.path.relpath(json_path, ROOT)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
