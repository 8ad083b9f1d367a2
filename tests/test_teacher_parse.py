"""Parsing teacher text into turns (pipelines.samples.teachers.parse) and the teacher prompts
(pipelines.samples.teachers.prompts): what is tolerated, what is quarantined and why."""

from __future__ import annotations

import pytest

from pipelines.core.images import ImageStore
from pipelines.core.schema import ImageRef, Sample
from pipelines.pool.generate import generate_samples
from pipelines.samples.teachers import TemplateTeacher, prompts
from pipelines.samples.teachers.parse import (
    REASONS,
    Unparseable,
    parse_output,
    parse_trajectory,
    quarantine_table,
)

CODE = 'img = Image.open(image_path)\nimg.crop((10, 20, 200, 220)).save("/mnt/data/temp_processed_images/c.jpg")\nprint("/mnt/data/temp_processed_images/c.jpg")'


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    store = ImageStore(tmp_path_factory.mktemp("parse-store"))
    return list(generate_samples(0, 40, 0, store))


def _sample(task="crop", meta=None, answer="B") -> Sample:
    return Sample(question="What does the sign say?", images=[ImageRef("ab" * 32, "jpg", 800, 600)],
                  source="test", origin_file="t", origin_row=0, answer=answer, task=task,
                  meta=meta or {})


def test_rendered_template_trajectories_round_trip(pool):
    """Every kind the template writes (direct, single, multi-round, error correction) parses
    back into the same turns, answer and id, with no tolerance needed."""
    teacher = TemplateTeacher(multi_round_share=0.6)
    kinds = set()
    for sample in pool:
        for t in teacher.candidates(sample):
            text = t.render()
            parsed = parse_output(text)
            assert parsed.notes == []
            again, row = parse_trajectory(text, sample, t.teacher, kind=t.kind, hidden=sample.meta)
            assert row is None, row
            assert again.render() == text and again.id == t.id
            assert [x.code for x in again.turns] == [x.code for x in t.turns]
            kinds.add(t.kind)
    assert kinds == {"direct", "single", "further_enhancement", "error_correction"}


def test_invented_sandbox_outputs_are_removed():
    text = (f"<think>Zoom in.\n<code>\n```python\n{CODE}\n```\n</code>"
            "<sandbox_output><image></sandbox_output>\nIt reads STOP.</think> <answer>B</answer>")
    parsed = parse_output(text)
    assert "removed_sandbox_output" in parsed.notes
    assert [t.code for t in parsed.turns] == [CODE, None]
    assert parsed.turns[1].reasoning == "\nIt reads STOP."


@pytest.mark.parametrize("text, note", [
    # no fences, no `python`: the protocol's extraction
    (f"<think>Zoom.<code>{CODE}</code>Done.</think> <answer>B</answer>", None),
    (f"<think>Zoom.<code>python\n{CODE}</code>Done.</think> <answer>B</answer>", None),
    (f"<think>Zoom.<code>```\n{CODE}\n```</code>Done.</think> <answer>B</answer>", None),
    # upper-case tags
    (f"<THINK>Zoom.<CODE>```python\n{CODE}\n```</CODE>Done.</THINK> <ANSWER>B</ANSWER>", None),
    # code outside <code>
    (f"<think>Zoom.\n```python\n{CODE}\n```\nDone.</think> <answer>B</answer>", "code_outside_tags"),
    (f"<think>Zoom.\n```\n{CODE}\n```\nDone.</think> <answer>B</answer>", "code_outside_tags"),
    # </code> forgotten after a closed fence
    (f"<think>Zoom.<code>\n```python\n{CODE}\n```\nDone.</think> <answer>B</answer>", "unclosed_code_tag"),
    # think tags missing or misplaced, chatter around
    (f"Zoom.<code>{CODE}</code>Done.</think> <answer>B</answer>", "missing_think"),
    (f"<think>Zoom.<code>{CODE}</code>Done. <answer>B</answer>", "missing_think_close"),
    (f"Sure, here it is.\n<think>Zoom.<code>{CODE}</code>Done.</think> <answer>B</answer>", "text_before_think"),
    (f"<think>Zoom.<code>{CODE}</code>Done.</think> <answer>B</answer>\nHope this helps!", "text_after_answer"),
    (f"<think>Zoom.<code>{CODE}</code>Done.</think> <answer>B</answer> <answer>C</answer>", "extra_answer"),
    (f"<think>Zoom.<code>{CODE}</code>Done.</think> <answer>B", "unclosed_answer"),
    # no answer tag, but an unambiguous final answer
    (f"<think>Zoom.<code>{CODE}</code>Done, so \\boxed{{B}}.</think>", "boxed_answer"),
    (f"<think>Zoom.<code>{CODE}</code>Done.</think>\nFinal answer: B", "answer_line"),
])
def test_tolerated_variants_give_one_code_turn_and_the_answer(text, note):
    parsed = parse_output(text)
    assert parsed.answer == "B"
    assert [t.code for t in parsed.turns] == [CODE, None]
    assert parsed.turns[0].reasoning.strip() == "Zoom."
    assert parsed.turns[1].reasoning.strip().startswith("Done")
    if note:
        assert note in parsed.notes


def test_an_output_example_fence_is_reasoning_not_code():
    text = ("<think>The table reads:\n```\nA | 3\nB | 4\n```\nso the total is 7.</think> "
            "<answer>7</answer>")
    parsed = parse_output(text)
    assert parsed.code_blocks == 0 and "A | 3" in parsed.turns[0].reasoning


