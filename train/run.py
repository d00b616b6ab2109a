"""The run: its config section (``run.*``) and a run directory that explains itself.

At start rank 0 creates ``run.dir``, writes the resolved ``config.yaml`` and appends the environment and
command line to ``env.log``; every rank logs to stderr, rank 0 also to ``train.log``; each rank seeds
with ``run.seed + rank``.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from train.checkpoint import seed_everything
from train.distributed import DistEnv


@dataclass
class RunConfig:
    """Where the run lives and how long it lasts."""

    dir: str = "runs/default"  # run directory: config.yaml, checkpoints/, TensorBoard events, metrics.jsonl, logs
    steps: int = 1000  # optimizer steps of the whole run (the lr schedule is laid out over these)
    seed: int = 0  # base seed; each rank seeds with seed + rank
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: this rank's GPU if any, else the CPU
    stop_at: int | None = None  # stop (checkpoint and exit 0) at this step without changing the schedule


def setup_run(cfg: RunConfig, resolved_config: str, env: DistEnv) -> Path:
    """Create the run dir, write config.yaml and env.log (rank 0), set up logging, seed this rank."""
    run_dir = Path(cfg.dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(resolved_config)
        with open(run_dir / "env.log", "a") as f:
            f.write(describe_environment(env) + "\n")
    setup_logging(run_dir, env.rank)
    seed_everything(cfg.seed + env.rank)
    return run_dir


def setup_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 logs INFO to stderr and RUN/train.log; other ranks log warnings to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s")


ENV_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_",
                "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST", "SLURM_RESTART_COUNT",
                "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "NCCL_", "HOSTNAME")


def _launcher_command() -> str:
    # torchrun is the parent process of every rank; its command line is what the user typed.
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    except OSError:
        return "?"


def describe_environment(env: DistEnv) -> str:
    """Time, command line, launcher, host, versions, git commit, rank and the launch variables."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    variables = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    lines = [
        f"=== start {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"command: {' '.join([sys.executable] + sys.argv)}",
        f"launcher: {_launcher_command() if 'TORCHELASTIC_RUN_ID' in os.environ else 'none'}",
        f"cwd: {os.getcwd()}",
        f"host: {socket.gethostname()}  platform: {platform.platform()}",
        f"python: {sys.version.split()[0]}  torch: {torch.__version__}  cuda: {torch.version.cuda}  "
        f"gpus: {torch.cuda.device_count() if torch.cuda.is_available() else 0}  git: {commit}",
        f"world: rank {env.rank} of {env.world_size}",
        *(f"env {k}={v}" for k, v in variables.items()),
    ]
    return "\n".join(lines)
