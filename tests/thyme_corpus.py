"""A small, real audited corpus for the split/publish/export tests: the generated pool, the
template teacher (half the crop/rotate samples multi-round), the sandbox, the audit; plus a
second shard holding an exact duplicate (a second trajectory of a sample) and a near duplicate
(the same image, the question re-cased and re-punctuated). Built once per test session and shared.

Layout (what the Dagster assets read under the storage root):
    pool/samples/shard-0000{0,1}.parquet   pool/images/   audited/shard-0000{0,1}.parquet
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

COUNT = 40


def build(root: Path, count: int = COUNT) -> dict:
    from pipelines.core.images import ImageStore
    from pipelines.core.schema import Sample, samples_table
    from pipelines.pool.generate import generate_samples
    from pipelines.samples.audit import audit
    from pipelines.samples.execute import execute
    from pipelines.samples.shards import write_trajectories
    from pipelines.samples.teachers.template import TemplateTeacher
    from sandbox import Sandbox

    store = ImageStore(root / "pool" / "images")
    samples = list(generate_samples(0, count, 0, store))
    teacher = TemplateTeacher(seed=0, multi_round_share=0.5)
    trajectories = [t for s in samples for t in teacher.candidates(s)]
    by_id = {s.id: s for s in samples}
    with Sandbox(workers=2, timeout=10) as sb:
        execute(trajectories, by_id, store, sb)
    trajectories = [audit(t, by_id[t.sample_id], store.root) for t in trajectories]

    # Shard 2: an exact duplicate (another teacher's copy of a crop trajectory, same sample) and a
    # near duplicate (same image, question re-punctuated and re-cased: a new sample id).
    crop = next(t for t in trajectories if t.task == "crop" and t.kind == "single" and t.passed)
    exact = replace(crop, teacher="template/copy", id="")  # a new id from the new teacher
    original = by_id[crop.sample_id]
    near_sample = Sample(question=original.question.upper() + " !", images=original.images,
                         source=original.source, origin_file="dup", origin_row=0,
                         answer=original.answer, task=original.task, meta=original.meta)
    near = replace(crop, sample_id=near_sample.id, id="")
    (root / "pool" / "samples").mkdir(parents=True, exist_ok=True)
    pq.write_table(samples_table(samples), root / "pool" / "samples" / "shard-00000.parquet")
    pq.write_table(samples_table([near_sample]), root / "pool" / "samples" / "shard-00001.parquet")
    write_trajectories(trajectories, root / "audited" / "shard-00000.parquet")
    write_trajectories([exact, near], root / "audited" / "shard-00001.parquet")
    return {"samples": {**by_id, near_sample.id: near_sample},
            "trajectories": {t.id: t for t in [*trajectories, exact, near]},
            "duplicates": {"exact": exact.id, "near": near.id, "original": crop.id}}


_CACHE: dict = {}


def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """(root, what `build` returned), built once per session."""
    if "corpus" not in _CACHE:
        root = tmp_path_factory.getbasetemp() / "thyme-corpus"
        _CACHE["corpus"] = (root, build(root))
    return _CACHE["corpus"]


def files(root: Path) -> tuple[list[str], list[str]]:
    """(audited shards, sample shards) under a corpus root."""
    return (sorted(str(p) for p in (root / "audited").glob("*.parquet")),
            sorted(str(p) for p in (root / "pool" / "samples").glob("*.parquet")))
