"""Publishing (issue 5): built splits -> a Hugging Face dataset directory, pushed when configured.

    publish(split_dir, store_root, out_dir, PublishConfig(kind="sft")) -> report
    push(out_dir, PublishConfig(repo_id=..., ...)) -> what was (or would be) uploaded

Layout (`datasets.load_dataset(DIR, split=...)` reads it from a local path or the Hub):

    README.md                                   dataset card: YAML configs, features, row counts,
                                                funnel, how it was made, license
    prompt_set.yaml                             the prompt set the rows were rendered with (as
                                                the splits recorded it; `from:DIR` loads it)
    data/<encoding>/<split>-00000.parquet ...   shards per split, per image encoding
    images/<hash[:2]>/<hash>.<ext>              image files (RL by default: prompts name them)

Encodings (one dataset config each; the first is the default):
- `thyme`: the released schema, so existing scripts work. SFT: `image` (list of base64 strings:
  the input image, then each sandbox-produced image in order), `question`, `response`; RL:
  `messages`, `images` (base64), `solution`, `question`.
- `hf`: images as `Sequence(Image)` (column `images`), decoded to PIL by `datasets`.
Both also carry `id`, `task`, `has_image` (and SFT `kind`, RL `meta`).

SFT splits: `wo_thinking_thyme_single_round`, `2round`, `computation` (their train parts) and
`test` (the held-out parts of all three). RL splits: `train`, `test`. Empty splits are left out
(`datasets` cannot load a split without rows); the card names them, since scripts written for the
release (its README's decode script) load each of the three SFT splits by name.
Every image path a row names (`images/...`) is dataset-relative; image bytes are the store's,
byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.formats import b64
from pipelines.core.prompts import RECORD_FILE, PromptSet, record_prompt_set, recorded_prompt_set
from pipelines.core.published import ENCODINGS, shard_name
from pipelines.datasets.names import COMPUTATION, RL, SINGLE, TWO_ROUND, UNROUTED
from pipelines.datasets.splits import iter_split, split_file
from pipelines.datasets.splits import store_resolver as _store_resolver

# HF split -> the (split, part) files it is made of.
SFT_LAYOUT = {SINGLE: [(SINGLE, "train")], TWO_ROUND: [(TWO_ROUND, "train")],
              COMPUTATION: [(COMPUTATION, "train")],
              "test": [(SINGLE, "test"), (TWO_ROUND, "test"), (COMPUTATION, "test")]}
RL_LAYOUT = {"train": [(RL, "train")], "test": [(RL, "test")]}


@dataclass
class PublishConfig:
    """One published dataset."""

    kind: str = "sft"                    # sft | rl
    name: str = ""                       # pretty name in the card (default: Thyme-SFT / Thyme-RL)
    encodings: tuple[str, ...] = ENCODINGS  # dataset configs to write; the first is the default
    max_shard_bytes: int = 256 << 20     # a parquet shard is closed past this much row data
    rows_per_group: int = 64             # parquet row-group size (rows carry images)
    ship_image_files: bool | None = None  # copy image files into images/ (None: RL yes, SFT no)
    license: str = "apache-2.0"          # the card's license field; the sources' licenses also apply
    repo_id: str = ""                    # Hub dataset repo (e.g. user/thyme-sft); empty: dry run
    token_env: str = "HF_TOKEN"          # environment variable that holds the Hub token
    private: bool = True                 # create the Hub repo private
    extra_card: str = ""                 # markdown appended to the card (provenance, notes)
    funnel: dict = field(default_factory=dict)  # the split report (pool -> splits), for the card

    def __post_init__(self):
        if self.kind not in ("sft", "rl"):
            raise ValueError(f"kind must be 'sft' or 'rl' (got {self.kind!r})")
        unknown = set(self.encodings) - set(ENCODINGS)
        if unknown or not self.encodings:
            raise ValueError(f"encodings must be a non-empty subset of {ENCODINGS} (got {self.encodings})")
        if not self.name:
            self.name = "Thyme-SFT" if self.kind == "sft" else "Thyme-RL"

    @property
    def layout(self) -> dict[str, list[tuple[str, str]]]:
        return SFT_LAYOUT if self.kind == "sft" else RL_LAYOUT

    @property
    def ships_files(self) -> bool:
        return self.kind == "rl" if self.ship_image_files is None else self.ship_image_files


def features(kind: str, encoding: str):
    """The `datasets.Features` of one configuration."""
    from datasets import Features, Image, List, Value

    text = Value("string")
    images = ({"image": List(text)} if kind == "sft" else {"images": List(text)}) \
        if encoding == "thyme" else {"images": List(Image())}
    common = {"id": text, "task": text, "has_image": Value("bool")}
    if kind == "sft":
        return Features({**images, "question": text, "response": text, **common, "kind": text})
    return Features({"messages": List({"role": text, "content": text}), **images,
                     "solution": text, "question": text, **common, "meta": text})


def encode_row(row: dict, kind: str, encoding: str, read) -> dict:
    """A split row in a published encoding; `read(path)` returns an image file's bytes."""
    if encoding == "thyme":
        images = [b64(read(p)) for p in row["images"]]
        images = {"image": images} if kind == "sft" else {"images": images}
    else:
        images = {"images": [{"bytes": read(p), "path": p} for p in row["images"]]}
    common = {"id": row["id"], "task": row["task"], "has_image": row["has_image"]}
    if kind == "sft":
        return {**images, "question": row["question"], "response": row["response"], **common,
                "kind": row["kind"]}
    return {"messages": row["messages"], **images, "solution": row["solution"],
            "question": row["question"], **common, "meta": row["meta"]}


