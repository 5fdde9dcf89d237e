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

.PHONY: FORCE install demo test test-fast bench bench-all clean

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

# docs/performance.md and docs/results/performance.json (about an hour on 2 cores; needs a quiet machine)
bench: install
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/data_loader.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/main_job.py
	$(PY) benchmarks/mfu.py
	$(PY) benchmarks/summary.py

# every other issue's benchmark too (hours): data preprocessing, planner accuracy, optimizers, faults
bench-all: bench
	$(PY) benchmarks/data.py
	$(PY) benchmarks/plan_accuracy.py
	$(VENV)/bin/scaletrain bench optim
	$(PY) benchmarks/faults.py

clean:
	rm -rf $(VENV) runs
