"""Benchmark items for evaluation, from four formats, as one `EvalItem` type (docs/evaluation.md
names the source of every layout):

- `tsv`: VLMEvalKit's TSVs (VStarBench, HRBench4K/8K, MME-RealWorld and -Lite, HallusionBench,
  OCRBench, any MCQ/VQA TSV) and `jsonl` (one object per line, `image` a path relative to the
  file or base64, `question`, `answer`, optional `options` (a dict or a list), `category`, `id`,
  `hint`, `bbox`): their rows are read by pipelines.core.benchmarks, the reader decontamination
  uses, so both see the same questions, options and images (its docstring gives the columns).
  Here every other column (`l2-category`, `cycle_category`, `split`, a `bbox` as `boxes` …) is
  kept in `EvalItem.meta`; TSV items are worded as VLMEvalKit does (`mcq`, `vqa`), JSONL items
  `plain`. The evaluation asks one image per item: a row with several is an error of that row;
- `vstar`: V*'s own release (`vstar_bench/`): `direct_attributes/` and `relative_position/`,
  each image beside a JSON with `question`, `options` (the correct one first), `target_object`
  and `bbox` (`[x, y, w, h]` per target, pixels). The options are shown in a seeded order
  (per item, `option_seed`), so the correct letter is not always A and a re-run shows the same
  order; the target boxes feed the faithful-crop measure;
- `published`: a split of a dataset this project published (read through
  pipelines.core.published, the reader SFT and GRPO share); as above, a row with several images
  is an error of that row.

Every item's image is a real file, because the sandbox and the User Image Path need one: the file
a row names when there is one, else its bytes decoded once into a cache folder beside the
results (pipelines.core.published.image_file). A broken row raises `BenchmarkError` naming the
file, the row and the reason; `load_items(..., on_error="skip")` records it and goes on.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core import benchmarks, published
from pipelines.core.benchmarks import OPTION_LETTERS, BenchmarkError  # one reader, one error

VSTAR_CATEGORIES = ("direct_attributes", "relative_position")
# the MCQ wording of the released Thyme evaluation (its VLMEvalKit prompt mixin, _build_mcq_prompt)
MCQ_SUFFIX = "Please select the correct answer from the options above."
MCQ_SUFFIX_CN = "请直接回答选项字母。"
YES_NO_SUFFIX = " Please answer yes or no."
VQA_SUFFIX = "\nPlease try to answer the question with short words or phrases if possible."
STYLES = ("mcq", "vqa", "yes_no", "plain", "asis")


@dataclass
class EvalItem:
    id: str
    image: str | None                 # path to the decoded image file; None for text-only items
    question: str                     # the bare question (options appended by `prompt_text`)
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str = "all"
    hint: str = ""
    style: str = "plain"              # STYLES: how `prompt_text` words the question
    meta: dict = field(default_factory=dict)   # the benchmark's other fields (boxes, cycles, ...)

    @property
    def boxes(self) -> list[list[float]]:
        """The targets' boxes as [x, y, w, h] in pixels of `image` (V*; empty when unknown)."""
        return self.meta.get("boxes") or []

    def prompt_text(self) -> str:
        """The question as the model reads it, in the released Thyme evaluation's wording for
        VLMEvalKit benchmarks (its prompt mixin): `mcq` Hint / Question / Options / "Please
        select ..."; `yes_no` the question and " Please answer yes or no."; `vqa` the question
        and a request for a short answer. `plain`: the hint, the question, then the options and
        a request for the letter; `asis`: the text unchanged (a published row already lists its
        options)."""
        if self.style == "asis":
            return self.question
        if self.style == "plain" and not self.options:
            return (f"Hint: {self.hint}\n" if self.hint else "") + self.question
        if self.style == "yes_no":
            return self.question + YES_NO_SUFFIX
        if self.style == "vqa" or not self.options:
            return self.question + VQA_SUFFIX
        if self.style == "mcq":
            text = (f"Hint: {self.hint}\n" if self.hint else "") + f"Question: {self.question}\n"
            text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in self.options.items())
            chinese = any("\u4e00" <= ch <= "\u9fff" for ch in text)
            return (text + (MCQ_SUFFIX_CN if chinese else MCQ_SUFFIX)).rstrip()
        lines = ([f"Hint: {self.hint}"] if self.hint else []) + [self.question, "Options:"]
        lines += [f"{k}. {v}" for k, v in self.options.items()]
        return "\n".join(lines) + "\nAnswer with the option's letter from the given choices."