class _Shards:
    """Parquet shards of one split: a new file whenever the current one passes the size cap."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, max_bytes: int):
        self.folder, self.split, self.schema, self.max_bytes = folder, split, schema, max_bytes
        self.files: list[Path] = []
        self.writer = None
        self.bytes = 0
        self.rows = 0

    def write(self, rows: list[dict], size: int) -> None:
        if self.writer is None or self.bytes >= self.max_bytes:
            self.close()
            path = self.folder / shard_name(self.split, len(self.files))
            self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self.files.append(path)
            self.bytes = 0
        self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.bytes += size
        self.rows += len(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def publish(split_dir: str | os.PathLike, store_root: str | os.PathLike, out_dir: str | os.PathLike,
            cfg: PublishConfig | None = None) -> dict:
    """Write the dataset directory (atomically, as a whole). Returns the report: rows per split
    and task, files, bytes, and the path."""
    cfg = cfg or PublishConfig()
    resolve = _store_resolver(store_root)
    out = Path(out_dir)
    rows: dict[str, int] = {}
    by_task: dict[str, dict[str, int]] = {}
    shipped: set[str] = set()
    sizes: dict[tuple[str, str], int] = {}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for encoding in cfg.encodings:
            folder = tmp / "data" / encoding
            folder.mkdir(parents=True)
            schema = features(cfg.kind, encoding).arrow_schema
            for split, sources in cfg.layout.items():
                shards = _Shards(folder, split, schema, cfg.max_shard_bytes)
                tasks: dict[str, int] = {}
                for source in sources:
                    if not split_file(split_dir, *source).exists():
                        raise FileNotFoundError(f"{split_file(split_dir, *source)}: split not built")
                    for batch in iter_split(split_dir, *source, batch_rows=cfg.rows_per_group):
                        encoded, size = [], 0
                        for row in batch:
                            if not (row["task"] or "").strip():   # build_splits quarantines these
                                raise ValueError(f"{split_file(split_dir, *source)}: row {row['id']}: "
                                                 "task is missing (rebuild the splits)")
                            encoded.append(encode_row(row, cfg.kind, encoding, lambda p: resolve(p).read_bytes()))
                            size += sum(resolve(p).stat().st_size for p in row["images"])
                            size += len(row.get("response") or row.get("question") or "")
                            tasks[row["task"]] = tasks.get(row["task"], 0) + 1
                            if cfg.ships_files:
                                shipped.update(row["images"])
                        shards.write(encoded, size)
                shards.close()
                rows[split], by_task[split] = shards.rows, tasks
                sizes[encoding, split] = sum(f.stat().st_size for f in shards.files)
        for path in sorted(shipped):
            target = tmp / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(resolve(path), target)
        splits = [s for s in cfg.layout if rows[s]]
        prompts = recorded_prompt_set(split_dir)       # build_splits records it
        if prompts is not None:
            record_prompt_set(prompts, tmp)
        (tmp / "README.md").write_text(dataset_card(cfg, splits, rows, by_task, sizes, prompts))
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"path": str(out), "kind": cfg.kind, "splits": splits, "rows": rows, "rows_by_task": by_task,
            "prompt_set": prompts.name if prompts is not None else None,
            "encodings": list(cfg.encodings), "image_files": len(shipped), "files": len(files),
            "bytes": sum(p.stat().st_size for p in files)}


# ------------------------------------------------------------------ the dataset card

def dataset_card(cfg: PublishConfig, splits: list[str], rows: dict[str, int],
                 by_task: dict[str, dict[str, int]], sizes: dict[tuple[str, str], int],
                 prompts: PromptSet | None = None) -> str:
    import yaml

    configs, infos = [], []
    for k, encoding in enumerate(cfg.encodings):
        config = {"config_name": encoding,
                  "data_files": [{"split": s, "path": f"data/{encoding}/{s}-*.parquet"} for s in splits]}
        if k == 0:
            config["default"] = True
        configs.append(config)
        infos.append({"config_name": encoding,
                      "features": features(cfg.kind, encoding)._to_yaml_list(),
                      "splits": [{"name": s, "num_bytes": sizes[encoding, s], "num_examples": rows[s]}
                                 for s in splits]})
    images = _images_section(cfg, splits)
    header = {"license": cfg.license, "pretty_name": cfg.name, "language": ["en"],
              "task_categories": ["image-text-to-text", "visual-question-answering"],
              "tags": ["thyme", "code-interpreter", "tool-use", "multimodal", "reasoning"],
              "configs": configs, "dataset_info": infos}
    tasks = sorted({t for s in splits for t in by_task[s]})
    table = ["| split | rows | " + " | ".join(tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    table += [f"| `{s}` | {rows[s]} | " + " | ".join(str(by_task[s].get(t, 0)) for t in tasks) + " |"
              for s in splits]
    body = f"""
