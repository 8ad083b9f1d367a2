"""rollouts.jsonl (thyme_train.rollout_log) without a model: which steps log, what a line holds,
rewards joined to the sampled rollouts, resume. The GRPO end-to-end test reads it from a real
run (tests/test_grpo.py)."""

import json

from PIL import Image

from sandbox.result import ErrorInfo, Result
from thyme_train.engine import GenerationResult
from thyme_train.rollout import Rollout
from thyme_train.rollout_log import RolloutLog


class Codec:
    """ChatCodec's decoding side over a toy vocabulary (one character a token)."""
    image_token = "<|image_pad|>"
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>"

    def decode(self, ids):
        return "".join(TOKENS[i] for i in ids)


TOKENS = ["<think>", "<code>```python\nprint(2 + 2)\n```</code>", "<sandbox_output>4</sandbox_output>",
          "</think> <answer>4</answer>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]


def prompt(question, image):
    return [{"role": "system", "content": [{"type": "text", "text": "SYSTEM"}]},
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": f"\n{question}"}]}]


def run_step(log, step, tmp_path, n=4):
    """One batch of n rollouts through the log's hooks, as ThymeRolloutFunc drives them."""
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "made.png")
    on_event = log.watch(step)
    rollouts = []
    for i in range(n):
        r = Rollout(i, 0, [1], completion_ids=[0, 1, 2, 4, 5, 5, 6, 3], end_reason="answer", turns=2)
        if on_event:
            on_event(r, "generation", GenerationResult([0, 1], [0.0] * 2, [0.0] * 2, [1.0] * 2,
                                                       [False] * 2, "code"))
            ok = i % 2 == 0
            on_event(r, "sandbox", Result(ok=ok, code="print(2 + 2)", stdout="4\n" if ok else "",
                                          text="4" if ok else None, images=[str(tmp_path / "made.png")] if ok else [],
                                          error=None if ok else ErrorInfo("runtime", "NameError: x")))
        rollouts.append(r)
    log.collect(step, [prompt(f"q{i}", str(tmp_path / "in.png")) for i in range(n)], rollouts, Codec())
    accuracy, fmt = log.wrap([_named("accuracy_reward"), _named("format_reward")])
    kwargs = {"origin": [f"rl.parquet row {i}" for i in range(n)], "solution": ["4"] * n}
    accuracy(["c"] * n, **kwargs)
    fmt(["c"] * n, **kwargs)


def _named(name):
    def reward(completions, **kwargs):
        return [1.0 if name == "accuracy_reward" else None] * len(completions)
    reward.__name__ = name
    return reward


def lines(log):
    return [json.loads(line) for line in log.path.read_text().splitlines()]


def test_a_sample_of_each_logged_step_with_its_code_outputs_and_rewards(tmp_path):
    log = RolloutLog(tmp_path / "out", samples=2, logging_steps=2, weights=[1.0, 0.5], seed=3)
    log.restart(None)
    for step in (1, 2, 3, 4):
        run_step(log, step, tmp_path)
    records = lines(log)
    assert [r["step"] for r in records] == [2, 2, 4, 4]            # logging steps only, 2 each
    r = records[0]
    assert r["origin"] == f"rl.parquet row {r['index']}" and r["solution"] == "4"
    assert r["system"] == "SYSTEM" and r["user"] == f"<image>\nq{r['index']}"
    assert len(r["images"]) == 1 and r["images"][0].endswith("in.png")
    assert r["completion"] == ("<think><code>```python\nprint(2 + 2)\n```</code><sandbox_output>4"
                               "</sandbox_output><image></think> <answer>4</answer>")
    assert r["rewards"] == {"accuracy_reward": 1.0, "format_reward": None} and r["reward"] == 1.0
    call, = r["calls"]
    assert call["code"] == "print(2 + 2)" and call["rolled_back"] is False
    if r["index"] % 2 == 0:
        assert call["ok"] and call["output"] == "4" and call["error"] is None
        assert (tmp_path / "out" / call["images"][0]).read_bytes() == (tmp_path / "made.png").read_bytes()
    else:
        assert not call["ok"] and call["error"] == "runtime: NameError: x" and call["images"] == []
    assert (r["end_reason"], r["turns"]) == ("answer", 2)
    # the sample is seeded: the same steps pick the same rollouts
    again = RolloutLog(tmp_path / "again", samples=2, logging_steps=2, weights=[1.0, 0.5], seed=3)
    for step in (1, 2, 3, 4):
        run_step(again, step, tmp_path)
    assert [r["index"] for r in lines(again)] == [r["index"] for r in records]


def test_resume_keeps_the_checkpoints_steps_and_a_fresh_run_starts_empty(tmp_path):
    log = RolloutLog(tmp_path / "out", samples=1)
    for step in (1, 2, 3):
        run_step(log, step, tmp_path)
    with open(log.path, "a") as f:
        f.write('{"step": 4, "index"')                           # a crash mid-line
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    resumed = RolloutLog(tmp_path / "out", samples=1)
    resumed.restart(checkpoint)
    assert [r["step"] for r in lines(resumed)] == [1, 2]
    run_step(resumed, 2, tmp_path)                               # a step the checkpoint holds
    run_step(resumed, 3, tmp_path)
    assert [r["step"] for r in lines(resumed)] == [1, 2, 3]
    RolloutLog(tmp_path / "out", samples=1).restart(None)
    assert lines(resumed) == []


def test_nothing_is_written_when_off_or_for_another_batch(tmp_path):
    off = RolloutLog(tmp_path / "off", samples=0)
    run_step(off, 1, tmp_path)
    assert not off.path.exists()
    log = RolloutLog(tmp_path / "out", samples=2)
    log.watch(1)
    log.collect(1, [prompt("q", "x.png")] * 4, [Rollout(i, 0, [1], end_reason="eos") for i in range(4)], Codec())
    accuracy, = log.wrap([_named("accuracy_reward")])
    accuracy(["c"] * 3)                            # rewards of a batch of another size: dropped
    assert not log.path.exists()
