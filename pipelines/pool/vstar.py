"""V*-Bench annotations as pool rows (THYME.md §3: V* is one of the paper's sources, and its
boxes are what the paper gave the teacher for crop data).

    vstar_rows(bench_dir, out_jsonl, seed=0) -> report

A V*-Bench folder (`craigwu/vstar_bench`, the layout `vstar_bench_eval.py` of the V* repository
reads) holds `<category>/<name>.jpg` beside `<name>.json` with `question`, `options` (the correct
one first), `target_object` (names) and `bbox` (one [x, y, w, h] per target). Each annotation
becomes one JSONL row for the generic reader with the `vstar` ground-truth preset
(`pipelines.pool.truth.PRESETS`):

    {"image": "<category>/<name>.jpg", "question": "...\\nOptions:\\nA. ...", "answer": "C",
     "options": ["A. ...", ...], "bbox": [[x, y, w, h], ...], "category": "direct_attributes",
     "target_object": ["..."], "question_id": "<category>/<name>"}

The options are shuffled (seeded by the seed and the file name: the correct option is not
always A), and the answer is its letter. An annotation that cannot be used (no image beside it,
not JSON, no question or options) is left out and listed with its reason in the report.

    python -m pipelines vstar-rows --bench vstar_bench --out vstar.jsonl
    python -m pipelines ingest --format generic --input vstar.jsonl --image-root vstar_bench \\
        --map preset=vstar --out data/pool-vstar
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipelines.core.atomic import write_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LETTERS = "ABCDEFGH"


def vstar_rows(bench_dir: str | Path, out_jsonl: str | Path, seed: int = 0) -> dict:
    bench = Path(bench_dir)
    rows, skipped = [], []
    for annotation in sorted(bench.glob("*/*.json")):
        rel = annotation.relative_to(bench).as_posix()
        try:
            rows.append(_row(bench, annotation, seed))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            skipped.append({"file": rel, "reason": str(exc) or type(exc).__name__})
    write_text(out_jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"rows": len(rows), "skipped": skipped,
            "by_category": {c: sum(r["category"] == c for r in rows)
                            for c in sorted({r["category"] for r in rows})}}


def _row(bench: Path, annotation: Path, seed: int) -> dict:
    image = next((annotation.with_suffix(s) for s in IMAGE_SUFFIXES
                  if annotation.with_suffix(s).is_file()), None)
    if image is None:
        raise ValueError("no image beside the annotation")
    data = json.loads(annotation.read_text())
    question, options = str(data["question"]).strip(), [str(o).strip() for o in data["options"]]
    if not question or len(options) < 2 or not all(options) or len(options) > len(LETTERS):
        raise ValueError("needs a question and 2-8 non-empty options")
    rel = image.relative_to(bench).as_posix()
    key = int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=8).digest(), "big")
    order = np.random.default_rng([seed, key]).permutation(len(options))
    lines = [f"{LETTERS[k]}. {options[j]}" for k, j in enumerate(order)]
    letter = LETTERS[int(np.flatnonzero(order == 0)[0])]          # the correct one is listed first
    row = {"image": rel, "question": question + "\nOptions:\n" + "\n".join(lines), "answer": letter,
           "options": lines, "category": annotation.parent.name,
           "question_id": rel.rsplit(".", 1)[0]}
    if data.get("bbox"):
        row["bbox"] = data["bbox"]
    if data.get("target_object"):
        row["target_object"] = data["target_object"]
    return row
