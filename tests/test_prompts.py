"""Prompt sets as data (pipelines.core.prompts): shipped sets, a user's file, a dataset's own
prompts; rendering and parsing agree for every set."""

import pytest

from pipelines.core.formats import SourceRow, thyme_rl_table, write_parquet
from pipelines.core.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    PromptSetError,
    available_prompt_sets,
    load_prompt_set,
    parse_user,
    render_user,
)


def test_shipped_sets_render_and_parse_back():
    assert {"thyme", "thyme-release"} <= set(available_prompt_sets())
    for name in available_prompt_sets():
        prompts = load_prompt_set(name)
        with_image = prompts.render_user("What is on the {sign}?", "images/ab/x.jpg", (640, 480))
        assert with_image.startswith("<image>\n")
        assert parse_user(with_image) == ("What is on the {sign}?", {
            "original_path": "images/ab/x.jpg", "original_size": [640, 480]})
        text_only = prompts.render_user("Compute 17*23.")
        assert "<image>" not in text_only and parse_user(text_only) == ("Compute 17*23.", {})
        assert prompts.render_user("Q?", "a.jpg", (2, 3), images=2).count("<image>") == 2


def test_the_release_set_is_the_original_verbatim():
    release = load_prompt_set("thyme-release")
    assert release.system.startswith("You are a helpful assistant.\n\nSolve the following problem")
    assert release.system.endswith("for further processing in a sandbox environment.")
    assert release.render_user("Q", "/p.jpg", (5, 6)) == (
        '<image>\nQ\n\n### User Image Path:** "/p.jpg"\n### User Image Size:** "5x6"\n\n'
        "### **Output Format (strict adherence required):**\n\n"
        "<think>Your detailed reasoning process, including any code, should go here.</think>\n"
        "<answer>Your final answer to the user's question goes here.</answer>\n")


def test_the_default_is_ours_and_module_helpers_use_it():
    assert load_prompt_set().name == "thyme" and load_prompt_set().system == DEFAULT_SYSTEM_PROMPT
    assert render_user("Q", "a.jpg", (1, 2)) == load_prompt_set().render_user("Q", "a.jpg", (1, 2))


def test_a_users_file_and_clear_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("system: Be brief.\nuser: \"{image_tokens}{question} [{image_path} {image_size}]\"\n"
                    "user_text: \"{question}\"\n")
    mine = load_prompt_set(str(good))
    assert mine.system == "Be brief." and mine.render_user("Q", "x.png", (3, 4)) == "<image>\nQ [x.png 3x4]"
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: x\nuser: no slots\nuser_text: \"{question}\"\n")
    with pytest.raises(PromptSetError, match=r"bad.yaml.*lacks the slot"):
        load_prompt_set(str(bad))
    with pytest.raises(PromptSetError, match="no such set.*thyme-release"):
        load_prompt_set("nonexistent")


def test_a_dataset_s_own_prompts(tmp_path):
    release = load_prompt_set("thyme-release")
    rows = [SourceRow("How many birds are on the wire?", [b"not read"], answer="3",
                      image_path="/data/rl/0001.jpg", image_size=(800, 600))]
    table = thyme_rl_table(rows, release)   # written as the release writes it
    path = tmp_path / "thyme-rl.parquet"
    write_parquet(table, path)
    taken = load_prompt_set(f"from:{path}")
    assert taken.system == release.system
    assert taken.render_user("Q?", "a.jpg", (1, 2)) == release.render_user("Q?", "a.jpg", (1, 2))
    assert taken.render_user("Q?") == release.render_user("Q?")
