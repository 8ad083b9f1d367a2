"""Training and evaluation outputs as the UI shows them (pipelines.core.reports): the per-step
history read back from what the trainers leave on disk, and an evaluation as tables."""

import json

from pipelines.core.reports import (
    evaluation_bars,
    evaluation_items,
    evaluation_items_markdown,
    evaluation_summary,
    grpo_history,
    series,
    sft_history,
    thin,
)


def test_grpo_history_is_the_latest_run_of_the_folder(tmp_path):
    old = [{"step": s, "loss": 9.0} for s in (1, 2, 3)]
    new = [{"step": s, "loss": 0.1 * s, "kl": 0.01 * s, "learning_rate": 1e-3} for s in (1, 2)]
    lines = [json.dumps(r) for r in old] + [json.dumps(new[0]), '{"step": 2, "lo', json.dumps(new[1])]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    records = grpo_history(tmp_path)
    assert records == new
    assert series(records, ("kl", "missing")) == {"kl": [(1, 0.01), (2, 0.02)]}
    assert grpo_history(tmp_path / "nowhere") == []


def test_sft_history_prefers_the_final_checkpoints_full_log(tmp_path):
    log = [{"step": s, "loss": 3.0 - s, "learning_rate": 5e-3, "grad_norm": 1.0} for s in (1, 2, 3)]
    (tmp_path / "metrics.json").write_text(json.dumps({"steps": 3, "losses": [[1, 2.0], [3, 0.0]]}))
    for step in (2, 10):                  # checkpoint-10 sorts after checkpoint-2 as a number
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(
        json.dumps({"global_step": 2, "log_history": log[:2]}))
    records, source = sft_history(tmp_path)
    assert source == "metrics.json (loss only)"           # no state covers step 3
    assert records == [{"step": 1, "loss": 2.0}, {"step": 3, "loss": 0.0}]
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text(
        json.dumps({"global_step": 3, "log_history": [*log, {"step": 3, "train_runtime": 1.0}]}))
    records, source = sft_history(tmp_path)
    assert source == "checkpoint-10/trainer_state.json" and records == log


def test_thin_keeps_the_ends_and_spacing():
    records = [{"step": s} for s in range(1, 1001)]
    kept = thin(records, 100)
    assert len(kept) == 100 and kept[0]["step"] == 1 and kept[-1]["step"] == 1000
    assert thin(records[:5], 100) == records[:5]


def test_evaluation_as_tables_and_bars():
    summary = {"items": 4, "accuracy": 0.5, "by_category": {"crop": 1.0, "rotate": 0.0},
               "used_code": 0.75, "executions_per_answer": 1.25, "execution_success": 0.8,
               "fell_back": 1, "errors": 0}
    direct = {**summary, "accuracy": 0.25, "by_category": {"crop": 0.5}, "used_code": 0.0}
    item = {"id": "a1", "category": "crop", "truth": "B", "given": "B", "correct": True,
            "how": "option letter", "code_blocks": 1, "code_ok": 1, "end_reason": "answer",
            "fell_back": False, "error": None}
    results = {"summaries": {"tools": summary, "direct": direct}, "items": {"tools": [item]}}
    table = evaluation_summary(results)
    assert [c for c, _ in table.columns] == ["measure", "tools", "direct"]
    rows = {r["measure"].strip(): r for r in table.rows}
    assert rows["accuracy %"] == {"measure": "accuracy %", "tools": 50.0, "direct": 25.0}
    assert rows["accuracy rotate %"]["tools"] == 0.0 and rows["accuracy rotate %"]["direct"] is None
    assert rows["executions per answer"]["tools"] == 1.25
    assert evaluation_bars(results) == (["overall", "crop", "rotate"],
                                        {"tools": [0.5, 1.0, 0.0], "direct": [0.25, 0.5, 0.0]})
    items = evaluation_items(results)
    assert items == [{k: item[k] for k in ("id", "category", "truth", "given", "correct", "how",
                                            "code_blocks", "end_reason")}]
    markdown = evaluation_items_markdown(items, {})
    assert "| - | a1 | crop | B | B | ✓ |" in markdown
