"""Evaluation without a model: benchmark formats read from files in their real layouts, each
benchmark's own metric, Avg@k/pass@k with intervals, resuming a killed run, the judge, tool-use
quality and the summary over several benchmarks, on fake policies whose answers are known."""

import base64
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from thyme_train.benchmarks import combine, parse_spec, stats
from thyme_train.eval_data import BenchmarkError, EvalItem, load_items
from thyme_train.eval_store import RecordStore, SettingsMismatch
from thyme_train.evaluate import Answered, evaluate, per_item, run, score

FIXTURES = Path(__file__).parent / "data" / "benchmarks"


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _write_tsv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def answer(text: str, code: int = 0, ok: int | None = None) -> Answered:
    return Answered(response=f"<think>x</think> <answer>{text}</answer>", code_blocks=code,
                    code_ok=code if ok is None else ok)


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------

def test_vlmevalkit_tsv(tmp_path):
    b64 = base64.b64encode(_png()).decode()
    _write_tsv(tmp_path / "bench.tsv", [
        {"index": "0", "image": b64, "question": "What colour is the cup?", "A": "red", "B": "blue",
         "C": "", "answer": "A", "category": "attribute", "hint": "", "split": "dev"},
        # VLMEvalKit writes a repeated image as the index of the row holding it
        {"index": "1", "image": "0", "question": "Is the cup left of the plate?", "A": "yes",
         "B": "no", "C": "", "answer": "B", "category": "position", "hint": "Look closely.",
         "split": "dev"},
    ])
    items = load_items(tmp_path / "bench.tsv", tmp_path / "img")
    assert [i.id for i in items] == ["0", "1"]
    assert items[0].options == {"A": "red", "B": "blue"} and items[0].category == "attribute"
    assert items[1].image == items[0].image and Image.open(items[0].image).size == (40, 30)
    assert items[0].meta == {"split": "dev"}
    # the released Thyme evaluation's MCQ wording (its VLMEvalKit prompt mixin)
    assert items[1].prompt_text() == ("Hint: Look closely.\nQuestion: Is the cup left of the plate?"
                                      "\nOptions:\nA. yes\nB. no\n"
                                      "Please select the correct answer from the options above.")


def test_fixtures_in_their_real_layouts(tmp_path):
    images = tmp_path / "img"
    vstar = load_items(FIXTURES / "VStarBench.tsv", images)
    assert [i.category for i in vstar].count("relative_position") == 2
    assert vstar[4].image == vstar[3].image and vstar[3].options == {"A": "left", "B": "right"}
    hr = load_items(FIXTURES / "hr_bench_4k.tsv", images)
    assert len(hr) == 8 and {i.meta["cycle_category"] for i in hr} == {f"cycle{c}" for c in range(1, 5)}
    assert [i.answer for i in hr[:4]] == ["A", "D", "C", "B"]     # the right option rotates
    lite = load_items(FIXTURES / "MME-RealWorld-Lite.tsv", images)
    full = load_items(FIXTURES / "MME-RealWorld.tsv", images)
    assert [i.options for i in lite] == [i.options for i in full]  # list literal == A-E columns
    assert lite[0].options["E"] == "The image does not feature the cars"
    assert lite[2].category == "Reasoning/Autonomous_Driving" and lite[2].meta["l2-category"]
    hall = load_items(FIXTURES / "HallusionBench.tsv", images, yes_no=True)
    assert hall[0].prompt_text().endswith("? Please answer yes or no.")
    ocr = load_items(FIXTURES / "OCRBench.tsv", images)
    assert ocr[0].prompt_text().endswith("with short words or phrases if possible.")


def test_vstar_release_folder_gives_boxes_and_a_seeded_option_order(tmp_path):
    items = load_items(FIXTURES / "vstar_bench", tmp_path / "img")
    assert [i.id for i in items] == ["direct_attributes/sa_1", "direct_attributes/sa_2",
                                     "relative_position/sa_3"]
    first = items[0]
    assert first.options[first.answer] == "red"                   # the JSON's first option
    assert first.boxes == [[40.0, 30.0, 60.0, 40.0]] and first.meta["targets"] == ["clock"]
    assert len(items[2].boxes) == 2
    again = load_items(FIXTURES / "vstar_bench", tmp_path / "img")
    assert [i.options for i in again] == [i.options for i in items]   # reproducible order
    other = load_items(FIXTURES / "vstar_bench", tmp_path / "img", option_seed=7)
    letters = {i.answer for s in range(12) for i in load_items(
        FIXTURES / "vstar_bench", tmp_path / "img", option_seed=s)[:2]}
    assert len(letters) > 1 and other[0].options[other[0].answer] == "red"


