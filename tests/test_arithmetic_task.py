"""The generated pool's multi-digit arithmetic task (the tool-use learning check's task): exact
answers from the ground truth, open questions only, a pool of that task alone through the `mix`
argument, and the template teacher's code printing the answer in the real sandbox so the audit
passes every trajectory."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipelines.core.images import ImageStore
from pipelines.pool.generate import DEFAULT_MIX, generate_samples
from pipelines.samples.audit import AuditConfig, audit_many
from pipelines.samples.execute import execute
from pipelines.samples.teachers import TemplateTeacher
from sandbox import Sandbox

ARITHMETIC = (("arithmetic", 1),)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    store = ImageStore(tmp_path_factory.mktemp("arith"))
    return store, list(generate_samples(0, 60, 3, store, mix=ARITHMETIC))


def test_a_pool_of_arithmetic_only(pool):
    _, rows = pool
    assert {s.task for s in rows} == {"computation"}
    assert Counter(s.meta["kind"] for s in rows).keys() == {"product", "sum", "product_plus"}
    assert {s.meta["variant"] for s in rows} == {"open"}        # never multiple choice
    assert all(not s.images and "Options" not in s.question for s in rows)
    assert len({s.id for s in rows}) == len(rows)
    assert {s.origin_file for s in rows} == {"generated/seed=3/mix=arithmetic:1"}


def test_answers_are_the_expression_over_numbers_the_question_shows(pool):
    _, rows = pool
    for s in rows:
        values, expression = s.meta["values"], s.meta["expression"]
        assert s.meta["answer_format"] == "integer"
        assert int(s.answer) == eval(expression, {}, dict(values))   # noqa: S307 - our own text
        shown = [int(n) for n in re.findall(r"\d+", s.question)]
        assert shown == list(values.values()), (s.question, values)
        if s.meta["kind"] == "product":
            assert values["a"] >= 100 and values["b"] >= 10        # multi-digit, always


def test_same_seed_same_samples_and_the_default_mix_is_unchanged(pool, tmp_path):
    _, rows = pool
    again = list(generate_samples(10, 5, 3, ImageStore(tmp_path / "a"), mix=ARITHMETIC))
    assert [s.to_row() for s in again] == [s.to_row() for s in rows[10:15]]
    default = list(generate_samples(0, 20, 3, ImageStore(tmp_path / "d")))
    explicit = list(generate_samples(0, 20, 3, ImageStore(tmp_path / "e"), mix=DEFAULT_MIX))
    assert [s.to_row() for s in default] == [s.to_row() for s in explicit]
    assert "arithmetic" not in {s.meta["kind"] for s in default}
    assert {s.origin_file for s in default} == {"generated/seed=3"}


def test_the_small_variant_has_fewer_digits_and_the_same_forms(tmp_path):
    rows = list(generate_samples(0, 60, 3, ImageStore(tmp_path), mix=(("arithmetic_small", 1),)))
    assert Counter(s.meta["kind"] for s in rows).keys() == {"product", "sum", "product_plus"}
    for s in rows:
        values = s.meta["values"]
        assert int(s.answer) == eval(s.meta["expression"], {}, dict(values))  # noqa: S307
        assert [int(n) for n in re.findall(r"\d+", s.question)] == list(values.values())
        if s.meta["kind"] == "product":        # 3 digits x 2 digits: no tiny model's mental sum
            assert 100 <= values["a"] <= 999 and 10 <= values["b"] <= 99
        assert all(len(str(v)) <= 3 for v in values.values())
    assert {s.origin_file for s in rows} == {"generated/seed=3/mix=arithmetic_small:1"}


@pytest.mark.parametrize("mix", [(("nonsense", 1),), (("arithmetic", 0),), ()])
def test_a_bad_mix_is_refused(mix, tmp_path):
    with pytest.raises(ValueError, match="mix"):
        list(generate_samples(0, 1, 0, ImageStore(tmp_path), mix=mix))


@pytest.mark.slow
def test_teacher_code_prints_the_answer_and_the_audit_passes(pool):
    store, rows = pool
    samples = {s.id: s for s in rows}
    teacher = TemplateTeacher(seed=0)
    trajectories = [t for s in rows for t in teacher.candidates(s)]
    assert len(trajectories) == len(rows)
    with Sandbox(workers=2) as sandbox:
        execute(trajectories, samples, store, sandbox)
    for t in trajectories:
        (turn,) = t.code_turns
        assert turn.result.kind == "text", turn.result
        assert turn.result.text.strip() == samples[t.sample_id].answer
        assert t.answer == samples[t.sample_id].answer
    audited = audit_many(trajectories, samples, store.root, AuditConfig(workers=2))
    assert all(t.passed for t in audited), [c for t in audited for c in t.audit if c.verdict == "fail"]
