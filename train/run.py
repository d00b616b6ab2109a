"""The run: its config section (``run.*``) and a run directory that explains itself.

At start rank 0 creates ``run.dir``; once the run is accepted (resume or ``init`` checks passed) it writes
the resolved ``config.yaml`` and appends the environment and command line to ``env.log``; every rank logs to stderr, rank 0 also to ``train.log``; each rank seeds
with ``run.seed + rank``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch

from fileio import write_atomic
from train.checkpoint import seed_everything
from train.distributed import DistEnv
from train.schema import Range


@dataclass
class RunConfig:
    """Where the run lives and how long it lasts."""

    dir: str = "runs/default"  # run directory: config.yaml, checkpoints/, TensorBoard events, metrics.jsonl, logs
    steps: Annotated[int, Range(ge=1)] = 1000  # optimizer steps of the whole run (the lr schedule is laid out over these)
    seed: Annotated[int, Range(ge=0)] = 0  # base seed; each rank seeds with seed + rank
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: this rank's GPU if any, else the CPU
    stop_at: Annotated[int | None, Range(ge=0, off="null: run to run.steps")] = None  # stop (checkpoint and exit 0) at this step without changing the schedule


def check_run_dir(cfg: RunConfig) -> None:
    """``run.dir`` can hold a run: not a file, and it (or its nearest existing parent) a writable directory.
    Raises ValueError starting with the key; creates nothing."""
    path = Path(cfg.dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" (its parent {str(existing)!r} is a file)"
        raise ValueError(f"'run.dir': {cfg.dir!r} is not a directory{where}")
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"'run.dir': {cfg.dir!r} cannot be written ({str(existing)!r} is "
                         f"{'on a read-only filesystem' if read_only else 'not writable'})")


def setup_run(cfg: RunConfig, env: DistEnv) -> Path:
    """Create the run dir (rank 0), set up logging, seed this rank; nothing of the run is recorded yet."""
    run_dir = Path(cfg.dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, env.rank)
    seed_everything(cfg.seed + env.rank)
    return run_dir


def record_start(run_dir: Path, resolved_config: str, env: DistEnv) -> None:
    """Rank 0 writes the resolved config.yaml and appends a start block to env.log: once the run is accepted
    (config, resume or init checks passed), so that a refused start leaves the run's record as it was."""
    if env.is_main:
        write_atomic(run_dir / "config.yaml", lambda handle: handle.write(resolved_config.encode()))
        with open(run_dir / "env.log", "a") as f:
            f.write(describe_environment(env) + "\n")


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


class RunDirLocked(RuntimeError):
    """Another live training holds the run directory."""


class RunLock:
    """``RUN/run.lock``: one training at a time in a run directory, also across nodes on a shared filesystem.

    Rank 0 of the job holds it (:meth:`acquire`): the file names the holder (host, pid, start time) and a
    thread touches it every ``heartbeat_s``. A lock is stale when its process is gone (same host) or, on
    another host, when it was not touched for ``stale_after_s``; a stale lock is taken over with a warning.
    """

    def __init__(self, run_dir: Path, *, heartbeat_s: float = 30.0, stale_after_s: float = 300.0) -> None:
        self.path = Path(run_dir) / "run.lock"
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "token": uuid.uuid4().hex}
        self._stop = threading.Event()

    def acquire(self) -> "RunLock":
        """Take the lock (creating the run dir) or raise RunDirLocked naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock moved away by a peer in between: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self.record, handle)
            threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True).start()
            return self
        raise RunDirLocked(f"could not take {self.path}: other trainings keep taking it")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        except (OSError, ValueError):  # a holder that died between creating and filling it, or garbage
            holder, age = {}, time.time() - self.path.stat().st_mtime
        stale = self._why_stale(holder, age)
        if stale is None:
            raise RunDirLocked(f"run.dir {str(self.path.parent)!r} is in use by another training (host "
                               f"{holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}; "
                               f"{self.path}); wait for it, stop it, or use another run.dir")
        aside = self.path.with_name(f".run.lock.stale-{self.record['token']}")
        try:
            os.rename(self.path, aside)  # atomic: of two takers, one moves it
        except FileNotFoundError:
            return
        aside.unlink()
        logging.getLogger(__name__).warning("took over the stale lock %s of host %s, pid %s, started %s (%s)",
                                            self.path, holder.get("host"), holder.get("pid"),
                                            holder.get("started"), stale)

    def _why_stale(self, holder: dict, age: float) -> str | None:
        if not holder:
            return "unreadable" if age > 10 else None
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return "its process is gone"
            except (PermissionError, ValueError, OverflowError):
                pass
            return None
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the run dir gone or read-only: the next save reports it

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        self._stop.set()
        try:
            if json.loads(self.path.read_text()).get("token") == self.record["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
