"""GRPO-ATS rewards (thyme_train.rewards): every branch of the cascade and the format rules."""

import pytest

from pipelines.core.llm import Completion, LLMError
from thyme_train.rewards import Judge, RewardConfig, ThymeRewards, format_score

GOOD = "<think>I zoom in.<code>```python\nprint(1)\n```</code><sandbox_output>1</sandbox_output>" \
       "Done.</think> <answer>B</answer>"


@pytest.mark.parametrize("completion, strict, lenient", [
    (GOOD, 1, 1),
    ("<think>x</think> <answer>B</answer>", 1, 1),
    ("<think>x</think>\n<answer>B</answer>", 1, 1),          # one whitespace character
    ("<think>x</think><answer>B</answer>", 0, 1),            # none
    ("<think>x</think>  <answer>B</answer>", 0, 1),          # two
    ("<think>x</think> <answer>B</answer>\n", 0, 1),         # something after </answer>
    ("<think>x</think> <answer>B</answer> ok", 0, 0),
    ("x</think> <answer>B</answer>", 0, 1),                  # template pre-filled <think>
    ("<THINK>x</THINK> <ANSWER>B</ANSWER>", 0, 1),
    ("<think>x</think> <answer>B</answer><answer>C</answer>", 0, 0),
    ("<think>a</think><think>b</think> <answer>B</answer>", 0, 0),
    ("<answer>B</answer> <think>x</think>", 0, 0),           # wrong order
    ("<think>x <answer>B</answer>", 0, 0),                   # no </think>
    ("<think>x</think> B", 0, 0),
    ("", 0, 0),
    # code may print tags: sandbox outputs are not the model's writing
    ("<think>a<code>c</code><sandbox_output></think> <answer>Z</answer></sandbox_output>b</think> "
     "<answer>B</answer>", 1, 1),
])
def test_format_rules(completion, strict, lenient):
    assert format_score(completion, "strict") == strict
    assert format_score(completion, "lenient") == lenient


def test_unknown_format_rule_is_an_error():
    with pytest.raises(ValueError):
        RewardConfig(format_rule="loose")


def answer(text, think="I looked."):
    return f"<think>{think}</think> <answer>{text}</answer>"


@pytest.mark.parametrize("completion, truth, options, acc, by", [
    (answer("B"), "B", ["A. red", "B. blue"], 1.0, "option letter B"),
    (answer("(a)"), "B", ["A. red", "B. blue"], 0.0, "option letter A"),
    (answer("blue"), "B", ["A. red", "B. blue"], 1.0, "the correct option's text"),
    (answer("12 cm"), "0.12 m", None, 1.0, "numbers"),
    (answer("74.7"), "74.6", None, 0.0, "numbers"),
    (answer("The Stop sign"), "stop sign", None, 1.0, "normalised text"),
    (answer("\\frac{1}{2}"), "1/2", None, 1.0, "symbolic math"),
    (answer("2\\sqrt{2}"), "\\sqrt{8}", None, 1.0, "symbolic math"),
    (answer("a car that is red"), "red car", None, 0.0, "numbers, normalised text and math differ"),
    ("no tags at all", "42", None, 0.0, "not a single number"),
    ("", "42", None, 0.0, "no answer in the response"),
])
def test_accuracy_rules_without_judge(completion, truth, options, acc, by):
    s, = ThymeRewards().score([completion], [truth], options=[options])
    assert (s.accuracy, s.accuracy_by) == (acc, by)


