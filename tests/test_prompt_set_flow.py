"""The prompt set flows with the data: datasets built with a non-default set record it, and the
training and evaluation assets (and `thyme_train.sft` from the command line) use it by default;
an explicit override wins, with a warning when it is not the datasets' set. The launched
processes are replaced by a recorder that writes what they would, so no model is trained."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import thyme_corpus
import yaml
from dagster import AssetKey, DagsterInstance, MaterializeResult, PipesSubprocessClient, materialize

from assets.evaluation import EVALUATION_ASSETS
from assets.resources import SandboxResource, ThymeStorage
from assets.training import TRAINING_ASSETS
from pipelines.core.prompts import (
    RECORD_FILE,
    PromptSetError,
    load_prompt_set,
    record_prompt_set,
    recorded_prompt_set,
)

RELEASE = load_prompt_set("thyme-release")


class _Completed:
    def __init__(self, metadata):
        self.metadata = metadata

    def get_materialize_result(self):
        return MaterializeResult(metadata=self.metadata)


class RecordingClient(PipesSubprocessClient):
    """Records each launched command and writes the files the real process leaves behind."""

    def __init__(self):
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, *, context, command, env=None, **kwargs):
        self.commands.append(list(command))
        if "thyme_train.evaluate" in command:
            out = Path(command[command.index("--out") + 1]) / context.partition_key
            out.mkdir(parents=True, exist_ok=True)
            tool_use = {"used_code": 0.0, "executions_per_answer": 0.0, "execution_success": None,
                        "fell_back": 0, "errors": 0}
            (out / "results.json").write_text(json.dumps({"settings": {}, "items": [], "summaries": {
                "tools": {"items": 1, "samples": 1, "tool_use": tool_use,
                          "metrics": {"overall": {"avg": 0.0, "ci": [0.0, 0.0], "pass": 0.0}}}}}))
        else:
            out = Path(setting(command, "output_dir"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text("{}")          # the next stage's model
            (out / "metrics.json").write_text(json.dumps({"steps": 1, "losses": [[1, 0.5]]}))
        return _Completed({"steps": 1})


def setting(command: list[str], key: str) -> str | None:
    """The last `--set key=value` of a command (the one the trainer keeps), None if none."""
    values = [command[i + 1].split("=", 1)[1] for i, arg in enumerate(command[:-1])
              if arg == "--set" and command[i + 1].startswith(f"{key}=")]
    return values[-1] if values else None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data folder whose splits were built, and datasets published, with thyme-release."""
    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import SplitConfig, build_splits

    corpus, _ = thyme_corpus.corpus(tmp_path_factory)
    root = tmp_path_factory.mktemp("prompt-flow") / "data"
    report = build_splits(*thyme_corpus.files(corpus), root / "splits",
                          SplitConfig(test_share=0.5, rl_share=0.5, prompt_set="thyme-release"))
    for kind, name in (("sft", "thyme-sft"), ("rl", "thyme-rl")):
        published = publish(root / "splits", corpus / "pool" / "images", root / "published" / name,
                            PublishConfig(kind=kind, funnel=report))
        assert published["prompt_set"] == "thyme-release"
    return root


def _meta(result, node):
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def _warnings(instance, result) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id)
            if e.level == 30 and "prompt" in e.user_message]    # logging.WARNING


def test_published_datasets_record_the_set_their_rows_were_rendered_with(data):
    for name in ("thyme-sft", "thyme-rl"):
        folder = data / "published" / name
        got = load_prompt_set(f"from:{folder}")
        assert (got.name, got.system, got.user, got.user_text) == \
            ("thyme-release", RELEASE.system, RELEASE.user, RELEASE.user_text)
        assert "Rendered with the prompt set `thyme-release`" in (folder / "README.md").read_text()
        assert str(data) not in (folder / RECORD_FILE).read_text()       # no machine paths
    shard = next((data / "published" / "thyme-rl" / "data" / "thyme").glob("train-*.parquet"))
    system, _ = pq.read_table(shard, columns=["messages"]).to_pylist()[0]["messages"]
    assert system["content"] == RELEASE.system               # the record is what rendered the rows


