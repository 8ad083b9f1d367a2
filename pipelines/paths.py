"""Path rewriting (issue 5): what a published row says about files must hold on the reader's
machine. For our trajectories and for the released Thyme data alike:

- the question's `User Image Path` names the input image as the dataset stores it (a path
  relative to the dataset root), `User Image Size` its real size;
- every `image_path = "..."` literal that named the original input names that same path (the
  sandbox substitutes the real input for such a literal anyway, so this is what it meant);
- processed-image paths keep the conventional output directory (`VIRTUAL_OUTPUT_DIR`, which the
  sandbox redirects): an author's own output folder becomes that directory;
- each `<image>` in the response maps, in order, to `image[1:]`.

Anything else absolute or machine-specific is left for `find_absolute_paths` (and the validation
that uses it) to report: it is never guessed at.

    python -m pipelines rewrite-paths --input thyme-sft.parquet --images-root DIR --out OUT.parquet
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.images import ImageRejected, ImageStore
from pipelines.prompts import parse_user, set_user_image
from pipelines.trajectory import Result, Trajectory, Turn
from sandbox.protocol import IMAGE_TOKEN, VIRTUAL_OUTPUT_DIR

IMAGES_DIR = "images"   # published datasets keep image files (when they ship them) under this folder
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# `image_path = "<literal>"` (any string prefix, either quote).
_IMAGE_PATH_ASSIGN = re.compile(r"""(\bimage_path\s*=\s*[rRuU]?)(["'])([^"'\n]*)\2""")
# An absolute POSIX path: a '/' not preceded by a word character, '<' (closing tags), '.', ':' or
# '/' (URLs), followed by at least one directory component. Windows and home paths apart.
_STOP = r"""\s"'`<>()\[\]{},;|*?"""
ABSOLUTE_PATH = re.compile(
    rf"(?<![\w<.:/~\\-])/(?:[^{_STOP}/]+/)+[^{_STOP}/]*"
    rf"|\b[A-Za-z]:\\(?:[^{_STOP}\\]+\\)*[^{_STOP}\\]*"
    rf"|(?<![\w/])~/[^{_STOP}]*"
)


def dataset_path(store_relpath: str) -> str:
    """The dataset-relative path of an image-store file (`ab/abcd.jpg` -> `images/ab/abcd.jpg`)."""
    return f"{IMAGES_DIR}/{store_relpath}"


def store_relpath(path: str) -> str:
    """The inverse of `dataset_path`."""
    prefix = IMAGES_DIR + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not a dataset image path (expected {prefix}...)")
    return path[len(prefix):]


def is_virtual_output(path: str) -> bool:
    return path == VIRTUAL_OUTPUT_DIR or path.startswith(VIRTUAL_OUTPUT_DIR + "/")


def find_absolute_paths(text: str) -> list[str]:
    """Absolute or home-relative paths in `text`, except the sandbox's virtual output directory."""
    return [m.group(0) for m in ABSOLUTE_PATH.finditer(text or "") if not is_virtual_output(m.group(0))]


@dataclass
class Rewrites:
    """What a rewrite changed, by rule (for reports)."""

    counts: Counter

    def add(self, rule: str, n: int = 1) -> None:
        self.counts[rule] += n


def _processed_dir_target(path: str) -> str | None:
    """An author's processed-image folder (a component mentioning 'processed') mapped into the
    virtual output directory, keeping what follows it; None when the path is not one."""
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts):
        if "processed" in part.lower():
            rest = "/".join(parts[i + 1:])
            return f"{VIRTUAL_OUTPUT_DIR}/{rest}" if rest else VIRTUAL_OUTPUT_DIR
    return None


def rewrite_text(text: str, input_path: str | None, originals: list[str] = (),
                 rewrites: Rewrites | None = None) -> str:
    """Rewrite the paths in a response, code block or printed output.

    `input_path`: where the dataset stores the input image (None: the row has none).
    `originals`: paths that named the input where the text was written (e.g. the original
    question's User Image Path); any occurrence becomes `input_path`.
    """
    if not text:
        return text
    rewrites = rewrites if rewrites is not None else Rewrites(Counter())
    originals = [o for o in originals if o]
    basenames = {os.path.basename(o) for o in originals}

    def assign(m: re.Match) -> str:
        literal = m.group(3)
        if input_path is None or is_virtual_output(literal) or literal == input_path:
            return m.group(0)
        rewrites.add("image_path_literal")
        return f"{m.group(1)}{m.group(2)}{input_path}{m.group(2)}"

    text = _IMAGE_PATH_ASSIGN.sub(assign, text)
    if input_path is not None:
        for original in originals:  # relative originals too (ABSOLUTE_PATH would not see them)
            if original != input_path and original in text:
                rewrites.add("original_input", text.count(original))
                text = text.replace(original, input_path)

    def absolute(m: re.Match) -> str:
        path = m.group(0)
        if is_virtual_output(path):
            return path
        target = _processed_dir_target(path)
        if target is not None:
            rewrites.add("processed_dir")
            return target
        if input_path is not None and os.path.basename(path) in basenames:
            rewrites.add("original_input")
            return input_path
        return path  # unknown: left for validation to report

    return ABSOLUTE_PATH.sub(absolute, text)


def rewrite_question(text: str, input_path: str | None, size: tuple[int, int] | None) -> str:
    """Set the User Image Path and Size lines of a Thyme user message, leaving the rest as is."""
    return set_user_image(text, input_path, size)


def rewrite_trajectory(trajectory: Trajectory, input_path: str | None,
                       originals: list[str] = (), rewrites: Rewrites | None = None) -> Trajectory:
    """A copy whose reasoning, code and printed outputs name `input_path` for the input and the
    virtual output directory for processed images."""
    def fix(text):
        return rewrite_text(text, input_path, originals, rewrites) if text else text

    turns = [Turn(fix(t.reasoning), fix(t.code),
                  None if t.result is None else Result(t.result.kind, fix(t.result.text),
                                                       list(t.result.images), t.result.error_kind))
             for t in trajectory.turns]
    return replace(trajectory, turns=turns, answer=fix(trajectory.answer))


# ------------------------------------------------------------------ released Thyme-SFT rows

@dataclass
class RewriteConfig:
    """The `rewrite-paths` command: released Thyme-SFT or Thyme-RL parquet -> the same rows,
    images decoded to files once, paths rewritten."""

    input: str                  # Thyme-SFT (image, question, response) or Thyme-RL (messages, images, ...)
    images_root: str            # where the decoded images go (content-addressed, written once)
    out: str                    # the rewritten parquet; paths in it are relative to its folder
    keep_invalid: bool = False  # keep rows that fail validation (default: drop, list them in the report)
    max_pixels: int | None = None  # the validation's pixel budget (None: ValidationConfig's default)
    batch_rows: int = 64        # rows decoded at a time (rows carry base64 images)


def rewrite_thyme_row(row: dict, store: ImageStore, base: Path, rewrites: Rewrites) -> dict:
    """One released row: images decoded into the store, question and response rewritten.
    Adds `image_paths` (relative to `base`, the output's folder). Raises ImageRejected."""
    paths = []
    sizes = []
    for item in row.get("image") or []:
        ref, _ = store.put_base64(item)
        paths.append(Path(os.path.relpath(store.path(ref), base)).as_posix())
        sizes.append((ref.width, ref.height))
    question = row.get("question") or ""
    _, meta = parse_user(question)
    has_input = "original_path" in meta and bool(paths)
    input_path = paths[0] if has_input else None
    originals = [meta["original_path"]] if has_input else []
    if has_input:
        question = rewrite_question(question, input_path, sizes[0])
    response = rewrite_text(row.get("response") or "", input_path, originals, rewrites)
    return {**row, "question": question, "response": response, "image_paths": paths}


def rewrite_thyme_rl_row(row: dict, store: ImageStore, base: Path) -> dict:
    """One released Thyme-RL row: its images decoded into the store, the user message's User
    Image Path naming the decoded file (relative to `base`) and its size the real one. Adds
    `image_paths`. Raises ImageRejected."""
    paths, sizes = [], []
    for item in row.get("images") or []:
        ref, _ = store.put_base64(item)
        paths.append(Path(os.path.relpath(store.path(ref), base)).as_posix())
        sizes.append((ref.width, ref.height))
    messages = []
    for m in row.get("messages") or []:
        content = m["content"]
        if m["role"] == "user" and paths and "original_path" in parse_user(content)[1]:
            content = rewrite_question(content, paths[0], sizes[0])
        messages.append({**m, "content": content})
    return {**row, "messages": messages, "image_paths": paths}


def _validate_released(new: dict, number: int, base: Path, vcfg) -> list:
    from pipelines.validate import validate_rl_rows, validate_sft_rows

    if "messages" in new:           # RL: checked against its own system prompt (the release's)
        row = {"id": str(number), "messages": new["messages"], "images": new["image_paths"],
               "solution": str(new.get("solution") or ""), "has_image": bool(new["image_paths"])}
        system = next((m["content"] for m in new["messages"] if m["role"] == "system"), "")
        return validate_rl_rows([row], lambda p: base / p, replace(vcfg, system_prompt=system))
    row = {"id": str(number), "question": new["question"], "response": new["response"],
           "images": new["image_paths"],
           "has_image": bool(parse_user(new["question"])[1].get("original_path"))}
    return validate_sft_rows([row], lambda p: base / p, vcfg)


def rewrite_released(cfg: RewriteConfig) -> dict:
    """Stream a released Thyme-SFT or Thyme-RL parquet (told apart by its columns) through the
    rewrite and the row validations; write the output atomically. Returns a report (counts,
    failures by check with rows)."""
    from pipelines.validate import ValidationConfig

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = ImageStore(cfg.images_root)
    vcfg = ValidationConfig() if cfg.max_pixels is None else ValidationConfig(max_pixels=cfg.max_pixels)
    rewrites = Rewrites(Counter())
    rejected: list[dict] = []
    failures_by_check: Counter = Counter()
    written = rows_in = 0
    pf = pq.ParquetFile(cfg.input)
    rl = "messages" in pf.schema_arrow.names
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    writer = None
    try:
        for batch in pf.iter_batches(batch_size=cfg.batch_rows):
            kept = []
            for row in batch.to_pylist():
                number = rows_in
                rows_in += 1
                try:
                    new = (rewrite_thyme_rl_row(row, store, out.parent) if rl
                           else rewrite_thyme_row(row, store, out.parent, rewrites))
                except ImageRejected as exc:
                    rejected.append({"row": number, "check": "image", "reason": str(exc)})
                    failures_by_check["image"] += 1
                    continue
                failures = _validate_released(new, number, out.parent, vcfg)
                for f in failures:
                    failures_by_check[f.check] += 1
                    rejected.append({"row": number, "check": f.check, "reason": f.reason})
                if failures and not cfg.keep_invalid:
                    continue
                kept.append(new)
            if not kept:
                continue
            table = pa.Table.from_pylist(kept)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            written += len(kept)
        if writer is None:  # nothing kept: still write a valid, empty file
            schema = pf.schema_arrow.append(pa.field("image_paths", pa.list_(pa.string())))
            writer = pq.ParquetWriter(tmp, schema)
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    report = {"input": cfg.input, "out": str(out), "rows": rows_in, "written": written,
              "images_written": store.files_written, "rewrites": dict(rewrites.counts),
              "failures_by_check": dict(failures_by_check), "rejected": rejected[:1000]}
    report_path = out.with_name(out.stem + ".report.json")
    report_path.write_text(json.dumps(report, indent=2))
    return report


def count_image_tokens(text: str) -> int:
    return (text or "").count(IMAGE_TOKEN)