def detect_format(path: Path) -> str:
    path = Path(path)
    if path.is_dir() and any((path / c).is_dir() for c in VSTAR_CATEGORIES):
        return "vstar"
    if path.is_dir() or path.suffix == ".parquet":
        return "published"
    if benchmarks.benchmark_format(path):
        return benchmarks.benchmark_format(path)
    raise BenchmarkError(str(path), "-", "unknown benchmark format (expected .tsv, .jsonl, V*'s "
                         "vstar_bench folder, a .parquet file or a published dataset directory)")


def load_items(path: str | os.PathLike, image_dir: str | os.PathLike, limit: int | None = None,
               split: str = "test", on_error: str = "raise",
               errors: list[BenchmarkError] | None = None, option_seed: int = 0,
               yes_no: bool = False) -> list[EvalItem]:
    """Items of a benchmark; images decoded into `image_dir`. `on_error`: raise | skip.
    `yes_no`: open questions are yes/no questions (a Y/N benchmark: HallusionBench)."""
    path, image_dir = Path(path), Path(image_dir)
    if not path.exists():
        raise BenchmarkError(str(path), "-", "no such file or directory")
    image_dir.mkdir(parents=True, exist_ok=True)
    fmt = detect_format(path)
    if fmt in ("tsv", "jsonl"):
        rows = _file_rows(path, image_dir, fmt)
    else:
        rows = {"published": _published_rows, "vstar": _vstar_rows}[fmt](
            path, image_dir, option_seed if fmt == "vstar" else split)
    items = []
    for item in benchmarks.sift(_unique(rows, path), on_error, errors):
        if yes_no and item.style == "vqa":
            item.style = "yes_no"
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def _unique(rows, path: Path):
    """A second item with an id already read becomes an error (results are kept per id)."""
    seen = set()
    for item in rows:
        if isinstance(item, EvalItem):
            if item.id in seen:
                item = BenchmarkError(str(path), item.id, "duplicate id (results are kept per id)")
            else:
                seen.add(item.id)
        yield item


def _image_from(value, base: Path, image_dir: Path) -> str:
    """An image given as base64 text, bytes, an HF image struct, or a path (relative to `base`),
    as a file that opens (pipelines.core.published.image_file)."""
    return str(published.image_file(value, base, image_dir))


def _one_image(images: list, who_reads_more: str) -> None:
    """A row's images are one at most: the evaluation asks one image per item."""
    if len(images) > 1:
        raise ValueError(f"{len(images)} images: the evaluation asks one image per item "
                         f"({who_reads_more})")


def _file_rows(path: Path, image_dir: Path, fmt: str):
    """EvalItems on the rows of pipelines.core.benchmarks (the reader decontamination uses):
    each image a file (the one the row names, else its bytes cached in `image_dir`), a repeated
    image the file of the row holding it, the other columns in `meta` (a `bbox` as `boxes`)."""
    files_by_index: dict[str, str] = {}           # rows' images as files, for rows repeating them
    for item in benchmarks.iter_benchmark(path, require_answer=True):
        if isinstance(item, BenchmarkError):
            yield item
            continue
        try:
            _one_image(item.images, "decontamination reads them all")
            image = None
            if item.images:
                file = item.image_files[0] or published.cache_image(item.images[0], image_dir)
                image = files_by_index[item.id] = str(file)
            elif item.image_refs:
                image = files_by_index.get(item.image_refs[0])
                if image is None:
                    raise ValueError(f"its image is row index {item.image_refs[0]!r}'s, which "
                                     "the evaluation could not take")
            meta = dict(item.extra)
            if "bbox" in meta:
                meta["boxes"] = _boxes(meta.pop("bbox"))
            style = ("mcq" if item.options else "vqa") if fmt == "tsv" else "plain"
            yield EvalItem(id=item.id, image=image, question=item.question, answer=item.answer,
                           options=item.options, category=item.category or "all",
                           hint=item.hint, style=style, meta=meta)
        except (ValueError, OSError) as exc:
            yield BenchmarkError(str(path), item.where, str(exc))


