"""Process-group setup, rank/world from the environment, and collective preemption.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a bare ``srun`` sets ``SLURM_PROCID``/
``SLURM_NTASKS``/``SLURM_LOCALID``; a plain ``python -m train`` sets neither and runs as one process.
:func:`get_dist_env` is the one place that reads them.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# A scheduler's preemption signals: every rank stops at the next step and checkpoints (the loader's workers
# are told to outlive them: shards.reader.make_loader's protect_signals).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int = 1  # ranks on this node (torchrun's LOCAL_WORLD_SIZE)

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
    world = _env_int(("WORLD_SIZE", "SLURM_NTASKS"), 1)
    if world > 1 and not os.environ.get("MASTER_ADDR"):
        raise RuntimeError(
            f"{world} Slurm tasks but no MASTER_ADDR/MASTER_PORT: a bare `srun python -m train` has no rendezvous; "
            "launch with `python -m launch slurm ...` (one torchrun per node) or `srun torchrun ...`")
    return DistEnv(
        rank=_env_int(("RANK", "SLURM_PROCID"), 0),
        world_size=_env_int(("WORLD_SIZE", "SLURM_NTASKS"), 1),
        local_rank=_env_int(("LOCAL_RANK", "SLURM_LOCALID"), 0),
        local_world_size=_env_int(("LOCAL_WORLD_SIZE",), 1),
    )


def select_device(requested: str, env: DistEnv) -> torch.device:
    """``auto`` is this rank's GPU when CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but CUDA is not available on this machine")
        device = torch.device("cuda", gpu_of_rank(env.local_rank, env.local_world_size, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device
    return torch.device(requested)


def gpu_of_rank(local_rank: int, local_world_size: int, gpus: int) -> int:
    """The GPU of a rank: its local rank. More ranks on a node than visible GPUs is refused here, before the
    rendezvous: NCCL refuses two ranks on one GPU ("Duplicate GPU detected") only once every rank has joined."""
    ranks = max(local_world_size, local_rank + 1)
    if ranks > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(f"{ranks} rank(s) on this node (torchrun's LOCAL_WORLD_SIZE) but {gpus} GPU(s) visible"
                           f"{f' (CUDA_VISIBLE_DEVICES={visible})' if visible is not None else ''}: NCCL needs one GPU "
                           f"per rank; start at most {gpus} per node (torchrun --nproc_per_node={gpus})")
    return local_rank


def setup_distributed(env: DistEnv, device: torch.device, timeout_s: float = 1800.0,
                      setup_timeout_s: float | None = None) -> None:
    """Join the process group: NCCL on GPUs, gloo on CPU, and the control plane's gloo group. Under a
    launcher (torchrun sets MASTER_ADDR) also for a single rank, so that one GPU runs the code path of many
    (NCCL, DDP, the control plane); a plain ``python -m train`` runs without a process group.

    ``timeout_s`` bounds every collective; joining is bounded by ``setup_timeout_s`` (default
    ``TRAIN_DIST_SETUP_TIMEOUT`` seconds, else 300): a rank that cannot join in time exits with
    status 1 and a message instead of hanging (torchrun then restarts or fails the job).
    """
    if dist.is_initialized() or (env.world_size <= 1 and not os.environ.get("MASTER_ADDR")):
        return
    if setup_timeout_s is None:
        setup_timeout_s = float(os.environ.get("TRAIN_DIST_SETUP_TIMEOUT", "300"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, object] = {"device_id": device} if device.type == "cuda" else {}
    deadline = time.monotonic() + setup_timeout_s
    # The watchdog fires just after the deadline, so a TimeoutError raised at the deadline (with its
    # own message) wins over the generic one.
    with _give_up_after(setup_timeout_s + 1.0, f"rank {env.rank} of {env.world_size} could not join the {backend} "
                        f"process group via {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"):
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            kwargs["store"] = _generation_store(env, deadline, datetime.timedelta(seconds=timeout_s))
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        global _control
        _control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


@contextlib.contextmanager
def _give_up_after(seconds: float, what: str) -> Iterator[None]:
    """Turn a hang in the block into exit status 1 with ``what`` and every thread's stack on stderr."""

    def give_up() -> None:
        sys.stderr.write(f"error: {what} within {seconds:.0f} s (TRAIN_DIST_SETUP_TIMEOUT); giving up\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)  # the main thread is stuck in native code: an exception could not reach it

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _generation_store(env: DistEnv, deadline: float, timeout: datetime.timedelta) -> dist.Store:
    """A key-value store that belongs to this generation of ranks only.

    Under torchrun the ranks would share the agent's TCPStore (``TORCHELASTIC_USE_AGENT_STORE``),
    and the agent keeps that one server for every restart: the ranks of a restart then read the
    process-group keys (gloo/NCCL peer addresses) that the dead generation left behind and connect
    to ports nobody listens on any more (pytorch/pytorch#135712). ``TORCHELASTIC_RESTART_COUNT`` is
    no fix: each node's agent counts its own restarts. So rank 0 serves a fresh store on a free port
    and publishes its port and a random token in the agent's store; the other ranks retry until the
    published store answers with that token, which a dead generation's entry never does.

    ``init_process_group`` does not apply its timeout to a store it is given, so the returned store
    carries ``timeout`` itself (not the short probe timeout: NCCL ranks block on it for rank 0's id).
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    key = f"train/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/generation_store"
    agent = dist.TCPStore(host, port, is_master=False, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
    if env.rank == 0:
        own = dist.TCPStore(host, 0, env.world_size, is_master=True, wait_for_workers=False,
                            timeout=datetime.timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
        token = uuid.uuid4().hex
        own.set("token", token)
        agent.set(key, f"{own.port}:{token}")
        own.set_timeout(timeout)
        return dist.PrefixStore("pg", own)
    while time.monotonic() < deadline:
        if agent.check([key]):
            published_port, token = agent.get(key).decode().split(":")
            with contextlib.suppress(RuntimeError):  # a dead generation's port: refused or no token
                client = dist.TCPStore(host, int(published_port), is_master=False, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=2))
                if client.check(["token"]) and client.get("token").decode() == token:
                    client.set_timeout(timeout)
                    return dist.PrefixStore("pg", client)
        time.sleep(0.2)
    raise TimeoutError(f"rank {env.rank}: rank 0 never published a live store under {key!r} in the "
                       f"torchrun agent's store {host}:{port}")


def teardown_distributed() -> None:
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def describe_process_group() -> str:
    """E.g. ``process group nccl, 8 rank(s), control plane gloo``, or ``no process group``."""
    if not is_distributed():
        return "no process group"
    return f"process group {dist.get_backend()}, {dist.get_world_size()} rank(s), control plane gloo"


def is_distributed() -> bool:
    """Whether a process group is set up (under torchrun: also for one rank)."""
    return dist.is_available() and dist.is_initialized()


# The control plane: every collective of this module (flags, error messages, metrics, RNG states, barriers)
# runs on a gloo group over CPU tensors, also when DDP's gradients go through NCCL, so none of them waits for
# the CUDA stream or copies to and from the GPU. setup_distributed makes it (on gloo runs too: one code path).
_control: dist.ProcessGroup | None = None


def all_reduce_max(values: list[float]) -> list[float]:
    """The element-wise maximum of ``values`` over all ranks (the values themselves without a process group)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_control)
    return tensor.tolist()


def all_gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (same length on all ranks), indexed by rank."""
    if not is_distributed():
        return [list(values)]
    local = torch.tensor(values, dtype=torch.float64)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local, group=_control)
    return [t.tolist() for t in gathered]


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` indexed by rank (pickled in memory only, never written to disk)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control)
    return out


def agree(stop: bool, message: str | None, nonfinite: str | None = None) -> tuple[bool, str | None, str | None]:
    """Collective, one all-reduce: whether any rank asks to ``stop`` (a preemption signal), the first
    failing rank's ``message`` as ``"rank K: message"`` on every rank, or None, and the same for the first
    rank that reports a ``nonfinite`` step (the divergence guard of train.loop).

    A rank-local failure (a corrupt shard one rank read) must stop every rank at the same point: a rank
    that raised alone would leave its peers blocked in the next collective until the timeout. The messages
    are gathered (a second collective) only when a rank failed.
    """
    if not is_distributed():
        return stop, message, nonfinite
    any_stop, any_failed, any_nonfinite = all_reduce_max([float(stop), float(message is not None),
                                                          float(nonfinite is not None)])
    return any_stop > 0, _first(message) if any_failed else None, _first(nonfinite) if any_nonfinite else None


def _first(text: str | None) -> str:
    """Collective: ``"rank K: text"`` of the first rank whose ``text`` is not None."""
    reports = [(rank, report) for rank, report in enumerate(all_gather_objects(text)) if report is not None]
    return f"rank {reports[0][0]}: {reports[0][1]}"


def agree_on_error(work: Callable[[], T], error: type[Exception]) -> T:
    """Collective: ``work()`` on every rank; when it raised ``error`` on any rank, every rank raises ``error``
    with the first failing rank's message (:func:`agree`), instead of one rank dying and its peers
    waiting in the next collective until the timeout (a corrupt shard read by one rank)."""
    value, problem = None, None
    try:
        value = work()
    except error as exc:
        problem = str(exc)
    _, message, _ = agree(False, problem)
    if message is not None:
        raise error(message)
    return value  # type: ignore[return-value]


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_control)


class PreemptionFlag:
    """SIGTERM/SIGUSR1 set a local flag (``received``); the loop agrees on it across ranks once per step
    (:func:`agree`), so a signal that reached any rank stops all of them at the same step.

    The handler only records the signal: checkpointing inside a handler could interrupt a collective.
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
