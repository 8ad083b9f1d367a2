"""GRPO-ATS options beyond the paper's recipe, each acting: DeepEyes' tool reward, Kimi's length
penalty, curriculum and prioritized prompt sampling (thyme_train.sampling), the behaviour
log-probs the importance-sampling correction reads for each code_token_loss, and the config
checks that tie them together. (The end-to-end runs: tests/test_grpo.py, tests/test_grpo_vllm.py.)"""

import math
from collections import Counter

import pytest
import torch

from thyme_train.config import load_config
from thyme_train.grpo import GRPOATSConfig, behaviour_statistics
from thyme_train.rewards import RewardConfig, ThymeRewards, length_penalties
from thyme_train.rollout import Rollout
from thyme_train.sampling import PromptSampling


def answer(text, think="I looked."):
    return f"<think>{think}</think> <answer>{text}</answer>"


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------

def test_tool_reward_only_for_a_right_answer_with_a_produced_image():
    rewards = ThymeRewards(RewardConfig(tool_weight=1.5))
    assert rewards.weights() == [1.0, 0.5, 0.5, 1.5]
    assert [f.__name__ for f in rewards.reward_funcs()][-1] == "tool_reward"
    completions = [answer("red"), answer("red"), answer("blue"), answer("blue")]
    scores = rewards.tool_reward(completions, solution=["red"] * 4, sandbox_image_count=[1, 0, 2, 0])
    assert scores == [1.0, 0.0, 0.0, 0.0]      # right+image, right without, wrong with, wrong without
    with pytest.raises(KeyError, match="sandbox_image_count"):
        rewards.tool_reward(completions, solution=["red"] * 4)
    assert len(ThymeRewards().reward_funcs()) == 3      # off by default: the paper's three


def test_length_penalty_is_kimis_within_each_group():
    # group 1: lengths 10, 20, 30 (right, right, wrong); group 2: all equal
    got = length_penalties([10, 20, 30, 5, 5, 5], [True, True, False, True, False, True], 3)
    assert got == [0.5, 0.0, -0.5, 0.0, 0.0, 0.0]
    # a wrong short answer is not rewarded for being short: min(0, lambda)
    assert length_penalties([10, 30], [False, True], 2) == [0.0, -0.5]


def test_length_reward_uses_the_whole_batch_of_every_process_and_its_start_step():
    class State:
        global_step = 5

    batch = [(10, 1.0), (30, 1.0), (20, 0.0), (20, 1.0)]    # another process holds the first two

    def gather(local):                                       # as ProcessGather over 2 processes
        return batch[:2] + local, 2

    rewards = ThymeRewards(RewardConfig(length_penalty_weight=0.2, length_penalty_start_step=3),
                           group_size=4, gather=gather)
    local = [answer("red"), answer("no")]
    got = rewards.length_reward(local, solution=["red", "red"], model_tokens=[20, 20],
                                trainer_state=State())
    assert got == [0.0, 0.0]          # lambda = 0.5 - (20 - 10) / 20 = 0 for both; wrong: min(0, 0)
    State.global_step = 1             # before the start step: nothing
    batch[:2] = [(5, 1.0), (40, 1.0)]
    assert rewards.length_reward(local, solution=["red", "red"], model_tokens=[20, 20],
                                 trainer_state=State()) == [0.0, 0.0]
    State.global_step = 3
    scored = rewards.length_reward(local, solution=["red", "red"], model_tokens=[20, 20],
                                   trainer_state=State())
    assert scored[0] == pytest.approx(0.5 - 15 / 35) and scored[1] == 0.0


# ---------------------------------------------------------------------------------------------
# Prompt sampling
# ---------------------------------------------------------------------------------------------

