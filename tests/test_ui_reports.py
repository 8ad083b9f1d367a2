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
    def summary(overall, crop, used):
        return {"items": 4, "samples": 1, "metrics": {
            "overall": {"avg": overall, "ci": [overall - 0.1, overall + 0.1], "pass": overall},
            "crop": {"avg": crop, "ci": [0.0, 1.0], "pass": crop}},
            "tool_use": {"used_code": used, "executions_per_answer": 1.25, "execution_success": 0.8,
                         "fell_back": 1, "errors": 0}}
    record = {"mode": "tools", "sample": 0, "id": "a1", "category": "crop", "truth": "B",
              "given": "B", "correct": True, "how": "option letter", "code_calls": 1,
              "end_reason": "answer"}
    results = {"summaries": {"tools": summary(0.5, 1.0, 0.75), "direct": summary(0.25, 0.5, 0.0)},
               "items": [record, {**record, "mode": "direct", "code_calls": 0},
                         {**record, "sample": 1}]}
    table = evaluation_summary(results)
    assert [c for c, _ in table.columns] == ["measure", "tools", "direct"]
    rows = {r["measure"]: r for r in table.rows}
    assert rows["overall %"] == {"measure": "overall %", "tools": 50.0, "direct": 25.0}
    assert rows["overall 95% CI low"]["tools"] == 40.0 and rows["crop %"]["direct"] == 50.0
    assert rows["executions per answer"]["tools"] == 1.25 and rows["used code %"]["direct"] == 0.0
    assert evaluation_bars(results) == (["overall", "crop"],
                                        {"tools": [0.5, 1.0], "direct": [0.25, 0.5]})
    items = evaluation_items(results)          # tools, first sample only
    assert items == [{"id": "a1", "category": "crop", "truth": "B", "given": "B", "correct": True,
                      "how": "option letter", "end_reason": "answer", "code_blocks": 1}]
    markdown = evaluation_items_markdown(items, {})
    assert "| - | a1 | crop | B | B | ✓ |" in markdown
