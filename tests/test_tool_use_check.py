"""The tool-use learning check's data (benchmarks/tool_use_data.py): the project's pipeline on an
arithmetic-only pool gives SFT rows whose answer is the sandbox's printed result, held-out
questions no SFT row or GRPO prompt has, a rebuild that reuses what is built, and the control's
rows answered without code; and the check's first-vs-last comparison."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import tool_use_check  # noqa: E402
import tool_use_data  # noqa: E402

from pipelines.core import published  # noqa: E402
from pipelines.core.answers import extract  # noqa: E402


def _rows(folder: str, split: str) -> list[dict]:
    return [row for _, row in published.iter_rows(published.split_files(folder, split))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tool_use") / "data"
    return folder, tool_use_data.build(folder, count=80, seed=1, workers=1)


def test_every_trajectory_passes_and_lands_in_a_split(built):
    _, report = built
    assert report["samples"] == report["trajectories"] == report["passed_audit"] == 80
    assert report["failed_checks"] == {}
    assert report["validation"]["computation"] == {} and report["validation"]["rl"] == {}
    sft, rl = report["published"]["sft"], report["published"]["rl"]
    assert sft["computation"] > 0 and rl["train"] > 0 and rl["test"] > 0


def test_sft_rows_answer_with_the_sandbox_output(built):
    _, report = built
    for row in _rows(report["sft"], "computation"):
        printed = re.findall(r"<sandbox_output>(.*?)</sandbox_output>", row["response"], re.S)
        assert "<code>" in row["response"] and printed, row["id"]
        assert extract(row["response"]).text == printed[-1].strip(), row["id"]


def test_held_out_questions_are_unseen_in_training(built):
    _, report = built
    sft_questions = {r["question"].split("\n")[0] for r in _rows(report["sft"], "computation")}
    rl_train = {r["question"] for r in _rows(report["rl"], "train")}
    held_out = {r["question"] for r in _rows(report["rl"], "test")}
    assert held_out and not held_out & sft_questions and not held_out & rl_train


def test_a_rebuild_with_the_same_settings_reuses_the_build(built):
    folder, report = built
    stamp = (folder / tool_use_data.MARKER).stat().st_mtime_ns
    assert tool_use_data.build(folder, count=80, seed=1, workers=1) == report
    assert (folder / tool_use_data.MARKER).stat().st_mtime_ns == stamp


def test_the_short_prompt_set_and_small_task_reach_the_published_rows(tmp_path):
    """`--prompt-set benchmarks/tool_use_prompts.yaml --task arithmetic_small`: the rows carry
    the short set's prompts (what SFT and the evaluation render them with), and a build with other
    settings is not mistaken for it."""
    import json

    from pipelines.core.prompts import load_prompt_set

    spec = "benchmarks/tool_use_prompts.yaml"
    prompts = load_prompt_set(str(Path(tool_use_check.ROOT) / spec))
    report = tool_use_data.build(tmp_path, count=40, seed=2, workers=1, prompt_set=spec,
                                 task="arithmetic_small")
    assert report["config"]["prompt_set"] == spec and report["passed_audit"] == 40
    for row in _rows(report["sft"], "computation"):
        assert "Output Format" not in row["question"]               # the raw question
        assert max(len(n) for n in re.findall(r"\d+", row["question"])) <= 3
    for row in _rows(report["rl"], "test"):
        system, user = json.loads(row["messages"]) if isinstance(row["messages"], str) \
            else row["messages"]
        assert system["content"] == prompts.system and user["content"] == row["question"]
    again = tool_use_data.build(tmp_path, count=40, seed=2, workers=1, prompt_set=spec)
    assert again["config"]["mix"] == [["arithmetic", 1]]          # rebuilt, not reused


def test_control_rows_answer_without_code(built, tmp_path):
    _, report = built
    original = {r["id"]: r for r in _rows(report["sft"], "computation")}
    out = tool_use_data.direct_rows(Path(report["sft"]), tmp_path / "direct.parquet")
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len(original)
    for row in rows:
        assert "<code>" not in row["response"] and "sandbox_output" not in row["response"]
        assert extract(row["response"]).text == extract(original[row["id"]]["response"]).text
        assert row["question"] == original[row["id"]]["question"]


def test_compare_needs_a_rise_beyond_noise():
    flat = tool_use_check.compare([0.2, 0.3, 0.2, 0.3, 0.25, 0.25], k=3, min_rise=0.1)
    assert not flat["rose"]
    rising = tool_use_check.compare([0.1, 0.15, 0.1, 0.6, 0.65, 0.6], k=3, min_rise=0.1)
    assert rising["rose"] and rising["rise"] == pytest.approx(0.5)
    noisy = tool_use_check.compare([0.0, 0.5, 0.0, 1.0, 0.2, 1.0], k=3, min_rise=0.1)
    assert not noisy["rose"]                       # a rise within two standard errors


def test_grpo_is_judged_against_the_no_update_run_on_the_same_steps():
    """Both runs draw the same prompts step by step: the paired difference is the learning,
    while the prompts' own difficulty (which moves both) cancels."""
    frozen = [0.4, 0.1, 0.5, 0.0, 0.3, 0.2]
    learned = tool_use_check.paired([f + 0.2 for f in frozen], frozen, k=4, min_rise=0.1)
    assert learned["rose"] and learned["rise"] == pytest.approx(0.2)
    # the same runs judged first-vs-last would see nothing: the late prompts are harder
    assert not tool_use_check.compare([f + 0.2 for f in frozen], k=3, min_rise=0.1)["rose"]
    noisy = tool_use_check.paired([0.9, 0.0, 0.9, 0.0], [0.0, 0.5, 0.0, 0.5], k=4, min_rise=0.1)
    assert not noisy["rose"]                       # a mean difference within two standard errors
    assert not tool_use_check.paired(frozen, frozen, k=4, min_rise=0.1)["rose"]


