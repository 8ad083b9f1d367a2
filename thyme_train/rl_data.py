"""RL prompts for GRPO-ATS (thyme_train.grpo), from a published RL dataset (read through
pipelines.core.published, the reader SFT and evaluation share), a JSONL / parquet file of simple
rows, or the generated pool (`generated:N`, for CPU runs).

    rows = load_rl_rows("data/published/thyme-rl", split="train")
    dataset = rl_dataset(rows)                   # what GRPOTrainer's train_dataset takes

A row: `prompt` (the Thyme chat: system prompt + user message), `images` (the image FILES of the
row, as data: TRL puts them into the prompt's image parts, the rollout opens them and hands them
to the sandbox), `solution`, `question`, `options`. The user message names its image as the data
does (a published dataset's dataset-relative "User Image Path", a simple row's `image` as
written): the sandbox points a literal `image_path = "..."` at the real input, so the text is
never rewritten with a machine path.

Simple rows: `question`, `solution` (or `answer`), optional `image` (a path relative to the
file's folder, or absolute), `options` (lines "A. text"), `category`. Bad rows raise ValueError
naming the file, the row and the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.core import published

GENERATED_PREFIX = "generated:"


def load_rl_rows(path: str | os.PathLike, system_prompt: str | None = None, split: str = "train",
                 cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """TRL rows from `path` (see the module docstring). `cache_dir`: where images a published
    dataset carries only as bytes are written once (its shipped files are used in place)."""
    from PIL import Image

    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user
    from sandbox.protocol import IMAGE_TOKEN
    from thyme_train.chat import thyme_messages

    rows = []
    for where, base, r in _raw_rl_rows(Path(path), split):
        question = r.get("question")
        truth = r.get("solution", r.get("answer"))
        if not question or truth is None or str(truth).strip() == "":
            raise ValueError(f"{where}: needs a non-empty `question` and `solution` (or `answer`)")
        files, names, sizes = [], [], []
        for entry in r["images"]:
            name = entry.get("path") if isinstance(entry, dict) else entry
            try:
                files.append(str(published.image_file(entry, base, cache_dir)))
                with Image.open(files[-1]) as im:
                    sizes.append(im.size)
            except (ValueError, OSError) as exc:
                raise ValueError(f"{where}: image {str(name)[:80]!r} does not open ({exc})") from None
            # the name the data gives the image; bytes-only entries go by their file's name
            names.append(name if isinstance(name, str) and len(name) < 1024 else Path(files[-1]).name)
        user = r.get("user")
        if user is None:             # no user message in the data: the Thyme one, naming the image as given
            user = render_user(question, names[0], sizes[0]) if files else render_user(question)
        if user.count(IMAGE_TOKEN) != len(files):
            raise ValueError(f"{where}: the user message has {user.count(IMAGE_TOKEN)} <image> "
                             f"placeholder(s) but the row {len(files)} image(s)")
        rows.append({
            "prompt": thyme_messages(user, None, system_prompt or DEFAULT_SYSTEM_PROMPT),
            "images": files, "solution": str(truth), "question": question,
            "options": list(r.get("options") or []),
        })
    if not rows:
        raise ValueError(f"{path} holds no rows" + (f" for split {split!r}" if Path(path).is_dir() else ""))
    return rows


def _raw_rl_rows(path: Path, split: str):
    """(where, the folder image entries are relative to, {question, solution, images (entries),
    user (the published user message, or None), options})."""
    import pyarrow.parquet as pq

    if path.is_dir():                               # a published RL dataset
        # the hf encoding names its shipped files; the thyme one carries base64 only
        encoding = "hf" if "hf" in published.encodings(path) else None
        for where, r in published.iter_rows(published.split_files(path, split, encoding)):
            user = next((m["content"] for m in r.get("messages") or [] if m.get("role") == "user"), None)
            meta = r.get("meta")
            meta = json.loads(meta) if isinstance(meta, str) and meta else (meta or {})
            yield where, path, {"question": r.get("question"), "solution": r.get("solution"),
                                "images": published.image_entries(r), "user": user,
                                "options": meta.get("options")}
        return
    if not path.is_file():
        raise FileNotFoundError(f"RL data {path} does not exist")
    if path.suffix == ".parquet":
        raw = pq.read_table(path).to_pylist()
    else:
        raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, r in enumerate(raw):
        image = r.get("image")
        yield f"{path} row {i}", path.parent, {**r, "images": [image] if image else [], "user": None}


def rl_dataset(rows: list[dict]):
    """A `datasets.Dataset` of the rows (images stay file paths: the rollout opens them)."""
    from datasets import Dataset

    return Dataset.from_list(rows)


def resolve_data(data: str, folder: str | os.PathLike, seed: int = 0) -> str:
    """`data` itself, or for `generated:N` the file of N generated prompts under `folder`."""
    if data.startswith(GENERATED_PREFIX):
        return str(write_generated_rl_data(folder, int(data[len(GENERATED_PREFIX):]), seed))
    return data


def write_generated_rl_data(folder: str | os.PathLike, count: int, seed: int = 0) -> Path:
    """RL prompts from the generated pool (pipelines.pool.generate: crop, rotate, contrast,
    computation... with ground truth), for the demo and CPU runs: images in an image store
    under `folder`, prompts in `folder/rl_<count>_<seed>.jsonl`. Reused when already written."""
    from pipelines.core.atomic import write_text
    from pipelines.core.images import ImageStore
    from pipelines.pool.generate import generate_samples

    folder = Path(folder)
    target = folder / f"rl_{count}_{seed}.jsonl"
    if target.is_file():
        return target
    store = ImageStore(folder / "images")
    lines = []
    for s in generate_samples(0, count, seed, store):
        row = {"question": s.question, "solution": s.answer, "category": s.task,
               "options": s.meta.get("options") or []}
        if s.images:
            row["image"] = os.path.relpath(store.path(s.images[0]), folder)
        lines.append(json.dumps(row))
    return write_text(target, "\n".join(lines) + "\n")
