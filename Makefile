# make demo: set up .venv if needed, then train + evaluate on the built-in demo data.
# make test: set up .venv if needed, then run the tests.
# make gpu-check DATA=<cifake>: on a CUDA machine, the GPU check's table (scripts/gpu_check.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install first; override for another platform or CUDA version,
# e.g. make TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint clean gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: setup
	$(PY) train.py experiment=demo

test: setup
	$(PY) -m pytest

gpu-check: setup
	$(PY) scripts/gpu_check.py $(if $(DATA),data.root=$(DATA))

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile

clean:
	rm -rf outputs multirun .pytest_cache