def test_jsonl_with_relative_image_paths(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png())
    lines = [{"image": "pics/a.png", "question": "How many?", "answer": "3", "category": "count",
              "bbox": [1, 2, 3, 4]},
             {"question": "2+2?", "answer": "4", "options": ["3", "4"]}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    items = load_items(tmp_path / "b.jsonl", tmp_path / "img")
    assert items[0].image and items[0].image.endswith(".png") and items[0].boxes == [[1, 2, 3, 4]]
    assert items[1].image is None and items[1].options == {"A": "3", "B": "4"}


def test_published_split(tmp_path):
    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user

    user = render_user("Which option?\nOptions:\nA. cat\nB. dog", "images/x.png", (40, 30))
    table = pa.table({
        "id": ["r1"], "task": ["crop"],
        "messages": [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                      {"role": "user", "content": user}]],
        "images": [[base64.b64encode(_png()).decode()]], "solution": ["B"],
        "meta": [json.dumps({"options": ["A. cat", "B. dog"]})],
    })
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "ds" / "data" / "test-00000-of-00001.parquet")
    (item,) = load_items(tmp_path / "ds", tmp_path / "img", split="test")
    assert item.question.startswith("Which option?") and "User Image Path" not in item.question
    assert item.options == {"A": "cat", "B": "dog"} and item.prompt_text() == item.question
    assert item.category == "crop" and item.answer == "B"


def test_a_published_row_with_several_images_is_an_error_of_that_row(tmp_path):
    from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, render_user

    def row(rid, images):
        user = "<image>\n" * (images - 1) + render_user(f"Question {rid}?", "x.png", (40, 30))
        return {"id": rid, "messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                        {"role": "user", "content": user}],
                "images": [base64.b64encode(_png()).decode()] * images, "solution": "A"}

    shard = tmp_path / "ds" / "data" / "test-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row("one", 1), row("two", 2)]), shard)
    with pytest.raises(BenchmarkError, match=r"test-00000-of-00001.parquet: row two: 2 images: "
                                             r"the evaluation asks one image per item"):
        load_items(tmp_path / "ds", tmp_path / "img", split="test")
    errors = []
    items = load_items(tmp_path / "ds", tmp_path / "img", split="test", on_error="skip",
                       errors=errors)
    assert [i.id for i in items] == ["one"] and [e.row for e in errors] == ["two"]


def test_broken_rows_name_file_and_row(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "1", "image": "nope.png"}\n'
                                        '{"answer": "2"}\n'
                                        '{"question": "ok", "answer": "3"}\n'
                                        '{"id": 3, "question": "dup", "answer": "4"}\n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl: row 1: .*neither a file nor base64"):
        load_items(tmp_path / "bad.jsonl", tmp_path / "img")
    errors = []
    items = load_items(tmp_path / "bad.jsonl", tmp_path / "img", on_error="skip", errors=errors)
    assert [i.answer for i in items] == ["3"]
    assert [(e.row, "question" in e.reason) for e in errors] == [(1, False), (2, True), ("3", False)]
    assert "duplicate id" in errors[2].reason
    _write_tsv(tmp_path / "lite.tsv", [{"index": "0", "image": base64.b64encode(_png()).decode(),
                                        "question": "q", "multi-choice options": "__import__('os')",
                                        "answer": "A"}])
    with pytest.raises(BenchmarkError, match=r"lite.tsv: row 1 \(index 0\): malformed node"):
        load_items(tmp_path / "lite.tsv", tmp_path / "img")      # literal_eval, never eval
    (tmp_path / "bench.txt").write_text("")
    with pytest.raises(BenchmarkError, match="unknown benchmark format"):
        load_items(tmp_path / "bench.txt", tmp_path / "img")


