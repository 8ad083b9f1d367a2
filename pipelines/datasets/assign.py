"""Which trajectory goes to which split and part, and which samples become RL prompts (issue 5,
14, 18), as table operations over the index (`pipelines.datasets.splits` builds the rows):

    scan_index(audited_files, pool) -> (index, totals)     one pass over the audited shards
    assign(index, pool, cfg, excluded) -> (assigned, rl, funnel, unroutable)

`assigned`: trajectory id -> split, part; `rl`: sample id -> part, task; `funnel`: the counts of
each step for the report; `unroutable`: the rows (id, sample_id) without a task (null or blank),
which no split can take (the computation split, the mix and the counts are by task): the
trajectories, and with `rl_source="pool"` the RL candidates (a sample id; in the RL funnel as
`missing_task`); the stage quarantines them. Routing, the exclusions, the RL filter, the choice
of one row per near-duplicate cluster, the task mix and the held-out part are joins, group-bys
and column expressions; Python runs per row only for what must stay byte-compatible with earlier
builds: the hashed draws (`rows.unit_draw`), text-only question keys and near-duplicate detection
(`pipelines.datasets.dedup`, per question, skipped for questions alone with their image and
numbers). Rows are taken in the same order on every run, so the same inputs give the same splits.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import polars as pl

from pipelines.datasets.dedup import near_duplicate_clusters
from pipelines.datasets.names import COMPUTATION, MISSING_TASK, PARTS, RL, SINGLE, SPLITS, TWO_ROUND
from pipelines.datasets.rows import question_key, unit_draw

if TYPE_CHECKING:
    from pipelines.datasets.splits import SplitConfig

_S = pl.String


def missing_task(column: str = "task") -> pl.Expr:
    """Whether a row's task is null or blank (a pool written by other tools may hold either)."""
    return pl.col(column).str.strip_chars().fill_null("") == ""


def scan_index(audited_files: list[str], pool: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Passed trajectories joined with their samples' small columns, in shard order, and the
    totals: one streaming pass over the audited shards' small columns (the turns only for
    their code rounds)."""
    totals = {"pool_samples": pool.height, "trajectories": 0, "passed": 0}
    if not audited_files:
        return pl.DataFrame(), {**totals, "passed_with_sample": 0}
    code_rounds = (pl.col("turns").list.eval(pl.element().struct.field("code").is_not_null())
                   .list.sum().alias("code_rounds"))
    scanned = (pl.scan_parquet(audited_files)
               .select("id", "sample_id", "task", "kind", code_rounds,
                       pl.col("passed").fill_null(False).alias("passed"))
               .collect(engine="streaming"))
    index = (scanned.filter(pl.col("passed")).drop("passed")
             .join(pool, on="sample_id", how="inner", maintain_order="left"))  # reruns: same order
    totals.update(trajectories=scanned.height, passed=int(scanned["passed"].sum()),
                  passed_with_sample=index.height)
    return index, totals


def draws(purpose: str, seed: int, values: pl.Series) -> pl.Series:
    """`rows.unit_draw(purpose, seed, value)` of each value (hashing is per value in Python: the
    draws must stay what earlier builds drew)."""
    return pl.Series(values.name, [unit_draw(purpose, seed, v) for v in values], pl.Float64)


def _keys_of(frame: pl.DataFrame) -> pl.Series:
    """Each row's key: its first input image, or its text-only question's key."""
    first = frame["image_hashes"].list.first()
    text_only = frame.filter(first.is_null())["question"].unique()
    keys = pl.DataFrame({"question": text_only,
                         "qkey": [question_key(q) for q in text_only]}, schema={"question": _S, "qkey": _S})
    return (frame.select("question", first.alias("first"))
            .join(keys, on="question", how="left", nulls_equal=True, maintain_order="left")
            .select(pl.coalesce("first", "qkey").alias("key"))["key"])


def _route(index: pl.DataFrame, cfg: SplitConfig, excluded: pl.DataFrame, dropped: Counter,
           routed_counts: Counter) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The index's trajectories that go to an SFT split (column `split`), in index order, and
    those without a task (id, sample_id), which none can take."""
    rounds = pl.col("code_rounds")
    split = (pl.when(rounds > cfg.max_code_rounds).then(None)
             .when(pl.col("task") == "computation").then(pl.lit(COMPUTATION))
             .when(rounds <= 1).then(pl.lit(SINGLE)).otherwise(pl.lit(TWO_ROUND)))
    frame = (index.join(excluded, on="sample_id", how="left", maintain_order="left")
             .with_columns(split.alias("split")))
    for reason, n in frame["excluded"].drop_nulls().value_counts().iter_rows():
        dropped[reason] += n
    kept = frame.filter(pl.col("excluded").is_null()).drop("excluded")
    unroutable = kept.filter(missing_task()).select("id", "sample_id")
    kept = kept.filter(~missing_task())
    dropped["too_many_code_rounds"] += kept["split"].null_count()
    kept = kept.filter(pl.col("split").is_not_null())
    for name, n in kept["split"].value_counts().iter_rows():
        routed_counts[name] += n
    return kept, unroutable


