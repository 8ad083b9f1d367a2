"""Answer collapse in GRPO-ATS (issue 24): the statistics and the warning (with the step it
started), each remedy acting — clip-higher and the entropy floor through TRL's loss, token-level
normalisation reaching TRL, DAPO's dynamic sampling refilling groups, untruncated sampling once
collapse is detected — and the summary and Dagster metadata that surface it."""

import math
from types import SimpleNamespace

import pytest

from thyme_train.collapse import (
    AnswerCollapseMonitor,
    CollapseConfig,
    answer_token_entropy,
    group_statistics,
    untruncated,
)
from thyme_train.config import load_config
from thyme_train.grpo import GRPOATSConfig, LoggingRolloutStatistics, run_summary, trl_args
from thyme_train.rewards import ThymeRewards
from thyme_train.rollout import Rollout


def answer(text):
    return f"<think>I look.</think> <answer>{text}</answer>"


def test_group_statistics_tell_a_collapsed_batch_from_a_learning_one():
    # G = 4; two red prompts, two blue; the collapsed policy says red to everything
    collapsed = group_statistics(["red"] * 16, [1.0] * 8 + [0.0] * 8, 4)
    assert collapsed["thyme/collapse/zero_variance_groups"] == 1.0
    assert collapsed["thyme/collapse/answer_agreement"] == 1.0
    assert collapsed["thyme/collapse/answer_entropy"] == 0.0
    assert collapsed["thyme/collapse/top_answer_share"] == 1.0
    assert collapsed["thyme/collapse/accuracy"] == 0.5
    mixed = ["red", "blue", "Red ", "red"] * 4                 # case and spaces do not split answers
    learning = group_statistics(mixed, [1, 0, 1, 1] * 4, 4)
    assert learning["thyme/collapse/zero_variance_groups"] == 0.0
    assert learning["thyme/collapse/answer_agreement"] == 0.0
    assert learning["thyme/collapse/answer_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    # unscored completions (None) do not count; a group with none scored has no variance verdict
    assert group_statistics(["a", "b"], [None, None], 2)["thyme/collapse/zero_variance_groups"] == 0.0
    with pytest.raises(ValueError, match="whole groups"):
        group_statistics(["a"] * 3, [1.0] * 3, 2)


def test_answer_token_entropy_reads_the_answers_tokens_only():
    vocab = ["<think>", "I", " look", "</think>", " <answer>", "red", "dish", "</answer>", "<eos>"]

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    logprobs = [-9.0, -9.0, -9.0, -9.0, -9.0, -0.1, -0.3, -9.0, 0.0]
    mask = [1, 1, 1, 1, 1, 1, 1, 1, 0]                         # the end-of-turn: not the model's
    assert answer_token_entropy(ids, logprobs, mask, decode) == pytest.approx(0.2)
    assert answer_token_entropy([0, 1, 2], [-1.0] * 3, [1] * 3, decode) is None


def steps(monitor, start, n, stats):
    return [monitor.record(start + i, stats) for i in range(n)]


def test_the_warning_names_the_step_collapse_started_and_ignores_success():
    cfg = CollapseConfig(answer_collapse_patience=3, answer_collapse_early_steps=2)
    monitor = AnswerCollapseMonitor(cfg)
    healthy = {**group_statistics(["red", "blue"] * 8, [1, 0] * 8, 4),
               "thyme/collapse/answer_token_entropy": 0.6}
    stuck = {**group_statistics(["red"] * 16, [1.0] * 8 + [0.0] * 8, 4),
             "thyme/collapse/answer_token_entropy": 0.3}
    assert steps(monitor, 1, 4, healthy) == [None] * 4
    first, second, third = steps(monitor, 5, 3, stuck)
    assert first is None and second is None
    assert "answer collapse since step 5" in third and "100% of groups agree" in third
    assert monitor.since == 5
    assert monitor.record(8, healthy) is None and monitor.since is None      # it recovered
    # agreement on right answers is success, not collapse
    solved = {**group_statistics(["red"] * 8 + ["blue"] * 8, [1.0] * 16, 4),
              "thyme/collapse/answer_token_entropy": 0.01}
    assert steps(AnswerCollapseMonitor(cfg), 1, 6, solved) == [None] * 6
    # the answer-token entropy alone: below 10% of its early value while still wrong half the time
    monitor = AnswerCollapseMonitor(cfg)
    steps(monitor, 1, 2, healthy)
    low = {**healthy, "thyme/collapse/answer_token_entropy": 0.05}
    assert "entropy 0.050 < 0.1 x its early value 0.600" in steps(monitor, 3, 3, low)[-1]


class FakeRolloutFunc:
    def __init__(self, cfg):
        self.config, self.statistics, self.untruncated = cfg, {}, False


def test_collapse_is_logged_and_switches_to_untruncated_sampling():
    cfg = load_config(GRPOATSConfig, None, ["num_generations=4", "untruncated_sampling_on_collapse=true",
                                            "answer_collapse_patience=2"])
    rollout_func = FakeRolloutFunc(cfg)
    rewards = ThymeRewards(group_size=4)
    wrapper = LoggingRolloutStatistics(rewards.accuracy_reward, rollout_func)
    logged = []
    completions = [answer("red")] * 8
    solutions = ["red"] * 4 + ["blue"] * 4
    for step in (0, 1):
        rollout_func.statistics = {"thyme/collapse/answer_token_entropy": 0.2}
        wrapper(completions, solution=solutions, trainer_state=SimpleNamespace(global_step=step),
                log_metric=lambda k, v, step=step: logged.append((step, k, v)))
    values = {(s, k): v for s, k, v in logged}
    assert values[(0, "thyme/answer_collapse")] == 0.0 and values[(1, "thyme/answer_collapse")] == 1.0
    assert values[(1, "thyme/answer_collapse_since")] == 1.0          # logged step = global_step + 1
    assert values[(1, "thyme/collapse/zero_variance_groups")] == 1.0
    assert rollout_func.untruncated
    # what ThymeRolloutFunc then does to the engine's sampling before each batch
    from thyme_train.ats import SamplingConfig
    assert untruncated(SamplingConfig(top_p=0.9, top_k=50)) == SamplingConfig(top_p=1.0, top_k=0)
    # the run summary and the Dagster metadata carry it
    history = [{"reward": 1.0, "thyme/answer_collapse": 0.0},
               {"reward": 1.0, "thyme/answer_collapse": 1.0, "thyme/answer_collapse_since": 2.0,
                "thyme/collapse/zero_variance_groups": 1.0, "thyme/collapse/answer_agreement": 1.0}]
    summary = run_summary(history, 2)
    assert (summary["answer_collapse_warnings"], summary["answer_collapse_since"]) == (1, 2)
    from pathlib import Path

    from thyme_train.grpo import materialization_metadata
    meta = materialization_metadata(Path("out"), summary)
    assert meta["answer_collapse_since"] == {"raw_value": 2, "type": "int"}
    assert meta["answer_collapse_warnings"]["raw_value"] == 1


def test_remedy_settings_reach_trl_and_are_checked(tmp_path):
    base = [f"output_dir={tmp_path}", "bf16=false", "gradient_checkpointing=false"]
    paper = trl_args(load_config(GRPOATSConfig, None, base), ThymeRewards())
    assert (paper.loss_type, paper.epsilon, paper.epsilon_high, paper.entropy_coef) == ("grpo", 0.2, None, 0.0)
    assert paper.use_adaptive_entropy is False and paper.num_iterations == 1
    on = trl_args(load_config(GRPOATSConfig, None, [*base, "loss_type=dapo", "epsilon_high=0.28",
                                                    "num_iterations=2", "entropy_floor=0.3",
                                                    "entropy_coef=0.01"]), ThymeRewards())
    assert (on.loss_type, on.epsilon_high, on.num_iterations) == ("dapo", 0.28, 2)
    assert (on.use_adaptive_entropy, on.entropy_target, on.entropy_coef) == (True, 0.3, 0.01)
    with pytest.raises(ValueError, match="opposite of clip-higher"):
        load_config(GRPOATSConfig, None, ["epsilon_high=0.1"])
    with pytest.raises(ValueError, match="multiple of num_generations"):
        load_config(GRPOATSConfig, None, ["dynamic_sampling=true", "num_generations=4",
                                          "per_device_train_batch_size=6"])
    with pytest.raises(ValueError, match="answer_collapse_agreement"):
        load_config(GRPOATSConfig, None, ["answer_collapse_agreement=1.5"])


# ---------------------------------------------------------------------------------------------
# Dynamic sampling
# ---------------------------------------------------------------------------------------------

class Tokens:
    """A tokenizer stub: token i is the text texts[i]."""

    def __init__(self, texts):
        self.texts = texts

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.texts[i] for i in ids)


