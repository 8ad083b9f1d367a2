"""Splits (pipelines.datasets.splits) on a real audited corpus, and every validation check
(pipelines.datasets.validate) failing on a crafted bad row."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
import thyme_corpus

from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, parse_user, render_user
from pipelines.datasets import validate as v
from pipelines.datasets.names import (
    COMPUTATION,
    PARTS,
    RL,
    SFT_ROW_CHECKS,
    SINGLE,
    SPLITS,
    TWO_ROUND,
)
from pipelines.datasets.paths import dataset_path, find_absolute_paths, rewrite_trajectory
from pipelines.datasets.splits import (
    PAPER_MIX,
    SplitConfig,
    build_splits,
    iter_split,
    near_duplicate_clusters,
    validate_splits,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return thyme_corpus.corpus(tmp_path_factory)


def _rows(out, split, part=None):
    parts = PARTS if part is None else (part,)
    return [r for p in parts for batch in iter_split(out, split, p) for r in batch]


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    root, info = corpus
    out = tmp_path_factory.mktemp("splits") / "splits"
    report = build_splits(*thyme_corpus.files(root), out, SplitConfig(test_share=0.25, rl_share=0.2))
    return out, report, root, info


def test_rows_are_renderings_of_their_trajectories(built):
    out, report, root, info = built
    checked = 0
    for split in (SINGLE, TWO_ROUND, COMPUTATION):
        for row in _rows(out, split):
            traj, sample = info["trajectories"][row["id"]], info["samples"][row["sample_id"]]
            path = dataset_path(sample.images[0].relpath) if sample.images else None
            size = (sample.images[0].width, sample.images[0].height) if sample.images else None
            assert row["question"] == render_user(sample.question, path, size)
            assert row["response"] == rewrite_trajectory(traj, path).render()
            produced = [dataset_path(p) for t in traj.code_turns for p in t.result.images]
            assert row["images"] == ([path] if path else []) + produced
            assert row["has_image"] == bool(path)
            checked += 1
    assert checked == sum(report["rows"][s][p] for s in (SINGLE, TWO_ROUND, COMPUTATION) for p in PARTS)


def test_routing_by_rounds_and_task(built):
    out, report, *_ = built
    single, two, comp = _rows(out, SINGLE), _rows(out, TWO_ROUND), _rows(out, COMPUTATION)
    assert single and two and comp
    assert all(r["response"].count("<code>") <= 1 and r["task"] != "computation" for r in single)
    assert all(r["response"].count("<code>") == 2 for r in two)
    assert {r["kind"] for r in two} <= {"further_enhancement", "error_correction"}
    assert {r["task"] for r in comp} == {"computation"}
    assert {r["has_image"] for r in comp} == {True, False}   # charts/tables and word problems
    assert any(r["kind"] == "direct" for r in single)        # no-code rows
    # The single-round mix follows the paper's proportions over the tasks present.
    counts = Counter(r["task"] for r in single)
    weights = {t: PAPER_MIX[t] for t in counts}
    for task, n in counts.items():
        assert abs(n / len(single) - weights[task] / sum(weights.values())) <= 0.05, counts


def test_rl_prompts_name_their_image(built):
    out, _, root, info = built
    rows = _rows(out, RL)
    assert rows
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["system", "user"]
        assert r["messages"][0]["content"] == DEFAULT_SYSTEM_PROMPT
        assert parse_user(r["messages"][1]["content"])[1]["original_path"] == r["images"][0]
        assert (root / "pool" / "images" / r["images"][0].removeprefix("images/")).is_file()
        sample = info["samples"][r["id"]]
        assert r["solution"] == sample.answer and r["question"] == sample.question
        assert json.loads(r["meta"]) == sample.meta
    # A sample is either an RL prompt or SFT data, never both.
    sft_samples = {r["sample_id"] for s in (SINGLE, TWO_ROUND, COMPUTATION) for r in _rows(out, s)}
    assert not sft_samples & {r["id"] for r in rows}


def test_duplicates_removed_across_splits(corpus, tmp_path):
    root, info = corpus
    out = tmp_path / "splits"
    report = build_splits(*thyme_corpus.files(root), out, SplitConfig(mix={}, rl_share=0.0))
    dup = info["duplicates"]
    assert len(set(dup.values())) == 3
    ids = [r["id"] for s in (SINGLE, TWO_ROUND, COMPUTATION) for r in _rows(out, s)]
    assert len(ids) == len(set(ids))
    kept = [t for t in dup.values() if t in ids]
    assert len(kept) == 1   # one row left of the original, its copy and its near twin
    assert report["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}


def test_test_part_shares_no_image_with_train(built):
    out, report, *_ = built
    keys = {p: {r["image_key"] for s in SPLITS for r in _rows(out, s, p)} for p in PARTS}
    assert keys["test"] and keys["train"]
    assert not keys["test"] & keys["train"]


def test_built_splits_pass_every_validation(built):
    out, _, root, _ = built
    reports = validate_splits(out, root / "pool" / "images")
    for split, rep in reports.items():
        assert rep.ok, (split, {k: [f.reason for f in fs] for k, fs in rep.failures.items() if fs})


def test_config_controls_mix_and_rl_share(corpus, tmp_path):
    root, _ = corpus
    everything = build_splits(*thyme_corpus.files(root), tmp_path / "a",
                              SplitConfig(mix={}, rl_share=0.0, test_share=0.0))
    assert everything["rows"][RL] == {"train": 0, "test": 0}
    assert not any(k.startswith("mix:") for k in everything["dropped"])
    assert sum(everything["rows"][s]["train"] for s in SPLITS) == everything["passed"] - sum(
        everything["dropped"].values())
    all_rl = build_splits(*thyme_corpus.files(root), tmp_path / "b", SplitConfig(mix={}, rl_share=1.0))
    assert sum(all_rl["rows"][RL].values()) > 0
    assert all_rl["rows"][SINGLE] == {"train": 0, "test": 0} or all(
        r["task"] == "no_code" for r in _rows(tmp_path / "b", SINGLE))
    with pytest.raises(ValueError, match="test_share"):
        SplitConfig(test_share=1.5)


def test_near_duplicate_clusters():
    items = [("a", "img1", "What colour is the sign above the door?"),
             ("b", "img1", "what colour is the sign above the door"),      # same, re-punctuated
             ("c", "img2", "What colour is the sign above the door?"),     # another image
             ("d", "img1", "What colour is the car parked near the door?"),  # another question
             ("e", "", "A shop sells 12 apples at 3 dollars each. What is the total cost?"),
             ("f", "", "A shop sells 15 apples at 4 dollars each. What is the total cost?")]
    clusters = near_duplicate_clusters(items, 0.8)
    assert clusters["b"] == clusters["a"] == "a"
    assert len({clusters[k] for k in "acdef"}) == 5   # different image, question or numbers


def test_the_same_question_asked_many_times_is_clustered_without_comparing_each_pair(monkeypatch):
    """A pool that asks one text-only question 3,000 times: one cluster (rooted at the smallest
    id), and the question's 5-grams are worked out for distinct texts only (each pair was
    compared before: quadratic in the copies)."""
    from pipelines.datasets import dedup

    grams = []
    real = dedup._grams
    monkeypatch.setattr(dedup, "_grams", lambda text, n=5: grams.append(text) or real(text, n))
    asked = "A shop sells apples at a fixed price each. What is the total cost of a dozen?"
    items = [(f"s{i:05d}", "q", asked) for i in range(3000)] + \
        [("t0", "q", asked.replace("a dozen", "one dozen")), ("u0", "q", "Which is the tallest tree in the park?")]
    clusters = near_duplicate_clusters(items, 0.8)
    assert {clusters[f"s{i:05d}"] for i in range(3000)} == {"s00000"} == {clusters["t0"]}
    assert clusters["u0"] == "u0"
    assert len(grams) <= 3 * 2          # a signature and a confirmed pair per distinct text at most


# ------------------------------------------------------------------ each check on a bad row


def _good_sft(tmp_path) -> tuple[dict, object]:
    from PIL import Image
    (tmp_path / "images" / "ab").mkdir(parents=True)
    Image.new("RGB", (64, 48), "white").save(tmp_path / "images" / "ab" / "in.png")
    Image.new("RGB", (32, 32), "white").save(tmp_path / "images" / "ab" / "out.png")
    row = {"id": "r1", "has_image": True, "images": ["images/ab/in.png", "images/ab/out.png"],
           "question": render_user("What is shown?", "images/ab/in.png", (64, 48)),
           "response": ("<think>Zoom in.<code>\n```python\nprint(1)\n```\n</code>"
                        "<sandbox_output><image></sandbox_output>A cat.</think> <answer>cat</answer>")}
    return row, (lambda p: tmp_path / p)


BAD_SFT = {
    "balanced_tags": lambda r: {**r, "response": r["response"].replace("</code>", "", 1)},
    "one_answer": lambda r: {**r, "response": r["response"].replace("</think>", "<answer>x</answer></think>")},
    "think_answer_format": lambda r: {**r, "response": r["response"].replace("</think> <answer>", "</think>\n\n<answer>")},
    "image_count": lambda r: {**r, "images": r["images"][:1]},
    "images_exist": lambda r: {**r, "images": [r["images"][0], "images/ab/missing.png"]},
    "no_absolute_paths": lambda r: {**r, "response": r["response"].replace("print(1)", "open('/home/alice/x.jpg')")},
    "no_empty_code": lambda r: {**r, "response": r["response"].replace("print(1)", "# nothing")},
}


@pytest.mark.parametrize("check", SFT_ROW_CHECKS)
def test_each_sft_check_fails_on_a_bad_row(check, tmp_path):
    row, resolve = _good_sft(tmp_path)
    cfg = v.ValidationConfig()
    assert v.validate_sft_rows([row], resolve, cfg) == []
    failures = v.validate_sft_rows([BAD_SFT[check](row)], resolve, cfg)
    assert {f.check for f in failures} == {check}, failures
    assert all(f.row_id == "r1" and f.reason for f in failures)


def test_pixel_budget_and_user_image_path(tmp_path):
    row, resolve = _good_sft(tmp_path)
    (f,) = v.check_images_exist([row], resolve, max_pixels=2000)
    assert "over the pixel budget" in f.reason and f.row_id == "r1"
    moved = {**row, "question": row["question"].replace("images/ab/in.png", "images/ab/other.png")}
    (f,) = v.check_no_absolute_paths([moved])
    assert "is not the first image" in f.reason


def test_rl_checks_fail_on_bad_rows(tmp_path):
    row, resolve = _good_sft(tmp_path)
    rl = {"id": "p1", "has_image": True, "images": row["images"][:1], "solution": "cat",
          "messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                       {"role": "user", "content": row["question"]}]}
    cfg = v.ValidationConfig()
    assert v.validate_rl_rows([rl], resolve, cfg) == []
    bad = [{**rl, "messages": rl["messages"][1:]}, {**rl, "solution": " "},
           {**rl, "messages": [{"role": "system", "content": "other"}, rl["messages"][1]]}]
    for b in bad:
        assert [f.check for f in v.validate_rl_rows([b], resolve, cfg)] == ["rl_prompt"]


def test_split_level_checks():
    cfg = v.ValidationConfig(mix_tolerance=0.05, min_rows=2)
    targets = {SINGLE: {"crop": 1, "no_code": 1}}
    assert v.check_split_sizes_and_mix({SINGLE: {"crop": 5, "no_code": 5}}, targets, cfg) == []
    (f,) = v.check_split_sizes_and_mix({TWO_ROUND: {"crop": 1}}, targets, cfg)
    assert f.row_id == TWO_ROUND and "1 rows < 2" in f.reason
    failures = v.check_split_sizes_and_mix({SINGLE: {"crop": 8, "no_code": 2}}, targets, cfg)
    assert {f.reason.split(":")[0] for f in failures} == {"crop", "no_code"}
    assert v.check_no_train_test_overlap({"a": "k1"}, {"b": "k2"}) == []
    (f,) = v.check_no_train_test_overlap({"a": "k1"}, {"b": "k1", "c": "k3"})
    assert f.row_id == "b"


def test_absolute_path_detection():
    assert find_absolute_paths("see /home/alice/data/x.jpg and C:\\Users\\bob\\y.png") == [
        "/home/alice/data/x.jpg", "C:\\Users\\bob\\y.png"]
    harmless = ("</think> <answer>3/4</answer> https://example.com/a/b.png km/h and/or "
                "/mnt/data/temp_processed_images/x_1.jpg images/ab/c.jpg")
    assert find_absolute_paths(harmless) == []


def test_rewrite_trajectory_literals(built):
    _, _, _, info = built
    traj = next(t for t in info["trajectories"].values() if t.code_turns)
    turns = [replace(t, code=f'image_path = "/home/alice/thyme/in.jpg"\n{t.code}') if t.code else t
             for t in traj.turns]
    out = rewrite_trajectory(replace(traj, turns=turns), "images/ab/in.jpg")
    assert 'image_path = "images/ab/in.jpg"' in out.render()
    assert not find_absolute_paths(out.render())
