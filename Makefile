# make install: create or update .venv (idempotent); demo and test call it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
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
	$(PY) benchmarks/recipe_sweep.py
	$(PY) benchmarks/overhead.py
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
