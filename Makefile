# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine installs the CPU torch build that lies on local disk; a CUDA machine keeps its own.
TORCH_CPU := torch==2.13.0

.PHONY: venv test demo build-kernels clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch; \
	else \
		$(PY) -m pip install --quiet $(TORCH_CPU); \
	fi
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

build-kernels: venv
	$(PY) -m renderer_cuda build

clean:
	rm -rf $(VENV) build *.egg-info