def test_dynamic_sampling_drops_groups_without_variance_and_refills_from_other_prompts():
    from thyme_train.dynamic_sampling import DynamicSampling

    texts = [answer("red"), answer("blue")]
    # what each prompt's policy answers: prompt 0 mixed, 1 always red (its truth: all right),
    # 2 always red (truth blue: all wrong), 3 mixed
    said = {"p0": [0, 1], "p1": [0, 0], "p2": [0, 0], "p3": [1, 0]}
    truth = {"p0": "red", "p1": "red", "p2": "blue", "p3": "blue"}
    runs = []

    class Func:
        codec = SimpleNamespace(tokenizer=Tokens(texts))
        prepared = None

        def run(self, prompts, trainer):
            runs.append(list(prompts))
            rollouts = [Rollout(0, 0, [1], completion_ids=[said[p][k % 2]]) for k, p in enumerate(prompts)]
            return rollouts, [f"enc-{p}" for p in prompts]

    def row(p):
        return {"prompt": p, "solution": truth[p], "prompt_index": int(p[1])}

    class Rows(list):
        column_names = ["prompt", "solution", "prompt_index"]

        def __getitem__(self, key):
            return [r[key] for r in self] if isinstance(key, str) else list.__getitem__(self, key)

    dataset = Rows(row(p) for p in ("p0", "p1", "p2", "p3"))
    func = Func()
    sampler = DynamicSampling(dataset, func, group_size=2, max_rounds=3, seed=0)
    batch = [row("p0")] * 2 + [row("p1")] * 2 + [row("p2")] * 2
    kept = sampler.fill(batch, trainer=None)
    # p0 varies and stays; p1 (all right) and p2 (all wrong) are dropped; the only prompt
    # outside the batch, p3, varies and fills both slots in one round
    assert [r["prompt"] for r in kept] == ["p0", "p0", "p3", "p3", "p3", "p3"]
    assert runs[1] == ["p3"] * 4
    assert sampler.statistics == {"thyme/dynamic_sampling/sampled_zero_variance_groups": pytest.approx(2 / 3),
                                  "thyme/dynamic_sampling/kept_zero_variance_groups": 0.0,
                                  "thyme/dynamic_sampling/refill_rounds": 1.0,
                                  "thyme/dynamic_sampling/extra_groups_generated": 2.0}
    # a batch nothing can fix keeps its groups after max_rounds, and says so
    said["p3"] = [1, 1]
    kept = sampler.fill(batch, trainer=None)
    assert [r["prompt"] for r in kept] == [r["prompt"] for r in batch]
    assert sampler.statistics["thyme/dynamic_sampling/refill_rounds"] == 3.0
    assert sampler.statistics["thyme/dynamic_sampling/kept_zero_variance_groups"] == pytest.approx(2 / 3)
    # the rollouts of the final rows wait for TRL's rollout_func call, in the rows' order
    said["p3"] = [1, 0]
    kept = sampler.fill(batch, trainer=None)
    rollouts, encoded = func.prepared
    assert encoded == [f"enc-{r['prompt']}" for r in kept]
    assert [(r.prompt_index, r.sample_index) for r in rollouts] == [(i // 2, i % 2) for i in range(6)]
    with pytest.raises(ValueError, match="whole groups"):
        sampler.fill(batch[:3], trainer=None)


# ---------------------------------------------------------------------------------------------
# End to end: a policy stuck on one answer
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_stuck_on_one_answer_is_detected_and_remedied(tmp_path, request):
    """The tiny model forced to answer "red" to a red and a blue image: every group agrees, no
    group varies. Dynamic sampling tries to refill and says it could not; the warning names
    step 1; text sampling turns untruncated from step 2; the entropy floor's coefficient moves;
    the curves, metrics.json and the Dagster metadata carry it."""
    import json
    import os

    from PIL import Image

    from thyme_train.grpo import train
    from thyme_train.tiny import build_tiny_model

    model_dir = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")
    rows = []
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (64, 64), (200, 0, 0) if colour == "red" else (0, 0, 200)).save(tmp_path / f"{i}.png")
        rows.append({"question": "What colour is the image?", "solution": colour, "image": f"{i}.png"})
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl_tiny.yaml"), [
        f"model={model_dir}", f"data={tmp_path / 'rl.jsonl'}", f"output_dir={tmp_path / 'out'}",
        "max_steps=2", "save_steps=2", "max_new_tokens=16", "max_turns=1", "sandbox_workers=1",
        "num_generations=2", "per_device_train_batch_size=4", "engine_batch_size=4",
        "answer_collapse_patience=1", "untruncated_sampling_on_collapse=true",
        "dynamic_sampling=true", "dynamic_sampling_max_rounds=1",
        "entropy_floor=100.0", "entropy_coef=0.0", "entropy_coef_step=0.01",
        "loss_type=dapo", "epsilon_high=0.28"])
    script = []

    def force(rollout, tokens):               # "red", whatever the image
        if not script:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(model_dir)
            script.extend(tok("<think>I look.</think> <answer>red</answer>", add_special_tokens=False)["input_ids"])
        return script[len(tokens)] if len(tokens) < len(script) else None

    trainer = train(cfg, force=force)
    assert trainer.epsilon_high == 0.28 and trainer.loss_type == "dapo"
    out = tmp_path / "out"
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "thyme/answer_collapse" in r]
    assert [r["step"] for r in steps] == [1, 2]
    first, second = steps
    assert first["thyme/collapse/answer_agreement"] == 1.0 and first["thyme/collapse/zero_variance_groups"] == 1.0
    assert first["thyme/answer_collapse"] == 1.0 and first["thyme/answer_collapse_since"] == 1.0
    assert first["thyme/untruncated_sampling"] == 0.0 and second["thyme/untruncated_sampling"] == 1.0
    sampling = trainer.rollout_func.rollouts.hf.sampling         # what the engine samples with now
    assert (sampling.top_p, sampling.top_k) == (1.0, 0) and cfg.top_p == 0.9
    assert first["thyme/dynamic_sampling/sampled_zero_variance_groups"] == 1.0
    assert first["thyme/dynamic_sampling/refill_rounds"] == 1.0
    assert first["thyme/dynamic_sampling/kept_zero_variance_groups"] == 1.0   # nothing could vary
    # the entropy floor: entropy below 100 nats, so the coefficient rises by its step
    coefs = [r["entropy_coef"] for r in logs if "entropy_coef" in r]
    assert coefs and coefs[-1] == pytest.approx(0.02)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["answer_collapse_since"] == 1 and summary["answer_collapse_warnings"] == 2
    assert (out / "curves_collapse.png").stat().st_size > 0


def test_the_learning_check_runs_held_out_seeds_and_reports_an_interval():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "grpo_learning_check.py"
    spec = importlib.util.spec_from_file_location("grpo_learning_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert len(check.HELD_OUT_SEEDS) >= 16 and not set(check.HELD_OUT_SEEDS) & check.TUNING_SEEDS
    assert {47, 404} <= check.TUNING_SEEDS
    lo, hi = check.wilson(15, 16)                        # the textbook Wilson 95% interval
    assert (round(lo, 3), round(hi, 3)) == (0.717, 0.989)
    assert check.wilson(16, 16)[1] == 1.0 and check.wilson(0, 16)[0] == 0.0