def _rl_candidates(routed: pl.DataFrame, pool: pl.DataFrame, cfg: SplitConfig,
                   excluded: pl.DataFrame, task_of: pl.DataFrame) -> tuple[pl.DataFrame, dict, pl.DataFrame]:
    """The samples that may become RL prompts (`task`: the audit's, else the sample's), the
    counts (candidates, eligible, filtered per reason) and the candidates without a task."""
    if cfg.rl_source == "pool":
        rows = pool.join(task_of, on="sample_id", how="left", maintain_order="left")
    else:
        rows = routed.unique("sample_id", keep="first", maintain_order=True).with_columns(
            pl.col("task").alias("audited_task"))
    rows = (rows.with_columns(pl.coalesce("audited_task", "sample_task").alias("task"))
            .join(excluded, on="sample_id", how="left", maintain_order="left"))
    filtered = Counter(dict(rows["excluded"].drop_nulls().value_counts().iter_rows()))
    rows = rows.filter(pl.col("excluded").is_null()).drop("excluded")
    unroutable = rows.filter(missing_task()).select(pl.col("sample_id").alias("id"), "sample_id")
    if unroutable.height:
        filtered[MISSING_TASK] += unroutable.height
    candidates = rows.height
    rows = rows.filter(~missing_task())
    rows = rows.with_columns(cfg.rl_filter.rejections(rows).alias("reason"))
    filtered.update(dict(rows["reason"].drop_nulls().value_counts().iter_rows()))
    eligible = rows.filter(pl.col("reason").is_null()).drop("reason")
    return eligible, {"source": cfg.rl_source, "candidates": candidates, "eligible": eligible.height,
                      "filtered": dict(filtered)}, unroutable


_ROW = ("sample_id", "question", "image_hashes", "lineage_image")   # what clustering and parts read


