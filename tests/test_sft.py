"""SFT on the tiny Qwen2.5-VL: config loading, data selection, the learning test, the masking
control on the trainer's own loss, save/reload/resume, ZeRO-2 on CPU, stage 2 with mixed rows."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sft_data import write_dataset

from pipelines.core.prompts import load_prompt_set, recorded_prompt_set
from thyme_train.chat import IGNORE
from thyme_train.config import load_config, parse_config
from thyme_train.data import data_files, load_rows, measure_and_filter
from thyme_train.sft import LOSS_CURVE_FILE, METRICS_FILE, ThymeSFTConfig, build_trainer, train
from thyme_train.tiny import build_tiny_model

CONFIGS = Path(__file__).resolve().parent.parent / "thyme_train" / "configs"


@pytest.fixture(scope="module")
def tiny(request):
    return build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "default")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("sft") / "thyme-sft")


def tiny_config(tiny, dataset, out, **overrides) -> ThymeSFTConfig:
    """stage1_tiny.yaml pointed at the test's model, data and output directory."""
    sets = [f"model=tiny:{tiny}", f"data={dataset}", f"output_dir={out}", "resume=never",
            f"cache_dir={Path(out).parent / 'hf-cache'}"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(ThymeSFTConfig, CONFIGS / "stage1_tiny.yaml", sets)


# ------------------------------------------------------------------ configuration and data

def test_shipped_configs_load_and_every_field_is_documented():
    stages = {name: load_config(ThymeSFTConfig, CONFIGS / f"{name}.yaml")
              for name in ("stage1", "stage2", "stage1_tiny", "stage2_tiny")}
    assert stages["stage1"].learning_rate == 1e-5 and stages["stage2"].learning_rate == 1e-6
    assert stages["stage1"].train_last_round_only and not stages["stage2"].train_last_round_only
    assert stages["stage2"].splits == ["computation"]
    assert stages["stage1"].deepspeed.endswith("zero2.json")
    assert all(s.mask_sandbox_outputs for s in stages.values())
    for name in ("zero2", "zero3"):
        ds = json.loads((CONFIGS / "deepspeed" / f"{name}.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
    import dataclasses
    for f in dataclasses.fields(ThymeSFTConfig):
        assert len(f.metadata.get("help", "")) > 15, f.name


def test_set_overrides_are_typed_and_typos_are_refused(tmp_path):
    cfg = parse_config(ThymeSFTConfig, [
        "--config", str(CONFIGS / "stage1.yaml"), "--set", "learning_rate=2e-5",
        "--set", "freeze_merger=true", "--set", "splits=computation,2round",
        "--set", "deepspeed=null", "--set", "max_steps=7", "--local_rank=0"])
    assert cfg.learning_rate == 2e-5 and isinstance(cfg.learning_rate, float)
    assert cfg.freeze_merger is True and cfg.max_steps == 7 and cfg.deepspeed is None
    assert cfg.splits == ["computation", "2round"]
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rat'\]"):
        load_config(ThymeSFTConfig, CONFIGS / "stage1.yaml", ["learning_rat=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [x]\nmask_sandbox_output: false\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown config key"):
        load_config(ThymeSFTConfig, bad)
    with pytest.raises(ValueError, match="max_steps=many"):
        load_config(ThymeSFTConfig, CONFIGS / "stage1.yaml", ["max_steps=many"])


def test_data_files_pick_splits_and_one_encoding(tmp_path):
    for enc in ("thyme", "hf"):
        for split in ("wo_thinking_thyme_single_round", "2round", "computation", "test"):
            path = tmp_path / "pub" / "data" / enc / f"{split}-00000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    names = lambda files: sorted(f"{f.parent.name}/{f.name}" for f in files)  # noqa: E731
    assert names(data_files([str(tmp_path / "pub")], ["wo_thinking_thyme_single_round",
                                                      "2round"])) == [
        "thyme/2round-00000.parquet", "thyme/wo_thinking_thyme_single_round-00000.parquet"]
    assert names(data_files([str(tmp_path / "pub")], ["computation"], "hf")) == [
        "hf/computation-00000.parquet"]
    with pytest.raises(FileNotFoundError, match="no parquet files.*nope"):
        data_files([str(tmp_path / "pub")], ["nope"])


@pytest.mark.slow
def test_long_rows_are_dropped_and_counted_never_cut(tiny, dataset, tmp_path):
    from transformers import AutoProcessor

    from thyme_train.chat import ThymeChat

    chat = ThymeChat(AutoProcessor.from_pretrained(tiny), train_last_round_only=True)
    rows = load_rows(data_files([str(dataset)], ["wo_thinking_thyme_single_round", "2round"]),
                     cache_dir=str(tmp_path))
    kept, dropped, lengths = measure_and_filter(rows, chat, max_length=300,
                                                skip_malformed=False, num_proc=1)
    # The 2round rows (3 images, two code blocks) are longer than 300 tokens; nothing is cut.
    assert dropped == {"too_long": 8} and len(kept) == 24
    assert all(chat.length(r) == r["_length"] <= 300 for r in kept)
    assert max(lengths) > 300


# ------------------------------------------------------------------ the loss

def _grad_by_target(trainer, batch):
    """The gradient norm reaching the final hidden state at each position, from the trainer's
    own loss. Position t predicts token t+1, and nothing after the final norm mixes positions."""
    model = trainer.model
    seen = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen["hidden"] = output

    handle = model.model.language_model.norm.register_forward_hook(keep)
    try:
        model.train()
        model.zero_grad()
        trainer.compute_loss(model, dict(batch)).backward()
    finally:
        handle.remove()
    return seen["hidden"].grad.norm(dim=-1)[:, :-1]   # gradient for target token t+1


@pytest.mark.slow
def test_no_gradient_flows_from_sandbox_output_tokens(tiny, dataset, tmp_path):
    masked = build_trainer(tiny_config(tiny, dataset, tmp_path / "a", train_last_round_only=False))
    naive = build_trainer(tiny_config(tiny, dataset, tmp_path / "b", train_last_round_only=False,
                                      mask_sandbox_outputs=False))
    rows = [masked.trainer.train_dataset[i] for i in (0, 5, 26, 30)]  # single and 2round rows
    on, off = masked.trainer.data_collator(rows), naive.trainer.data_collator(rows)
    assert torch.equal(on["input_ids"], off["input_ids"])
    # Sandbox tokens: trained by the naive run, masked by ours (image tokens neither).
    sandbox = (off["labels"][:, 1:] != IGNORE) & (on["labels"][:, 1:] == IGNORE)
    trained = on["labels"][:, 1:] != IGNORE
    assert sandbox.sum() > 20

    naive.trainer.model.load_state_dict(masked.trainer.model.state_dict())
    g_on = _grad_by_target(masked.trainer, on)
    g_off = _grad_by_target(naive.trainer, off)
    assert g_on[sandbox].abs().max() == 0          # not a single gradient from sandbox outputs
    assert (g_on[trained] > 0).all()               # while every trained target has one
    assert (g_off[sandbox] > 0).all()              # the control: without masking they do


@pytest.mark.slow
def test_the_model_learns_its_own_writing(tiny, dataset, tmp_path):
    out = tmp_path / "learn"
    metrics = train(tiny_config(tiny, dataset, out, max_steps=20))
    losses = [v for _, v in metrics["losses"]]
    assert len(losses) == 20 and metrics["steps"] == 20
    # On the unmasked tokens, the loss falls by more than half within 20 CPU steps.
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    assert metrics["best_loss"] == min(losses) and metrics["final_loss"] == losses[-1]
    assert metrics["samples_trained"] == 32 and metrics["samples_dropped"] == 0
    assert metrics["dataset"]["fingerprint"] and metrics["parameters"]["trainable"] > 0
    # The vision tower is frozen, the merger trains (the shipped tiny config).
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    on_disk = json.loads((out / METRICS_FILE).read_text())
    assert on_disk["final_loss"] == metrics["final_loss"]
    assert (out / LOSS_CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the model folder carries the set it trained with, whole, for evaluate and infer
    assert recorded_prompt_set(out) == load_prompt_set(metrics["config"]["prompt_set"])
    assert on_disk["prompt_set"] == "thyme"


@pytest.mark.slow
def test_save_reload_resume_continues_with_the_same_step_and_loss(tiny, dataset, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = dict(save_steps=3, learning_rate=2e-3)
    straight = train(tiny_config(tiny, dataset, tmp_path / "a", max_steps=6, **common))
    train(tiny_config(tiny, dataset, tmp_path / "b", max_steps=3, **common))
    assert (tmp_path / "b" / "checkpoint-3").is_dir()
    # an intermediate checkpoint carries its prompts too (evaluate it without naming them)
    assert recorded_prompt_set(tmp_path / "b" / "checkpoint-3") == load_prompt_set("thyme")
    resumed = train(tiny_config(tiny, dataset, tmp_path / "b", max_steps=6, resume="auto",
                                **common))
    assert resumed["resumed_from"] == "checkpoint-3" and resumed["steps"] == 6
    assert [s for s, _ in resumed["losses"]][-3:] == [4, 5, 6]
    after = dict(resumed["losses"])
    for step, loss in straight["losses"][3:]:
        assert after[step] == pytest.approx(loss, rel=1e-4), step

    from transformers import AutoModelForImageTextToText, AutoProcessor

    a = AutoModelForImageTextToText.from_pretrained(tmp_path / "a")
    b = AutoModelForImageTextToText.from_pretrained(tmp_path / "b")
    AutoProcessor.from_pretrained(tmp_path / "b")  # the output reloads as a whole
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


# ------------------------------------------------------------------ launchers and stage 2

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_zero2_on_cpu_with_one_process(tiny, dataset, tmp_path):
    out = tmp_path / "z2"
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "thyme_train.sft", "--config",
           str(CONFIGS / "stage1_tiny.yaml"), "--set", f"model=tiny:{tiny}",
           "--set", f"data={dataset}", "--set", f"output_dir={out}",
           "--set", "deepspeed=thyme_train/configs/deepspeed/zero2.json",
           "--set", "max_steps=4", "--set", "save_steps=4", "--set", "learning_rate=2e-3",
           "--set", f"cache_dir={tmp_path / 'hf-cache'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=CONFIGS.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["steps"] == 4 and metrics["final_loss"] < metrics["losses"][0][1]
    # DeepSpeed's own checkpoint layout: ZeRO partitioned optimizer states.
    assert list((out / "checkpoint-4" / "global_step4").glob("zero_pp_rank_0_*optim_states.pt"))
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 4


@pytest.mark.slow
def test_stage2_mixes_rows_with_and_without_images(tiny, dataset, tmp_path):
    cfg = load_config(ThymeSFTConfig, CONFIGS / "stage2_tiny.yaml", [
        f"model=tiny:{tiny}", f"data={dataset}", f"output_dir={tmp_path / 's2'}",
        "max_steps=3", "per_device_train_batch_size=6", f"cache_dir={tmp_path / 'hf-cache'}"])
    run = build_trainer(cfg)
    rows = run.trainer.train_dataset
    with_image = [bool(r["image"]) for r in rows]
    assert len(rows) == 12 and sum(with_image) == 6
    batch = run.trainer.data_collator([rows[i] for i in range(6)])
    assert 0 < batch["image_grid_thw"].shape[0] < 6  # one batch, both kinds of row
    metrics = train(cfg)
    assert metrics["steps"] == 3 and metrics["samples_trained"] == 12
    assert all(v == v and v < 10 for _, v in metrics["losses"])  # finite


def test_hf_encoding_rows_encode_like_thyme_rows(tiny, dataset, tmp_path):
    import datasets
    from transformers import AutoProcessor

    from thyme_train.chat import ThymeChat, decode_image

    thyme = load_rows(data_files([str(dataset)], ["2round"]), cache_dir=str(tmp_path / "c"))
    rows = thyme.select(range(2))
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "question": datasets.Value("string"),
                                  "response": datasets.Value("string")})
    hf = datasets.Dataset.from_dict(
        {"images": [[decode_image(i) for i in r["image"]] for r in rows],
         "question": rows["question"], "response": rows["response"]}, features=features)
    (tmp_path / "data" / "hf").mkdir(parents=True)
    hf.to_parquet(str(tmp_path / "data" / "hf" / "2round-00000.parquet"))
    loaded = load_rows(data_files([str(tmp_path)], ["2round"], "hf"), cache_dir=str(tmp_path / "c"))
    chat = ThymeChat(AutoProcessor.from_pretrained(tiny))
    for a, b in zip(rows, loaded, strict=True):
        ea, eb = chat.encode(a), chat.encode(b)
        assert ea.input_ids == eb.input_ids and ea.labels == eb.labels
        assert torch.allclose(ea.pixel_values, eb.pixel_values)


def test_malformed_rows_stop_with_their_origin_or_are_counted(tiny, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sft_data import single_round, thyme_table
    from transformers import AutoProcessor

    from thyme_train.chat import ThymeChat

    table = thyme_table([single_round(0), single_round(1)]).to_pylist()
    table[1]["response"] = table[1]["response"].replace("</sandbox_output>", "")
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "rows.parquet")
    rows = load_rows([tmp_path / "rows.parquet"], cache_dir=str(tmp_path / "c"))
    chat = ThymeChat(AutoProcessor.from_pretrained(tiny))
    with pytest.raises(ValueError, match=r"rows.parquet:1: unbalanced_tags: .*never closed"):
        measure_and_filter(rows, chat, 2048, skip_malformed=False, num_proc=1)
    kept, dropped, _ = measure_and_filter(rows, chat, 2048, skip_malformed=True, num_proc=1)
    assert len(kept) == 1 and dropped == {"unbalanced_tags": 1}


@pytest.mark.slow
def test_rows_published_by_the_pipeline_encode_with_exact_masks(tiny, tmp_path_factory, tmp_path):
    """Real audited trajectories (template teacher, sandbox, audit), split and published by
    pipelines.datasets.publish: every row of both encodings measures, batches and masks as it should."""
    import re

    import thyme_corpus

    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import SplitConfig, build_splits

    root, _ = thyme_corpus.corpus(tmp_path_factory)
    report = build_splits(*thyme_corpus.files(root), tmp_path / "splits",
                          SplitConfig(test_share=0.25))
    published = publish(tmp_path / "splits", root / "pool" / "images", tmp_path / "thyme-sft",
                        PublishConfig(kind="sft", funnel=report))
    expected_rows = published["rows"]["wo_thinking_thyme_single_round"] + \
        published["rows"]["2round"]
    encoded = {}
    for encoding in ("thyme", "hf"):
        run = build_trainer(tiny_config(tiny, tmp_path / "thyme-sft", tmp_path / encoding,
                                        encoding=encoding))
        rows = list(run.trainer.train_dataset)
        assert len(rows) == expected_rows and run.dropped == {}
        batch = run.trainer.data_collator(rows)
        n_images = sum(len(r["image"]) for r in rows)
        assert batch["image_grid_thw"].shape[0] == n_images
        encoded[encoding] = batch
        for row in rows:
            runs, _ = _trainable_text(run.chat, row)
            response = row["response"]
            ends = [m.end() for m in re.finditer("</sandbox_output>", response)]
            if len(ends) >= 2:  # last round only (the shipped stage-1 setting)
                response = response[ends[-2]:]
            expected = re.sub(r"<sandbox_output>.*?</sandbox_output>", "", response,
                              flags=re.DOTALL)
            assert "".join(runs) == expected + "<|im_end|>", row["_origin"]
    assert torch.equal(encoded["thyme"]["labels"], encoded["hf"]["labels"])


def _trainable_text(chat, row):
    enc = chat.encode(row)
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label == IGNORE and current:
            runs.append(current)
            current = []
        elif label != IGNORE:
            current.append(token)
    if current:
        runs.append(current)
    return [chat.tokenizer.decode(r) for r in runs], enc


def test_the_prompt_set_gives_the_system_prompt(tmp_path):
    from pipelines.core.prompts import PromptSetError, load_prompt_set

    base = ["data=x"]
    assert load_config(ThymeSFTConfig, None, base).system() == load_prompt_set("thyme").system
    release = load_config(ThymeSFTConfig, None, [*base, "prompt_set=thyme-release"])
    assert release.system() == load_prompt_set("thyme-release").system
    assert load_config(ThymeSFTConfig, None, [*base, "system_prompt=MINE"]).system() == "MINE"
    (tmp_path / "none.yaml").write_text('data: [x]\nsystem_prompt: ""\n')    # none at all
    assert load_config(ThymeSFTConfig, tmp_path / "none.yaml").system() is None
    with pytest.raises(PromptSetError, match="no such set"):
        load_config(ThymeSFTConfig, None, [*base, "prompt_set=thyme-nope"])


def publish_text_only_computation(root: Path, rows: int) -> Path:
    """A published Thyme-SFT dataset (pipelines.datasets.publish) whose computation split holds
    only text-only rows (has_image = false); the other splits are empty."""
    import pyarrow as pa
    from sft_data import CALC

    from pipelines.core.atomic import write_parquet
    from pipelines.core.prompts import load_prompt_set
    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import SFT_SCHEMA

    def row(i):
        a, b = 3 + i, 7
        return {"id": f"t{i}", "sample_id": f"s{i}", "task": "computation", "kind": "single",
                "has_image": False, "question": load_prompt_set().render_user(f"What is {a} times {b}?"),
                "response": (f"<think>Multiply.{CALC.format(a=a, b=b)}<sandbox_output>{a * b}"
                             f"</sandbox_output>So {a * b}.</think> <answer>{a * b}</answer>"),
                "images": [], "image_key": f"q:{i}", "answer": str(a * b)}

    splits = root / "splits"
    for split in ("wo_thinking_thyme_single_round", "2round", "computation"):
        for part in ("train", "test"):
            chosen = [row(i) for i in range(rows)] if (split, part) == ("computation", "train") else []
            write_parquet(pa.Table.from_pylist(chosen, schema=SFT_SCHEMA), splits / split / f"{part}.parquet")
    (root / "store").mkdir()
    publish(splits, root / "store", root / "thyme-sft", PublishConfig(kind="sft"))
    return root / "thyme-sft"


@pytest.mark.slow
def test_stage2_trains_a_text_only_computation_split(tiny, tmp_path):
    """Text-only rows flow from the published computation split through SFT stage 2: every row
    counted and trained, no image token anywhere, the chosen prompt set's system prompt."""
    from pipelines.core.prompts import load_prompt_set

    dataset = publish_text_only_computation(tmp_path, rows=6)
    cfg = load_config(ThymeSFTConfig, CONFIGS / "stage2_tiny.yaml", [
        f"model=tiny:{tiny}", f"data={dataset}", f"output_dir={tmp_path / 's2'}", "max_steps=2",
        "per_device_train_batch_size=3", "prompt_set=thyme-release", f"cache_dir={tmp_path / 'c'}"])
    run = build_trainer(cfg)
    rows = list(run.trainer.train_dataset)
    assert len(rows) == 6 and run.dropped == {} and all(r["image"] == [] for r in rows)
    batch = run.trainer.data_collator(rows[:3])
    assert "pixel_values" not in batch and not (batch["input_ids"] == run.chat.image_token_id).any()
    text = run.chat.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith(f"<|im_start|>system\n{load_prompt_set('thyme-release').system}<|im_end|>")
    metrics = train(cfg)
    assert metrics["steps"] == 2 and metrics["samples"] == metrics["samples_trained"] == 6
    assert metrics["samples_dropped"] == 0 and all(v == v for _, v in metrics["losses"])
    assert metrics["config"]["prompt_set"] == "thyme-release"


# ------------------------------------------------------------------ padding-free batches

def test_padding_free_batches_train_exactly_like_padded_ones(tiny, dataset, tmp_path):
    from thyme_train.chat import ThymeCollator
    from thyme_train.packing import PaddingFreeCollator

    run = build_trainer(tiny_config(tiny, dataset, tmp_path / "a", train_last_round_only=False,
                                    padding_free=True))
    assert isinstance(run.trainer.data_collator, PaddingFreeCollator)
    model = run.trainer.model
    rows = [run.trainer.train_dataset[i] for i in (0, 5, 26, 30)]      # uneven, with images
    padded = ThymeCollator(run.chat)(rows)
    packed = run.trainer.data_collator(rows)
    real = int(padded["attention_mask"].sum())
    assert packed["input_ids"].shape == (1, real) and real < padded["input_ids"].numel()
    assert "attention_mask" not in packed and packed["position_ids"].shape == (4, 1, real)
    assert int((packed["position_ids"][0, 0] == 0).sum()) == len(rows)   # each row from position 0

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**{"use_cache": False, **batch}).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_padded, grads_padded = loss_and_grads(padded)
    loss_packed, grads_packed = loss_and_grads(packed)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    assert grads_packed.keys() == grads_padded.keys()
    for name, grad in grads_padded.items():
        assert torch.allclose(grads_packed[name], grad, atol=1e-6, rtol=1e-4), name
    # and TRL's trainer takes the packed batches (its fused LM head, the loss over the batch)
    trainer = build_trainer(tiny_config(tiny, dataset, tmp_path / "b", padding_free=True,
                                        max_steps=2)).trainer
    collate, sizes = trainer.data_collator, []

    def counting(batch_rows):
        batch = collate(batch_rows)
        sizes.append(batch["input_ids"].shape[1])
        return batch
    trainer.data_collator = counting
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(0 < e["loss"] < 20 for e in logs)
    # the logged token count is the packed tokens (TRL alone would count 1 per batch)
    assert [e["num_tokens"] for e in logs] == [sizes[0], sizes[0] + sizes[1]]
