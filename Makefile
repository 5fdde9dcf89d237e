# make install: create or update .venv (idempotent); demo and test call it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-all clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,hf]'
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
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/data.py
	$(PY) benchmarks/plan_accuracy.py
	$(VENV)/bin/scaletrain bench optim
	$(PY) benchmarks/faults.py

clean:
	rm -rf $(VENV) runs
