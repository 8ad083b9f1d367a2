"""Prompts: the one module that knows the Thyme prompt text (THYME.md §1).

Prompts a model was trained with are data: each prompt set is a YAML file (`prompt_sets/<name>.
yaml`: `system`, `user` for a question with images, `user_text` for a text-only question,
`description`, optionally `name`, else the file's stem), selectable by name, by path, or taken from a released dataset's own rows:

    load_prompt_set("thyme")                      # ours, the default
    load_prompt_set("thyme-release")              # the released checkpoints' prompts, verbatim
    load_prompt_set("path/to/my_prompts.yaml")    # a user's file
    load_prompt_set("from:thyme-rl.parquet")      # the system and user prompt of a dataset's rows
    load_prompt_set("from:data/published/thyme-sft")  # the set a dataset folder records

A dataset folder records the set its rows were rendered with in `prompt_set.yaml` (the same
YAML, with the set's `name`): `build_splits` writes it beside the splits, `publish` copies it into
the published dataset, and the training and evaluation assets (and `thyme_train.sft` by default)
read it back through `from:<folder>`, so a model trains and is evaluated with the prompts its
data was made with. SFT and GRPO write the set they trained with into the model folder the same
way, so `from:<checkpoint folder>` loads it too (inference and evaluation's default).

Templates name their slots `{image_tokens}` (one `<image>` line per input image), `{question}`,
`{image_path}` and `{image_size}` (`WxH`, the original pixel size of the first image); any other
brace is text. Parsing (`parse_user`) reads every set's user messages back: the bare question
and the original path and size.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sandbox.protocol import IMAGE_TOKEN

PROMPT_SETS_DIR = Path(__file__).parent / "prompt_sets"
DEFAULT_PROMPT_SET = "thyme"
FROM_DATASET = "from:"
RECORD_FILE = "prompt_set.yaml"   # in a dataset folder: the set its rows were rendered with
SLOTS = ("{image_tokens}", "{image_path}", "{image_size}", "{question}")

_PATH = re.compile(r'(User Image Path:\*{0,2}\s*")([^"]*)(")')
_SIZE = re.compile(r'(User Image Size:\*{0,2}\s*")(\d+)\s*x\s*(\d+)(")')
_TEMPLATE_START = re.compile(r"\n*#{2,3}\s*\**\s*(?:User Image Path|Output Format)", re.IGNORECASE)
_IMAGE_TOKENS = re.compile(r"<image>\s*")


class PromptSetError(ValueError):
    """A prompt set that cannot be loaded (the message names the file and the reason)."""


@dataclass(frozen=True)
class PromptSet:
    name: str
    system: str
    user: str          # a question with images
    user_text: str     # a text-only question
    description: str = ""

    def render_user(self, question: str, image_path: str | None = None,
                    image_size: tuple[int, int] | None = None, images: int = 1) -> str:
        """The user message: `images` image tokens, the question, the first image's path and
        original size; the text-only template when there is no image."""
        if image_path is None or images == 0:
            return self.user_text.replace("{question}", question)
        width, height = image_size
        text = (self.user.replace("{image_tokens}", f"{IMAGE_TOKEN}\n" * images)
                .replace("{image_path}", image_path).replace("{image_size}", f"{width}x{height}"))
        return text.replace("{question}", question)  # last: a question may hold slot-like text


def load_prompt_set(spec: str | None = None) -> PromptSet:
    """A prompt set by name (`prompt_sets/<name>.yaml`), by path to such a YAML file, or
    `from:<file>` (a Thyme-RL/verl parquet or JSONL whose rows hold system and user messages)
    or `from:<folder>` (the set a dataset folder records, `RECORD_FILE`; read afresh each time,
    as a folder can be published again with another set)."""
    spec = spec or DEFAULT_PROMPT_SET
    source = Path(spec[len(FROM_DATASET):]) if spec.startswith(FROM_DATASET) else None
    if source is not None and source.is_dir():
        recorded = recorded_prompt_set(source)
        if recorded is None:
            raise PromptSetError(f"{source}: records no prompt set (no {RECORD_FILE}: built or "
                                 "published before sets were recorded, or not a dataset of "
                                 "this pipeline); name a set, a YAML path or from:<a parquet file>")
        return recorded
    return _load_prompt_set(spec)


@functools.cache
def _load_prompt_set(spec: str) -> PromptSet:
    if spec.startswith(FROM_DATASET):
        return prompt_set_from_dataset(spec[len(FROM_DATASET):])
    path = Path(spec)
    if not path.suffix:
        path = PROMPT_SETS_DIR / f"{spec}.yaml"
        if not path.is_file():
            raise PromptSetError(f"prompt set {spec!r}: no such set; shipped sets are "
                                 f"{available_prompt_sets()} (or give a YAML path or from:<dataset>)")
    return _read_yaml(path)


def available_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_SETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> PromptSet:
    import yaml

    if not path.is_file():
        raise PromptSetError(f"prompt set {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PromptSetError(f"prompt set {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise PromptSetError(f"prompt set {path}: expected a mapping with system, user, user_text")
    missing = [k for k in ("system", "user", "user_text") if not isinstance(data.get(k), str)]
    if missing:
        raise PromptSetError(f"prompt set {path}: missing or not text: {missing}")
    for key, required in (("user", ("{question}", "{image_path}", "{image_size}")),
                          ("user_text", ("{question}",))):
        absent = [slot for slot in required if slot not in data[key]]
        if absent:
            raise PromptSetError(f"prompt set {path}: `{key}` lacks the slot(s) {absent}")
    name = data.get("name") if isinstance(data.get("name"), str) and data["name"] else path.stem
    return PromptSet(name, data["system"], data["user"], data["user_text"],
                     data.get("description", ""))


def record_prompt_set(prompts: PromptSet, folder: str | os.PathLike) -> Path:
    """Write `prompts` into a dataset folder as its `RECORD_FILE` (a prompt-set YAML naming the
    set), atomically; `from:<folder>` loads it back."""
    import yaml

    from pipelines.core.atomic import write_text

    text = yaml.safe_dump({"name": prompts.name, "description": prompts.description,
                           "system": prompts.system, "user": prompts.user,
                           "user_text": prompts.user_text}, sort_keys=False, allow_unicode=True,
                          width=100)
    return write_text(Path(folder) / RECORD_FILE, text)


def recorded_prompt_set(folder: str | os.PathLike) -> PromptSet | None:
    """The set a dataset folder records (read afresh, never cached), None when it records none."""
    record = Path(folder) / RECORD_FILE
    return _read_yaml(record) if record.is_file() else None


def recorded_spec(folders: list[str]) -> str | None:
    """`from:<folder>` for the set the dataset folders among `folders` record (None when none
    does); PromptSetError when they record different sets (their rows were rendered differently)."""
    recorded = {str(f): found for f in folders if Path(f).is_dir()
                and (found := recorded_prompt_set(f)) is not None}
    distinct = {(p.system, p.user, p.user_text): folder for folder, p in recorded.items()}
    if len(distinct) > 1:
        raise PromptSetError("the datasets were rendered with different prompt sets ("
                             + ", ".join(f"{f}: {recorded[f].name}" for f in distinct.values())
                             + "): name the set to use")
    return f"{FROM_DATASET}{next(iter(recorded))}" if recorded else None


def prompt_set_differences(chosen: PromptSet, recorded: PromptSet,
                           parts: tuple[str, ...] = ("system", "user", "user_text")) -> list[str]:
    """The parts (`system`, `user`, `user_text`) in which `chosen` is not `recorded`'s text."""
    return [part for part in parts if getattr(chosen, part) != getattr(recorded, part)]