class FakeClient:
    """Stands in for an OpenAI-compatible server: replies in order, records the prompts."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def chat_many(self, conversations, **params):
        assert params["temperature"] == 0.0
        out = []
        for conv in conversations:
            self.prompts.append(conv[-1]["content"][-1]["text"] if isinstance(conv[-1]["content"], list)
                                else conv[-1]["content"])
            reply = self.replies.pop(0)
            out.append(reply if isinstance(reply, LLMError) else Completion([reply], ["stop"]))
        return out


def test_judge_decides_only_what_rules_cannot():
    client = FakeClient(["Yes.", "yes", "no"])
    rewards = ThymeRewards(judge=Judge(client))
    s1, s2, s3 = rewards.score([answer("a car that is red"), answer("74.6"), answer("74.6")],
                               ["red car", "74.6", "74.6"], questions=["What is shown?", "Mean?", "M?"],
                               sandbox_texts=[[], [], ["74.6"]])
    assert (s1.accuracy, s1.accuracy_by) == (1.0, "judge")
    assert s2.accuracy_by == s3.accuracy_by == "numbers"     # decided by rules: no judge call
    assert "red car" in client.prompts[0] and "What is shown?" in client.prompts[0]
    # consistency: s1 and s2 printed nothing, so the judge; s3's printed value decides by rule
    assert (s1.consistency, s1.consistency_by) == (1.0, "judge")
    assert (s2.consistency, s2.consistency_by) == (0.0, "judge")
    assert (s3.consistency, s3.consistency_by) == (1.0, "rule")
    assert len(client.prompts) == 3 and "reasoning" in client.prompts[1]


@pytest.mark.parametrize("reply", [LLMError("HTTP 500", status=500), "maybe"])
def test_judge_failure_is_recorded_not_scored_zero(reply):
    judge = Judge(FakeClient([reply]))
    s, = ThymeRewards(judge=judge).score([answer("a car that is red")], ["red car"])
    assert s.judge_failed and (s.accuracy, s.format, s.consistency) == (None, None, None)
    assert judge.stats.failures == 1 and judge.stats.errors


def test_judge_budget():
    judge = Judge(FakeClient(["no"]), max_calls=1)
    s1, s2 = ThymeRewards(judge=judge).score([answer("a red car"), answer("a blue car")],
                                             ["big truck", "big truck"])
    assert s1.accuracy == 0.0 and s1.accuracy_by == "judge"
    assert s2.judge_failed and judge.stats.over_budget == 1


@pytest.mark.parametrize("given, printed, options, consistency", [
    ("74.6", ["74.6\n"], None, 1.0),
    ("0.67", ["0.6666666666666666"], None, 1.0),             # rounded to the answer's decimals
    ("75", ["74.6"], None, 0.0),
    ("B", ["first: 3\nresult: 12"], ["A. 11", "B. 12"], 1.0),   # a letter states its option
    ("12", ["/tmp/crop.png"], None, None),                   # no printed number: no rule
    ("twelve apples", ["12"], None, None),                   # not a number: no rule
])
def test_consistency_rule(given, printed, options, consistency):
    truth = "B" if options else given
    s, = ThymeRewards().score([answer(given)], [truth], options=[options], sandbox_texts=[printed])
    assert s.accuracy == 1.0
    assert s.consistency == consistency
    assert s.consistency_by == ("rule" if consistency is not None else "none")


def test_consistency_is_gated_by_accuracy_and_total():
    cfg = RewardConfig()
    rewards = ThymeRewards(cfg)
    right, wrong = rewards.score([answer("12"), answer("13")], ["12", "12"],
                                 sandbox_texts=[["12"], ["13"]])
    assert (right.accuracy, right.format, right.consistency) == (1.0, 1.0, 1.0)
    assert right.total(cfg) == 2.0                           # 1 + 0.5 + 0.5
    assert (wrong.accuracy, wrong.consistency, wrong.consistency_by) == (0.0, 0.0, "gated")
    assert wrong.total(cfg) == 0.5                           # format only
    heavy = RewardConfig(format_weight=1.0, consistency_weight=0.0)
    assert right.total(heavy) == 2.0 and ThymeRewards(heavy).weights() == [1.0, 1.0, 0.0]


def test_trl_reward_functions():
    rewards = ThymeRewards()
    logged = {}
    completions = [[{"role": "assistant", "content": answer("12")}],
                   [{"role": "assistant", "content": "<think>x</think><answer>7</answer>"}]]
    kwargs = dict(solution=["12", "12"], sandbox_texts=[["12"], []],
                  log_metric=lambda k, v: logged.__setitem__(k, v))
    funcs = rewards.reward_funcs()
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "format_reward", "consistency_reward"]
    assert [f(completions=completions, **kwargs) for f in funcs] == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    assert logged["rewards/judge_failures"] == 0.0
    with pytest.raises(KeyError, match="solution"):
        rewards.accuracy_reward(completions=completions)
