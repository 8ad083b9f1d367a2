"""The tool-use learning check's data, made by the project's own pipeline in one process (what
the Dagster assets run shard by shard): the generated pool's multi-digit arithmetic task ->
template teacher -> sandbox -> audit -> splits -> the published SFT and RL datasets.

    build(folder, count=2400, seed=0) -> {"sft": DIR, "rl": DIR, "report": {...}}

The SFT dataset's `computation` split trains; the RL dataset's `train` split holds GRPO prompts
(other questions than the SFT rows') and its `test` split is the held-out evaluation. Building
into a folder that already holds the same build is a no-op.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

MARKER = "build.json"


def build(folder: Path, count: int = 2400, seed: int = 0, test_share: float = 0.15,
          rl_share: float = 0.3, workers: int = 2, prompt_set: str = "thyme",
          task: str = "arithmetic", wording: str = "varied") -> dict:
    """Run the pipeline into `folder` (pool/, audited/, splits/, published/{thyme-sft,thyme-rl})."""
    from pipelines.core.atomic import write_json, write_parquet
    from pipelines.core.images import ImageStore
    from pipelines.core.schema import samples_table
    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import SplitConfig, build_splits, validate_splits
    from pipelines.pool.generate import generate_samples
    from pipelines.samples.audit import AuditConfig, audit_many
    from pipelines.samples.execute import execute
    from pipelines.samples.shards import generate_code_samples, write_trajectories
    from pipelines.samples.teachers import TemplateTeacher
    from sandbox import Sandbox

    folder = Path(folder)
    mix = ((task, 1),)                 # the pool builder: arithmetic or arithmetic_small
    wanted = {"count": count, "seed": seed, "test_share": test_share, "rl_share": rl_share,
              "mix": [list(m) for m in mix]}
    if prompt_set != "thyme":          # older builds (the default prompts) keep their marker
        wanted["prompt_set"] = prompt_set
    if wording != "varied":
        wanted["wording"] = wording
    marker = folder / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found["config"] == wanted:
            return found
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.time()
    store = ImageStore(folder / "pool" / "images")
    samples = {s.id: s for s in generate_samples(0, count, seed, store, mix=mix)}
    samples_file = folder / "pool" / "samples" / "shard-00000.parquet"
    samples_file.parent.mkdir(parents=True)
    write_parquet(samples_table(list(samples.values())), samples_file)

    trajectories, teacher_stats = generate_code_samples(samples, TemplateTeacher(seed=seed, wording=wording))
    with Sandbox(workers=workers, timeout=10) as sandbox:
        execute(trajectories, samples, store, sandbox)
    audited = audit_many(trajectories, samples, store.root, AuditConfig(workers=workers))
    audited_file = folder / "audited" / "shard-00000.parquet"
    audited_file.parent.mkdir(parents=True)
    write_trajectories(audited, audited_file)
    failed = {}
    for t in audited:
        for c in t.audit:
            if c.verdict == "fail":
                failed[c.name] = failed.get(c.name, 0) + 1

    splits_dir = folder / "splits"
    cfg = SplitConfig(test_share=test_share, rl_share=rl_share, rl_require_image=False, seed=seed,
                      prompt_set=prompt_set)
    split_report = build_splits([str(audited_file)], [str(samples_file)], splits_dir, cfg)
    problems = {split: {check: n for check, n in r.counts.items() if n}
                for split, r in validate_splits(splits_dir, store.root).items()}
    published = {}
    for kind, name in (("sft", "thyme-sft"), ("rl", "thyme-rl")):
        published[kind] = publish(splits_dir, store.root, folder / "published" / name,
                                  PublishConfig(kind=kind, encodings=("thyme",)))
    report = {"config": wanted, "samples": len(samples), "trajectories": len(trajectories),
              "passed_audit": sum(bool(t.passed) for t in audited), "failed_checks": failed,
              "splits": split_report["rows"], "validation": problems,
              "published": {k: v["rows"] for k, v in published.items()},
              "seconds": round(time.time() - t0, 1), "teacher": teacher_stats["by_kind"],
              "sft": str(folder / "published" / "thyme-sft"),
              "rl": str(folder / "published" / "thyme-rl")}
    write_json(marker, report, indent=1)
    return report


def direct_rows(sft_dir: Path, out: Path) -> Path:
    """The control's training rows: the published SFT dataset's `computation` rows with each
    response cut to an answer without code: the reasoning up to where it turns to code (the
    numbers restated, the expression named), then the answer. Same questions, same answers."""
    import re

    import pyarrow as pa

    from pipelines.core import published
    from pipelines.core.answers import extract
    from pipelines.core.atomic import write_parquet

    rows = [row for _, row in published.iter_rows(published.split_files(sft_dir, "computation"))]
    for row in rows:
        reasoning = row["response"].split("<code>", 1)[0].removeprefix("<think>").strip()
        kept = []
        for sentence in re.split(r"(?<=[.!?])\s+", reasoning):
            if re.search(r"\b(Python|code)\b", sentence):
                head = sentence.split(";", 1)[0]           # "...; computing it with code ..."
                if head != sentence:
                    kept.append(head + ".")
                break
            kept.append(sentence)
        answer = extract(row["response"]).text
        if not kept or not answer:
            raise ValueError(f"{sft_dir}: row {row.get('id')}: no reasoning or no answer")
        row["response"] = f"<think>{' '.join(kept)}</think> <answer>{answer}</answer>"
    write_parquet(pa.Table.from_pylist(rows), out)
    return out
