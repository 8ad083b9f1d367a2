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
    assert main(["--model", str(tmp_path), "--question", "q", "--server", "http://x:1/v1"]) == 2
    assert "use engine 'vllm'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--question", "q", "--sandbox-isolation", "docker"]) == 2
    assert "unknown isolation policy 'docker'" in capsys.readouterr().err


def test_cli_writes_the_transcript(tiny_path, image_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--model", tiny_path, "--image", image_file, "--question", "What colour?",
                 "--max-new-tokens", "12", "--max-turns", "2", "--out", str(out)]) == 0
    record = json.loads((out / "transcript.json").read_text())
    assert record["question"] == "What colour?" and not os.path.isabs(record["image"])
    assert record["end_reason"] and "answer:" in capsys.readouterr().out
    assert record["sandbox_isolation"]["policy"] == "strict"   # what confined its code
    assert record["sandbox_isolation"]["active"] == ["namespaces", "landlock", "seccomp", "rlimits"]


def test_ask_many_keeps_many_questions_in_flight(tiny_path, image_file, sandbox):
    cfg = InferConfig(model=tiny_path, batch_size=8, rollout=evaluation_rollout(max_new_tokens=200))
    with Thyme(cfg, sandbox=sandbox) as thyme:
        out = thyme.ask_many([(image_file, "What colour?"), (image_file, "Which colour?"),
                              (image_file, "Colour?")], force=scripted(thyme, [CROP, ANSWER]))
        batch_rows = thyme.engine.last_inputs["input_ids"][0]
    assert [len(ts) for ts in out] == [1, 1, 1] and batch_rows == 3   # one generate call for all
    for (t,) in out:
        assert t.answer == "red" and t.code_calls == 1
        assert [c["ok"] for c in t.calls] == [True] and len(t.calls[0]["images"]) == 1


def test_sampled_answers_follow_the_item_not_the_batch(tiny_path, image_file, sandbox):
    """With `keys`, a sample draws the same tokens alone or beside other items (resumed and
    sharded evaluations agree)."""
    cfg = InferConfig(model=tiny_path, batch_size=1, fallback_direct=False,
                      rollout=evaluation_rollout(max_new_tokens=6, max_turns=1, temperature_text=1.0))
    with Thyme(cfg, sandbox=sandbox) as thyme:
        both = thyme.ask_many([(image_file, "First?"), (image_file, "Second?")], samples=2,
                              keys=[11, 22])
        alone = thyme.ask_many([(image_file, "Second?")], samples=2, keys=[22])
    assert [t.response for t in both[1]] == [t.response for t in alone[0]]
    assert both[1][0].response != both[1][1].response


def test_the_release_prompt_set_and_its_direct_prompt(tiny_path, image_file, sandbox):
    from thyme_train.infer import InferenceError

    cfg = InferConfig(model=tiny_path, prompt_set="thyme-release",
                      rollout=evaluation_rollout(max_new_tokens=4))
    with Thyme(cfg, sandbox=sandbox) as thyme:
        tools, _ = thyme._prompt(image_file, "What colour?", tools=True)
        direct, _ = thyme._prompt(image_file, "What colour?", tools=False)
        text, direct_text = thyme.codec.decode(tools.prompt_ids), thyme.codec.decode(direct.prompt_ids)
    assert "optionally write Python code for image manipulation" in text
    assert '### User Image Path:** "' in text and "What colour?" in text
    assert "You don't need to perform any image manipulation or reasoning" in direct_text
    assert '**User\'s Question:** "What colour?"' in direct_text
    with pytest.raises(InferenceError, match="no such set"):
        Thyme(InferConfig(model=tiny_path, prompt_set="nope"), sandbox=sandbox)


def test_faithful_crops_on_a_v_star_item(tiny_path, sandbox, tmp_path):
    """A scripted crop of the region holding the target, through the sandbox: located in the
    input, counted faithful; the sandbox's images are removed once analysed."""
    from pathlib import Path

    from thyme_train.eval_data import load_items
    from thyme_train.evaluate import thyme_policy

    bench = Path(__file__).parent / "data" / "benchmarks" / "vstar_bench"
    (item,) = load_items(bench, tmp_path / "img")[:1]           # the clock at [40, 30, 60, 40]
    crop = CROP.replace("(0, 0, 160, 120)", "(10, 10, 130, 100)")
    with Thyme(InferConfig(model=tiny_path, rollout=evaluation_rollout(max_new_tokens=200)),
               sandbox=sandbox) as thyme:
        ((answered,),) = thyme_policy(thyme, force=scripted(thyme, [crop, ANSWER]))([item], True, 1)
    (call,) = answered.calls
    assert call["ops"] == ["crop"] and call["ok"]
    assert call["crop"]["contains"] and call["crop"]["coverage"] == 1.0
    assert all(abs(a - b) <= 3 for a, b in zip(call["crop"]["box"], (10, 10, 130, 100), strict=True))
    assert not any(Path(sandbox.results_dir).rglob("crop.png"))