@pytest.mark.parametrize("text, finish, reason", [
    ("", None, "empty_output"),
    ("   \n", None, "empty_output"),
    ("<think>I looked at it carefully.</think>", None, "no_answer"),
    ("<think>I looked at it.</think> <answer>  </answer>", None, "empty_answer"),
    ("<think>Let me zoom in.<code>```python\nimg = Image.open(", "length", "truncated"),
    ("<think>I looked at it.</think> <answer>The sign says ST", "length", "truncated"),
    ("<think>Zoom.<code>img = Image.open(image_path)\n</think> <answer>B</answer>", None, "unclosed_code"),
    ("<think>Zoom.\n```python\nimg = Image.open(image_path)\n</think> <answer>B</answer>", None, "unclosed_code"),
    ("<think>Zoom.<code>```python\n\n```</code>Done.</think> <answer>B</answer>", None, "empty_code"),
    ("<think>" + f"Again.<code>{CODE}</code>" * 5 + "Done.</think> <answer>B</answer>", None,
     "too_many_code_blocks"),
])
def test_unreadable_output_is_quarantined_with_a_reason(text, finish, reason):
    with pytest.raises(Unparseable) as info:
        parse_output(text, finish_reason=finish)
    assert info.value.reason == reason
    trajectory, row = parse_trajectory(text, _sample(), "test-teacher", finish_reason=finish)
    assert trajectory is None
    assert row["reason"] == reason and row["reason"] in REASONS
    assert row["sample_id"] == _sample().id and row["teacher"] == "test-teacher"
    assert row["output"] == text and row["detail"]
    assert quarantine_table([row]).num_rows == 1     # the row fits the quarantine schema


def test_reasoning_that_states_the_hidden_box_or_angle_is_quarantined():
    box = [120, 340, 260, 410]
    leaky = (f"<think>The sign is at [120, 340, 260, 410], so I crop it.<code>{CODE}</code>"
             "It reads STOP.</think> <answer>B</answer>")
    _, row = parse_trajectory(leaky, _sample(meta={"box": box}), "t", hidden={"box": box})
    assert row["reason"] == "reveals_ground_truth" and "120" in row["detail"]
    # the same numbers in the code are fine, and so is a position in words
    code = "x1, y1, x2, y2 = 120, 340, 260, 410\nprint(x1)"
    fine = (f"<think>The sign in the lower-left is tiny.<code>{code}</code>It reads STOP.</think> "
            "<answer>B</answer>")
    trajectory, row = parse_trajectory(fine, _sample(meta={"box": box}), "t", hidden={"box": box})
    assert row is None and trajectory.kind == "single" and trajectory.turns[0].code == code

    angle_text = (f"<think>The page is rotated by 37 degrees.<code>{CODE}</code>Upright now."
                  "</think> <answer>B</answer>")
    _, row = parse_trajectory(angle_text, _sample("rotate"), "t", hidden={"angle": 37})
    assert row["reason"] == "reveals_ground_truth"
    rough = angle_text.replace("by 37 degrees", "by roughly 40 degrees")
    trajectory, row = parse_trajectory(rough, _sample("rotate"), "t", hidden={"angle": 37})
    assert row is None and trajectory.task == "rotate"


def test_kind_follows_the_number_of_code_blocks():
    direct, _ = parse_trajectory("<think>It says STOP.</think> <answer>B</answer>", _sample(), "t")
    two, _ = parse_trajectory(f"<think>Wide.<code>{CODE}</code>Tight.<code>{CODE}</code>Done."
                              "</think> <answer>B</answer>", _sample(), "t")
    assert direct.kind == "direct" and direct.turns[0].code is None
    assert two.kind == "further_enhancement" and len(two.code_turns) == 2


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------

def test_decision_replies_are_read_tolerantly():
    assert prompts.parse_decision("<decision>crop</decision>") == "crop"
    assert prompts.parse_decision("<decision> Rotate </decision>") == "rotate"
    assert prompts.parse_decision("I think contrast is needed.") == "contrast"
    assert prompts.parse_decision("no idea") is None


def test_guided_prompts_carry_the_hint_privately(pool):
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
    seen = set()
    for sample in pool:
        op = prompts.operation_for(sample)
        assert op is not None, sample.task         # every generated task maps to an operation
        messages, hidden = prompts.generation_messages(sample, op, image if sample.images else None)
        system, user = messages
        assert system["role"] == "system" and "<code>" in system["content"]
        if sample.images:
            parts = user["content"]
            assert parts[0] == image and parts[-1]["type"] == "text"
            text = parts[-1]["text"]
            # the student's own prompt (question, path, size, format) is part of the request
            assert "User Image Size" in text
        else:                                       # text-only computation: a plain message
            text = user["content"]
            assert "User Image" not in text
        assert sample.question in text and "Output Format" in text
        if op == "crop":
            assert hidden == {"box": sample.meta["box"]}
            assert prompts._box(sample.meta["box"]) in text and "never in the reasoning" in text
        if op == "rotate":
            assert hidden == {"angle": sample.meta["angle"]}
            assert f"-{sample.meta['angle']:g}" in text
        if op == "compute":
            assert all(f"{k} = {v}" in text for k, v in sample.meta["values"].items())
        assert f"The correct final answer is: {sample.answer}." in text
        seen.add(op)
    assert seen == {"none", "crop", "rotate", "contrast", "compute"}
    messages, _ = prompts.generation_messages(pool[0], "crop", image, give_answer=False)
    assert "correct final answer" not in messages[1]["content"][-1]["text"]
    with pytest.raises(ValueError, match="unknown operation"):
        prompts.generation_messages(pool[0], "sharpen", image)
