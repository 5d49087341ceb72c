# make demo: set up .venv if needed, then train + evaluate on the built-in demo data.
# make test: set up .venv if needed, then run the tests.
# make device-bundle [DATA=<cifake .tar.xz>]: here, with the network, .device-bundle/ for an offline CUDA machine.
# make gpu-check [DATA=<cifake>]: on a CUDA machine, offline, the GPU check's table (scripts/gpu_check.py).
# make docker-test [DOCKER_WHEELS=<wheel folders>]: the Docker image built on a local base and run (docker/README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install first; override for another platform or CUDA version,
# e.g. make TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint clean gpu-check device-bundle docker-test

setup: $(VENV)/.installed

# PyTorch with pip (which finds this machine's copy of the wheels), then the package and its ~130 other
# requirements with uv, which fetches and unpacks them in parallel: 30 s where pip took 121 s on a 2-core
# EPYC. uv keeps the torch just installed, as it satisfies pyproject's range; --compile-bytecode as pip does,
# so that every command imports from .pyc files.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install "uv>=0.5,<1"
	$(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -e ".[dev]"
	touch $@

demo: setup
	$(PY) train.py experiment=demo

# Two test processes (pytest-xdist), one math thread each. --dist loadgroup is tests/conftest.py's scheduler: a
# file whose tests share a module-scoped fixture stays in one process, every other test goes where a process is
# free, longest first (conftest's SECONDS), so both end together. PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The GPU check runs on a machine with no network: what its CUDA image lacks (Hydra, Grad-CAM, skops, ...) travels
# as wheels for CPython 3.12 in $(DEVICE_BUNDLE), with the CIFAKE archive. It installs them with pip --no-index
# --no-deps into the python that runs it (PYTHON there: the image's python3 with its torch), never from the network.
DEVICE_BUNDLE ?= .device-bundle
CIFAKE_ARCHIVE ?= ../shared/data/cifake.tar.xz
GPU_CHECK_OUT ?= outputs/gpu_check

device-bundle:
	$(PYTHON) scripts/gpu_check.py bundle $(DEVICE_BUNDLE) --data $(or $(DATA),$(CIFAKE_ARCHIVE))

gpu-check:
	$(PYTHON) scripts/gpu_check.py run --bundle $(DEVICE_BUNDLE) --out-dir $(GPU_CHECK_OUT) $(if $(DATA),--data $(DATA))

# The image built from docker/Dockerfile on a base made here (docker/local-base.sh: debootstrap + docker import, as root
# with Debian's docker.io and debootstrap; dockerd is started if it is not running), then run: experiment=demo for one
# epoch with its evaluation, evaluate.py, TensorBoard's port, the run folders on the mounted volume. DOCKER_WHEELS:
# folders of wheels the base's torch is installed from before PyPI (a local mirror).
DOCKER_WHEELS ?=
docker-test: setup
	WHEELS="$(DOCKER_WHEELS)" CIFAKE_DOCKER_TEST=1 $(PY) -m pytest tests/test_docker.py -k image_trains -v

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile

clean:
	rm -rf outputs multirun .pytest_cache
