"""RL prompts for GRPO-ATS (thyme_train.grpo), read straight from the formats RL data comes in.

    rows = load_rl_rows("data/published/thyme-rl", split="train")         # a published RL dataset
    rows = load_rl_rows("thyme-rl/train-00000.parquet", cache_dir="cache")  # a released Thyme-RL shard
    rows = load_rl_rows("data_0.1.2_visual_toolbox_v2.parquet", cache_dir="cache")     # DeepEyes
    dataset = rl_dataset(rows)                           # what GRPOTrainer's train_dataset takes

The data is a published dataset directory (pipelines.core.published: the split's shards, its `hf`
encoding when present, whose rows name the image files the dataset ships), another folder of
parquet shards in a Hub layout, one parquet file, or a JSONL file. Each row's format is told by
its columns:

  Thyme-RL, published  `messages` (system + user, one `<image>` per input image), `images`
                       (base64 text, `{"bytes", "path"}` structs, or dataset-relative paths),
                       `solution`, `question`; optional `meta` (JSON with `options`), `has_image`
  DeepEyes (verl)      `prompt` (chat messages), `images` (`{"bytes", "path"}`),
                       `reward_model.ground_truth`, `extra_info`
  simple               `question`, `solution` (or `answer`); optional `image` or `images` (paths
                       relative to the file's folder, or absolute), `options` ("A. text" lines)

A row out: `prompt` (the chat: system + user, an image part per input image, in order), `images`
(the row's image FILES in the same order: TRL puts them into the image parts, the rollout opens
them and hands every one to the sandbox, the first bound to `image_path`), `solution`,
`question`, `options`, `origin` ("<file> row <i>", the file relative to the data). Images the
data carries as bytes are written once under `cache_dir` by content hash; shipped files are used
where they lie. The finished rows are kept there too (`prompts-<key>.jsonl`, keyed by the data
files, split and prompt set), so a later run, or another rank, reads them at once.

Prompts. With no prompt set chosen, a row carrying Thyme messages (published, Thyme-RL) keeps its
own system and user messages verbatim: they are the prompts the data, and any checkpoint trained
on it, were made with, and its User Image Path is the name the policy's code uses (the sandbox
points a literal `image_path = "..."` at the real input, so the text is never rewritten with a
machine path). Rows without Thyme messages are rendered with the default set (`thyme`): DeepEyes
rows ask for DeepEyes' own `<tool_call>` protocol, which this rollout does not run, so only their
question is kept. A chosen set (a name, a YAML path or `from:<dataset file>`, see
pipelines.core.prompts) re-renders every row: its system prompt, its user template around the
row's bare question, the first image named and sized as the row's own user message names it
(else by its file).

Bad rows (no question or ground truth, an image missing or unreadable, `<image>` placeholders
that do not match the images, `has_image` contradicting them) raise BadRow naming the file, the
row and the reason; given a `quarantine` list, they are appended to it instead and the others
load. A prompt is text-only only when its row has no image.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core import published
from pipelines.core.prompts import (
    DEFAULT_PROMPT_SET,
    FROM_DATASET,
    PromptSet,
    load_prompt_set,
    parse_user,
    recorded_prompt_set,
    strip_image_tokens,
)
from sandbox.protocol import IMAGE_TOKEN

# DeepEyes appends its tool instructions to every question (the `image_zoom_in_tool` protocol).
DEEPEYES_INSTRUCTION = "Think first, call **image_zoom_in_tool**"
PARQUET_BATCH_ROWS = 32      # rows carry whole images: small record batches keep memory flat
QUARANTINE_FILE = "quarantine.jsonl"
# numeric columns a row keeps for curriculum sampling (thyme_train.sampling): a difficulty, or a
# measured success rate
RANKING_COLUMNS = ("difficulty", "pass_rate")
log = logging.getLogger("thyme_train.rl_data")


class BadRow(ValueError):
    """A row that cannot become a prompt: `where` (file and row), a `reason` code to count,
    and the detail."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail} ({reason})")
        self.where, self.reason, self.detail = where, reason, detail


