"""Which samples may become RL prompts (issue 14): a question, a ground truth the reward can check,
and every input image, filtered by what the user sets. Both routes to the RL split use it: prompts
drawn from samples with an audit-passing trajectory (`rl_source="audited"`, the default for the
generated pool) and prompts taken straight from the pool (`rl_source="pool"`: a released Thyme-RL
or DeepEyes pool, a generic pool with an answer column, the generated pool) without a teacher.

    RLFilter(...).rejections(rows) -> reason per row (null: eligible)   rows: `pool_index` columns
    pool_index(sample_files) -> polars DataFrame        the small columns the filter reads

Reasons (counted per reason in the split report): `no_question`, `no_answer`, `answer:<kind>`
(a ground truth of a kind the user did not allow, `pipelines.core.answers.truth_kind`),
`no_image`, `image_side` (an input smaller than the minimum side), `task`, `difficulty`; a
candidate without a task is counted as `missing_task` and quarantined (`pipelines.datasets.assign`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from pipelines.core.answers import TRUTH_KINDS, truth_kind

# Every kind the rules decide, plus short texts (right when the normalised text matches; a
# differently worded right answer is scored by the judge, or 0 without one). Open prose and
# empty truths are left out: only a judge could score them.
DEFAULT_ANSWER_KINDS = ("option", "yes_no", "number", "math", "short_text")


@dataclass(frozen=True)
class RLFilter:
    answer_kinds: tuple[str, ...] = DEFAULT_ANSWER_KINDS
    require_image: bool = True        # prompts need an input image (Thyme-RL has one per prompt)
    min_image_side: int = 0           # px: every input's shorter side at least this (0: any)
    tasks: tuple[str, ...] = ()       # empty: every task
    difficulties: tuple[str, ...] = ()  # empty: every difficulty; else a known difficulty must
                                        # be listed (samples without one are kept)

    def __post_init__(self):
        unknown = set(self.answer_kinds) - set(TRUTH_KINDS)
        if unknown:
            raise ValueError(f"unknown answer kinds {sorted(unknown)}; kinds are {TRUTH_KINDS}")
        if self.min_image_side < 0:
            raise ValueError(f"min_image_side must be >= 0 (got {self.min_image_side})")

    def rejections(self, rows: pl.DataFrame) -> pl.Series:
        """Why each sample cannot be an RL prompt (`reason`, null when it can), as column
        expressions over `pool_index` columns (`task`: the task it is filed under). The first
        failing rule names the reason; only the answer kind is decided in Python, once per
        distinct (answer, options)."""
        if not rows.height:
            return pl.Series("reason", [], pl.String)
        has_question, has_answer = _has_text("question"), _has_text("answer")
        checked = rows.filter(has_question & has_answer).select("answer", "options").unique()
        kinds = checked.with_columns(pl.Series("kind", [
            truth_kind(answer, _options(options)) for answer, options in checked.iter_rows()],
            pl.String))
        images = pl.col("image_hashes").list.len().fill_null(0)
        difficulty = pl.col("difficulty")
        reason = (pl.when(~has_question).then(pl.lit("no_question"))
                  .when(~has_answer).then(pl.lit("no_answer"))
                  .when(~pl.col("kind").is_in(self.answer_kinds)).then(pl.lit("answer:") + pl.col("kind"))
                  .when((images == 0) & self.require_image).then(pl.lit("no_image"))
                  .when((images > 0) & (pl.col("min_side").fill_null(0) < self.min_image_side))
                  .then(pl.lit("image_side"))
                  .when(pl.lit(bool(self.tasks)) & ~pl.col("task").is_in(self.tasks).fill_null(False))
                  .then(pl.lit("task"))
                  .when(pl.lit(bool(self.difficulties)) & difficulty.is_not_null() & (difficulty != "")
                        & ~difficulty.is_in(self.difficulties)).then(pl.lit("difficulty")))
        return (rows.select("question", "answer", "options", "image_hashes", "min_side", "task", "difficulty")
                .join(kinds, on=["answer", "options"], how="left", nulls_equal=True, maintain_order="left")
                .select(reason.alias("reason"))["reason"])


# Python's str.strip() whitespace: Unicode White_Space (the regex engine's \s) plus \x1c-\x1f.
_PY_SPACE = r"\s\x1c-\x1f"


def _has_text(column: str) -> pl.Expr:
    """Whether the column holds more than whitespace (a null holds nothing)."""
    return pl.col(column).str.contains(f"[^{_PY_SPACE}]").fill_null(False)


def _options(raw) -> list[str] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def pool_index(sample_files: list[str]) -> pl.DataFrame:
    """The pool's samples in the columns splitting reads (lazy scan, streaming): id, question,
    answer, task, input image hashes and store paths, the smallest input side, options and difficulty (from
    `meta`, or a DeepEyes row's `extra_info`), an augmented copy's source image, origin."""
    side = pl.min_horizontal(pl.element().struct.field("width"), pl.element().struct.field("height"))
    h = pl.element().struct.field("hash")
    relpath = pl.format("{}/{}.{}", h.str.slice(0, 2), h, pl.element().struct.field("ext"))  # ImageRef.relpath
    return (pl.scan_parquet(sample_files)
            .unique("id", keep="first", maintain_order=True)
            .select(pl.col("id").alias("sample_id"), "question", "answer",
                    pl.col("task").alias("sample_task"),
                    pl.col("images").list.eval(pl.element().struct.field("hash")).alias("image_hashes"),
                    pl.col("images").list.eval(relpath).alias("image_paths"),
                    pl.col("images").list.eval(side).list.min().alias("min_side"),
                    pl.col("meta").str.json_path_match("$.options").alias("options"),
                    pl.coalesce(pl.col("meta").str.json_path_match("$.difficulty"),
                                pl.col("meta").str.json_path_match("$.extra_info.difficulty"))
                    .alias("difficulty"),
                    pl.col("meta").str.json_path_match("$.lineage.image").alias("lineage_image"),
                    pl.col("origin").struct.field("file").alias("origin_file"),
                    pl.col("origin").struct.field("row").alias("origin_row"))
            .collect(engine="streaming"))