def test_the_demo_settings_leave_the_full_check_unchanged():
    """`demo` has its own defaults (one seed, batch 32, 300 steps, data/demo/); `sft` keeps
    the check's (argparse parents would share the actions, so one set_defaults changed both)."""
    sft, demo = tool_use_check.parse_args(["sft"]), tool_use_check.parse_args(["demo"])
    assert (sft.seeds, sft.batch, sft.sft_steps, sft.min_tools) == ([0, 1, 2], 8, 600, 0.8)
    assert (demo.seeds, demo.batch, demo.sft_steps, demo.control) == ([0], 32, 300, False)
    assert Path(demo.work).parts[-2:] == ("demo", "tool_use")
    assert tool_use_check.parse_args(["demo", "--sft-steps", "400"]).sft_steps == 400


def test_the_check_reads_the_evaluation_summaries():
    """A mode of `thyme_train.evaluate`'s results.json (the layout a real run wrote on
    2026-12-07, under OUT/<benchmark folder name>/) gives the check its figures."""
    mode = {"items": 16, "metrics": {"overall": {"avg": 0.25, "ci": [0.1, 0.4]}},
            "tool_use": {"used_code": 1.0, "executions_per_answer": 1.25, "execution_success": 0.6,
                         "fell_back": 4, "end_reasons": {"answer": 12, "repetition": 4}}}
    assert tool_use_check._summary(mode) == {
        "items": 16, "accuracy": 0.25, "used_code": 1.0, "executions_per_answer": 1.25,
        "execution_success": 0.6, "fell_back": 4, "end_reasons": {"answer": 12, "repetition": 4}}
    with pytest.raises(KeyError):
        tool_use_check._summary({"items": 1, "accuracy": 0.5})    # the old layout: refused loudly


def test_the_fixed_task_and_wording_put_every_number_at_the_same_place(tmp_path):
    """`--task arithmetic_fixed --wording fixed`: one question shape with six-digit products, and
    responses that differ only in the digits, so each copied number sits at a constant offset
    (what lets the tiny model learn the copy); the audit passes them all and the teacher that
    wrote them is named apart from the varied one."""
    report = tool_use_data.build(tmp_path, count=40, seed=3, workers=1, task="arithmetic_fixed",
                                 wording="fixed")
    assert report["passed_audit"] == report["samples"] == 40
    assert report["config"]["wording"] == "fixed"
    rows = _rows(report["sft"], "computation")
    shapes = {re.sub(r"\d", "9", r["question"].split("\n")[0]) for r in rows}
    assert shapes == {"What is 999 × 999?"}
    assert {re.sub(r"\d", "9", r["response"]) for r in rows} \
        == {re.sub(r"\d", "9", rows[0]["response"])}
    assert all(len(extract(r["response"]).text) == 6 for r in rows)
    from pipelines.samples.teachers import TemplateTeacher
    assert TemplateTeacher(wording="fixed").name != TemplateTeacher().name
    with pytest.raises(ValueError, match="wording"):
        TemplateTeacher(wording="terse")