@dataclass
class _Fields:
    """One raw row in the terms every format shares."""
    question: str
    solution: str
    images: list                      # image entries as the data holds them
    options: list = field(default_factory=list)
    system: str | None = None         # the row's own Thyme messages, if it has them
    user: str | None = None
    has_image: bool | None = None


def load_rl_rows(path: str | os.PathLike, split: str = "train", prompt_set: str | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 quarantine: list | None = None) -> list[dict]:
    """TRL rows from `path` (see the module docstring). `prompt_set`: None keeps each row's own
    Thyme messages; a set re-renders every row. `cache_dir`: where images the data carries only
    as bytes are written once. `quarantine`: a list that receives each bad row as {origin,
    reason, detail} instead of the row raising BadRow."""
    chosen = load_prompt_set(prompt_set) if prompt_set else None
    files, base = _data_files(Path(path), split)
    prepared = Path(cache_dir) / f"prompts-{_key(files, split, chosen)}.jsonl" if cache_dir else None
    rows, bad = _read_prepared(prepared) if prepared else (None, [])
    if rows is None:
        rows, bad = [], []
        for where, origin, row_base, raw in _raw_rows(files, base):
            try:
                rows.append({**_prompt_row(where, row_base, raw, chosen, cache_dir), "origin": origin})
            except BadRow as exc:
                if quarantine is None:
                    raise
                bad.append({"origin": origin, "reason": exc.reason, "detail": exc.detail})
        if prepared:
            _write_prepared(prepared, rows, bad)
    if bad and quarantine is None:
        raise BadRow(bad[0]["origin"], bad[0]["reason"], bad[0]["detail"])
    if quarantine is not None:
        quarantine += bad
    if not rows:
        held = f" ({len(quarantine)} quarantined)" if quarantine else ""
        raise ValueError(f"{path} holds no usable rows{held}"
                         + (f" for split {split!r}" if Path(path).is_dir() else ""))
    return rows


def rows_prompt_set(path: str | os.PathLike, split: str = "train",
                    prompt_set: str | None = None) -> PromptSet:
    """The prompt set of the prompts `load_rl_rows` makes from `path` (what a policy trained on
    them records): the chosen set; else the set a published dataset folder records; else the
    Thyme messages of the data's first rows (Thyme-RL: `from:<file>`); else the default set,
    which renders rows that carry no Thyme messages (DeepEyes, simple rows)."""
    if prompt_set:
        return load_prompt_set(prompt_set)
    if Path(path).is_dir() and (recorded := recorded_prompt_set(path)) is not None:
        return recorded
    files, _ = _data_files(Path(path), split)
    try:
        return load_prompt_set(f"{FROM_DATASET}{files[0]}") if files else load_prompt_set()
    except ValueError as exc:    # PromptSetError, or a first row that is no JSON (quarantined)
        log.info("the RL rows carry no Thyme prompts to record (%s): they are rendered with %s",
                 exc, DEFAULT_PROMPT_SET)
        return load_prompt_set(DEFAULT_PROMPT_SET)


