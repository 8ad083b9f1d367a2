"""Chained teachers for computation data: one model's long reasoning handed to a second that
writes lean code (in the loop, seeing what its code printed), both recorded in the lineage;
wrong or missing reasoning is not handed on."""

from __future__ import annotations

import re

from fake_openai import FakeOpenAI, sandbox_outputs

from pipelines.core.images import ImageStore
from pipelines.core.llm import LLMClient, LLMConfig
from pipelines.core.schema import Sample
from pipelines.samples.audit import audit
from pipelines.samples.teachers import (
    ChainConfig,
    ChainedTeacher,
    InLoop,
    LoopConfig,
    OpenAITeacher,
    TeacherConfig,
)

PROBLEMS = [  # (question, answer, values, expression, what the reasoner concludes)
    ("A shop packs 12 pens in a box. It sells 3 boxes and then 5 more boxes of 8 pens. How many "
     "pens did it sell?", "76", {"a": 12, "b": 3, "c": 5, "d": 8}, "a*b + c*d", "76"),
    ("A train covers 150 km in 2.5 hours. What is its average speed in km/h?", "60",
     {"d": 150, "t": "2.5"}, "d/t", "65"),                     # the reasoner gets it wrong
    ("How many ways can 3 of 7 books be chosen?", "35", {"n": 7, "k": 3}, "binomial(n, k)", None),
]


def samples() -> list[Sample]:
    return [Sample(question=q, images=[], source="word", origin_file="w", origin_row=i, answer=a,
                   task="computation", meta={"values": v, "expression": e})
            for i, (q, a, v, e, _) in enumerate(PROBLEMS)] + [
        Sample(question="What colour is the sky?", images=[], source="word", origin_file="w",
               origin_row=9, answer="blue", task="no_code")]


def reasoner_reply(body):
    question = body["messages"][-1]["content"]
    for q, _, _, _, concluded in PROBLEMS:
        if q == question:
            steps = " ".join(f"Step {k}: let me reconsider the quantities carefully." for k in range(40))
            tail = f"\nAnswer: {concluded}" if concluded else "\nI am not sure."
            return f"Let me think. MARK<{concluded}> {steps}{tail}"
    raise AssertionError(question)


def coder_reply(body):
    """Writes code from the handed-over solution; in the loop, states what the code printed."""
    task = body["messages"][1]["content"]
    mark = re.search(r"MARK<(\w+)>", task)
    values = re.search(r"The values involved are (.*?); the quantity asked for is (.*?)[,.] ", task)
    seen = sandbox_outputs(body)
    if seen:
        printed = seen[-1]["text"].strip()
        return f" The code printed {printed}.</think> <answer>{printed}</answer>"
    lines = [f"{name} = {value}" for name, value in
             (pair.split(" = ") for pair in values.group(1).split(", "))]
    code = "from sympy import binomial, Rational\n" + "\n".join(lines) + (
        f"\nprint({values.group(2).replace('2.5', 'Rational(5, 2)')})")
    return (f"<think>Using the worked plan ({mark.group(1)}), I compute it exactly.\n<code>\n"
            f"```python\n{code}\n```\n</code>")


def test_reasoning_is_handed_to_a_coder_in_the_loop(sandbox, tmp_path):
    reasoner_server = FakeOpenAI(reasoner_reply)
    coder_server = FakeOpenAI(coder_reply, honour_stop=True)
    store = ImageStore(tmp_path / "images")
    try:
        def client(server, model):
            return LLMClient(LLMConfig(base_url=server.url, model=model, api_key_env=None,
                                       max_retries=0, timeout_s=10))
        reasoner = OpenAITeacher(client(reasoner_server, "thinker"), store.root, TeacherConfig())
        coder = OpenAITeacher(client(coder_server, "coder"), store.root, TeacherConfig(),
                              in_loop=InLoop(sandbox, store, None, LoopConfig()))
        chain = ChainedTeacher(reasoner, coder, ChainConfig(others=False))
        pool = samples()
        out = chain.generate(pool)
    finally:
        reasoner_server.close()
        coder_server.close()
    assert chain.name == "chain:openai:thinker>openai:coder"
    assert reasoner_server.requests == 3          # only computation samples are reasoned about
    reasons = sorted(r["detail"] for r in out.quarantine)
    assert [r["reason"] for r in out.quarantine] == ["reasoner_failed"] * 2
    assert any(d.startswith("answered '65', the truth is '60'") for d in reasons)
    assert any(d.startswith("no final answer stated") for d in reasons)
    assert out.stats["chain"] == {"skipped": 1, "reasoner:reasoner_failed": 2, "reasoner:handed_on": 1}
    (t,) = out.trajectories
    assert t.teacher == chain.name and t.kind == "single"
    assert "Using the worked plan (76)" in t.turns[0].reasoning      # the coder read the reasoning
    assert t.turns[0].result.kind == "text" and t.turns[0].result.text == "76"
    assert "The code printed 76" in t.turns[1].reasoning and t.answer == "76"
    reasoner_step, coder_step = t.lineage["chain"]
    assert reasoner_step["role"] == "reasoner" and reasoner_step["teacher"] == "openai:thinker"
    assert reasoner_step["text"].startswith("Let me think. MARK<76>") and reasoner_step["correct"]
    assert coder_step == {"role": "coder", "teacher": "openai:coder",
                          "lineage": t.lineage["chain"][1]["lineage"]}
    assert coder_step["lineage"]["mode"] == "loop"
    # the coder was given the computation prompt with the reasoning as a private hint
    (first_call,) = [b for b in coder_server.bodies if b["messages"][-1]["role"] == "user"]
    assert "<<<solution" in first_call["messages"][1]["content"]
    checked = audit(t, pool[0], store.root)
    assert checked.passed, checked.audit
    assert {c.name: c.verdict for c in checked.audit}["computation"] == "pass"


def test_wrong_reasoning_can_be_handed_on_when_asked(tmp_path):
    reasoner_server = FakeOpenAI(reasoner_reply)
    coder_server = FakeOpenAI(lambda body: "<think>Quick.</think> <answer>1</answer>")
    try:
        def client(server):
            return LLMClient(LLMConfig(base_url=server.url, model="m", api_key_env=None,
                                       max_retries=0, timeout_s=10))
        chain = ChainedTeacher(OpenAITeacher(client(reasoner_server), tmp_path),
                               OpenAITeacher(client(coder_server), tmp_path),
                               ChainConfig(require_correct=False))
        pool = samples()
        out = chain.generate([pool[0], pool[1], pool[3]])
    finally:
        reasoner_server.close()
        coder_server.close()
    assert len(out.trajectories) == 3 and not out.quarantine
    wrong = next(t for t in out.trajectories if t.sample_id == pool[1].id)
    assert wrong.lineage["chain"][0]["correct"] is False
    # a sample of another task is written by the coder alone, as in a mixed shard
    alone = next(t for t in out.trajectories if t.sample_id == pool[3].id)
    assert alone.teacher == "openai:m" and alone.lineage is None
    assert reasoner_server.requests == 2 and out.stats["chain"]["coder_alone"] == 1
