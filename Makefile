# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine installs the CPU torch build that lies on local disk; a CUDA machine keeps its own.
TORCH_CPU := torch==2.13.0

.PHONY: venv test test-slurm demo build-kernels gpu-check clean

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

# Two pytest workers, one test file each at a time (a file's module fixtures are built once): alone, the suite
# keeps one of the 2 cores busy on average, since most of its time goes to starting processes and to waits.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The launcher against a real 2-node Slurm cluster started on this machine (tests/slurm/cluster.py):
# installs Debian's Slurm and munge when missing (needs root), every daemon is stopped by pid at the end.
SLURM_PKGS := slurmctld slurmd slurm-client munge
test-slurm: venv
	if ! test -x /usr/sbin/slurmctld || ! test -x /usr/sbin/slurmd || ! test -x /usr/sbin/munged \
			|| ! command -v sbatch >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SLURM_PKGS); \
	fi
	$(PY) -m pytest -q -m slurm tests/slurm $(PYTEST_ARGS)

# The whole method on a built-in NYU-format sample (fake NYU: 256 train frames of one subject, 100 test
# frames of two): raw NYU layout -> shards -> synthetic pretraining (torchrun, 2 processes) -> fitted
# pseudo-labels of the unlabelled train split -> self-supervised fine-tuning on them (torchrun, 2
# processes) -> both evaluated on the test split beside the mean-pose yardstick -> DEMO/results.json,
# DEMO/report.md.
# Re-running resumes (finished steps are skipped); `rm -rf demo` starts over.
DEMO ?= demo
NPROC ?= 2
TORCHRUN = $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m train
demo: venv
	$(PY) -m shards fake-nyu --out $(DEMO)/nyu-raw --train 256 --test 100 --seed 0
	$(PY) -m shards nyu --nyu-root $(DEMO)/nyu-raw --out $(DEMO)/nyu --samples-per-shard 32 --workers 2
	$(PY) -m shards synthetic --out $(DEMO)/synth --num-samples 8000 --samples-per-shard 500 --workers 2
	$(PY) -m shards inspect $(DEMO)/nyu --show 6 --out $(DEMO)/nyu-samples.png
	$(TORCHRUN) --config configs/synthetic-cpu.yaml data.synthetic=$(DEMO)/synth data.real=$(DEMO)/nyu \
		run.dir=$(DEMO)/synthetic
	test -f $(DEMO)/nyu-fitted/train/pseudo_labels.json || \
		$(PY) -m train.pseudo_labels --checkpoint $(DEMO)/synthetic --data $(DEMO)/nyu --out $(DEMO)/nyu-fitted \
			--config configs/pseudo-labels.yaml
	$(TORCHRUN) --config configs/selfsup-cpu.yaml init=$(DEMO)/synthetic data.synthetic=$(DEMO)/synth \
		data.real=$(DEMO)/nyu-fitted run.dir=$(DEMO)/selfsup
	$(PY) -m train.report --data $(DEMO)/nyu --run synthetic_only=$(DEMO)/synthetic \
		--run self_supervised=$(DEMO)/selfsup --out $(DEMO)
	@echo "watch both runs with: $(VENV)/bin/tensorboard --logdir $(DEMO)"

build-kernels: venv
	$(PY) -m renderer_cuda build

# The GPU path on one GPU in minutes (needs nvcc and a CUDA torch): kernel build, CUDA vs CPU bit for bit,
# images/s, 200 training steps with NCCL, resume, stage 2 under bf16; summary in runs/gpu-check/ (README).
gpu-check: venv
	$(PY) benchmarks/gpu_check.py --out runs/gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