def data_report(rows: list[dict], quarantine: list | None, folder: str | os.PathLike) -> dict:
    """Prompts read (with and without images, images in all) and quarantined rows by reason;
    the quarantined rows themselves go to `folder/quarantine.jsonl`."""
    from collections import Counter

    from pipelines.core.atomic import write_text

    by_reason = dict(Counter(q["reason"] for q in quarantine or []))
    (Path(folder) / QUARANTINE_FILE).unlink(missing_ok=True)       # an earlier run's
    if quarantine:
        write_text(Path(folder) / QUARANTINE_FILE,
                   "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in quarantine))
        log.warning("%d RL row(s) quarantined %s: see %s", len(quarantine), by_reason,
                    Path(folder) / QUARANTINE_FILE)
    with_images = sum(bool(r["images"]) for r in rows)
    return {"prompts": len(rows), "with_images": with_images, "text_only": len(rows) - with_images,
            "images": sum(len(r["images"]) for r in rows), "quarantined": by_reason}


def rl_dataset(rows: list[dict]):
    """A `datasets.Dataset` of the rows (images stay file paths: the rollout opens them)."""
    from datasets import Dataset

    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------
# Files -> raw rows
# ---------------------------------------------------------------------------------------------

def _data_files(path: Path, split: str) -> tuple[list[Path], Path]:
    """The data's files and the folder its image paths (and origins) are relative to."""
    if path.is_dir():
        # the hf encoding names the shipped image files; the thyme one carries base64 only
        encoding = "hf" if "hf" in published.encodings(path) else None
        return published.split_files(path, split, encoding), path
    if not path.is_file():
        raise FileNotFoundError(f"RL data {path} does not exist")
    return [path], path.parent


def _raw_rows(files: list[Path], base: Path):
    """(where: "<file> row <i>" for errors, origin: the same with the file relative to `base`,
    the folder image paths are relative to, the row as read)."""
    for file in files:
        name = file.relative_to(base).as_posix()
        if file.suffix == ".parquet":
            for i, (where, row) in enumerate(published.iter_rows([file], PARQUET_BATCH_ROWS)):
                yield where, f"{name} row {i}", base, row
            continue
        with open(file, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                where = f"{file} row {i}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    row = {"_error": BadRow(where, "not_json", f"not a JSON object ({exc})")}
                yield where, f"{name} row {i}", base, row


# The prepared prompts: decoding and checking every image of a large dataset takes minutes, so
# the rows (with their image files) are kept beside the image cache, keyed by the data files
# (names, sizes, times, parquet footers), the split, the prompt set and this format's version.
PREPARED_VERSION = 2


def _key(files: list[Path], split: str, chosen: PromptSet | None) -> str:
    import hashlib

    h = hashlib.sha256(f"{PREPARED_VERSION}|{split}|{chosen!r}".encode())
    for f in files:
        stat = f.stat()
        h.update(f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        with open(f, "rb") as fh:
            fh.seek(max(0, stat.st_size - 65536))
            h.update(fh.read())
    return h.hexdigest()[:20]


def _read_prepared(path: Path) -> tuple[list | None, list]:
    """The prepared rows and bad rows, or (None, []) when absent or an image file is gone."""
    if not path.is_file():
        return None, []
    rows, bad = [], []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            (rows if "prompt" in record else bad).append(record)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None, []
    if not all(os.path.isfile(f) for r in rows for f in r["images"]):
        return None, []
    log.info("RL prompts: %d prepared rows from %s", len(rows), path)
    return rows, bad


def _write_prepared(path: Path, rows: list, bad: list) -> None:
    from pipelines.core.atomic import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*rows, *bad]))


def _fields(where: str, row: dict) -> _Fields:
    """A row of any of the formats in shared terms; BadRow when required fields are missing."""
    if not isinstance(row, dict):
        raise BadRow(where, "wrong_type", f"a row must be an object, not {type(row).__name__}")
    if "_error" in row:
        raise row["_error"]
    if "messages" in row:                                   # Thyme-RL, published
        system, user = _messages(where, row["messages"], "messages")
        if user is None:
            raise BadRow(where, "missing_field", "`messages` holds no user message")
        question = row.get("question") or parse_user(user)[0]
        meta = row.get("meta")
        try:
            meta = json.loads(meta) if isinstance(meta, str) and meta else (meta or {})
        except json.JSONDecodeError as exc:
            raise BadRow(where, "wrong_type", f"`meta` is not JSON ({exc})") from None
        fields = _Fields(question, row.get("solution"), published.image_entries(row),
                         list(meta.get("options") or []), system, user, row.get("has_image"))
    elif "prompt" in row and "reward_model" in row:         # DeepEyes (verl)
        _, user = _messages(where, row["prompt"], "prompt")
        reward = row["reward_model"] if isinstance(row["reward_model"], dict) else {}
        question = strip_image_tokens((user or "").split(DEEPEYES_INSTRUCTION, 1)[0])
        fields = _Fields(question, reward.get("ground_truth"), list(row.get("images") or []))
    else:                                                   # simple rows
        images = row.get("images", row.get("image"))
        images = [] if images is None else [images] if isinstance(images, str | dict) else list(images)
        fields = _Fields(row.get("question"), row.get("solution", row.get("answer")), images,
                         list(row.get("options") or []))
    if not isinstance(fields.question, str) or not fields.question.strip():
        raise BadRow(where, "missing_field", "no question")
    if fields.solution is None or str(fields.solution).strip() == "":
        raise BadRow(where, "missing_field", "no ground truth (`solution`, `answer` or "
                                             "`reward_model.ground_truth`)")
    fields.solution = str(fields.solution)
    return fields


