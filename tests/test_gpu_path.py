"""The trainer's decisions about GPUs that can be checked on a machine without one: a rasterizer kernel that
cannot run where the run trains is refused at startup (no silent fallback to the pure-torch reference), and
a node with more ranks than GPUs is refused before the rendezvous."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.config import ConfigError, check_device, load_config, validate
from train.distributed import gpu_of_rank

ROOT = Path(__file__).resolve().parents[1]


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_cuda_backend_with_a_cpu_run_exits_2_with_one_line(synthetic_shards, tmp_path):
    common = ["--config", "configs/synthetic.yaml", f"data.synthetic={synthetic_shards}", f"run.dir={tmp_path / 'run'}"]
    for device in ("cpu", "auto"):  # refused by validate (run.device names the CPU) / at startup (auto found no GPU)
        if device == "auto" and torch.cuda.is_available():
            continue
        result = train_cli(*common, f"run.device={device}")
        assert result.returncode == 2, result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: config key 'synthesis.backend' (cuda): renders on a "
                                                       "CUDA device but the run trains on cpu"), result.stderr
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"
    cfg = load_config(ROOT / "configs/synthetic.yaml", [f"data.synthetic={synthetic_shards}", "run.device=cuda",
                                                         "synthesis.backend=cpu"])
    with pytest.raises(ConfigError, match=r"'synthesis.backend' \(cpu\): renders on the CPU but the run trains on cuda"):
        validate(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose CUDA kernel cannot load")
@pytest.mark.parametrize("backend", ["auto", "cuda"])
def test_an_unusable_cuda_kernel_is_refused_on_a_cuda_device_unless_torch_is_asked_for(backend, synthetic_shards):
    """A CUDA device where the CUDA kernel cannot load (here: torch without CUDA, as a broken build would be):
    ``auto`` and ``cuda`` are refused naming why and where the build log is; ``torch`` is the explicit choice."""
    overrides = [f"data.synthetic={synthetic_shards}", f"synthesis.backend={backend}"]
    with pytest.raises(ConfigError) as refused:
        check_device(load_config(ROOT / "configs/synthetic.yaml", overrides), torch.device("cuda", 0))
    message = str(refused.value)
    assert message.startswith(f"config key 'synthesis.backend' ({backend}): cannot render on cuda:0: the CUDA "
                              "rasterizer kernel cannot be built or used here: torch ") and "CPU-only" in message, message
    assert "python -m renderer_cuda build --kind cuda --verbose" in message and "synthesis.backend=torch" in message
    assert "\n" not in message
    torch_backend = load_config(ROOT / "configs/synthetic.yaml", [*overrides, "synthesis.backend=torch"])
    check_device(torch_backend, torch.device("cuda", 0))  # asked for explicitly: no refusal
    check_device(load_config(ROOT / "configs/ci.yaml", [f"data.synthetic={synthetic_shards}"]), torch.device("cpu"))


def test_one_gpu_per_rank_and_more_ranks_than_gpus_refused():
    assert [gpu_of_rank(rank, 4, 4) for rank in range(4)] == [0, 1, 2, 3]
    assert gpu_of_rank(0, 1, 8) == 0
    with pytest.raises(RuntimeError, match=r"^8 rank\(s\) on this node \(torchrun's LOCAL_WORLD_SIZE\) but 4 GPU\(s\) "
                                           r"visible.*NCCL needs one GPU per rank.*--nproc_per_node=4\)$"):
        gpu_of_rank(0, 8, 4)  # refused on every rank, also those whose own GPU exists
    with pytest.raises(RuntimeError, match=r"3 rank\(s\) on this node"):
        gpu_of_rank(2, 1, 2)  # no LOCAL_WORLD_SIZE (srun): the local rank alone shows the overcommit
    with pytest.raises(RuntimeError, match=r"1 rank\(s\) on this node .* but 0 GPU"):
        gpu_of_rank(0, 1, 0)
