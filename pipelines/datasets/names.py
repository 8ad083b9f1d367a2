"""The names of the training splits and of their validation checks: the one place that spells
them (splits, validation, publishing and the Dagster assets import them). Import-light on
purpose: loading the Dagster definitions reads these without the data stack."""

SINGLE, TWO_ROUND, COMPUTATION, RL = "wo_thinking_thyme_single_round", "2round", "computation", "rl"
SFT_SPLITS = (SINGLE, TWO_ROUND, COMPUTATION)
SPLITS = (*SFT_SPLITS, RL)
PARTS = ("train", "test")
# The quarantine's name for rows no split could take (a row without a task: routing, the mix and
# the counts are by task), and its check.
UNROUTED, MISSING_TASK = "unrouted", "missing_task"

# Validation checks (pipelines.datasets.validate), each with what it guards.
CHECKS = {
    "balanced_tags": "think/code/sandbox_output/answer tags close in order",
    "one_answer": "exactly one <answer>",
    "think_answer_format": "starts with <think>; </think> + one whitespace + <answer>...</answer> "
                           "ends it (the RL format reward's strict rule)",
    "image_count": "<image> tokens match the image list",
    "images_exist": "every image exists and is within the pixel budget",
    "no_absolute_paths": "no absolute or author path; User Image Path names the first image",
    "no_empty_code": "no code block without a statement",
    "rl_prompt": "system + user messages, the configured system prompt, a solution",
    "split_sizes_and_mix": "split size and task mix within tolerance",
    "no_train_test_overlap": "no image (or text-only question) in both train and test",
}
SFT_ROW_CHECKS = ("balanced_tags", "one_answer", "think_answer_format", "image_count",
                  "images_exist", "no_absolute_paths", "no_empty_code")
RL_ROW_CHECKS = ("rl_prompt", "image_count", "images_exist", "no_absolute_paths")
SPLIT_CHECKS = ("split_sizes_and_mix", "no_train_test_overlap")


def split_checks(split: str) -> tuple[str, ...]:
    """Every check a split's rows and counts go through, in order."""
    return (RL_ROW_CHECKS if split == RL else SFT_ROW_CHECKS) + SPLIT_CHECKS
