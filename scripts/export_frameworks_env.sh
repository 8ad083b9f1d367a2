#!/usr/bin/env bash
# Create the scratch environments in which ms-swift and LLaMA-Factory check our exports with their
# own loaders and templates (docs/exports.md). They live OUTSIDE the repository, one venv each:
# both frameworks pull CUDA builds of torch by default and pin transformers apart from ours.
#
#   bash scripts/export_frameworks_env.sh          # ~20 min the first time (downloads), instant afterwards
#   THYME_EXPORT_ENVS=/some/dir bash scripts/export_frameworks_env.sh
#   .venv/bin/python scripts/export_checks/compare.py   # the measurements
#
# Where: $THYME_EXPORT_ENVS (default ~/.cache/thyme/export-envs)/venv-{swift,llamafactory}.
# Idempotent: a stamp in each venv records a hash of this script and its constraints; a change
# re-runs the steps (each a no-op when already done).
# Both install with torch==2.13.0+cpu (the local CPU wheel) and every other package pinned by
# scripts/export_checks/*-constraints.txt. PyPI's torchvision 0.28.0 (the only one beside that
# torch; transformers needs it for Qwen-VL processors) is patched to import (STACK.md);
# LLaMA-Factory's torchaudio import is satisfied by a stub (audio is not used).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECKS="$ROOT/scripts/export_checks"
ENVS="${THYME_EXPORT_ENVS:-$HOME/.cache/thyme/export-envs}"
PY="${PY:-python3.11}"
command -v "$PY" >/dev/null || { echo "need $PY on PATH" >&2; exit 1; }
mkdir -p "$ENVS"
printf 'torch==2.13.0+cpu\n' > "$ENVS/torch-cpu.txt"

# pip warns once per package about local index folders it lacks: noise, filtered out.
pip_install() {
    local venv="$1"; shift
    "$venv/bin/python" -m pip install --quiet -c "$ENVS/torch-cpu.txt" "$@" \
        2> >(grep -v "is ignored: it is neither" >&2)
}

build() {  # build NAME CONSTRAINTS SMOKE_CHECK PACKAGE...
    local name="$1" constraints="$2" smoke="$3"; shift 3
    local venv="$ENVS/venv-$name"
    local hash
    hash="$(cat "${BASH_SOURCE[0]}" "$constraints" "$ROOT/scripts/patch_torchvision_cpu.py" | sha256sum | cut -c1-16)"
    if [[ -f "$venv/.installed" && "$(cat "$venv/.installed")" == "$hash" ]]; then
        echo "$venv is up to date"
        return
    fi
    [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
    pip_install "$venv" -c "$constraints" "$@"
    if [[ "$name" == llamafactory ]]; then
        "$venv/bin/python" -m pip uninstall --quiet -y torchaudio >/dev/null 2>&1 || true
        local site
        site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        mkdir -p "$site/torchaudio"
        cat > "$site/torchaudio/__init__.py" <<'PYEOF'
"""A stub: LLaMA-Factory imports torchaudio at module level, for audio inputs only; PyPI's torchaudio
build fails beside torch 2.13.0+cpu. Audio is not used here; any use fails loudly."""


def __getattr__(name):
    raise ImportError(f"torchaudio is a stub in this environment (no audio support): torchaudio.{name}")
PYEOF
    fi
    "$venv/bin/python" "$ROOT/scripts/patch_torchvision_cpu.py"
    "$venv/bin/python" -c "$smoke" 2>&1 | grep -v "^\[INFO"
    echo "$hash" > "$venv/.installed"
    du -sh "$venv"
}

build swift "$CHECKS/swift-constraints.txt" "
import torch, torchvision, qwen_vl_utils  # noqa: F401
from swift import get_processor, get_template, load_dataset  # noqa: F401
assert torch.__version__.endswith('+cpu'), torch.__version__
print('ms-swift env ok: torch', torch.__version__)" \
    "ms-swift==4.6.0" "qwen-vl-utils==0.0.14" "torchvision==0.28.0"
build llamafactory "$CHECKS/llamafactory-constraints.txt" "
import torch
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: F401
assert torch.__version__.endswith('+cpu'), torch.__version__
print('LLaMA-Factory env ok: torch', torch.__version__)" \
    "llamafactory==0.9.5" "torchvision==0.28.0"
