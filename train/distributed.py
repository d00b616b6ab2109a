"""Process-group setup, rank/world from the environment, and collective preemption.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a bare ``srun`` sets ``SLURM_PROCID``/
``SLURM_NTASKS``/``SLURM_LOCALID``; a plain ``python -m train`` sets neither and runs as one process.
:func:`get_dist_env` is the one place that reads them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from dataclasses import dataclass
from types import FrameType
from typing import Iterator

import torch
import torch.distributed as dist

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as exc:
                raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from exc
    return default


def get_dist_env() -> DistEnv:
    """Rank, world size and local rank from torchrun's variables, else Slurm's, else a single process."""
    return DistEnv(
        rank=_env_int(("RANK", "SLURM_PROCID"), 0),
        world_size=_env_int(("WORLD_SIZE", "SLURM_NTASKS"), 1),
        local_rank=_env_int(("LOCAL_RANK", "SLURM_LOCALID"), 0),
    )


def select_device(requested: str, env: DistEnv) -> torch.device:
    """``auto`` is this rank's GPU when CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but CUDA is not available on this machine")
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device(requested)


def setup_distributed(env: DistEnv, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group when there is more than one rank: NCCL on GPUs, gloo on CPU."""
    if env.world_size <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    # NCCL reduces only CUDA tensors; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_max(value: float) -> float:
    """The maximum of ``value`` over all ranks (the value itself without a process group)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (same length on all ranks), indexed by rank."""
    if not is_distributed():
        return [list(values)]
    local = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [t.cpu().tolist() for t in gathered]


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` indexed by rank (pickled in memory only, never written to disk)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class PreemptionFlag:
    """SIGTERM/SIGUSR1 set a local flag; :meth:`should_stop` agrees on it across ranks.

    The handler only records the signal: checkpointing inside a handler could interrupt a collective.
    Every rank calls :meth:`should_stop` at the same step, so a signal that reached any rank stops all
    of them at the same step.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionFlag":
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def should_stop(self) -> bool:
        return all_reduce_max(1.0 if self.received is not None else 0.0) > 0.0


@contextlib.contextmanager
def deferred_preemption_signals() -> Iterator[None]:
    """Hold SIGTERM/SIGUSR1 until the block ends (they are delivered then, setting the flag).

    Processes forked inside the block inherit the blocked mask. Loader workers are forked this way:
    a scheduler's preemption signals every process of the job, and a DataLoader worker that dies of
    SIGTERM makes its rank raise before the ranks can agree to save. Workers still end normally when
    their loader shuts them down or their parent exits.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
