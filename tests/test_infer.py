"""Inference on the tiny model: transcript structure, stops, the code-error policies, the direct
fallback, and the CLIs' clear failures."""

import json
import os

import pytest
from PIL import Image

from thyme_train.infer import InferConfig, Thyme, evaluation_rollout, main
from thyme_train.tiny import build_tiny_model

CROP = ("<think>Zoom in.<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\n"
        "img.crop((0, 0, 160, 120)).save('/mnt/data/temp_processed_images/crop.png')\n"
        "print('/mnt/data/temp_processed_images/crop.png')\n```\n</code>")
FAIL = "<think>Try.<code>\n```python\nprint(1 / 0)\n```\n</code>"
ANSWER = "It is red.</think> <answer>red</answer>"


@pytest.fixture(scope="module")
def tiny_path(request):
    return str(build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("infer")
    os.chmod(folder, 0o755)
    path = folder / "input.png"
    Image.new("RGB", (320, 240), (200, 30, 30)).save(path)
    os.chmod(path, 0o644)
    return str(path)


def scripted(thyme, turns):
    """Force `turns[t]` in generation call t (then end the call: the text closes a tag)."""
    ids = [thyme.codec.tokenizer(t, add_special_tokens=False)["input_ids"] for t in turns]

    def force(rollout, tokens):
        if rollout.turns < len(ids) and len(tokens) < len(ids[rollout.turns]):
            return ids[rollout.turns][len(tokens)]
        return None
    return force


def test_transcript_of_a_crop_then_an_answer(tiny_path, image_file, sandbox, tmp_path):
    seen = []
    with Thyme(InferConfig(model=tiny_path, rollout=evaluation_rollout(max_new_tokens=200)), sandbox=sandbox) as thyme:
        t = thyme.ask(image_file, "What colour is it?", force=scripted(thyme, [CROP, ANSWER]),
                      on_text=lambda kind, text: seen.append(kind), save_dir=tmp_path)
    assert t.end_reason == "answer" and t.answer == "red" and not t.fell_back
    assert (t.code_calls, t.code_errors, t.turns) == (1, 0, 2)
    # the sandbox's image is in the transcript as <image>, right after the code, and saved
    assert "</code><sandbox_output><image></sandbox_output>" in t.response.replace("\n", "")
    assert t.images == ["images/processed_01.png"]
    assert Image.open(tmp_path / t.images[0]).size == (160, 120)
    assert seen == ["model", "sandbox", "model", "end"]


@pytest.mark.parametrize("policy", ["rollback", "show"])
def test_failed_code_rounds(policy, tiny_path, image_file, sandbox):
    cfg = InferConfig(model=tiny_path,
                      rollout=evaluation_rollout(max_new_tokens=200, on_code_error=policy))
    with Thyme(cfg, sandbox=sandbox) as thyme:
        t = thyme.ask(image_file, "What colour is it?", force=scripted(thyme, [FAIL, CROP, ANSWER]))
    assert t.answer == "red" and t.code_calls == 2 and t.code_errors == 1
    if policy == "rollback":     # the failed round is gone from the transcript
        assert t.rollbacks == 1 and "1 / 0" not in t.response and "ZeroDivisionError" not in t.response
    else:                        # the error is shown to the model, which then fixes it
        assert t.rollbacks == 0 and "ZeroDivisionError" in t.response


def test_no_answer_falls_back_to_a_direct_answer(tiny_path, image_file, sandbox):
    cfg = InferConfig(model=tiny_path, rollout=evaluation_rollout(max_new_tokens=6, max_turns=1))
    with Thyme(cfg, sandbox=sandbox) as thyme:
        t = thyme.ask(image_file, "What colour is it?", force=None)
        assert t.fell_back and t.end_reason in ("length", "eos", "turn_cap")
        off = thyme.ask(image_file, "What colour is it?", tools=False)
        assert not off.fell_back and off.code_calls == 0


def test_cli_fails_clearly(tmp_path, image_file, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--image", image_file, "--question", "q"]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["--model", str(tmp_path), "--image", str(bad), "--question", "q"]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_cli_writes_the_transcript(tiny_path, image_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--model", tiny_path, "--image", image_file, "--question", "What colour?",
                 "--max-new-tokens", "12", "--max-turns", "2", "--out", str(out)]) == 0
    record = json.loads((out / "transcript.json").read_text())
    assert record["question"] == "What colour?" and not os.path.isabs(record["image"])
    assert record["end_reason"] and "answer:" in capsys.readouterr().out


def test_evaluate_cli_on_the_tiny_model(tiny_path, image_file, tmp_path, capsys):
    from thyme_train.evaluate import main as evaluate_main

    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(row) for row in [
        {"image": image_file, "question": "What colour is it?", "answer": "red", "category": "colour"},
        {"image": image_file, "question": "Which?", "options": ["red", "blue"], "answer": "A",
         "category": "choice"},
        {"question": "2+2?", "answer": "4", "category": "math"}]) + "\n")
    out = tmp_path / "eval"
    assert evaluate_main(["--model", tiny_path, "--benchmark", str(bench), "--out", str(out),
                          "--max-new-tokens", "8"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["summaries"]) == {"tools", "direct"}
    assert results["summaries"]["tools"]["items"] == 3
    assert set(results["summaries"]["tools"]["by_category"]) == {"colour", "choice", "math"}
    assert (out / "accuracy.png").stat().st_size > 0 and "| tools | 3 |" in capsys.readouterr().out