def draws(sampling, batches, size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [sampling.draw(size, generator) for _ in range(batches)]


def test_curriculum_goes_from_easy_to_hard():
    difficulty = [9, 1, 5, 2, 8, 3, 7, 4, 6, 0]             # prompt 9 is the easiest
    rows = [{"difficulty": d} for d in difficulty]
    sampling = PromptSampling.from_rows(rows, curriculum=True, curriculum_field="difficulty",
                                        higher_is_harder=True, curriculum_start=0.2, curriculum_ramp=4)
    first = draws(sampling, 1)[0]
    assert sorted(first) == [1, 9]                          # the two easiest
    later = [i for batch in draws(sampling, 20) for i in batch]
    assert {0, 4} <= set(later)                              # the hardest are reachable once ramped
    assert sampling.statistics()["thyme/sampling/pool_share"] == 1.0
    # a measured pass rate ranks the other way round
    rates = PromptSampling.from_rows([{"pass_rate": r} for r in (0.9, 0.1, 0.5)], curriculum=True,
                                     curriculum_field="pass_rate", higher_is_harder=False,
                                     curriculum_start=0.3, curriculum_ramp=10)
    assert rates.pool() == [0]
    with pytest.raises(ValueError, match=r"row 1 has no number in 'difficulty'"):
        PromptSampling.from_rows([{"difficulty": 1}, {"question": "q"}], curriculum=True,
                                 curriculum_field="difficulty", higher_is_harder=True)


def test_prioritized_sampling_favours_what_fails_and_learns_from_rollouts():
    sampling = PromptSampling(4, prioritized=True, priority_floor=0.05, success_ema=1.0)
    # prompts 0 and 1 always solved, 2 never, 3 half the time (each with G = 4 rollouts)
    sampling.record([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4,
                    [1.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0, 0.0, None, 0.0])
    assert sampling.success == [1.0, 1.0, 0.0, pytest.approx(1 / 3)]   # None: unscored, left out
    counts = Counter(i for batch in draws(sampling, 400, size=1) for i in batch)
    assert counts[2] > counts[3] > 5 * max(counts[0], counts[1])
    assert counts[0] > 0                                   # the floor keeps solved prompts reachable
    # the running rate moves with new results
    sampling.success_ema = 0.5
    sampling.record([2] * 4, [1.0] * 4)
    assert sampling.success[2] == pytest.approx(0.5)
    state = sampling.state_dict()
    again = PromptSampling(4, prioritized=True)
    again.load_state_dict(state)
    assert again.success == sampling.success
    with pytest.raises(ValueError, match="covers 4 prompts"):
        PromptSampling(5).load_state_dict(state)


def test_the_sampler_keeps_trls_repeat_layout():
    from trl.trainer.utils import RepeatSampler

    sampling = PromptSampling(7, prioritized=True, seed=3)
    ours = list(sampling.sampler(mini_repeat_count=2, batch_size=3, repeat_count=2))
    assert len(ours) == len(RepeatSampler(list(range(7)), 2, 3, 2)) == 24
    for chunk in (ours[:12], ours[12:]):               # a batch of 3 prompts, x2 each, repeated x2
        assert chunk[:6] == chunk[6:] and chunk[0:6:2] == chunk[1:6:2]
        assert len(set(chunk)) == 3
    # every process draws the same indices from the same seed and state
    assert list(PromptSampling(7, prioritized=True, seed=3).sampler(2, 3, 2)) == ours


# ---------------------------------------------------------------------------------------------
# Behaviour log-probs for TRL's importance-sampling correction
# ---------------------------------------------------------------------------------------------

def rollout():
    # text (sampled, behaviour -2.0), two greedy code tokens, one sandbox token
    return Rollout(0, 0, [1], completion_ids=[5, 6, 7, 8], env_mask=[1, 1, 1, 0],
                   logprobs=[-2.5, -0.1, -0.3, 0.0], behaviour_logprobs=[-2.0, 0.0, 0.0, 0.0],
                   temperatures=[1.0, 0.0, 0.0, math.nan], in_code=[False, True, True, False])


def test_greedy_code_tokens_for_each_code_token_loss():
    r = rollout()
    train = r.sampling_logprobs("train")
    assert train[0] == -2.0 and math.isnan(train[1]) and math.isnan(train[2])   # ratio 1 in TRL
    assert r.sampling_logprobs("correct") == [-2.0, 0.0, 0.0, 0.0]   # ratio = pi(token) / 1
    assert r.loss_mask("mask") == [1, 0, 0, 0] and r.loss_mask("correct") == [1, 1, 1, 0]
    stats = behaviour_statistics([r])
    assert stats["thyme/tokens/greedy_code_share"] == pytest.approx(2 / 3)
    assert stats["thyme/tokens/no_behaviour_logprob_share"] == 0.0


def test_importance_sampling_options_reach_trl_and_are_checked(tmp_path):
    from thyme_train.grpo import trl_args

    base = [f"output_dir={tmp_path}", "bf16=false", "gradient_checkpointing=false", "deepspeed=null"]
    args = trl_args(load_config(GRPOATSConfig, None, base), ThymeRewards())
    assert args.vllm_importance_sampling_correction and args.use_vllm is False
    assert (args.vllm_importance_sampling_mode, args.vllm_importance_sampling_clip_max) == ("token_truncate", 2.0)
    off = trl_args(load_config(GRPOATSConfig, None, [*base, "importance_sampling=off"]), ThymeRewards())
    assert off.vllm_importance_sampling_correction is False
    with pytest.raises(ValueError, match="needs importance_sampling token"):
        load_config(GRPOATSConfig, None, ["code_token_loss=correct", "importance_sampling=sequence_mask"])
    with pytest.raises(ValueError, match="importance_sampling must be"):
        load_config(GRPOATSConfig, None, ["importance_sampling=yes"])
    with pytest.raises(ValueError, match="engine must be"):
        load_config(GRPOATSConfig, None, ["engine=sglang"])
    with pytest.raises(ValueError, match="vllm_mode"):
        load_config(GRPOATSConfig, None, ["vllm_mode=remote"])


def test_a_server_without_what_training_needs_is_refused():
    from thyme_train.rollout_engines import check_server
    from thyme_train.vllm_engine import PROCESSOR

    info = {"model_config": {"logits_processors": [PROCESSOR], "logprobs_mode": "raw_logprobs",
                             "served_model_name": "tiny", "max_model_len": 2048,
                             "multimodal_config": {"limit_per_prompt": {"image": {"count": 4}}}},
            "parallel_config": {"tensor_parallel_size": 2, "data_parallel_size": 2},
            "weight_transfer_config": {"backend": "nccl"}}
    with pytest.raises(ValueError, match="processed_logprobs"):
        check_server(info, True, 4, PROCESSOR)
    checked = check_server(info, False, 4, PROCESSOR)
    assert (checked["workers"], checked["backend"], checked["max_images"]) == (4, "nccl", 4)
    with pytest.raises(ValueError, match="takes 4 images"):
        check_server(info, False, 8, PROCESSOR)
    with pytest.raises(ValueError, match="no weight-transfer backend"):
        check_server({**info, "weight_transfer_config": None}, False, 4, PROCESSOR)
    with pytest.raises(ValueError, match="without our logits processor"):
        check_server({**info, "model_config": {**info["model_config"], "logits_processors": []}},
                     False, 4, PROCESSOR)


def test_a_rollout_the_infrastructure_broke_is_unscorable_not_wrong():
    rewards = ThymeRewards(RewardConfig(tool_weight=1.0))
    kwargs = {"solution": ["red", "red"], "end_reason": ["answer", "engine_error"],
              "sandbox_image_count": [1, 0]}
    completions = [answer("red"), ""]
    assert rewards.accuracy_reward(completions, **kwargs) == [1.0, None]
    assert rewards.format_reward(completions, **kwargs) == [1.0, None]
    assert rewards.tool_reward(completions, **kwargs) == [1.0, None]


def test_the_gpu_config_rolls_out_with_vllm_and_the_cpu_demo_with_transformers():
    import os

    gpu = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl.yaml"))
    assert (gpu.engine, gpu.vllm_mode, gpu.vllm_sleep_level, gpu.importance_sampling) == \
        ("vllm", "colocate", 2, "token_truncate")
    tiny = load_config(GRPOATSConfig, os.path.join("thyme_train", "configs", "rl_tiny.yaml"))
    assert (tiny.engine, tiny.vllm_sleep_level, tiny.vllm_dtype) == ("hf", 0, "float32")