def _messages(where: str, messages, column: str) -> tuple[str | None, str | None]:
    """The first system and user message texts of a chat column."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRow(where, "wrong_type", f"`{column}` must be a list of chat messages")
    found = {}
    for m in messages:
        if m.get("role") in ("system", "user") and m.get("role") not in found:
            if not isinstance(m.get("content"), str):
                raise BadRow(where, "wrong_type", f"`{column}`: the {m.get('role')} message's "
                                                  "content is not text")
            found[m["role"]] = m["content"]
    return found.get("system"), found.get("user")


# ---------------------------------------------------------------------------------------------
# Raw row -> prompt
# ---------------------------------------------------------------------------------------------

def _prompt_row(where: str, base: Path, raw: dict, chosen: PromptSet | None,
                cache_dir) -> dict:
    from PIL import Image

    from thyme_train.chat import thyme_messages

    f = _fields(where, raw)
    files, names, sizes = [], [], []
    for k, entry in enumerate(f.images):
        named = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(named, str) or len(named) > 1024:      # base64 text names no file
            named = None
        shown = named if named and len(named) < 200 else "(bytes)"
        try:
            file = published.image_file(entry, base, cache_dir)
            with Image.open(file) as im:
                sizes.append(im.size)
        except (ValueError, OSError) as exc:
            raise BadRow(where, "bad_image", f"image {k + 1} of {len(f.images)} {shown!r} "
                                             f"does not open: {exc}") from None
        files.append(str(file))
        # the name the data gives the image; bytes-only entries go by their cached file's name
        names.append(named if named and base / named == file else file.name)
    if f.has_image is not None and bool(f.has_image) != bool(files):
        raise BadRow(where, "image_count", f"has_image is {f.has_image} but the row carries "
                                           f"{len(files)} image(s)")

    if f.user is not None and chosen is None:       # the row's own prompts, verbatim
        system, user = f.system, f.user
    else:
        prompts = chosen or load_prompt_set()
        system, user = prompts.system, prompts.render_user(f.question)
        if files:
            own = parse_user(f.user)[1] if f.user else {}
            user = prompts.render_user(f.question, own.get("original_path", names[0]),
                                       tuple(own.get("original_size", sizes[0])), images=len(files))
    if user.count(IMAGE_TOKEN) != len(files):
        raise BadRow(where, "image_count", f"the user message has {user.count(IMAGE_TOKEN)} "
                                           f"<image> placeholder(s) but the row {len(files)} image(s)")
    row = {"prompt": thyme_messages(user, None, system), "images": files,
           "solution": f.solution, "question": f.question, "options": f.options}
    for name in RANKING_COLUMNS:            # numbers curriculum sampling can rank prompts by
        value = raw.get(name, _meta(raw).get(name))
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[name] = float(value)
    return row


def _meta(raw: dict) -> dict:
    """A published or Thyme-RL row's `meta` (a JSON object or text); {} when absent or broken
    (`_fields` already rejected a broken one)."""
    meta = raw.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            return {}
    return meta if isinstance(meta, dict) else {}