def test_a_finished_grpo_run_is_kept_and_another_setting_starts_afresh(tmp_path, monkeypatch):
    """The no-update run (lr 0) does not depend on --lr: a re-run with another learning rate
    keeps it and trains only the run with updates; an unfinished run starts afresh."""
    ran = []

    def fake_run(cmd, log_file, threads):
        out = Path(next(c for c in cmd if c.startswith("output_dir=")).split("=", 1)[1])
        (out / "checkpoint-3").mkdir(parents=True)
        ran.append(out.name)
        return 1.5

    monkeypatch.setattr(tool_use_check, "_run", fake_run)
    args = tool_use_check.parse_args(["grpo", "--steps", "3"])
    model, rl = tmp_path / "model", tmp_path / "rl"
    for lr in (2e-4, 0.0):
        tool_use_check.grpo(model, rl, tmp_path / f"grpo_lr{lr:g}", args, 0, lr, 1)
    assert ran == ["grpo_lr0.0002", "grpo_lr0"]
    (tmp_path / "grpo_lr0" / "heldout").mkdir()               # its evaluation, kept with it
    for lr in (1e-4, 0.0):                                     # another --lr
        assert tool_use_check.grpo(model, rl, tmp_path / f"grpo_lr{lr:g}", args, 0, lr, 1) == 1.5
    assert ran == ["grpo_lr0.0002", "grpo_lr0", "grpo_lr0.0001"]
    assert (tmp_path / "grpo_lr0" / "heldout").is_dir()
    shutil.rmtree(tmp_path / "grpo_lr0.0001" / "checkpoint-3")  # interrupted: afresh
    (tmp_path / "grpo_lr0.0001" / "stale").mkdir()
    tool_use_check.grpo(model, rl, tmp_path / "grpo_lr0.0001", args, 0, 1e-4, 1)
    assert ran[-1] == "grpo_lr0.0001" and not (tmp_path / "grpo_lr0.0001" / "stale").exists()
    other = tool_use_check.parse_args(["grpo", "--steps", "3", "--beta", "0.0"])
    tool_use_check.grpo(model, rl, tmp_path / "grpo_lr0", other, 0, 0.0, 1)   # other settings
    assert ran[-1] == "grpo_lr0" and not (tmp_path / "grpo_lr0" / "heldout").exists()


def test_grpo_is_judged_on_the_held_out_items_both_policies_answered(tmp_path):
    """Per item (thyme_train.evaluate's records): the items only one policy gets right must
    favour the updates beyond chance (exact McNemar); ties and noise do not pass."""
    assert tool_use_check.mcnemar(6, 0) == pytest.approx(2 / 64)
    assert tool_use_check.mcnemar(28, 5) < 1e-4
    assert tool_use_check.mcnemar(3, 3) == 1.0 and tool_use_check.mcnemar(0, 0) == 1.0
    assert tool_use_check.mcnemar(3, 0) == pytest.approx(0.25)          # too few to tell
    folder = tmp_path / "heldout" / "thyme-rl"
    folder.mkdir(parents=True)
    rows = [{"mode": "tools", "id": "a", "sample": 0, "correct": True},
            {"mode": "direct", "id": "a", "sample": 0, "correct": False},
            {"mode": "tools", "id": "b", "sample": 0, "correct": False},
            {"mode": "tools", "id": "b", "sample": 0, "correct": True}]     # a later line wins
    (folder / "records.0-of-1.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{half")
    assert tool_use_check.item_outcomes(tmp_path / "heldout", Path("data/thyme-rl")) == {
        "a": True, "b": True}
