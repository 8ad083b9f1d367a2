"""Model teachers in the loop (pipelines.samples.teachers.loop) against the fake OpenAI server
and the real sandbox, on real photographs: the second round is written after seeing the first
round's actual image or error, in both continuation modes; plans ask for two-round data;
results reach the execution cache; what cannot be used is quarantined with its reason."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI, loop_reply, sandbox_outputs
from PIL import Image
from real_photos import PHOTOS, photo_bytes

from pipelines.core.images import ImageStore, store_path
from pipelines.core.llm import LLMClient, LLMConfig
from pipelines.core.schema import Sample
from pipelines.samples.audit import audit
from pipelines.samples.execute import ExecutionCache, execute
from pipelines.samples.teachers import OpenAITeacher, TeacherConfig
from pipelines.samples.teachers.loop import InLoop, LoopConfig, split_piece
from pipelines.samples.teachers.plans import draw_plan, plan_hints


@pytest.fixture
def pool(tmp_path):
    store = ImageStore(tmp_path / "images")
    samples = []
    for name in ("astronaut", "coffee"):
        question, answer, box, category, target = PHOTOS[name]
        ref, _ = store.put(photo_bytes(name))
        samples.append(Sample(question=question, images=[ref], source="photos", origin_file="p",
                              origin_row=len(samples), answer=answer, task="crop",
                              meta={"box": box, "category": category}))
    return store, samples


def teacher_for(server, store, tmp_path, sandbox, continuation="prefill", share=0.0, **config):
    client = LLMClient(LLMConfig(base_url=server.url, model="fake", api_key_env=None,
                                 max_retries=0, timeout_s=10))
    cache = ExecutionCache(tmp_path / "cache")
    loop = InLoop(sandbox, store, cache, LoopConfig(continuation=continuation,
                                                    multi_round_share=share))
    return OpenAITeacher(client, store.root, TeacherConfig(**config), in_loop=loop), cache


@pytest.mark.parametrize("continuation", ["prefill", "turns"])
def test_the_second_round_sees_the_first_rounds_image(sandbox, pool, tmp_path, continuation):
    store, samples = pool
    server = FakeOpenAI(loop_reply(), honour_stop=True)
    try:
        teacher, cache = teacher_for(server, store, tmp_path, sandbox, continuation)
        out = teacher.generate(samples)
    finally:
        server.close()
    assert not out.quarantine and len(out.trajectories) == 2
    assert out.stats["mode"] == f"loop:{continuation}"
    assert out.stats["loop"] == {"code_errors": 0, "code_run": 2, "end:answer": 2, "plan:single": 2}
    first, second = server.bodies[0], server.bodies[2]
    assert first["stop"] == ["</code>"] and "continue_final_message" not in first
    if continuation == "prefill":     # vLLM / SGLang: the assistant message is continued
        assert second["continue_final_message"] is True and second["add_generation_prompt"] is False
        assert second["messages"][-1]["role"] == "assistant"
        assert len(second["messages"]) == 3
    else:                             # no prefill: the output comes back as a user message
        assert "continue_final_message" not in second
        assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
        assert "after each </code>, stop and end your message" in second["messages"][0]["content"]
    for t in out.trajectories:
        produced = t.turns[0].result.images[0]
        size = Image.open(store_path(store.root, produced)).size
        # what the teacher wrote next names the size of the image it was actually shown
        assert f"The processed image I got back is {size[0]}x{size[1]} pixels" in t.turns[1].reasoning
        assert t.kind == "single" and t.answer and t.lineage["mode"] == "loop"
        assert t.lineage["continuation"] == continuation and t.lineage["calls"] == 2
        assert t.render().count("<sandbox_output><image></sandbox_output>") == 1
        assert audit(t, next(s for s in samples if s.id == t.sample_id), store.root).passed, t.audit
    # the executions stage reuses the loop's results from the cache
    by_id = {s.id: s for s in samples}
    again = [t.__class__.from_row(t.to_row()) for t in out.trajectories]
    hits = cache.hits
    execute(again, by_id, store, sandbox, cache)
    assert cache.hits - hits == 2
    assert [t.turns[0].result for t in again] == [t.turns[0].result for t in out.trajectories]


def test_an_error_is_shown_and_corrected(sandbox, pool, tmp_path):
    store, samples = pool
    server = FakeOpenAI(loop_reply(first_code_bug=True), honour_stop=True)
    try:
        teacher, _ = teacher_for(server, store, tmp_path, sandbox)
        out = teacher.generate(samples[:1])
    finally:
        server.close()
    (t,) = out.trajectories
    assert t.kind == "error_correction" and len(t.code_turns) == 2
    assert t.turns[0].result.kind == "error" and "NameError" in t.turns[0].result.text
    assert "The sandbox said: Error (runtime)" in t.turns[1].reasoning      # it read the error
    assert "NameError" in t.turns[1].reasoning
    assert t.turns[1].result.kind == "image"
    checked = audit(t, samples[0], store.root)
    assert checked.passed, checked.audit
    assert out.stats["loop"]["code_errors"] == 1


def test_plans_give_two_round_data_written_after_seeing_the_first_round(sandbox, pool, tmp_path):
    store, samples = pool
    server = FakeOpenAI(loop_reply(), honour_stop=True)
    try:
        teacher, _ = teacher_for(server, store, tmp_path, sandbox, share=1.0, seed=1)
        out = teacher.generate(samples)
    finally:
        server.close()
    plans = {s.id: draw_plan(s, "crop", 1, 1.0) for s in samples}
    assert set(plans.values()) <= {"further_enhancement", "error_correction"}
    assert len(out.trajectories) == 2, out.quarantine
    for t in out.trajectories:
        assert t.kind == plans[t.sample_id] == t.lineage["plan"]
        first, second = t.code_turns
        seen = Image.open(store_path(store.root, first.result.images[0])).size
        assert f"{seen[0]}x{seen[1]} pixels. That is not it yet" in t.turns[1].reasoning
        assert audit(t, next(s for s in samples if s.id == t.sample_id), store.root).passed
    # the private plan named a region; the reasoning never states the ground-truth box
    hints = plan_hints(samples[0], "crop", plans[samples[0].id], 1)
    assert hints and "two rounds" in hints[0]


def test_a_server_that_ignores_stop_is_cut_at_the_code_block(sandbox, pool, tmp_path):
    store, samples = pool
    server = FakeOpenAI(loop_reply(ignore_stop=True))        # returns text past </code>
    try:
        teacher, _ = teacher_for(server, store, tmp_path, sandbox)
        out = teacher.generate(samples[:1])
    finally:
        server.close()
    (t,) = out.trajectories
    assert "fake" not in t.render() and t.turns[0].result.kind == "image"
    assert sandbox_outputs(server.bodies[1])[0]["sizes"]       # the real image was shown


def test_what_cannot_be_used_is_quarantined(sandbox, pool, tmp_path):
    store, samples = pool
    always_code = FakeOpenAI(lambda body: "<think>again <code>\nprint(1)\n</code>", honour_stop=True)
    try:
        teacher, _ = teacher_for(always_code, store, tmp_path, sandbox)
        out = teacher.generate(samples[:1])
    finally:
        always_code.close()
    (row,) = out.quarantine
    assert row["reason"] == "turn_cap" and always_code.requests == 5
    blind = FakeOpenAI(lambda body: "<think>x\n```python\nprint(2)\n```\nIt printed 2.</think> "
                                    "<answer>2</answer>", honour_stop=True)
    try:
        teacher, _ = teacher_for(blind, store, tmp_path, sandbox)
        out = teacher.generate(samples[:1])
    finally:
        blind.close()
    assert [r["reason"] for r in out.quarantine] == ["blind_code"]
    down = FakeOpenAI()
    down.default = "400"
    try:
        teacher, _ = teacher_for(down, store, tmp_path, sandbox)
        out = teacher.generate(samples)
    finally:
        down.close()
    assert [r["reason"] for r in out.quarantine] == ["request_failed"] * 2


def test_candidates_are_asked_at_once_then_go_their_own_way(sandbox, pool, tmp_path):
    store, samples = pool
    server = FakeOpenAI(loop_reply(), honour_stop=True)
    try:
        teacher, _ = teacher_for(server, store, tmp_path, sandbox, candidates=2)
        out = teacher.generate(samples[:1])
    finally:
        server.close()
    assert server.bodies[0]["n"] == 2 and all(b["n"] == 1 for b in server.bodies[1:])
    assert server.requests == 3 and len(out.trajectories) == 2


def test_split_piece():
    assert split_piece("a <code>x</code> b", "stop") == ("a <code>x</code>", True)
    assert split_piece("a <code>\n```python\nx\n```\n", "stop") == ("a <code>\n```python\nx\n```\n</code>", True)
    assert split_piece("a <code>x", "length") == ("a <code>x", False)
    assert split_piece("done</think> <answer>1</answer>", "stop") == (
        "done</think> <answer>1</answer>", False)
