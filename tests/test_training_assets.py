"""The SFT assets: both stages launched through Dagster Pipes on the tiny model, their metadata,
and a training failure surfacing the trainer's own error."""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, materialize
from sft_data import write_dataset

from assets.resources import SandboxResource, ThymeStorage
from assets.training import TRAINING_ASSETS, TRAINING_RESOURCES

FAST = ["max_steps=4", "save_steps=100", "learning_rate=3e-3"]


# A named minimum this host exceeds: it must reach the launched GRPO and evaluation processes.
ISOLATION = "landlock+seccomp+rlimits"


def _resources(root: Path) -> dict:
    return {"storage": ThymeStorage(root=str(root)), "sandbox": SandboxResource(isolation=ISOLATION),
            **TRAINING_RESOURCES}


def _run_config(stage1: list[str], stage2: list[str]) -> dict:
    return {"ops": {"training__sft_stage1": {"config": {"overrides": stage1}},
                    "training__sft_stage2": {"config": {"overrides": stage2}}}}


@pytest.mark.slow
def test_both_stages_train_through_pipes_and_record_metadata(tmp_path):
    root = tmp_path / "data"
    write_dataset(root / "published" / "thyme-sft")
    instance = DagsterInstance.ephemeral()
    # The published dataset as its asset would have recorded it, with a data version.
    instance.report_runless_asset_event(AssetMaterialization(
        asset_key=AssetKey(["datasets", "thyme_sft"]), tags={"dagster/data_version": "v-test"}))
    result = materialize(TRAINING_ASSETS, instance=instance, resources=_resources(root),
                         run_config=_run_config(FAST, FAST),
                         selection=[AssetKey(["training", "sft_stage1"]),
                                    AssetKey(["training", "sft_stage2"])])
    assert result.success
    meta = {}
    for stage in ("stage1", "stage2"):
        (mat,) = result.asset_materializations_for_node(f"training__sft_{stage}")
        meta[stage] = {k: v.value for k, v in mat.metadata.items()}
        m = meta[stage]
        out = root / "checkpoints" / "sft" / stage
        assert (root / m["checkpoint"]).resolve() == out.resolve()
        assert m["steps"] == 4 and m["best_loss"] <= m["final_loss"] < 20
        assert "data:image/png;base64," in m["loss_curve"]
        assert "data:image/png;base64," in m["curves_training"] and "4 logged steps" in m["history"]
        assert m["dataset_fingerprint"] and m["samples_dropped"] == 0
        assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
        # a dataset written by hand records no prompt set: the default, and the asset says so
        assert m["prompt_set"] == json.loads((out / "metrics.json").read_text())["prompt_set"] == "thyme"
        assert "records no prompt set" in m["prompt_set_warning"]
    assert meta["stage1"]["samples_trained"] == 32      # single-round + 2round
    assert meta["stage2"]["samples_trained"] == 12      # computation, with and without images
    # Stage 2 continued from stage 1's model; both record the dataset version they trained on.
    stage2 = json.loads((root / "checkpoints" / "sft" / "stage2" / "metrics.json").read_text())
    assert Path(stage2["model"]).resolve() == (root / "checkpoints" / "sft" / "stage1").resolve()
    assert meta["stage1"]["dataset_version"] == meta["stage2"]["dataset_version"] == "v-test"
    # The trainer's logged steps streamed into the run's event log through Pipes.
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("step 4/4" in m and '"loss"' in m for m in messages), messages[-20:]
    # ... and each logged step is an observation of the asset, so Dagster's Plots draw curves
    observed = [o.metadata for o in result.asset_observations_for_node("training__sft_stage1")]
    assert [m["step"].value for m in observed] == [1, 2, 3, 4]
    assert all({"loss", "learning_rate"} <= set(m) for m in observed)


@pytest.mark.slow
def test_a_failed_training_fails_the_asset_with_the_trainers_error(tmp_path):
    root = tmp_path / "data"
    write_dataset(root / "published" / "thyme-sft")
    result = materialize([TRAINING_ASSETS[0]], instance=DagsterInstance.ephemeral(),
                         resources=_resources(root), raise_on_error=False,
                         run_config={"ops": {"training__sft_stage1": {"config": {
                             "overrides": [*FAST, "max_length=50"]}}}},
                         selection=[AssetKey(["training", "sft_stage1"])])
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "SFT stage1 failed: ValueError: no trainable rows" in message
    assert "'too_long': 32" in message