def _boxes(value) -> list[list[float]]:
    """[[x, y, w, h], ...] from a JSON text or a list (one box or several)."""
    boxes = json.loads(value) if isinstance(value, str) else value
    if boxes and not isinstance(boxes[0], list | tuple):
        boxes = [boxes]
    if not all(len(b) == 4 and all(isinstance(v, int | float) for v in b) for b in boxes):
        raise ValueError(f"bbox must be [x, y, w, h] or a list of them, got {str(value)[:80]}")
    return [[float(v) for v in b] for b in boxes]


def _vstar_rows(path: Path, image_dir: Path, option_seed: int):
    for category in VSTAR_CATEGORIES:
        folder = path / category
        for anno in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            rid = f"{category}/{anno.stem}"
            try:
                data = json.loads(anno.read_text(encoding="utf-8"))
                images = [p for p in folder.glob(anno.stem + ".*") if p.suffix != ".json"]
                if len(images) != 1:
                    raise ValueError(f"expected one image named {anno.stem}.* beside the JSON, "
                                     f"found {len(images)}")
                options = [str(o) for o in data["options"]]
                if len(options) < 2:
                    raise ValueError("fewer than two options")
                order = list(range(len(options)))
                random.Random(f"{option_seed}:{rid}").shuffle(order)
                letters = OPTION_LETTERS[:len(options)]
                boxes = _boxes(data.get("bbox") or [])
                targets = [str(t) for t in data.get("target_object") or []]
                yield EvalItem(
                    id=rid, image=_image_from(images[0].name, folder, image_dir),
                    question=str(data["question"]), answer=letters[order.index(0)],
                    options={letters[k]: options[i] for k, i in enumerate(order)},
                    category=category, style="mcq",
                    meta={"boxes": boxes, "targets": targets, "option_seed": option_seed})
            except (ValueError, KeyError, OSError, TypeError) as exc:
                reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                yield BenchmarkError(str(anno), rid, reason)


def _published_rows(path: Path, image_dir: Path, split: str):
    from pipelines.core.answers import parse_options
    from pipelines.core.prompts import parse_user

    if path.is_dir():
        try:
            files = published.split_files(path, split)
        except FileNotFoundError:
            raise BenchmarkError(str(path), "-", f"no parquet files for split {split!r}") from None
    else:
        files = [path]
    base = path if path.is_dir() else path.parent     # rows name image files relative to it
    for where, row in published.iter_rows(files):
        file, n = where.rsplit(" row ", 1)
        rid = row.get("id") or f"{Path(file).name}:{n}"
        try:
            if "messages" in row and row["messages"]:
                user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            else:
                user = row["question"]
            question, _ = parse_user(user)
            images = published.image_entries(row)
            _one_image(images, "training reads them all")
            image = _image_from(images[0], base, image_dir) if images else None
            answer = row.get("solution") or row.get("answer")
            if answer is None and row.get("response"):
                # an SFT row: its audited trajectory's answer is the ground truth
                from pipelines.core.answers import extract
                answer = extract(row["response"]).text or None
            if answer is None:
                raise ValueError("no solution/answer")
            meta = row.get("meta")
            meta = json.loads(meta) if isinstance(meta, str) and meta else (meta or {})
            yield EvalItem(id=str(rid), image=image, question=question, answer=str(answer),
                           options=parse_options(meta.get("options")), style="asis",
                           category=row.get("task") or "all")
        except (ValueError, KeyError, StopIteration, OSError) as exc:
            yield BenchmarkError(file, rid, str(exc) or type(exc).__name__)
