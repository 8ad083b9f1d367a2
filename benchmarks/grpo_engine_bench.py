"""GRPO-ATS with the transformers and the vLLM rollout engines, side by side in one run: rollout
tokens per second and GRPO step time, each step broken into generation, sandbox (and the rest
of the rollout loop), weight sync and the update (scoring, the old/reference log-prob passes,
forward/backward, optimizer).

Each rollout group mixes two halves: scripted samples that write `calls - 1` crop blocks (the
real sandbox crops the input image, the crop comes back as the next call's image) and then an
answer, each call padded with reasoning text to `tokens_per_call`; and free samples (the random
model's own text, sampled with top-p/top-k, to the call's token budget). Forced tokens are
decoded one per step like sampled ones (the engines force them through their logits processor).

    # CPU, tiny Qwen2.5-VL, hf vs vllm (needs vLLM: the .venv-vllm environment; one vLLM at a time)
    flock /work/scratch/vllm.lock .venv-vllm/bin/python benchmarks/grpo_engine_bench.py
    # GPU, the paper's shape with a randomly initialised Qwen2.5-VL-7B built here (no hub):
    #   one step = 8 completions x 4 accumulation steps = 32 rollouts of 5 calls / 3,196 new
    #   tokens, a 2048 px image (3,072 visual tokens), 10,240-token sequences, bf16, ZeRO-free
    #   single GPU (H200; an H100 fits with --sleep-level 2), vLLM colocated
    python benchmarks/grpo_engine_bench.py --shape paper-7b --engines vllm --steps 2

Each engine runs in its own process (a fresh vLLM per run); step 1 (engine start, warm-up) is
reported apart. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILLER = "The small region near the top left is the part that answers the question, I look closer. "
CROP = ("<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "w, h = img.size\nimg.crop((0, 0, w // {k}, h // {k})).save('/mnt/data/temp_processed_images/crop{k}.png')\n"
        "print('/mnt/data/temp_processed_images/crop{k}.png')\n```\n</code>")
ANSWER = "It is red.</think> <answer>red</answer>"
VLLM_CPU_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_HOST_IP": "127.0.0.1",
                "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TORCH_COMPILE_DISABLE": "1"}

SHAPES = {
    # the tiny model on CPU: 2 prompts x G = 4 per step, 3 calls of <= 96 new tokens
    "tiny-cpu": dict(model="tiny", gpu=False, per_device=8, accumulation=1, calls=3,
                     new_tokens=288, total_tokens=1536, image_side=320, max_pixels=None,
                     images=6, scripted_share=0.5),
    # the paper (THYME.md 4) per GPU: 8 completions per device x 4 accumulation steps, G = 4,
    # <= 5 calls and 3,196 new tokens per rollout, 10,240 tokens, 3,072 visual tokens per image
    # (every rollout scripted: the random 7B's 152,064-row vocabulary is wider than the tokenizer)
    "paper-7b": dict(model="7b", gpu=True, per_device=8, accumulation=4, calls=5,
                     new_tokens=3196, total_tokens=10240, image_side=2048,
                     max_pixels=3072 * 28 * 28, images=8, scripted_share=1.0),
    # the paper-7b code path on CPU in minutes (the builder with small layers, the real vocabulary
    # and pixel budget mechanics): checks the GPU script runs, measures nothing of interest
    "paper-7b-smoke": dict(model="7b-smoke", gpu=False, per_device=4, accumulation=2, calls=3,
                           new_tokens=240, total_tokens=2048, image_side=640,
                           max_pixels=64 * 28 * 28, images=4, scripted_share=1.0),
}
MODELS = {
    "7b": dict(  # Qwen2.5-VL-7B-Instruct's config.json, in numbers
        vocab_size=152064, text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4,
                                     mrope_section=[16, 24, 24], rope_theta=1000000.0),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    fullatt_block_indexes=[7, 15, 23, 31])),
    "7b-smoke": dict(
        vocab_size=152064, text=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2,
                                     mrope_section=[8, 12, 12], rope_theta=1000000.0),
        vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                    fullatt_block_indexes=[1])),
}


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------

def build_7b(out: Path, spec: dict, max_pixels: int, bf16: bool) -> Path:
    """A randomly initialised Qwen2.5-VL of `spec`'s shape (MODELS: the 7B) with the tiny model's
    tokenizer and the official chat template, saved to `out` (no hub). Its vocabulary is the
    real 152,064 rows; the benchmark forces every token the model writes, so ids beyond the
    tokenizer never occur."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from thyme_train.tiny import QWEN_SPECIAL_TOKENS, build_tokenizer, official_chat_template

    if (out / "config.json").is_file():
        return out
    tokenizer = build_tokenizer(1024)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text, vision = spec["text"], spec["vision"]
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=spec["vocab_size"], hidden_size=text["hidden_size"],
                         intermediate_size=text["intermediate_size"],
                         num_hidden_layers=text["num_hidden_layers"],
                         num_attention_heads=text["num_attention_heads"],
                         num_key_value_heads=text["num_key_value_heads"],
                         max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": text["rope_theta"],
                                          "mrope_section": text["mrope_section"]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=vision["depth"], hidden_size=vision["hidden_size"],
                           intermediate_size=vision["intermediate_size"], num_heads=vision["num_heads"],
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, out_hidden_size=text["hidden_size"],
                           fullatt_block_indexes=vision["fullatt_block_indexes"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16 if bf16 else torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(out)
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=max_pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=3136, max_pixels=max_pixels),
        chat_template=official_chat_template()).save_pretrained(out)
    del model
    return out


