"""Make PyPI's torchvision 0.28.0 importable beside torch 2.13.0+cpu (STACK.md).

The wheel is a CUDA build whose `_meta_registrations.py` registers fake kernels for
`torchvision::nms`/`qnms` unconditionally, which fails without the compiled ops. Guarding those
two registrations with `torchvision.extension._has_ops()` fixes the import; the image transforms
Qwen-VL processors use keep working (detection ops don't; nothing here needs them). Idempotent.
Used by scripts/vllm_cpu_env.sh and scripts/export_frameworks_env.sh.

    VENV/bin/python scripts/patch_torchvision_cpu.py
"""

import importlib.util
import pathlib
import re

spec = importlib.util.find_spec("torchvision")
if spec is None:
    raise SystemExit("torchvision is not installed in this environment")
path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
text = path.read_text()
if "_has_ops() else (lambda fn: fn)" in text:
    raise SystemExit(0)
pattern = re.compile(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)\n', re.MULTILINE)
if len(pattern.findall(text)) != 2:
    raise SystemExit(f"{path}: expected the nms and qnms registrations; the file changed, re-check STACK.md")
text = pattern.sub(lambda m: f'@(torch.library.register_fake("torchvision::{m.group(1)}") '
                             f'if torchvision.extension._has_ops() else (lambda fn: fn))\n', text)
path.write_text(text)
print(f"patched {path}")
