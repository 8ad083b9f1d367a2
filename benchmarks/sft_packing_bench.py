"""Padding-free SFT batches against padded ones (thyme_train.packing), side by side in one run:
the same Thyme-SFT rows (uneven lengths: 1-2 crop rounds, reasoning of 1-40 sentences, images of
several sizes), the same order and steps, through the real trainer (`thyme_train.sft.build_trainer`,
TRL's SFTTrainer) on the tiny Qwen2.5-VL on CPU. Reports trained tokens per second (real tokens:
the padded batch's padding is not counted), the share of computed positions that were padding,
and the speed-up.

    python benchmarks/sft_packing_bench.py [--rows 96] [--batch 8] [--steps 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCE = "The region near the top left looks different, so I check it closely. "
CODE = ("<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 28, 28)).save('/mnt/data/temp_processed_images/crop.jpg')\n"
        "print('/mnt/data/temp_processed_images/crop.jpg')\n```\n</code>")


def write_rows(root: Path, count: int, seed: int) -> Path:
    from PIL import Image

    from pipelines.core.formats import SourceRow, thyme_sft_table, write_parquet

    rng = random.Random(seed)

    def png(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3))).save(buf, "PNG")
        return buf.getvalue()

    rows = []
    for i in range(count):
        rounds = rng.choice((1, 1, 2))
        body = "".join(SENTENCE * rng.randint(1, 40) + CODE + "<sandbox_output><image></sandbox_output>"
                       for _ in range(rounds))
        side = rng.choice((56, 112, 224))
        rows.append(SourceRow(question="What colour is the patch?",
                              images=[png(side)] + [png(56) for _ in range(rounds)],
                              response=f"<think>{body}It is red.</think> <answer>red</answer>",
                              image_path=f"images/{i:04d}.png", image_size=(side, side)))
    folder = root / "data" / "thyme"
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(thyme_sft_table(rows), folder / "wo_thinking_thyme_single_round-00000.parquet")
    return root


class Counting:
    """A collator wrapper counting real tokens and computed positions."""

    def __init__(self, collator):
        self.collator, self.real, self.computed = collator, 0, 0

    def __call__(self, rows):
        batch = self.collator(rows)
        if "attention_mask" in batch:
            self.real += int(batch["attention_mask"].sum())
        else:
            self.real += int(batch["input_ids"].shape[1])
        self.computed += int(batch["input_ids"].numel())
        return batch


def run(data: Path, work: Path, padding_free: bool, batch: int, steps: int) -> dict:
    from thyme_train.config import load_config
    from thyme_train.sft import ThymeSFTConfig, build_trainer
    from thyme_train.tiny import build_tiny_model

    tiny = build_tiny_model(work / "tiny")
    cfg = load_config(ThymeSFTConfig, ROOT / "thyme_train" / "configs" / "stage1_tiny.yaml", [
        f"model=tiny:{tiny}", f"data={data}", f"output_dir={work / ('pf' if padding_free else 'pad')}",
        "resume=never", f"cache_dir={work / 'hf-cache'}", "splits=wo_thinking_thyme_single_round",
        f"per_device_train_batch_size={batch}", f"max_steps={steps}", "save_steps=100000",
        f"padding_free={str(padding_free).lower()}", "logging_steps=100000", "seed=0"])
    trainer = build_trainer(cfg).trainer
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "real": counter.real, "computed": counter.computed,
            "tokens_per_s": counter.real / seconds, "loss": result.training_loss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_rows(work / "sft", args.rows, seed=0)
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for mode in (False, True):
                results[mode].append(run(data, work, mode, args.batch, args.steps))

    padded, packed = results[False], results[True]
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}; tiny Qwen2.5-VL, "
          f"{args.rows} rows, batch {args.batch}, {args.steps} steps, median of {args.rounds} "
          "interleaved rounds\n")
    print("| batches | trained tokens | computed positions | padding share | seconds | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in (("padded (ThymeCollator)", padded), ("padding-free (PaddingFreeCollator)", packed)):
        r = rs[0]
        print(f"| {name} | {r['real']:,} | {r['computed']:,} | {1 - r['real'] / r['computed']:.0%} "
              f"| {statistics.median([x['seconds'] for x in rs]):.1f} | {statistics.median([x['tokens_per_s'] for x in rs]):.0f} |")
    ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(padded, packed, strict=True)]
    print(f"\nPadding-free / padded tokens per second, per round: "
          f"{', '.join(f'{r:.2f}x' for r in ratios)}; median **{statistics.median(ratios):.2f}x**; the same "
          f"train loss in both: {padded[0]['loss']:.4f} vs {packed[0]['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