@pytest.mark.slow
def test_grpo_and_evaluation_assets_through_pipes(tmp_path, tmp_path_factory):
    """GRPO-ATS from a stage-2 checkpoint on a really published RL dataset, then both
    evaluations on its held-out split, each its own process, their metadata recorded."""
    import thyme_corpus

    from assets.evaluation import EVALUATION_ASSETS
    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import SplitConfig, build_splits
    from thyme_train.tiny import build_tiny_model

    root = tmp_path / "data"
    build_tiny_model(root / "checkpoints" / "sft" / "stage2")
    corpus, _ = thyme_corpus.corpus(tmp_path_factory)
    report = build_splits(*thyme_corpus.files(corpus), root / "splits",
                          SplitConfig(test_share=0.5, rl_share=0.5))
    publish(root / "splits", corpus / "pool" / "images", root / "published" / "thyme-rl",
            PublishConfig(kind="rl", funnel=report))
    (root / "pool").symlink_to(corpus / "pool")      # the split rows' images, for the previews
    test_rows = report["rows"]["rl"]["test"]
    assert test_rows >= 1
    run_config = {"ops": {
        "training__grpo_ats": {"config": {"overrides": ["max_steps=1", "max_new_tokens=16",
                                                        "max_turns=2", "save_steps=100"]}},
        "evaluation__sft_stage2_scores": {"config": {"max_new_tokens": 8, "ablation": False, "limit": 2}},
        "evaluation__grpo_ats_scores": {"config": {"max_new_tokens": 8, "limit": 1}}}}
    result = materialize([*TRAINING_ASSETS, *EVALUATION_ASSETS], instance=DagsterInstance.ephemeral(),
                         resources=_resources(root), run_config=run_config, partition_key="heldout",
                         selection=[AssetKey(["training", "grpo_ats"]),
                                    AssetKey(["evaluation", "sft_stage2_scores"]),
                                    AssetKey(["evaluation", "grpo_ats_scores"])])
    assert result.success
    (grpo,) = result.asset_materializations_for_node("training__grpo_ats")
    meta = {k: v.value for k, v in grpo.metadata.items()}
    assert meta["steps"] == 1 and "data:image/png;base64," in meta["curves_rewards"]
    assert meta["sandbox_isolation"]["policy"] == ISOLATION          # the resource's policy
    assert "data:image/png;base64," in meta["curves_optimiser"]
    (step,) = [o.metadata for o in result.asset_observations_for_node("training__grpo_ats")]
    assert step["step"].value == 1 and {"loss", "kl", "learning_rate", "reward"} <= set(step)
    assert (root / "checkpoints" / "grpo_ats" / "model.safetensors").is_file()
    for name, items, modes in (("sft_stage2", min(2, test_rows), {"tools"}), ("grpo_ats", 1, {"tools", "direct"})):
        (mat,) = result.asset_materializations_for_node(f"evaluation__{name}_scores")
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert mat.partition == "heldout"
        assert meta["items"] == items and {f"score_{m}" for m in modes} <= set(meta)
        assert {c.name for c in meta["summary"].schema.columns} == {"measure", *modes}
        assert "data:image/png;base64," in meta["chart"] and "report" not in meta
        assert {r.data["mode"] for r in meta["metrics"].records} == modes   # the metrics table
        assert meta["items_preview"].count("data:image/jpeg;base64,") == items   # from splits/rl
        results = json.loads((root / "evaluation" / name / "heldout" / "results.json").read_text())
        assert set(results["summaries"]) == modes
        assert results["settings"]["prompt_set"] == meta["prompt_set"] == "thyme"   # as evaluated
        assert [r["policy"] for r in meta["sandbox_isolation"]] == [ISOLATION]


def test_pipes_reader_waits_for_a_whole_line(tmp_path):
    """A message the training process is still writing is not parsed half-written (Dagster's
    own file reader does, and its reader thread dies, losing every later message)."""
    import threading
    import time

    from assets.pipes_reader import WholeLineFileMessageReader

    got, errors = [], []

    class Handler:
        def handle_message(self, message):
            got.append(message)

        def report_pipes_framework_exception(self, *args):
            errors.append(args)

    path = tmp_path / "messages"
    message = json.dumps({"method": "log", "params": {"message": "x" * 20000, "level": "INFO"}})
    with WholeLineFileMessageReader(str(path)).read_messages(Handler()):
        def write():
            with open(path, "a") as f:
                f.write(message[:300])
                f.flush()
                time.sleep(0.3)          # the reader polls every 10 ms: it sees the cut line
                f.write(message[300:] + "\n")
        writer = threading.Thread(target=write)
        writer.start()
        writer.join()
        time.sleep(0.1)
    assert not errors and [m["params"]["message"] for m in got] == ["x" * 20000]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # re-raised, as Dagster's
def test_pipes_reader_delivers_what_was_written_as_the_session_closed(tmp_path):
    """Messages written just before the session ends (the last one without its newline) all
    arrive, in order; an unreadable message is reported to Dagster, not dropped silently."""
    from assets.pipes_reader import WholeLineFileMessageReader

    class Handler:
        def __init__(self):
            self.got, self.errors = [], []

        def handle_message(self, message):
            self.got.append(message["params"]["n"])

        def report_pipes_framework_exception(self, origin, exc_info):
            self.errors.append((origin, exc_info[0]))

    path, handler = tmp_path / "messages", Handler()
    with WholeLineFileMessageReader(str(path)).read_messages(handler) as params:
        assert params["path"] == str(path)
        with open(path, "a") as f:
            f.write("".join(json.dumps({"method": "log", "params": {"n": n}}) + "\n" for n in range(50)))
            f.write(json.dumps({"method": "log", "params": {"n": 50}}))
    assert handler.got == list(range(51)) and not handler.errors and not path.exists()

    broken = Handler()
    with WholeLineFileMessageReader(str(path)).read_messages(broken):
        path.write_text("{not json}\n")
    assert [origin for origin, _ in broken.errors] == ["WholeLineFileMessageReader reader thread"]
    assert broken.errors[0][1] is json.JSONDecodeError
