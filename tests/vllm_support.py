"""What the real vLLM tests share (STACK.md, "Real vLLM on these CPU machines"): the skip outside
`.venv-vllm`, the environment set before vLLM is imported, and an OpenAI-compatible vLLM server
on loopback for the duration of a block."""

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# offline, small KV cache, loopback, in-process engine (starts in ~3 s instead of ~20)
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TORCH_COMPILE_DISABLE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def require_vllm(test_file: str) -> None:
    """Skip the calling module unless vLLM is installed; then set its environment."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip(f"vLLM is not installed here: run `bash scripts/vllm_cpu_env.sh`, then "
                    f"`.venv-vllm/bin/python -m pytest -m vllm tests/{Path(test_file).name}`",
                    allow_module_level=True)
    os.environ.update(VLLM_ENV)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model_dir, log: Path, *args: str, timeout_s: float = 180):
    """`python -m vllm.entrypoints.openai.api_server` on a free loopback port with `args`; yields
    its `/v1` URL once `/models` answers; stops the whole process group afterwards."""
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "2048", "--enforce-eager", *args]
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not answer in {timeout_s:.0f} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