def test_training_assets_use_the_datasets_set_and_an_override_wins_with_a_warning(data):
    client, instance = RecordingClient(), DagsterInstance.ephemeral()
    result = materialize(
        TRAINING_ASSETS, instance=instance,
        resources={"storage": ThymeStorage(root=str(data)), "sandbox": SandboxResource(),
                   "pipes_subprocess_client": client},
        run_config={"ops": {"training__sft_stage2": {"config": {"overrides": ["prompt_set=thyme"]}}}})
    assert result.success
    stage1, stage2, grpo = client.commands
    # stage 1: the set the published SFT dataset records, by default
    spec = setting(stage1, "prompt_set")
    assert spec == f"from:{data / 'published' / 'thyme-sft'}"
    assert load_prompt_set(spec).system == RELEASE.system
    meta = _meta(result, "training__sft_stage1")
    assert meta["prompt_set"] == meta["prompt_set_of_dataset"] == "thyme-release"
    assert "prompt_set_warning" not in meta
    # stage 2: the override wins, and says it is not the datasets' set
    assert setting(stage2, "prompt_set") == "thyme"
    meta = _meta(result, "training__sft_stage2")
    assert meta["prompt_set"] == "thyme" and meta["prompt_set_of_dataset"] == "thyme-release"
    assert "overrides 'thyme-release'" in meta["prompt_set_warning"]
    assert "system differ" in meta["prompt_set_warning"]
    # GRPO keeps each row's own messages (rendered by the datasets' set): nothing is passed
    assert setting(grpo, "prompt_set") is None
    meta = _meta(result, "training__grpo_ats")
    assert meta["prompt_set"] == "each row's own (thyme-release)" and "prompt_set_warning" not in meta
    (warning,) = _warnings(instance, result)
    assert "prompt_set 'thyme' overrides 'thyme-release'" in warning


def test_evaluation_uses_the_datasets_set_and_an_override_wins_with_a_warning(data):
    client, instance = RecordingClient(), DagsterInstance.ephemeral()
    result = materialize(
        [*TRAINING_ASSETS, *EVALUATION_ASSETS], instance=instance, partition_key="heldout",
        resources={"storage": ThymeStorage(root=str(data)), "sandbox": SandboxResource(),
                   "pipes_subprocess_client": client},
        selection=[AssetKey(["evaluation", "sft_stage2_scores"]), AssetKey(["evaluation", "grpo_ats_scores"])],
        run_config={"ops": {"evaluation__grpo_ats_scores": {"config": {"prompt_set": "thyme"}}}})
    assert result.success
    by_model = {Path(c[c.index("--model") + 1]).name: c for c in client.commands}
    default, override = by_model["stage2"], by_model["grpo_ats"]
    spec = default[default.index("--prompt-set") + 1]
    assert spec == f"from:{data / 'published' / 'thyme-sft'}"
    assert load_prompt_set(spec) == load_prompt_set(f"from:{data / 'published' / 'thyme-sft'}")
    meta = _meta(result, "evaluation__sft_stage2_scores")
    assert meta["prompt_set"] == "thyme-release" and "prompt_set_warning" not in meta
    assert override[override.index("--prompt-set") + 1] == "thyme"
    meta = _meta(result, "evaluation__grpo_ats_scores")
    assert meta["prompt_set"] == "thyme" and "system, user, user_text differ" in meta["prompt_set_warning"]
    assert len(_warnings(instance, result)) == 1