def _clusters(routed: pl.DataFrame, eligible: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """sample_id -> cluster (the smallest sample id of its near-duplicate cluster), over the
    distinct samples of the routed rows and the RL-eligible ones."""
    samples = (pl.concat([routed.select(_ROW), eligible.select(_ROW)])
               .unique("sample_id", keep="first", maintain_order=True))
    keys = _keys_of(samples)
    clusters = near_duplicate_clusters(list(zip(samples["sample_id"], keys, samples["question"],
                                                strict=True)), threshold)
    return pl.DataFrame({"sample_id": list(clusters), "cluster": list(clusters.values())},
                        schema={"sample_id": _S, "cluster": _S})


def _choose(routed: pl.DataFrame, eligible: pl.DataFrame, clusters: pl.DataFrame, task_of: pl.DataFrame,
            cfg: SplitConfig, dropped: Counter) -> tuple[pl.DataFrame, Counter]:
    """One row per cluster: RL takes whole clusters (a deterministic share of those with SFT
    rows, every cluster with only RL-eligible samples) from their smallest eligible sample,
    else the SFT row of the highest-priority split (the cluster's own sample first, then the
    smallest id). The others are dropped as exact (same sample) or near duplicates."""
    rank = pl.col("split").replace_strict({s: k for k, s in enumerate(cfg.priority)}, return_dtype=pl.Int32)
    members = (routed.with_columns(pl.int_range(pl.len()).alias("at"))   # rows, as ids may repeat
               .join(clusters, on="sample_id", how="left")
               .with_columns(rank.alias("rank"), (pl.col("sample_id") != pl.col("cluster")).alias("other")))
    best = (members.sort("cluster", "rank", "other", "id").group_by("cluster", maintain_order=True)
            .agg(pl.first("at").alias("best_at"), pl.first("sample_id").alias("best_sample"),
                 pl.len().alias("members")))
    chances = (eligible.select("sample_id").join(clusters, on="sample_id", how="left")
               .group_by("cluster").agg(pl.min("sample_id").alias("rl_sample"), pl.len().alias("chances")))
    by_cluster = (pl.concat([best.select("cluster"), chances.select("cluster")]).unique()
                  .join(best, on="cluster", how="left").join(chances, on="cluster", how="left")
                  .with_columns(pl.col("members", "chances").fill_null(0)).sort("cluster"))
    contested = by_cluster.filter((pl.col("members") > 0) & (pl.col("chances") > 0))["cluster"]
    draw = pl.DataFrame({"cluster": contested, "draw": draws("rl", cfg.seed, contested)},
                        schema={"cluster": _S, "draw": pl.Float64})
    by_cluster = (by_cluster.join(draw, on="cluster", how="left")
                  .with_columns(((pl.col("chances") > 0) & ((pl.col("members") == 0)
                                                            | (pl.col("draw") < cfg.rl_share))).alias("to_rl"))
                  .with_columns(pl.when("to_rl").then("rl_sample").otherwise("best_sample").alias("source")))
    to_rl, to_sft = by_cluster.filter(pl.col("to_rl")), by_cluster.filter(~pl.col("to_rl"))
    counts = Counter()          # (each count present once a cluster went that way, as before)
    if to_rl.height:
        counts.update(taken=to_rl.height, duplicates=int((to_rl["chances"] - 1).sum()))
    if to_sft.height:
        counts["left_to_sft"] += int(to_sft["chances"].sum())
    # The row each cluster keeps: RL keeps its source sample's own trajectory with the smallest id
    # (not counted as dropped); SFT its best row.
    spared = (members.join(to_rl.select("cluster", "source"), on="cluster")
              .filter(pl.col("sample_id") == pl.col("source")).sort("id")
              .group_by("cluster", maintain_order=True).agg(pl.first("at").alias("spared")))
    by_cluster = by_cluster.join(spared, on="cluster", how="left").with_columns(
        pl.when("to_rl").then("spared").otherwise("best_at").alias("spared"))
    fate = members.join(by_cluster.select("cluster", "source", "spared"), on="cluster", how="left")
    lost = fate.filter((pl.col("at") != pl.col("spared")).fill_null(True))
    exact = int((lost["sample_id"] == lost["source"]).sum())
    dropped["exact_duplicate"] += exact
    dropped["near_duplicate"] += lost.height - exact

    sft = (members.join(to_sft.select(pl.col("best_at").alias("at")), on="at")
           .select("id", "sample_id", "task", "split", *_ROW[1:]))
    first = (pl.concat([routed.select(*_ROW, "sample_task"), eligible.select(*_ROW, "sample_task")])
             .unique("sample_id", keep="first", maintain_order=True))
    rl = (to_rl.select(pl.col("rl_sample").alias("sample_id"))
          .join(first, on="sample_id", how="left")
          .join(task_of, on="sample_id", how="left")
          .select(pl.col("sample_id").alias("id"), "sample_id",
                  pl.coalesce("audited_task", "sample_task").alias("task"), pl.lit(RL).alias("split"),
                  *_ROW[1:]))
    return pl.concat([sft, rl]), counts


def _components(chosen: pl.DataFrame) -> pl.DataFrame:
    """key -> the smallest key of its component: rows that share any input image (or a text-only
    question, or an augmented copy's source image) are joined, so the test part can take whole
    components. Minimum labels propagate along row-key edges until nothing changes (as many
    rounds as the longest chain of rows linked by shared keys: one or two in practice)."""
    has_image = pl.col("image_hashes").list.len().fill_null(0) > 0
    keys = pl.when(has_image).then("image_hashes").otherwise(
        pl.concat_list(pl.col("question_key")))
    with_lineage = pl.when(pl.col("lineage_image").fill_null("") != "").then(
        pl.concat_list(keys, pl.col("lineage_image"))).otherwise(keys)
    text_only = chosen.filter(~has_image)["question"].unique()
    qkeys = pl.DataFrame({"question": text_only, "question_key": [question_key(q) for q in text_only]},
                         schema={"question": _S, "question_key": _S})
    edges = (chosen.join(qkeys, on="question", how="left", nulls_equal=True)
             .select(pl.int_range(pl.len()).alias("row"), with_lineage.alias("key")).explode("key"))
    labels = edges.select("key").unique().with_columns(pl.col("key").alias("label"))
    while True:
        by_row = edges.join(labels, on="key").group_by("row").agg(pl.min("label"))
        spread = (edges.join(by_row, on="row").group_by("key").agg(pl.min("label").alias("new"))
                  .join(labels, on="key").with_columns(pl.min_horizontal("label", "new").alias("new")))
        if (spread["new"] == spread["label"]).all():
            return labels.rename({"label": "component"})
        labels = spread.select("key", pl.col("new").alias("label"))


def _mix(rows: pl.DataFrame, weights: dict[str, float] | None, seed: int) -> tuple[pl.DataFrame, Counter]:
    """Downsample over-represented tasks to the target proportions (renormalised over the listed
    tasks present); tasks the mix does not list are kept whole, weight 0 drops a task. Returns
    the kept rows and how many of each task were dropped."""
    if not weights or not rows.height:
        return rows, Counter()
    sizes = dict(rows["task"].value_counts().iter_rows())
    listed = {t: n for t, n in sizes.items() if t in weights and weights[t] > 0}
    dropped = Counter({t: n for t, n in sizes.items() if t in weights and weights[t] <= 0})
    unlisted = rows.filter(~pl.col("task").is_in(list(weights)).fill_null(False))
    if not listed:
        return unlisted, dropped
    scale = min(n / weights[t] for t, n in listed.items())
    quota = {t: min(n, max(1, round(scale * weights[t]))) for t, n in listed.items()}
    dropped.update({t: listed[t] - quota[t] for t in listed})
    drawn = rows.filter(pl.col("task").is_in(list(listed)))
    drawn = drawn.with_columns(draws("mix", seed, drawn["id"]).alias("draw"))
    kept_listed = (drawn.with_columns(pl.col("draw").rank("ordinal").over("task").alias("order"))
                   .filter(pl.col("order") <= pl.col("task").replace_strict(quota, return_dtype=pl.Int64))
                   .drop("draw", "order"))
    return pl.concat([unlisted, kept_listed]), dropped


def assign(index: pl.DataFrame, pool: pl.DataFrame, cfg: SplitConfig,
           excluded: dict[str, str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict, pl.DataFrame]:
    """(assigned: id, sample_id, split, part of each SFT row; rl: sample_id, part, task of each RL prompt;
    funnel counts of each step; unroutable: id, sample_id of each row without a task).
    `excluded`: sample id -> why decontamination keeps it out (`decontaminated`, or
    `unreadable_image`: it could not be checked)."""
    excluded = excluded or {}
    reasons = pl.DataFrame({"sample_id": list(excluded), "excluded": list(excluded.values())},
                           schema={"sample_id": _S, "excluded": _S})
    dropped, routed_counts = Counter(), Counter()
    no_task = pl.DataFrame(schema={"id": _S, "sample_id": _S})
    routed, no_task = (_route(index, cfg, reasons, dropped, routed_counts) if index.height
                       else (pool.clear().with_columns(*(pl.lit(None, t).alias(c) for c, t in
                                                         (("id", _S), ("task", _S), ("split", _S)))),
                             no_task))
    task_of = (routed.unique("sample_id", keep="first", maintain_order=True)
               .select("sample_id", pl.col("task").alias("audited_task")))
    eligible, rl_counts, no_rl_task = _rl_candidates(routed, pool, cfg, reasons, task_of)
    clusters = _clusters(routed, eligible, cfg.near_dup_threshold)
    chosen, taken = _choose(routed, eligible, clusters, task_of, cfg, dropped)

    components = _components(chosen)
    kept = []
    for split in SPLITS:
        rows, mix_dropped = _mix(chosen.filter(pl.col("split") == split), cfg.mix.get(split), cfg.seed)
        for task, n in mix_dropped.items():
            dropped[f"mix:{split}:{task}"] += n
        kept.append(rows)
    kept = pl.concat(kept)
    kept = kept.with_columns(_keys_of(kept).alias("key"))
    kept = kept.join(components, on="key", how="left", maintain_order="left")
    roots = kept["component"].unique()
    parts = pl.DataFrame({"component": roots, "draw": draws("test", cfg.seed, roots)},
                         schema={"component": _S, "draw": pl.Float64})
    kept = kept.join(parts, on="component", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("draw") < cfg.test_share).then(pl.lit("test")).otherwise(pl.lit("train")).alias("part"))

    counts = {s: {p: {} for p in PARTS} for s in SPLITS}
    for split, part, task, n in kept.group_by("split", "part", "task").len().iter_rows():
        counts[split][part][task] = n
    funnel = {"routed": dict(routed_counts), "dropped": {k: v for k, v in dropped.items() if v},
              "splits": counts, "rl_prompts": {**rl_counts, **taken}}
    assigned = kept.filter(pl.col("split") != RL).select("id", "sample_id", "split", "part")
    rl = kept.filter(pl.col("split") == RL).select("sample_id", "part", "task")
    return assigned, rl, funnel, pl.concat([no_task, no_rl_task])