# {cfg.name}

Training data for vision-language models that reason by writing Python a sandbox runs (the
Thyme method, [arXiv 2508.11630](https://arxiv.org/abs/2508.11630)), built by the Thyme toolkit's
pipeline: samples from a source pool, reasoning and code written by a teacher, every code block
run in an isolated sandbox, rule-based audits of execution, results and answers, then
deduplication (exact and near-duplicate), a task mix, and a test split held out by image hash.

## Row counts

{chr(10).join(table)}

## Usage

```python
from datasets import load_dataset
ds = load_dataset("PATH_OR_REPO", split="{splits[0] if splits else 'train'}")          # `thyme` encoding
ds_hf = load_dataset("PATH_OR_REPO", "hf", split="{splits[0] if splits else 'train'}")  # images as PIL
```

{images}{_absent(cfg, splits)}
Responses end with `</think>` + one space + `<answer>...</answer>`. Rows without an input image
(`has_image` false: text-only computation questions) have an empty image list and a question
without `<image>`; a row with several input images has one `<image>` per input, in order.
{_prompts_section(cfg, prompts)}{_sections(cfg.funnel)}
## How it was made (funnel)

```json
{json.dumps(cfg.funnel, indent=2, sort_keys=True) if cfg.funnel else "{}"}
```

## License

Released under `{cfg.license}`; images and questions derived from third-party sources keep
their original licenses.
{cfg.extra_card}
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + body


# What the card says about images: every path it names resolves, after the snippet it shows when
# the files are embedded only. The snippet is run by the tests on a published dataset.
DECODE_SNIPPET = '''import base64, hashlib, io, os
from datasets import load_dataset
from PIL import Image

root = "PATH_TO_THIS_DATASET"          # a local copy (huggingface_hub.snapshot_download)
for split in SPLITS:
    for row in load_dataset(root, split=split):
        for text in row[COLUMN]:
            data = base64.b64decode(text)
            digest = hashlib.sha256(data).hexdigest()
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[Image.open(io.BytesIO(data)).format]
            path = os.path.join(root, "images", digest[:2], f"{digest}.{ext}")
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)       # the bytes as embedded: the file name is their SHA-256
'''


def decode_snippet(cfg: PublishConfig, splits: list[str]) -> str:
    """The card's script that writes every embedded image where the rows name it."""
    column = "image" if cfg.kind == "sft" else "images"
    return DECODE_SNIPPET.replace("SPLITS", repr(splits)).replace("COLUMN", repr(column))


def _images_section(cfg: PublishConfig, splits: list[str] | None = None) -> str:
    column = "image" if cfg.kind == "sft" else "images"
    order = ("the input image(s) first, then each sandbox-produced image in order; each `<image>` "
             "of the response is the next one" if cfg.kind == "sft" else "the prompt's input image(s)")
    where = ("The User Image Path in each prompt names the first input image relative to this "
             "dataset's root, `images/<hash[:2]>/<hash>.<ext>` (the SHA-256 of its bytes)")
    if cfg.ships_files:
        files = f"{where}, and every image file ships there: the paths resolve as downloaded."
    else:
        files = (f"{where}. The image files are not shipped: they are embedded, byte for byte, in "
                 f"`{column}` (base64) and in the `hf` configuration's `images`. This writes each "
                 f"one where the rows name it (afterwards every User Image Path resolves):\n\n"
                 f"```python\n{decode_snippet(cfg, splits or [])}```\n\n"
                 "The original Thyme README's decode script also works (it writes "
                 "`{split}/{row+1:08d}_{k:02d}.jpg`, re-encoded as JPEG, and names those files in "
                 "its JSONL `image` lists; then point the User Image Path at the first of them, as "
                 "the original README's path-conversion step says).")
    return (f"`thyme` keeps the released schema: `{column}` is a list of base64 strings ({order}); "
            f"`hf` has the same images as `datasets.Image` values.\n{files}\n"
            "Processed images are saved under `/mnt/data/temp_processed_images/`, which the "
            "sandbox redirects.")


def _prompts_section(cfg: PublishConfig, prompts: PromptSet | None) -> str:
    """What the card says about the prompts the rows were rendered with."""
    if prompts is None:
        return ("\n## Prompts\n\nThe prompt set the rows were rendered with is not recorded (the "
                "splits were built before sets were recorded).\n")
    rendered = ("the `question` column is the user message it rendered; a trainer adds the "
                "set's system prompt" if cfg.kind == "sft" else "`messages` hold its system and "
                "user messages")
    return (f"\n## Prompts\n\nRendered with the prompt set `{prompts.name}` ({rendered}). "
            f"`{RECORD_FILE}` holds it (system prompt and user templates): train and evaluate "
            "with the same set, `prompt_set=from:PATH_TO_THIS_DATASET` (the Thyme toolkit's "
            "trainers and evaluation read it by default).\n")


def _absent(cfg: PublishConfig, splits: list[str]) -> str:
    missing = [s for s in cfg.layout if s not in splits]
    if not missing:
        return ""
    return (f"\nThis dataset has no {', '.join(f'`{s}`' for s in missing)} rows, so those splits "
            "are absent: a script that loads every split of the release by name (the original "
            "decode script's `SPLITS`) must leave them out.")


def _table(rows: dict[str, dict], columns: list[str]) -> str:
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| `{name}` | " + " | ".join(str(r.get(c, 0)) for c in columns) + " |"
              for name, r in rows.items()]
    return "\n".join(lines)


def _sections(funnel: dict) -> str:
    """What the split report says about decontamination, rows set aside and RL prompts."""
    out = []
    decon = (funnel or {}).get("decontamination")
    if decon:
        cols = ["items", "images", "matched_samples", "by_image_exact", "by_image_perceptual",
                "by_question", "questions_too_short"]
        settings = decon.get("settings", {})
        out.append("## Decontamination\n\nPool samples matching an evaluation benchmark item were "
                   "dropped before splitting: an input image that is the same file or the same "
                   f"picture (perceptual hash within {settings.get('phash_distance')} bits), or a "
                   f"near-duplicate question (5-gram Jaccard >= {settings.get('question_threshold')}"
                   f"; questions under {settings.get('min_question_chars')} characters match only "
                   "with their image).\n\n" + _table(decon["benchmarks"], cols))
    validated = (funnel or {}).get("validated")
    if validated and any(validated.get("quarantined", {}).values()):
        checks = sorted({c for by in validated["quarantined"].values() for c in by})
        rows = {split: {**by, "rendered": validated["rendered"].get(split, 0)}
                for split, by in validated["quarantined"].items()}
        note = (f"\n\n`{UNROUTED}`: rows no split could take (without a task), set aside before "
                "rendering." if UNROUTED in rows else "")
        out.append("## Rows set aside by validation\n\n" + _table(rows, ["rendered", *checks]) + note)
    rl = (funnel or {}).get("rl_prompts")
    if rl:
        out.append(f"## RL prompts\n\nFrom the {'pool (no teacher)' if rl.get('source') == 'pool' else 'samples with an audited trajectory'}: "
                   f"{rl.get('candidates', 0)} candidates, {rl.get('eligible', 0)} eligible, "
                   f"{rl.get('taken', 0)} taken; filtered out: "
                   + (", ".join(f"{k} {v}" for k, v in sorted(rl.get("filtered", {}).items())) or "none")
                   + ".")
    return ("\n" + "\n\n".join(out) + "\n") if out else ""


# ------------------------------------------------------------------ the Hub

def push(out_dir: str | os.PathLike, cfg: PublishConfig, api=None) -> dict:
    """Upload the directory to `cfg.repo_id` when a repo id and a token are configured; otherwise
    a dry run: print and return what would be uploaded. `api`: an `HfApi` (tests pass a fake)."""
    root = Path(out_dir)
    files = [{"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file()]
    token = os.environ.get(cfg.token_env) if cfg.token_env else None
    plan = {"repo_id": cfg.repo_id or None, "files": files, "bytes": sum(f["bytes"] for f in files)}
    if not cfg.repo_id or not token:
        missing = "repo_id" if not cfg.repo_id else f"a token in ${cfg.token_env}"
        print(f"dry run (no {missing}): would upload {len(files)} files, {plan['bytes']} bytes "
              f"from {root.name}/ to {cfg.repo_id or '<repo_id>'}")
        shown = [f for f in files if not f["path"].startswith("images/")][:20]
        for f in shown:
            print(f"  {f['path']}  {f['bytes']}")
        if len(files) > len(shown):
            print(f"  ... and {len(files) - len(shown)} more (images/ and further shards)")
        return {"dry_run": True, "reason": f"no {missing}", **plan}
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
    api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(root), repo_id=cfg.repo_id, repo_type="dataset",
                               commit_message=f"Publish {cfg.name}")
    return {"dry_run": False, "commit": str(commit), **plan}