def test_evaluation_prefers_the_set_the_checkpoint_records(data, tmp_path):
    """A checkpoint trained with an override records it: its evaluation asks it with that set
    (warned as not the dataset's), and the asset's own `prompt_set` still wins."""
    (tmp_path / "published").symlink_to(data / "published")
    model = tmp_path / "checkpoints" / "sft" / "stage2"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    record_prompt_set(load_prompt_set("thyme"), model)
    for config, spec, source in (({}, f"from:{model}", "checkpoint"),
                                 ({"prompt_set": "thyme-release"}, "thyme-release", "config")):
        client, instance = RecordingClient(), DagsterInstance.ephemeral()
        result = materialize(
            [*TRAINING_ASSETS, *EVALUATION_ASSETS], instance=instance, partition_key="heldout",
            resources={"storage": ThymeStorage(root=str(tmp_path)), "sandbox": SandboxResource(),
                       "pipes_subprocess_client": client},
            selection=[AssetKey(["evaluation", "sft_stage2_scores"])],
            run_config={"ops": {"evaluation__sft_stage2_scores": {"config": config}}})
        assert result.success
        (command,) = client.commands
        assert command[command.index("--prompt-set") + 1] == spec
        meta = _meta(result, "evaluation__sft_stage2_scores")
        assert meta["prompt_set_source"] == source and meta["prompt_set_of_dataset"] == "thyme-release"
        if source == "checkpoint":
            assert meta["prompt_set"] == "thyme" and "system, user, user_text differ" in \
                meta["prompt_set_warning"]
        else:
            assert meta["prompt_set"] == "thyme-release" and "prompt_set_warning" not in meta


def test_sft_from_the_command_line_takes_the_published_set_unless_given(data, caplog):
    from thyme_train.config import load_config
    from thyme_train.sft import ThymeSFTConfig

    published = str(data / "published" / "thyme-sft")
    config = Path(__file__).parent.parent / "thyme_train" / "configs" / "stage1_tiny.yaml"
    with caplog.at_level("WARNING", logger="thyme_train.sft"):
        cfg = load_config(ThymeSFTConfig, config, [f"data=[{published}]"])
    assert cfg.prompt_set == f"from:{published}" and cfg.system() == RELEASE.system
    assert not caplog.records
    with caplog.at_level("WARNING", logger="thyme_train.sft"):
        cfg = load_config(ThymeSFTConfig, config, [f"data=[{published}]", "prompt_set=thyme"])
    assert cfg.system() == load_prompt_set("thyme").system                   # the override wins
    assert "(prompt_set thyme) is not the one of thyme-release" in caplog.text


def test_a_users_own_set_is_recorded_whole_and_loads_without_its_file(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"system": "Be brief.", "user": "{image_tokens}{question}\n"
                                    'User Image Path: "{image_path}"\nUser Image Size: "{image_size}"',
                                    "user_text": "{question}"}))
    record_prompt_set(load_prompt_set(str(mine)), tmp_path / "dataset")
    mine.unlink()                                            # the dataset travels without it
    got = load_prompt_set(f"from:{tmp_path / 'dataset'}")
    assert (got.name, got.system) == ("mine", "Be brief.")
    assert recorded_prompt_set(tmp_path) is None
    with pytest.raises(PromptSetError, match="records no prompt set"):
        load_prompt_set(f"from:{tmp_path}")


def test_exports_write_the_datasets_system_prompt(data, tmp_path):
    from assets.exports import EXPORT_ASSETS
    from pipelines.__main__ import main

    (tmp_path / "published").symlink_to(data / "published")
    swift = next(a for a in EXPORT_ASSETS if a.key.path == ["exports", "swift"])
    result = materialize([swift], instance=DagsterInstance.ephemeral(),
                         resources={"storage": ThymeStorage(root=str(tmp_path))})
    assert result.success and _meta(result, swift.op.name)["prompt_set"] == "thyme-release"
    main(["export", "--format", "trl", "--dataset", str(data / "published" / "thyme-sft"),
          "--out", str(tmp_path / "trl")])
    for file in (next((tmp_path / "exports" / "swift").glob("*.jsonl")),
                 next((tmp_path / "trl").rglob("*.parquet"))):
        rows = pq.read_table(file).to_pylist() if file.suffix == ".parquet" else \
            [json.loads(line) for line in file.read_text().splitlines()]
        systems = [(m["role"], m["content"] if isinstance(m["content"], str) else   # TRL: parts
                    "".join(part["text"] for part in m["content"] if part["text"]))
                   for m in (r["messages"][0] for r in rows)]
        assert systems and set(systems) == {("system", RELEASE.system)}, file
