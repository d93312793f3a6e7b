# Two commands do all set-up: `make train` and `make test` (each creates .venv on first use).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train train-detect train-events test bench bench-events gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) tools/train.py --config configs/quickstart.yaml

train-detect: $(STAMP)
	$(PY) tools/train.py --config configs/quickstart_detect.yaml

train-events: $(STAMP)
	$(PY) tools/train.py --config configs/quickstart_events.yaml

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/memory.py

bench-events: $(STAMP)
	$(PY) benchmarks/events.py --add-task-memory

# On a machine with a CUDA GPU: the CUDA tests, the detection quick start and the speed benchmark on cuda,
# each neuron backend; results in runs/gpu_check/results.json (docs/speed.md). Not part of `make test`.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py