def test_benchmark_specs():
    assert parse_spec("data/hr_bench_8k.tsv").kind == "hrbench"
    assert parse_spec("mme=data/x.tsv").kind == "generic"
    assert parse_spec("mme:mme_realworld=data/x.tsv").kind == "mme_realworld"
    assert parse_spec("V=tests/data/benchmarks/vstar_bench").name == "V"
    with pytest.raises(ValueError, match="kind 'nope'"):
        parse_spec("a:nope=x.tsv")


# ---------------------------------------------------------------------------------------------
# Scoring and metrics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,response,truth,options,category,correct", [
    ("generic", "<answer>B</answer>", "B", {"A": "x", "B": "y"}, "", True),
    ("generic", "<answer>(C) green</answer>", "B", {"A": "x", "B": "y", "C": "green"}, "", False),
    ("generic", "The answer is \\boxed{12}", "12", None, "", True),
    ("generic", "<answer>12.0 cm</answer>", "12", None, "", True),
    ("generic", "no tags at all", "7", None, "", False),
    # OCRBench's own rule: a truth inside the answer, case-insensitive; formulas without spaces
    ("ocrbench", "<answer>It reads CENTRE.</answer>", "['Centre', 'center']", None, "x", True),
    ("ocrbench", "<answer>Cent</answer>", "['Centre']", None, "x", False),
    ("ocrbench", "<answer>$x^{2}+1$</answer>", "['x^{2} + 1']", None,
     "Handwritten Mathematical Expression Recognition", True),
])
def test_score(kind, response, truth, options, category, correct):
    item = EvalItem(id="1", image=None, question="q", answer=truth, options=options or {},
                    category=category)
    assert score(kind, item, Answered(response=response))[0] is correct


def _records(rows, kind="generic"):
    """Records as the evaluator writes them, from (id, category, correct, meta) rows."""
    from thyme_train.benchmarks import cluster_key
    out = []
    for rid, category, correct, meta in rows:
        r = {"mode": "tools", "id": rid, "sample": 0, "category": category, "correct": correct,
             "meta": meta}
        r["cluster"] = cluster_key(kind, {**r, "image": meta.get("image"), "question": meta.get("q")})
        out.append(r)
    return out


def _metrics(kind, rows):
    """The metrics from stats summed over clusters (as the report's bootstrap sums them)."""
    clusters, sums = {}, {}
    for r in _records(rows, kind):
        clusters.setdefault(r["cluster"], []).append(r)
    for records in clusters.values():
        for k, (a, b) in stats(kind, records).items():
            x, y = sums.get(k, (0, 0))
            sums[k] = (x + a, y + b)
    return combine(kind, sums)