def write_prompts(folder: Path, count: int, side: int) -> Path:
    """`count` RL prompts about noise images of `side` x `side` pixels (JSONL, rl_data's simple rows)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append({"question": "What colour is the small region at the top left?",
                     "solution": "red", "image": f"{i}.png"})
    (folder / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rl.jsonl"


def scripted(tokenizer, calls: int, tokens_per_call: int, share: float):
    """Scripted rollouts (all with `share` 1, the even batch positions with 0.5): `calls - 1`
    crops then the answer, each call padded with filler reasoning to about `tokens_per_call`
    tokens; the others write the model's own text."""
    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    filler = encode(FILLER)
    scripts = []
    for call in range(calls):
        tail = encode((CROP.format(k=call + 2)) if call < calls - 1 else ANSWER)
        head = encode("<think>") if call == 0 else []
        room = max(0, tokens_per_call - len(tail) - len(head))
        scripts.append(head + (filler * (room // len(filler) + 1))[:room] + tail)

    def force(rollout, tokens):
        if (share < 1 and rollout.prompt_index % 2) or rollout.turns >= calls:
            return None
        script = scripts[rollout.turns]
        return script[len(tokens)] if len(tokens) < len(script) else None
    return force


# ---------------------------------------------------------------------------------------------
# One engine's run (a child process)
# ---------------------------------------------------------------------------------------------

def child(args) -> None:
    from transformers import AutoTokenizer, TrainerCallback

    from thyme_train.config import load_config
    from thyme_train.grpo import GRPOATSConfig, train
    from thyme_train.tiny import build_tiny_model

    shape = SHAPES[args.shape]
    work = Path(args.work)
    on_gpu = shape["gpu"]
    if shape["model"] == "tiny":
        model = build_tiny_model(work / "tiny", preset="vllm")
    else:
        model = build_7b(work / f"qwen2.5-vl-{shape['model']}-random", MODELS[shape["model"]],
                         shape["max_pixels"], bf16=on_gpu)
    data = write_prompts(work / "data", shape["per_device"] * shape["accumulation"] // 4 * args.steps,
                         shape["image_side"])
    per_call = shape["new_tokens"] // shape["calls"]
    sets = [f"model={model}", f"data={data}", f"output_dir={work / ('out-' + args.engine)}",
            "resume=never", f"max_steps={args.steps}", "save_steps=100000", "report_to=none",
            f"engine={args.engine}", "num_generations=4",
            f"per_device_train_batch_size={shape['per_device']}",
            f"gradient_accumulation_steps={shape['accumulation']}", f"max_turns={shape['calls']}",
            f"max_new_tokens={per_call + 8}", f"max_total_tokens={shape['total_tokens']}",
            f"max_images={shape['images']}", f"max_pixels={shape['max_pixels'] or 'null'}",
            f"bf16={str(on_gpu).lower()}", f"gradient_checkpointing={str(on_gpu).lower()}",
            "deepspeed=null", f"engine_batch_size={shape['per_device']}", "sandbox_workers=2",
            f"vllm_sleep_level={args.sleep_level if on_gpu else 0}",
            f"vllm_enforce_eager={str(not on_gpu).lower()}",
            f"vllm_dtype={'auto' if on_gpu else 'float32'}",
            f"vllm_gpu_memory_utilization={args.gpu_memory_utilization}"]
    cfg = load_config(GRPOATSConfig, ROOT / "thyme_train" / "configs" / "rl_tiny.yaml", sets)
    tokenizer = AutoTokenizer.from_pretrained(model)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.walls, self.started = [], None

        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.walls.append(time.perf_counter() - self.started)

    clock = StepClock()
    trainer = train(cfg, force=scripted(tokenizer, shape["calls"], per_call, shape["scripted_share"]), callbacks=[clock])
    rollouts = trainer.rollout_func.rollouts
    push_s = None
    if args.engine == "vllm":            # the last step's policy, pushed once more and timed
        started = time.perf_counter()
        rollouts.sync.push(trainer.accelerator.unwrap_model(trainer.model), trainer.accelerator)
        push_s = time.perf_counter() - started
    logs = [r for r in trainer.state.log_history if "thyme/time/rollout_s" in r]
    completions = shape["per_device"] * shape["accumulation"]
    steps = []
    for log, wall in zip(logs, clock.walls, strict=True):
        steps.append({"wall_s": wall, "rollout_s": log["thyme/time/rollout_s"],
                      "generate_s": log["thyme/time/generate_s"],
                      "sync_s": log["thyme/time/weight_sync_s"],
                      "model_tokens": log["thyme/model_tokens"] * completions,
                      "turns": log["thyme/turns_per_rollout"], "images": log["thyme/images_per_rollout"],
                      "engine_errors": log["thyme/end/engine_error"]})
    print("RESULT " + json.dumps({"engine": args.engine, "steps": steps, "push_s": push_s}))


# ---------------------------------------------------------------------------------------------
# The parent: engines side by side
# ---------------------------------------------------------------------------------------------

def summarise(runs: list[dict]) -> dict:
    later = [s for run in runs for s in run["steps"][1:]] or [s for run in runs for s in run["steps"]]

    def med(key):
        return statistics.median(s[key] for s in later)
    generate, rollout, sync, wall = med("generate_s"), med("rollout_s"), med("sync_s"), med("wall_s")
    tokens = med("model_tokens")
    pushes = [r["push_s"] for r in runs if r["push_s"] is not None]
    return {"tokens": tokens, "generate": generate, "sandbox": max(0.0, rollout - generate - sync),
            "sync": sync, "update": max(0.0, wall - rollout), "wall": wall,
            "gen_tps": tokens / generate if generate else 0.0, "rollout_tps": tokens / rollout,
            "first_wall": statistics.median(r["steps"][0]["wall_s"] for r in runs),
            "turns": med("turns"), "images": med("images"),
            "engine_errors": max(s["engine_errors"] for run in runs for s in run["steps"]),
            "push": statistics.median(pushes) if pushes else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny-cpu")
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs per engine")
    parser.add_argument("--sleep-level", type=int, default=2, help="GPU: the colocated engine's sleep")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--work", default=None, help="folder for models, data and runs (default: temporary)")
    parser.add_argument("--engine", help=argparse.SUPPRESS)          # child mode
    args = parser.parse_args(argv)
    if args.engine:
        child(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        runs: dict[str, list[dict]] = {e: [] for e in args.engines}
        for _ in range(args.rounds):
            for engine in args.engines:
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                if not SHAPES[args.shape]["gpu"]:
                    env.update(VLLM_CPU_ENV)
                cmd = [sys.executable, __file__, "--shape", args.shape, "--engine", engine,
                       "--steps", str(args.steps), "--work", str(work), "--sleep-level",
                       str(args.sleep_level), "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode or not lines:
                    print(done.stdout[-3000:], done.stderr[-5000:], file=sys.stderr)
                    raise SystemExit(f"the {engine} run failed ({done.returncode})")
                runs[engine].append(json.loads(lines[-1][len("RESULT "):]))
    shape = SHAPES[args.shape]
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"shape {args.shape}: {shape['per_device'] * shape['accumulation']} rollouts per step "
          f"(G = 4), <= {shape['calls']} calls and {shape['new_tokens']} new tokens per rollout, "
          f"{args.steps} steps x {args.rounds} runs per engine; medians of steps 2..{args.steps}\n")
    print("| engine | model tokens / step | generation s | sandbox + loop s | weight sync s | "
          "update s | step s | generation tok/s | rollout tok/s | step 1 s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {e: summarise(r) for e, r in runs.items()}
    for engine, s in summary.items():
        print(f"| {engine} | {s['tokens']:.0f} | {s['generate']:.1f} | {s['sandbox']:.1f} | "
              f"{s['sync']:.2f} | {s['update']:.1f} | {s['wall']:.1f} | {s['gen_tps']:.0f} | "
              f"{s['rollout_tps']:.0f} | {s['first_wall']:.1f} |")
    if "hf" in summary and "vllm" in summary:
        hf, vl = summary["hf"], summary["vllm"]
        print(f"\nvllm / hf: generation tokens/s {vl['gen_tps'] / hf['gen_tps']:.2f}x, "
              f"step time {vl['wall'] / hf['wall']:.2f}x")
    if summary.get("vllm", {}).get("push") is not None:
        print(f"vLLM weight push after the last step, timed alone: {summary['vllm']['push']:.2f} s")
    for engine, s in summary.items():
        print(f"{engine}: turns per rollout {s['turns']:.2f}, sandbox images per rollout "
              f"{s['images']:.2f}, largest share of rollouts ended by an engine error {s['engine_errors']:.2f}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
