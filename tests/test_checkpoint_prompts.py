"""A checkpoint carries the prompt set it was trained with (`prompt_set.yaml`, written by SFT and
GRPO), and `thyme_train.infer` / `thyme_train.evaluate` ask it with that set unless told
otherwise: none recorded is the default set with a notice, an explicit set wins with a warning
when it is not the recorded one."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines.core.prompts import (
    RECORD_FILE,
    load_prompt_set,
    record_prompt_set,
    recorded_prompt_set,
)
from thyme_train.infer import InferenceError, checkpoint_prompt_set
from thyme_train.tiny import build_tiny_model

THYME, RELEASE = load_prompt_set("thyme"), load_prompt_set("thyme-release")


def _text(prompts):
    return prompts.system, prompts.user, prompts.user_text


def _checkpoint(folder: Path, prompts=None) -> Path:
    """A checkpoint-shaped folder (its config.json), recording `prompts` when given."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if prompts is not None:
        record_prompt_set(prompts, folder)
    return folder


def test_the_recorded_set_is_the_default_even_when_its_yaml_is_gone(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"system": "Be brief.", "user": "{image_tokens}{question}\n"
                                    'User Image Path: "{image_path}"\nUser Image Size: "{image_size}"',
                                    "user_text": "{question}"}))
    model = _checkpoint(tmp_path / "model", load_prompt_set(str(mine)))
    mine.unlink()                                        # the checkpoint travels without it
    choice = checkpoint_prompt_set(str(model))
    assert (choice.name, choice.source, choice.notice) == ("mine", "checkpoint", None)
    assert load_prompt_set(choice.spec).system == "Be brief."
    released = _checkpoint(tmp_path / "released-style", RELEASE)
    assert _text(load_prompt_set(checkpoint_prompt_set(str(released)).spec)) == _text(RELEASE)


def test_no_record_is_the_default_set_with_a_notice_naming_the_flag(tmp_path):
    for model in (str(_checkpoint(tmp_path / "model")), "Kwai-Keye/Thyme-RL"):   # dir, hub id
        choice = checkpoint_prompt_set(model)
        assert (choice.spec, choice.source) == ("thyme", "default")
        assert "records no prompt set" in choice.notice
        assert "--prompt-set thyme-release" in choice.notice


def test_an_explicit_set_wins_with_a_warning_when_it_is_not_the_recorded_one(tmp_path):
    model = _checkpoint(tmp_path / "model", RELEASE)
    choice = checkpoint_prompt_set(str(model), "thyme")
    assert (choice.spec, choice.name, choice.source) == ("thyme", "thyme", "--prompt-set")
    assert choice.notice.startswith("warning:") and "thyme-release" in choice.notice
    assert "system, user, user_text differ" in choice.notice
    assert checkpoint_prompt_set(str(model), "thyme-release").notice is None   # the same set
    assert checkpoint_prompt_set(str(_checkpoint(tmp_path / "bare")), "thyme").notice is None
    with pytest.raises(InferenceError, match="no such set"):
        checkpoint_prompt_set(str(model), "thyme-nope")
    (model / RECORD_FILE).write_text("system: [not text]\n")
    with pytest.raises(InferenceError, match="missing or not text"):
        checkpoint_prompt_set(str(model))


def test_the_evaluate_cli_records_the_set_and_where_it_came_from(tmp_path, capsys):
    from thyme_train.eval_cli import main

    bench = tmp_path / "mine.jsonl"
    bench.write_text(json.dumps({"answer": "4"}) + "\n")   # settings are written, then it stops
    model = _checkpoint(tmp_path / "model", RELEASE)

    def settings(*extra):
        out = tmp_path / f"eval-{'-'.join(extra)}"
        assert main(["--model", str(model), "--benchmark", str(bench), "--out", str(out),
                     "--no-ablation", *extra]) == 2
        err = capsys.readouterr().err
        assert "mine.jsonl: row 1" in err
        return json.loads((out / "mine" / "settings.json").read_text()), err

    recorded, err = settings()
    assert recorded["prompt_set"] == "thyme-release"
    assert recorded["prompt_set_source"] == "the checkpoint's prompt_set.yaml"
    assert "warning" not in err and "records no prompt set" not in err
    chosen, err = settings("--prompt-set", "thyme")
    assert (chosen["prompt_set"], chosen["prompt_set_source"]) == ("thyme", "--prompt-set")
    assert "warning: --prompt-set thyme (thyme) is not the set" in err
    (model / RECORD_FILE).unlink()
    default, err = settings()
    assert default["prompt_set"] == "thyme" and default["prompt_set_source"].startswith("default")
    assert "records no prompt set" in err and "--prompt-set thyme-release" in err


def test_the_infer_cli_asks_with_the_checkpoints_set(request, tmp_path, capsys):
    from thyme_train.infer import main

    tiny = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")
    model = tmp_path / "model"
    shutil.copytree(tiny, model)          # the shared tiny model stays without a record
    record_prompt_set(RELEASE, model)
    image = tmp_path / "input.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    out = tmp_path / "run"
    assert main(["--model", str(model), "--image", str(image), "--question", "What colour?",
                 "--max-new-tokens", "4", "--max-turns", "1", "--out", str(out)]) == 0
    assert "records no prompt set" not in capsys.readouterr().err
    record = json.loads((out / "transcript.json").read_text())
    assert record["prompt_set"] == {"name": "thyme-release", "source": "checkpoint"}


def test_sft_records_the_prompts_it_trains_with(tmp_path):
    """The set the config names; under an overriding system prompt, the data's user templates
    with that system prompt (what the rows were rendered with and what the model saw)."""
    from thyme_train.config import load_config
    from thyme_train.sft import ThymeSFTConfig

    data = tmp_path / "published"
    record_prompt_set(RELEASE, data)
    cfg = load_config(ThymeSFTConfig, None, [f"data=[{data}]"])
    assert _text(cfg.trained_prompt_set()) == _text(RELEASE)
    assert cfg.trained_prompt_set().name == "thyme-release"
    mixed = load_config(ThymeSFTConfig, None, [f"data=[{data}]", "prompt_set=thyme"])
    got = mixed.trained_prompt_set()
    assert _text(got) == (THYME.system, RELEASE.user, RELEASE.user_text)
    assert got.name == "thyme-release (system: thyme)"
    record_prompt_set(got, tmp_path / "model")      # the format the datasets use loads back
    assert _text(recorded_prompt_set(tmp_path / "model")) == _text(got)
    (tmp_path / "none.yaml").write_text('data: [x]\nsystem_prompt: ""\n')    # none at all
    assert load_config(ThymeSFTConfig, tmp_path / "none.yaml").trained_prompt_set().system == ""


def test_grpo_records_the_set_its_rows_were_rendered_with(tmp_path):
    from thyme_train.rl_data import rows_prompt_set

    published = tmp_path / "thyme-rl"
    record_prompt_set(RELEASE, published)
    assert _text(rows_prompt_set(published)) == _text(RELEASE)          # each row's own
    assert _text(rows_prompt_set(published, prompt_set="thyme")) == _text(THYME)  # re-rendered
    simple = tmp_path / "simple.jsonl"
    simple.write_text(json.dumps({"question": "2+2?", "solution": "4"}) + "\n")
    assert _text(rows_prompt_set(simple)) == _text(THYME)     # rendered with the default set