def prompt_set_from_dataset(file: str) -> PromptSet:
    """The prompts of a dataset's first row that has system and user messages: the user template
    is that row's user message with its question, image path, size and image tokens turned back
    into slots (the row's `question` column names the question)."""
    rows = _first_rows(Path(file))
    for number, row in enumerate(rows):
        messages = row.get("messages") or row.get("prompt") or []
        system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
        user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
        question = row.get("question") or (row.get("extra_info") or {}).get("question")
        if not (system and user and question) or question not in user:
            continue
        template = _PATH.sub(lambda m: m.group(1) + "{image_path}" + m.group(3), user, count=1)
        template = _SIZE.sub(lambda m: m.group(1) + "{image_size}" + m.group(4), template, count=1)
        template = re.sub(r"^(?:<image>\s*\n?)+", "{image_tokens}", template)
        template = template.replace(question, "{question}", 1)
        if "{image_path}" not in template:
            raise PromptSetError(f"{file} row {number}: the user message has no User Image Path "
                                 "line; write a prompt-set YAML instead")
        text_only = "{question}" + template[template.index("{question}") + len("{question}"):]
        text_only = _TEMPLATE_START.split(text_only, maxsplit=1)[0]
        tail = template[template.lower().find("### **output format"):] \
            if "### **output format" in template.lower() else ""
        return PromptSet(f"from:{Path(file).name}", system, template,
                         text_only + ("\n\n" + tail if tail else ""),
                         f"taken from {Path(file).name}, row {number}")
    raise PromptSetError(f"{file}: no row with a system message, a user message and a `question` "
                         "found in it (first rows read)")


