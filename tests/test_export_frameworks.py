"""ms-swift and LLaMA-Factory check our exports with their own loaders and templates (and TRL
with its SFTTrainer collator), row by row against thyme_train.chat: 0 sandbox and 0 image tokens
labelled, exactly our collator's tokens of the model's writing, the Thyme token sequence; and
LLaMA-Factory trains two steps through the export's own `thyme_llamafactory.py`.

Opt-in (about 2 minutes, separate environments): `bash scripts/export_frameworks_env.sh`, then
`pytest -m frameworks tests/test_export_frameworks.py` (the figures: scripts/export_checks/compare.py).
"""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.frameworks, pytest.mark.slow]
COMPARE = Path(__file__).resolve().parent.parent / "scripts" / "export_checks" / "compare.py"


@pytest.fixture(scope="module")
def compare(request):
    if "frameworks" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("opt-in: pytest -m frameworks (after scripts/export_frameworks_env.sh)")
    spec = importlib.util.spec_from_file_location("export_compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for framework in ("swift", "llamafactory"):
        if not (module.ENVS / f"venv-{framework}" / "bin" / "python").exists():
            pytest.fail(f"{module.ENVS}/venv-{framework} missing: run scripts/export_frameworks_env.sh")
    return module


def test_every_framework_labels_only_the_models_writing(compare, tmp_path):
    out = tmp_path / "figures.json"
    assert compare.main(["--work", str(tmp_path / "work"), "--json", str(out), "--train"]) == 0
    results = json.loads(out.read_text())
    by = {title.split(" (")[0] + (" last" if "last round only" in title else ""): r["rows"]
          for title, r in results.items() if "rows" in r}
    assert results["training"]["llamafactory_thyme_qwen2_vl_2_steps_seconds"] > 0
    assert len(by["TRL 1.16 SFTTrainer collator, shipped template"]) == 4
    for title, rows in by.items():
        if title.startswith("contrast"):
            continue
        for row in rows:
            assert row["labelled_sandbox"] == row["labelled_image"] == row["label_mismatch"] == 0, (title, row)
            assert row["own_equal"] and row["own_labelled"] == row["ours_own_labelled"] > 0, (title, row)
            if title.startswith("TRL"):
                assert row["ids"] == "identical" and row["labels"] == "equal"
            elif title.startswith("ms-swift"):  # its ChatML suffix also labels the newline after <|im_end|>
                assert row["ids"] == "identical" and row["labelled_after_end"] == 1
            else:                               # LLaMA-Factory's turn ends at <|im_end|>
                assert row["ids"] == "identical but the final newline" and row["labels"] == "equal"
    two = {title: next(r for r in rows if r["row"] == "two") for title, rows in by.items()}
    assert two["ms-swift 4.6.0 load_dataset + get_template('qwen2_5_vl') last"]["own_labelled"] < \
        two["ms-swift 4.6.0 load_dataset + get_template('qwen2_5_vl')"]["own_labelled"]
    # the contrast runs show the counting catches what the exports avoid
    assert all(r["labelled_sandbox"] > 0 for r in by["contrast: TRL with its own Qwen2.5-VL training template"])
    assert all(r["ids"] == "differ" for r in by["contrast: LLaMA-Factory built-in template qwen2_vl"])
