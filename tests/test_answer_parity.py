"""The parity table (tests/data/answer_parity.jsonl, summarised in docs/answers.md): a few hundred
(given, truth) pairs — the issue's pairs, math-verify's own documented cases, answers in the
released Thyme-RL solution style, option letters, units, prose and hostile answers — each with a
careful reader's verdict (`reader`), the cascade's (`ours`, `decisive`, `how`) and math-verify's
as its README shows it called (`math_verify`). Every row where ours differs from math-verify or
from the reader carries the reason we keep (`why`).

A change in the cascade or a math-verify upgrade that flips any verdict fails here, row by row:
review it, then update the row (and its reason) on purpose."""

import json
import logging
from pathlib import Path

import pytest

from pipelines.core.answers import score_answer
from pipelines.core.mathverify import reference_verify

TABLE = Path(__file__).parent / "data" / "answer_parity.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text().splitlines() if line.strip()]


def _id(row: dict) -> str:
    return f"{row['group']}:{row['given'][:30]}|{row['truth'][:20]}"


def test_the_table_is_a_few_hundred_distinct_pairs_with_reasons_for_every_disagreement():
    assert len(ROWS) >= 300
    keys = [(r["given"], r["truth"], json.dumps(r.get("options"), sort_keys=True)) for r in ROWS]
    assert len(set(keys)) == len(keys), "duplicate pairs"
    assert {r["group"] for r in ROWS} >= {"issue", "math-verify tests", "thyme-rl style",
                                          "option letters", "units", "prose and hostile"}
    for r in ROWS:
        disagrees = r["ours"] != r["math_verify"] or r["ours"] != r["reader"]
        assert bool(r.get("why")) == disagrees, r


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_our_verdict(row):
    v = score_answer(f"<answer>{row['given']}</answer>", row["truth"], row.get("options"))
    assert (v.correct, v.decisive, v.how) == (row["ours"], row["decisive"], row["how"]), v


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_math_verify_verdict(row):
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    assert reference_verify(row["given"], row["truth"]) == row["math_verify"]


def test_agreement_figures_in_the_docs_hold():
    """docs/answers.md quotes these counts; they move only with the table."""
    agree_mv = sum(r["ours"] == r["math_verify"] for r in ROWS)
    agree_reader = sum(r["ours"] == r["reader"] for r in ROWS)
    mv_reader = sum(r["math_verify"] == r["reader"] for r in ROWS)
    doc = (Path(__file__).parent.parent / "docs" / "answers.md").read_text()
    assert f"| {len(ROWS)} pairs | {agree_mv} | {agree_reader} | {mv_reader} |" in doc
