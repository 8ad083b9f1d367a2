"""How wide the evaluation's 95% bootstrap intervals are at the real benchmarks' sizes: a policy
right on a fixed share of items (each item's fate fixed by a hash, as a model's would be) is
scored by the evaluation's own code (thyme_train.evaluate / eval_report), for V* (191 items),
HR-Bench 4K (200 questions x 4 cycles, resampled by question), MME-RealWorld-Lite (1,919) and
HallusionBench-sized sets, greedy (k = 1) and with k = 4 samples; and on the miniature fixtures.

    python benchmarks/eval_intervals.py
"""

from __future__ import annotations

import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from thyme_train.eval_data import EvalItem, load_items  # noqa: E402
from thyme_train.evaluate import Answered, evaluate  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "benchmarks"


def policy(rate: float, per_sample: float = 0.0):
    """Right on `rate` of the items; with `per_sample` > 0 a sample also flips with that
    probability (sampling noise between runs)."""
    def answer(items, tools, samples):
        out = []
        for it in items:
            base = zlib.crc32(it.id.encode()) % 1000 < rate * 1000
            row = []
            for j in range(samples):
                flip = zlib.crc32(f"{it.id}/{j}".encode()) % 1000 < per_sample * 1000
                row.append(Answered(f"<answer>{it.answer if base != flip else 'wrong'}</answer>"))
            out.append(row)
        return out
    return answer


def synthetic(kind: str, n: int) -> list[EvalItem]:
    if kind == "hrbench":                      # 4 cycles of each question
        return [EvalItem(id=f"{q}-{c}", image=f"img{q}", question=f"q{q}", answer="A",
                         category="single" if q % 2 else "cross", meta={"cycle_category": f"c{c}"})
                for q in range(n // 4) for c in range(4)]
    if kind == "mme_realworld":
        tasks = ["Perception/Monitoring", "Perception/OCR with Complex Context",
                 "Perception/Remote Sensing", "Reasoning/Autonomous_Driving", "Reasoning/Monitoring"]
        return [EvalItem(id=str(i), image=None, question="q", answer="A", category=tasks[i % 5])
                for i in range(n)]
    return [EvalItem(id=str(i), image=None, question="q", answer="A",
                     category="direct_attributes" if i % 191 < 115 else "relative_position")
            for i in range(n)]


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, n, rate in (("V* (191)", "vstar", 191, 0.82),
                                    ("HR-Bench 4K (800 = 200 x 4 cycles)", "hrbench", 800, 0.77),
                                    ("MME-RealWorld-Lite (1,919)", "mme_realworld", 1919, 0.55)):
            for k, flip in ((1, 0.0), (4, 0.1)):
                s = evaluate(synthetic(kind, n), policy(rate, flip), Path(tmp) / f"{kind}{k}", name,
                             ablation=False, kind=kind, samples=k)["tools"]
                m = s["metrics"]["overall"]
                rows.append((name, k, m["avg"], m["ci"], s["run_std"]))
        for path, kind in (("VStarBench.tsv", "vstar"), ("hr_bench_4k.tsv", "hrbench"),
                           ("MME-RealWorld-Lite.tsv", "mme_realworld")):
            items = load_items(FIXTURES / path, Path(tmp) / "img")
            s = evaluate(items, policy(0.6), Path(tmp) / path, path, ablation=False, kind=kind)["tools"]
            m = s["metrics"]["overall"]
            rows.append((f"fixture {path} ({len(items)})", 1, m["avg"], m["ci"], 0.0))
    print("| set (items) | k | score | 95% interval | width (points) | run std (points) |")
    print("|---|---:|---:|---|---:|---:|")
    for name, k, avg, (lo, hi), std in rows:
        print(f"| {name} | {k} | {100 * avg:.1f} | [{100 * lo:.1f}, {100 * hi:.1f}] | "
              f"{100 * (hi - lo):.1f} | {100 * std:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