def test_evaluate_cli_on_the_tiny_model(tiny_path, image_file, tmp_path, capsys):
    from pathlib import Path

    from thyme_train.evaluate import main as evaluate_main

    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(row) for row in [
        {"image": image_file, "question": "What colour is it?", "answer": "red", "category": "colour"},
        {"image": image_file, "question": "Which?", "options": ["red", "blue"], "answer": "A",
         "category": "choice"},
        {"question": "2+2?", "answer": "4", "category": "math"}]) + "\n")
    vstar = Path(__file__).parent / "data" / "benchmarks" / "VStarBench.tsv"
    out = tmp_path / "eval"
    argv = ["--model", tiny_path, "--benchmark", f"mine={bench}", "--benchmark", str(vstar),
            "--limit", "2", "--out", str(out), "--max-new-tokens", "8", "--max-turns", "2",
            "--prompt-set", "thyme-release", "--bootstrap", "50"]
    assert evaluate_main(argv) == 0
    results = json.loads((out / "mine" / "results.json").read_text())
    assert set(results["summaries"]) == {"tools", "direct"}
    assert results["summaries"]["tools"]["items"] == 2 and results["kind"] == "generic"
    settings = json.loads((out / "VStarBench" / "settings.json").read_text())
    assert settings["prompt_set"] == "thyme-release" and settings["benchmark"]["kind"] == "vstar"
    assert settings["temperature"] == 0.0 and not os.path.isabs(settings["model"])
    assert settings["sandbox_isolation"] == "strict"            # the policy asked for ...
    shown = results["settings"]["sandbox"]                       # ... and what confined the code
    assert shown.startswith("namespaces+landlock(ABI ") and shown.endswith("+seccomp+rlimits active, policy strict")
    assert results["settings"]["sandbox_isolation"][0]["missing"] == {}
    summary = (out / "summary.md").read_text()
    assert "| mine | generic | 2 |" in summary and "| VStarBench | vstar | 2 |" in summary
    assert f"sandbox={shown}" in summary
    assert (out / "summary.png").stat().st_size > 0 and "| VStarBench |" in capsys.readouterr().out
    records = (out / "mine" / "records.0-of-1.jsonl").read_text()
    assert evaluate_main(argv) == 0                              # all done: nothing is redone
    assert (out / "mine" / "records.0-of-1.jsonl").read_text() == records
    assert evaluate_main([*argv, "--temperature", "0.5"]) == 2    # other settings: refused
    assert "other settings (temperature: 0.0 -> 0.5" in capsys.readouterr().err
    assert evaluate_main([*argv[:-2], "--samples", "3"]) == 2
    assert "needs --temperature" in capsys.readouterr().err


@pytest.mark.slow
def test_data_parallel_processes_share_the_items(tiny_path, image_file, tmp_path):
    """`--devices cpu,cpu`: two processes, each its share of the items, one report."""
    from thyme_train.evaluate import main as evaluate_main

    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps({"image": image_file, "question": f"Q{i}?", "answer": "red"})
                               for i in range(4)) + "\n")
    out = tmp_path / "dp"
    assert evaluate_main(["--model", tiny_path, "--benchmark", str(bench), "--out", str(out),
                          "--max-new-tokens", "4", "--max-turns", "1", "--no-ablation",
                          "--devices", "cpu,cpu", "--bootstrap", "20"]) == 0
    shards = sorted(p.name for p in (out / "bench").glob("records.*.jsonl"))
    assert shards == ["records.0-of-2.jsonl", "records.1-of-2.jsonl"]
    ids = [json.loads(x)["id"] for p in shards for x in (out / "bench" / p).read_text().splitlines()]
    assert sorted(ids) == ["1", "2", "3", "4"]
    results = json.loads((out / "bench" / "results.json").read_text())
    assert results["summaries"]["tools"]["items"] == 4
    assert len(results["settings"]["sandbox_isolation"]) == 2   # each process's sandbox
