# make install: create or update .venv with every extra (idempotent); demo and test call it.
# TORCH=pinned (default): torch as constraints.txt pins it (the CPU build CI uses).
# TORCH=system: keep the torch this Python already has (a CUDA or ROCm build; the venv sees the
#   system site-packages) and skip constraints.txt: `make install TORCH=system`.
# The choice is remembered in .venv/.torch: a later `make test` keeps it.
PYTHON ?= python3
VENV   := .venv
TORCH  ?= $(shell cat $(VENV)/.torch 2>/dev/null || echo pinned)
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

ifeq ($(TORCH),system)
VENV_FLAGS := --system-site-packages
PIN        :=
else ifeq ($(TORCH),pinned)
VENV_FLAGS :=
PIN        := -c constraints.txt
else
$(error TORCH must be pinned or system (got $(TORCH)))
endif

# Another TORCH than the one .venv was installed with: install again (a venv made for `pinned` does
# not see the system's packages: `make clean` first to switch it to `system`).
ifneq ($(shell cat $(VENV)/.torch 2>/dev/null || echo $(TORCH)),$(TORCH))
$(STAMP): FORCE
endif
FORCE:

.PHONY: FORCE install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIN) -e '.[all]'
	echo $(TORCH) > $(VENV)/.torch
	touch $(STAMP)

demo: install
	$(VENV)/bin/scaletrain train

test: install
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests -m "not slow and not dist"

# Every benchmark that writes a published figure (README's main-job block, docs/*.md sections,
# docs/results/*.json), then summary.py, which puts every target beside its measured value. Hours on
# 2 cores; run it on a quiet machine (each figure records its commit, time and CPU flags).
BENCH_RUNS := runs/bench

bench: install
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	rm -rf $(BENCH_RUNS)
	$(PY) benchmarks/main_job.py --keep-run $(BENCH_RUNS)/main-job
	# The AVX2-only target, on a CPU that has more: the same runs with the kernels limited to AVX2.
	if $(PY) -c 'import sys; from scaletrain.hardware import bf16_is_native; sys.exit(not bf16_is_native())'; then $(PY) benchmarks/main_job.py --emulate-avx2; fi
	$(PY) benchmarks/recipe_sweep.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/data_loader.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/mfu.py
	$(VENV)/bin/scaletrain train mlp-digits log.progress=false train.run_dir=$(BENCH_RUNS)/mlp
	$(PY) benchmarks/compress.py --gpt-run $(BENCH_RUNS)/main-job --mlp-run $(BENCH_RUNS)/mlp
	$(PY) benchmarks/plan_accuracy.py
	$(VENV)/bin/scaletrain bench optim
	$(PY) benchmarks/faults.py
	if $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then $(PY) benchmarks/gpu.py --write; fi
	$(PY) benchmarks/summary.py

clean:
	rm -rf $(VENV) runs