def test_each_benchmarks_own_metric():
    # HR-Bench: accuracy per cycle, then the mean over cycles (cycle 2 has 3 items, cycle 1 one)
    hr = _metrics("hrbench", [("0", "single", True, {"cycle_category": "c1"}),
                              ("1", "single", True, {"cycle_category": "c2"}),
                              ("2", "cross", False, {"cycle_category": "c2"}),
                              ("3", "cross", False, {"cycle_category": "c2"})])
    assert hr["overall"] == pytest.approx((1 + 1 / 3) / 2) and hr["single"] == 1.0
    assert hr["cross"] == 0.0
    # MME-RealWorld: overall, per task, per task/subtask
    mme = _metrics("mme_realworld", [("0", "Perception/Monitoring", True, {}),
                                     ("1", "Perception/OCR", False, {}),
                                     ("2", "Reasoning/Monitoring", True, {})])
    assert list(mme)[:3] == ["overall", "Perception", "Reasoning"]
    assert mme["Perception"] == 0.5 and mme["Perception/OCR"] == 0.0
    # HallusionBench: aAcc per question, fAcc per figure, qAcc per question across figures
    hall = _metrics("hallusionbench", [("VD_c_x_0_0_0", "VD", True, {"l2-category": "chart"}),
                                       ("VD_c_x_0_0_1", "VD", False, {"l2-category": "chart"}),
                                       ("VD_c_x_0_1_0", "VD", True, {"l2-category": "chart"}),
                                       ("VD_c_x_0_1_1", "VD", True, {"l2-category": "chart"})])
    assert (hall["aAcc"], hall["fAcc"], hall["qAcc"]) == (0.75, 0.5, 0.5)
    assert hall["overall"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    ocr = _metrics("ocrbench", [("0", "Regular Text Recognition", True, {}),
                                ("1", "Digit String Recognition", False, {}),
                                ("2", "Doc-oriented VQA", True, {})])
    assert ocr["Text Recognition"] == 0.5 and ocr["overall"] == pytest.approx(2 / 3)


def test_report_on_a_fake_policy_with_known_accuracy(tmp_path):
    items = [EvalItem(id=str(i), image=None, question=f"{i}+1?", answer=str(i + 1),
                      category="even" if i % 2 == 0 else "odd") for i in range(20)]

    def policy(item: EvalItem, tools: bool) -> Answered:
        i = int(item.id)
        if i == 19:
            raise RuntimeError("engine died")           # recorded on this wave only
        right = (i % 4 != 0) if tools else (i % 2 == 0)  # tools: 15/20 right; direct: 10/20
        code = 1 if tools and i % 5 == 0 else 0
        a = answer(str(i + 1) if right else "-1", code, code if i != 10 else 0)
        a.calls = [{"ops": ["crop"], "ok": i != 10, "crop": None}] if code else []
        return a

    summary = evaluate(items, per_item(policy), tmp_path / "out", title="fake", batch_items=1)
    tools, direct = summary["tools"], summary["direct"]
    assert tools["metrics"]["overall"]["avg"] == pytest.approx(14 / 20)   # 15 minus item 19
    assert tools["metrics"]["even"]["avg"] == pytest.approx(5 / 10)
    assert direct["metrics"]["overall"]["avg"] == pytest.approx(10 / 20)
    t = tools["tool_use"]
    assert t["used_code"] == pytest.approx(4 / 20) and t["execution_success"] == pytest.approx(3 / 4)
    assert t["errors"] == 1 and t["operations"]["crop"]["calls"] == 4
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (rec,) = [r for r in results["items"] if r["id"] == "19" and r["mode"] == "tools"]
    assert rec["how"].startswith("engine error: RuntimeError")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| tools | 20 | 70.0 [" in md and "| direct | 20 | 50.0 [" in md
    assert Image.open(tmp_path / "out" / "accuracy.png").size[0] > 300


# ---------------------------------------------------------------------------------------------
# Samples, intervals, resuming
# ---------------------------------------------------------------------------------------------

def _coin_policy(rate: float):
    """Right on a fixed share of (item, sample) pairs, the same whatever the batch."""
    import zlib

    def policy(items, tools, samples):
        return [[answer(it.answer if zlib.crc32(f"{it.id}/{j}".encode()) % 1000 < rate * 1000
                        else "wrong") for j in range(samples)] for it in items]
    return policy


def _items(n):
    return [EvalItem(id=str(i), image=None, question="q", answer=f"a{i}") for i in range(n)]


def test_avg_at_k_pass_at_k_and_interval_widths(tmp_path):
    small = evaluate(_items(40), _coin_policy(0.6), tmp_path / "s", "s", ablation=False, samples=4,
                     bootstrap=300)["tools"]
    big = evaluate(_items(400), _coin_policy(0.6), tmp_path / "b", "b", ablation=False, samples=4,
                   bootstrap=300)["tools"]
    records = [json.loads(x) for x in (tmp_path / "s" / "records.0-of-1.jsonl").read_text().splitlines()]
    by_item = {}
    for r in records:
        by_item.setdefault(r["id"], []).append(r["correct"])
    m = small["metrics"]["overall"]
    assert m["avg"] == pytest.approx(sum(map(sum, by_item.values())) / 160)      # Avg@4
    assert m["pass"] == pytest.approx(sum(map(any, by_item.values())) / 40)      # pass@4
    assert m["ci"][0] < m["avg"] < m["ci"][1]
    assert len(small["runs"]) == 4 and small["run_std"] > 0
    width = lambda s: s["metrics"]["overall"]["ci"][1] - s["metrics"]["overall"]["ci"][0]  # noqa: E731
    assert width(big) < width(small) / 2                          # ~ 1/sqrt(n)
    again = evaluate(_items(40), _coin_policy(0.6), tmp_path / "s2", "s", ablation=False, samples=4,
                     bootstrap=300)["tools"]
    assert again["metrics"]["overall"]["ci"] == m["ci"]           # seeded: reproducible


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    asked = []

    def dies_at_third_wave(items, tools, samples):
        if len(asked) == 2:
            raise KeyboardInterrupt                   # a kill, not an engine error
        asked.append([i.id for i in items])
        return _coin_policy(0.5)(items, tools, samples)

    items = _items(10)
    store = RecordStore(tmp_path / "b", {"model": "m"})
    with pytest.raises(KeyboardInterrupt):
        run("generic", items, dies_at_third_wave, store, batch_items=3)
    with open(store.path, "a") as f:
        f.write('{"mode": "tools", "id": "6", "sam')            # cut off mid-line by the kill
    asked.clear()
    store = RecordStore(tmp_path / "b", {"model": "m"})
    assert run("generic", items, lambda *a: (asked.append([i.id for i in a[0]]),
                                             _coin_policy(0.5)(*a))[1], store, batch_items=3) == 4
    assert asked == [["6", "7", "8"], ["9"]]                  # only what was missing
    records = store.records()
    assert sorted(int(r["id"]) for r in records) == list(range(10))
    assert store.dropped == ["records.0-of-1.jsonl:7"]
    with pytest.raises(SettingsMismatch, match=r"temperature: None -> 0.7"):
        RecordStore(tmp_path / "b", {"model": "m", "temperature": 0.7})
    assert not RecordStore(tmp_path / "b", {"model": "m", "temperature": 0.7}, restart=True).records()


def test_engine_errors_are_asked_again_on_the_next_run(tmp_path):
    def flaky(items, tools, samples):
        if any(i.id == "1" for i in items):
            raise ConnectionError("server went away")
        return _coin_policy(1.0)(items, tools, samples)

    store = RecordStore(tmp_path / "e", {})
    run("generic", _items(3), flaky, store)               # one wave: all three fail
    assert [r["error"] is not None for r in store.records()] == [True, True, True]
    asked = []
    run("generic", _items(3), lambda *a: (asked.append(len(a[0])), _coin_policy(1.0)(*a))[1], store)
    assert asked == [3] and all(r["error"] is None and r["correct"] for r in store.records())


# ---------------------------------------------------------------------------------------------
# Judge, tool use, several benchmarks
# ---------------------------------------------------------------------------------------------

def test_the_judge_decides_open_answers_no_rule_can(tmp_path):
    from fake_openai import FakeOpenAI

    from thyme_train.eval_cli import build_parser, make_judge

    server = FakeOpenAI(reply=lambda body: "yes" if "crimson" in str(body["messages"]) else "no")
    try:
        args = build_parser().parse_args(["--model", "m", "--benchmark", "x.jsonl", "--judge-model",
                                          "judge", "--judge-url", server.url, "--judge-key-env",
                                          "THYME_NO_SUCH_KEY"])
        items = [EvalItem(id="0", image=None, question="Colour?", answer="red"),
                 EvalItem(id="1", image=None, question="Colour?", answer="red"),
                 EvalItem(id="2", image=None, question="Colour?", answer="red")]
        replies = {"0": "crimson", "1": "a bluish tone", "2": "red"}
        summary = evaluate(items, per_item(lambda it, tools: answer(replies[it.id])),
                           tmp_path / "j", "j", ablation=False, judge=make_judge(args))
    finally:
        server.close()
    records = {r["id"]: r for r in json.loads((tmp_path / "j" / "results.json").read_text())["items"]}
    assert (records["0"]["correct"], records["0"]["how"]) == (True, "judge")
    assert (records["1"]["correct"], records["1"]["how"]) == (False, "judge")
    assert records["2"]["how"] != "judge" and server.requests == 2     # rules first
    assert summary["tools"]["tool_use"]["judged"] == 2


def test_faithful_crops_and_operations(tmp_path):
    from thyme_train.crops import coverage, locate_crop, operations

    (item,) = load_items(FIXTURES / "vstar_bench", tmp_path / "img")[:1]
    with Image.open(item.image) as img:
        img.crop((20, 10, 140, 100)).resize((240, 180)).save(tmp_path / "zoom.png")
        img.crop((200, 150, 320, 240)).save(tmp_path / "corner.png")
        img.rotate(90, expand=True).save(tmp_path / "turned.png")
    found = locate_crop(item.image, str(tmp_path / "zoom.png"))
    assert found and all(abs(a - b) <= 3 for a, b in zip(found.box, (20, 10, 140, 100), strict=True))
    assert coverage(item.boxes[0], found.box) == 1.0                       # the clock is inside
    corner = locate_crop(item.image, str(tmp_path / "corner.png"))
    assert corner and coverage(item.boxes[0], corner.box) == 0.0
    assert locate_crop(item.image, str(tmp_path / "turned.png")) is None   # not a crop
    assert operations("im = Image.open(image_path)\nim.crop((1, 2, 3, 4)).resize((8, 8))") == \
        ["crop", "resize"]
    assert operations("img.rotate(-30, expand=True)") == ["rotate"]
    assert operations("ImageEnhance.Contrast(img).enhance(2.0)") == ["contrast"]
    assert operations("print(3 * 7)") == ["other"]

    def policy(it, tools):         # item 1 crops its target, item 2 a wrong region, item 3 rotates
        calls = {"direct_attributes/sa_1": [{"ops": ["crop"], "ok": True, "crop": {"contains": True,
                                                                                  "area_share": 0.1}}],
                 "direct_attributes/sa_2": [{"ops": ["crop"], "ok": True, "crop": {"contains": False,
                                                                                  "area_share": 0.2}}],
                 "relative_position/sa_3": [{"ops": ["rotate"], "ok": True, "crop": None}]}[it.id]
        a = answer(it.answer if it.id != "direct_attributes/sa_2" else "Z", code=1)
        a.calls = calls
        return a

    items = load_items(FIXTURES / "vstar_bench", tmp_path / "img")
    summary = evaluate(items, per_item(policy), tmp_path / "v", "v", kind="vstar", ablation=False)
    f = summary["tools"]["tool_use"]["faithful"]
    assert (f["crop_calls"], f["located"], f["contain_target"]) == (2, 2, 0.5)
    assert (f["accuracy_faithful"], f["accuracy_unfaithful"]) == (1.0, 0.0)
    ops = summary["tools"]["tool_use"]["operations"]
    assert ops["rotate"] == {"calls": 1, "ok": 1.0, "answers": 1, "accuracy": 1.0}
    assert "crops holding the target" in (tmp_path / "v" / "report.md").read_text()


def test_several_benchmarks_one_summary_table(tmp_path):
    from thyme_train.eval_report import write_summary

    rows = {}
    for spec in ("hrbench4k=" + str(FIXTURES / "hr_bench_4k.tsv"), str(FIXTURES / "OCRBench.tsv")):
        b = parse_spec(spec)
        items = load_items(b.path, tmp_path / "img")
        rows[b.name] = (b.kind, evaluate(items, per_item(lambda it, tools: answer(
            it.answer if tools else "nothing")), tmp_path / b.name, b.name, kind=b.kind, bootstrap=100))
    paths = write_summary(rows, {"model": "m", "prompt_set": "thyme"}, tmp_path, "two")
    md = paths["markdown"].read_text()
    assert "| hrbench4k | hrbench | 8 | 100.0 [100.0, 100.0] | 0.0 [0.0, 0.0] | 100.0 |" in md
    assert "| OCRBench | ocrbench | 3 |" in md and "prompt_set=thyme" in md
    assert json.loads(paths["json"].read_text())["benchmarks"]["OCRBench"]["kind"] == "ocrbench"


def test_waves_are_shared_over_servers():
    from thyme_train.eval_cli import split_over

    seen = []

    def server(name):
        def policy(items, tools, samples):
            seen.append((name, [i.id for i in items]))
            return [[answer(f"{name}:{i.id}")] * samples for i in items]
        return policy

    shared = split_over([server("a"), server("b")])
    out = shared(_items(5), True, 2)
    assert [a[0].response.split("<answer>")[1][:3] for a in out] == ["a:0", "b:1", "a:2", "b:3", "a:4"]
    assert sorted(seen) == [("a", ["0", "2", "4"]), ("b", ["1", "3"])] and len(out[0]) == 2
