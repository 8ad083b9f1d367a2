"""Synthetic pool and audited shards for the splits' linearity test and `benchmarks/splits_bench.py`:
any number of rows and shards, without drawing an image per row: every sample's input and every
trajectory's sandbox output is a store file of its own, a hard link to one of a few hundred small
pictures, so each rendered row passes the row validations and checking it costs what it costs on
a real pool.

    write(root, rows, shards, mixed=False) -> {"samples": [...], "audited": [...], "store": path}

Layout (as ingest and the funnel write it): `pool/samples/shard-*.parquet`, `pool/images/`,
`audited/shard-*.parquet`. Aligned (default): the trajectories of audited shard k are of pool
shard k's samples. `mixed=True`: each audited shard holds trajectories of samples from every
pool shard (what re-sharded or merged audit output looks like), the case that made a per-shard
sample lookup quadratic.

Rows: tasks crop, rotate, contrast, no_code, real_world and computation (a tenth text-only);
trajectories direct, single-round and two-round (error correction), 90% passing, a tenth of the
samples with a second trajectory (an exact duplicate) and one in fifty re-cased (a near duplicate).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.schema import SAMPLE_SCHEMA
from pipelines.core.trajectory import TRAJECTORY_SCHEMA

TASKS = ("crop", "rotate", "contrast", "no_code", "real_world", "computation")
WORDS = ("red", "blue", "green", "large", "small", "circle", "square", "left", "right", "top",
         "bottom", "corner", "shape", "sign", "label", "chart", "bar", "line", "table", "text",
         "colour", "number", "written", "shown", "visible", "middle", "behind", "front", "near")
PICTURES = 256


def _pictures(store: ImageStore) -> list[dict]:
    """A few hundred small distinct pictures in the store (their refs)."""
    rng = np.random.default_rng(7)
    refs = []
    for _ in range(PICTURES):
        pixels = rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="PNG")
        ref = store.put(buf.getvalue())[0]
        refs.append({"hash": ref.hash, "ext": ref.ext, "width": ref.width, "height": ref.height})
    return refs


def _linked(store: ImageStore, picture: dict, name: str) -> dict:
    """A store file of its own for one row's image (a hard link to one of the pictures, under a
    hash of `name`): rows do not share image files, as in a real pool, and checking each row's
    images costs what it costs there."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    ref = {**picture, "hash": digest}
    target = store.root / _relpath(ref)
    target.parent.mkdir(exist_ok=True)
    if not target.exists():
        os.link(store.root / _relpath(picture), target)
    return ref


def _hex(prefix: str, k: int) -> str:
    return hashlib.blake2b(f"{prefix}{k}".encode(), digest_size=8).hexdigest()


def _relpath(ref: dict) -> str:
    return f"{ref['hash'][:2]}/{ref['hash']}.{ref['ext']}"     # ImageRef.relpath


def _turn(reasoning, code=None, kind=None, text="", images=(), error_kind=None):
    result = None if kind is None else {"kind": kind, "text": text, "images": list(images),
                                        "error_kind": error_kind}
    return {"reasoning": reasoning, "code": code, "result": result}


def _turns(kind: str, produced: str) -> list[dict]:
    crop = "img = Image.open(image_path)\nimg.crop((0, 0, 24, 18)).resize((48, 36)).save(p)\nprint(p)"
    if kind == "direct":
        return [_turn("The answer is visible directly.")]
    if kind == "single":
        return [_turn("I zoom into the top left.", crop, "image", "", [produced]), _turn("Now it is clear.")]
    return [_turn("A first crop.", "img.crop((0, 0, 99, 99)).save(p)", "error",
                  "tile cannot extend outside image", [], "exception"),
            _turn("Wrong box; a smaller one.", crop, "image", "", [produced]), _turn("Now it is clear.")]


def write(root: Path, rows: int, shards: int, mixed: bool = False, seed: int = 0) -> dict:
    root = Path(root)
    store = ImageStore(root / "pool" / "images")
    pictures = _pictures(store)
    rng = np.random.default_rng(seed)
    task = rng.integers(0, len(TASKS), rows)
    image = rng.integers(0, PICTURES, rows)
    words = rng.integers(0, len(WORDS), (rows, 7))
    numbers = rng.integers(1, 100, rows)
    near = rng.random(rows) < 0.02
    samples = []
    for k in range(rows):
        name = TASKS[task[k]]
        question = f"What {' '.join(WORDS[w] for w in words[k])} number {numbers[k]} is at {k}?"
        if near[k] and k:      # the previous sample's question re-cased: a near duplicate
            question = samples[-1]["question"].upper() + " !"
        text_only = name == "computation" and k % 10 == 0
        samples.append({
            "id": _hex("s", k), "source": "synthetic",
            "images": [] if text_only else [_linked(store, pictures[image[k]], f"in{k - 1 if near[k] and k else k}")],
            "question": question, "answer": str(numbers[k]), "task": name,
            "meta": json.dumps({"difficulty": ("easy", "hard")[k % 2]}), "reference": None,
            "origin": {"file": f"synthetic-{k * shards // rows:05d}.parquet", "row": k}})
    pool_shard = np.arange(rows) * shards // rows                 # contiguous pool shards
    audit_shard = pool_shard if not mixed else np.arange(rows) % shards
    trajectories: list[list[dict]] = [[] for _ in range(shards)]
    kinds = rng.choice(("direct", "single", "error_correction"), rows, p=(0.3, 0.5, 0.2))
    passed = rng.random(rows) < 0.9
    second = rng.random(rows) < 0.1
    for k in range(rows):
        s = samples[k]
        for copy in range(2 if second[k] else 1):
            kind = kinds[k] if s["task"] != "no_code" else "direct"
            trajectories[audit_shard[k]].append({
                "id": _hex(f"t{copy}-", k), "sample_id": s["id"], "teacher": f"synthetic/{copy}",
                "kind": kind, "task": s["task"],
                "turns": _turns(kind, _relpath(_linked(store, pictures[(image[k] + 1) % PICTURES],
                                                       f"out{k}-{copy}"))),
                "answer": s["answer"], "audit": [{"name": "answer", "verdict": "pass", "reason": ""}],
                "passed": bool(passed[k]), "lineage": None})
    (root / "pool" / "samples").mkdir(parents=True, exist_ok=True)
    (root / "audited").mkdir(parents=True, exist_ok=True)
    sample_files, audited_files = [], []
    for j in range(shards):
        path = root / "pool" / "samples" / f"shard-{j:05d}.parquet"
        part = [samples[k] for k in np.flatnonzero(pool_shard == j)]
        pq.write_table(pa.Table.from_pylist(part, schema=SAMPLE_SCHEMA), path)
        sample_files.append(str(path))
        path = root / "audited" / f"shard-{j:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(trajectories[j], schema=TRAJECTORY_SCHEMA), path)
        audited_files.append(str(path))
    return {"samples": sample_files, "audited": audited_files, "store": str(root / "pool" / "images")}


def first_output(files: dict) -> str:
    """The store path of the first sandbox-produced image in the audited shards."""
    for f in files["audited"]:
        for turns in pq.read_table(f, columns=["turns"])["turns"].to_pylist():
            for t in turns:
                if t["result"] and t["result"]["images"]:
                    return t["result"]["images"][0]
    raise ValueError("no produced image")