def _first_rows(path: Path, limit: int = 64) -> list[dict]:
    if not path.is_file():
        raise PromptSetError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        columns = [c for c in ("messages", "prompt", "question", "extra_info") if c in pf.schema_arrow.names]
        batch = next(pf.iter_batches(batch_size=limit, columns=columns), None)
        return batch.to_pylist() if batch is not None else []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f, strict=False) if line.strip()]


# The default set, for code that renders without a choice (tests, the generated pool's files).
DEFAULT_SYSTEM_PROMPT = load_prompt_set().system
# Its output-format block (what follows a text-only question): the tiny tokenizer's corpus.
OUTPUT_FORMAT = load_prompt_set().user_text.replace("{question}\n\n", "", 1)


def render_user(question: str, image_path: str | None = None,
                image_size: tuple[int, int] | None = None) -> str:
    """The default set's user message (see `PromptSet.render_user`)."""
    return load_prompt_set().render_user(question, image_path, image_size)


def parse_user(text: str) -> tuple[str, dict]:
    """The bare question and {original_path, original_size} from a Thyme user message (any
    prompt set: the question ends where the path or output-format lines begin)."""
    meta = {}
    if m := _PATH.search(text):
        meta["original_path"] = m.group(2)
    if m := _SIZE.search(text):
        meta["original_size"] = [int(m.group(2)), int(m.group(3))]
    cut = _TEMPLATE_START.search(text)
    question = text[: cut.start()] if cut else text
    return strip_image_tokens(question), meta


def set_user_image(text: str, image_path: str | None = None,
                   image_size: tuple[int, int] | None = None) -> str:
    """A Thyme user message with its User Image Path and/or Size lines replaced, the rest kept."""
    if image_path is not None:
        text = _PATH.sub(lambda m: f"{m.group(1)}{image_path}{m.group(3)}", text, count=1)
    if image_size is not None:
        text = _SIZE.sub(lambda m: f"{m.group(1)}{image_size[0]}x{image_size[1]}{m.group(4)}",
                         text, count=1)
    return text


def content_parts(text: str) -> list[dict]:
    """A chat message's content from Thyme text: a text part for each piece and an image part
    for each `<image>`, in order, whitespace kept (the rendered text must equal the original)."""
    parts = []
    for i, piece in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def strip_image_tokens(text: str) -> str:
    return _IMAGE_TOKENS.sub("", text).strip()
