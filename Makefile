# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine installs the CPU torch build that lies on local disk; a CUDA machine keeps its own.
TORCH_CPU := torch==2.13.0

.PHONY: venv test test-slurm demo build-kernels clean

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

# The launcher against a real 2-node Slurm cluster started on this machine (tests/slurm/cluster.py):
# installs Debian's Slurm and munge when missing (needs root), every daemon is stopped by pid at the end.
SLURM_PKGS := slurmctld slurmd slurm-client munge
test-slurm: venv
	if ! test -x /usr/sbin/slurmctld || ! test -x /usr/sbin/slurmd || ! test -x /usr/sbin/munged \
			|| ! command -v sbatch >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SLURM_PKGS); \
	fi
	$(PY) -m pytest -q -m slurm tests/slurm $(PYTEST_ARGS)

# The whole pipeline on a built-in NYU-format sample: raw NYU layout -> shards -> pose prior ->
# 2-process torchrun training (synthetic + self-supervised terms) -> evaluation -> TensorBoard logs.
DEMO ?= demo
NPROC ?= 2
demo: venv
	$(PY) -m shards fake-nyu --out $(DEMO)/nyu-raw --train 64 --test 24 --seed 0
	$(PY) -m shards nyu --nyu-root $(DEMO)/nyu-raw --out $(DEMO)/nyu --samples-per-shard 16 --workers 2
	$(PY) -m shards synthetic --out $(DEMO)/synth --num-samples 4000 --samples-per-shard 500 --workers 2
	$(PY) -m shards inspect $(DEMO)/nyu --show 6 --out $(DEMO)/nyu-samples.png
	$(PY) -m shards inspect $(DEMO)/synth
	$(PY) -m train.prior --out $(DEMO)/prior.pt --steps 400
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m train --config configs/ci.yaml \
		data.real=$(DEMO)/nyu data.synthetic=$(DEMO)/synth run.dir=$(DEMO)/run \
		loss.prior.enabled=true loss.prior_path=$(DEMO)/prior.pt
	$(PY) -m train.evaluate --checkpoint $(DEMO)/run --data $(DEMO)/nyu/test --out $(DEMO)/eval
	@echo "demo done: $(DEMO)/eval/metrics.json, $(DEMO)/eval/success_curve.png;" \
		"watch the run with: $(VENV)/bin/tensorboard --logdir $(DEMO)/run"

build-kernels: venv
	$(PY) -m renderer_cuda build

clean:
	rm -rf $(VENV) build *.egg-info
