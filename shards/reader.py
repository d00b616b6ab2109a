"""The reader used by training and evaluation: a webdataset pipeline over a directory of shards.

Stages (resampled, for training):
  shard list resampled with a (seed, epoch) RNG, the same stream on every rank
  -> split by rank -> split by DataLoader worker -> tar entries to samples
  -> decode only .npy (no pickle) / .json / .png, refuse anything else -> shuffle -> batch + collate
and the loader stops after exactly ``batches_per_epoch`` batches: every rank steps the same number of
times, even with fewer shards than ranks x workers, because the resampled stream never runs dry.
``resampled=False`` reads each shard once in order (evaluation) and keeps the last partial batch.

The rank split comes from explicit ``rank``/``world_size`` arguments, else from torch.distributed when a
process group is initialised, else there is none: exported ``RANK``/``WORLD_SIZE`` variables alone never
split the data (a single-process evaluation inside a torchrun/SLURM shell must still read every sample).
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from shards.format import DECODABLE_EXTENSIONS, ShardsError

SHUFFLE_BUFFER = 1000
SHUFFLE_INITIAL = 100
# A scheduler's preemption signals every process of the job; the rank that owns the loader decides
# when to stop (it checkpoints first), so its loader workers must outlive these signals.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _obey_owner_only(signals: tuple[int, ...], owner: int) -> None:
    """Wait for ``signals`` (blocked in every thread) and end the worker only when ``owner`` sent one."""
    while True:
        info = signal.sigwaitinfo(signals)
        if info.si_pid == owner:
            os._exit(128 + info.si_signo)


def preemption_proof_worker(worker_id: int, *, owner: int) -> None:
    """``worker_init_fn``: a loader worker ignores SIGTERM/SIGUSR1 from anyone but ``owner``, the pid of
    the process that made the loader (bound with ``functools.partial``: under forkserver or spawn the
    worker's parent process is not the loader's owner).

    Ignoring them outright is not enough: at exit (``multiprocessing``'s atexit hook, and the
    DataLoader's own shutdown) the parent ends its daemonic workers with SIGTERM and then joins them,
    while an idle worker only notices its parent's death after the parent is gone, so a worker that
    ignored that SIGTERM would hang its parent's exit forever. The signals are blocked and a thread
    takes them with ``sigwaitinfo``, which reports the sender: the owner's SIGTERM still ends the worker.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    threading.Thread(target=_obey_owner_only, args=(PREEMPTION_SIGNALS, owner),
                     name=f"loader-worker-{worker_id}-signals", daemon=True).start()


def get_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed process group, else (0, 1).

    Environment variables are deliberately ignored: without a process group the ranks cannot gather
    their shares, so splitting on ``RANK``/``WORLD_SIZE`` alone would silently drop data.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def resolve_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit (rank, world_size) when both are given (checked), else :func:`get_rank_world`."""
    if rank is None and world_size is None:
        return get_rank_world()
    if rank is None or world_size is None:
        raise ValueError(f"give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
    return rank, world_size


def list_shards(source: str | Path) -> list[str]:
    directory = Path(source)
    shards = sorted(str(p) for p in directory.glob("shard-*.tar"))
    if not shards:
        raise ShardsError(f"{directory}: no shard-*.tar files (build them with `python -m shards nyu|synthetic`)")
    return shards


class EpochResampledShards(IterableDataset):
    """Endless shard URLs drawn with a (seed, epoch) RNG: identical on every rank and worker, so that the
    rank and worker splits after it partition one stream; ``epoch`` is set by the loader each epoch."""

    def __init__(self, urls: list[str], seed: int) -> None:
        super().__init__()
        self.urls, self.seed, self.epoch = urls, seed, 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        rng = random.Random(f"shards/{self.seed}/{self.epoch}")
        while True:
            yield {"url": rng.choice(self.urls)}


def split_by_rank(rank: int, world: int):
    """Stage: every world-th item starting at rank (rank and world fixed when the loader is made)."""

    def stage(source: Iterator[Any]) -> Iterator[Any]:
        for index, item in enumerate(source):
            if index % world == rank:
                yield item

    return stage


class EpochShuffle:
    """Stage: buffer shuffle seeded by (seed, epoch, rank, worker), reproducible run to run."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __call__(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"samples/{self.seed}/{self.epoch}/{self.rank}/{info.id if info else 0}")
        return wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng)(source)


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Tar entries -> arrays/dicts by extension; refuses pickle and any other type, naming the entry."""
    out = {"__key__": sample["__key__"], "__url__": sample.get("__url__", "?")}
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        field, _, extension = name.rpartition(".")
        if extension not in DECODABLE_EXTENSIONS:
            raise ShardsError(f"{out['__url__']}: entry {sample['__key__']}.{name} has type .{extension}; the "
                              f"reader decodes only {', '.join('.' + e for e in DECODABLE_EXTENSIONS)} "
                              f"and never unpickles")
        if extension == "npy":
            out[field] = np.load(io.BytesIO(value), allow_pickle=False)
        elif extension == "json":
            out[field] = json.loads(value)
        else:
            from PIL import Image

            # formats=["PNG"]: PIL must not sniff the bytes and pick another (larger-attack-surface) decoder.
            try:
                with Image.open(io.BytesIO(value), formats=["PNG"]) as image:
                    out[field] = np.asarray(image)
            except (OSError, ValueError) as error:
                raise ShardsError(f"{out['__url__']}: entry {sample['__key__']}.{name} is not a PNG image "
                                  f"({error})") from None
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack arrays on dim 0 by key (as torch tensors); other values (meta) become lists."""
    names = [k for k in samples[0] if not k.startswith("__")]
    for sample in samples[1:]:
        if [k for k in sample if not k.startswith("__")] != names:
            raise ShardsError(f"{sample['__url__']}: sample {sample['__key__']} has entries "
                              f"{sorted(k for k in sample if not k.startswith('__'))}, expected {sorted(names)}")
    batch: dict[str, Any] = {}
    for name in names:
        values = [s[name] for s in samples]
        batch[name] = torch.from_numpy(np.stack(values)) if isinstance(values[0], np.ndarray) else values
    return batch


class ShardLoader:
    """Iterable of batches; each ``iter()`` is one epoch (a new shard/sample order when resampled)."""

    def __init__(self, loader: wds.WebLoader, epoch_stages: list[Any], batches_per_epoch: int | None) -> None:
        self.loader, self.epoch_stages, self.batches_per_epoch = loader, epoch_stages, batches_per_epoch
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (e.g. when resuming from a checkpoint)."""
        self.epoch = epoch - 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epoch += 1
        for stage in self.epoch_stages:  # workers copy the pipeline at iter(), so this reaches them
            stage.epoch = self.epoch
        return iter(self.loader)

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("a non-resampled loader has no fixed length")
        return self.batches_per_epoch


def make_loader(source: str | Path, *, batch_size: int, batches_per_epoch: int | None, num_workers: int = 2,
                seed: int = 0, resampled: bool = True, rank: int | None = None,
                world_size: int | None = None) -> ShardLoader:
    """Batches (dicts of tensors, ``meta`` a list) from the shards in ``source``; see the module doc.

    ``rank``/``world_size``: this reader's share of the data; default: the initialised process group's,
    else the whole data set.
    """
    if resampled and not batches_per_epoch:
        raise ValueError("resampled=True needs batches_per_epoch (the stream is endless)")
    urls = list_shards(source)
    rank, world = resolve_rank_world(rank, world_size)
    epoch_stages: list[Any] = []
    if resampled:
        shard_list = EpochResampledShards(urls, seed)
        shuffle = EpochShuffle(seed, rank)
        epoch_stages = [shard_list, shuffle]
        stages = [shard_list, split_by_rank(rank, world), wds.split_by_worker,
                  wds.tarfile_to_samples(handler=wds.reraise_exception), wds.map(decode_sample), shuffle,
                  wds.batched(batch_size, collation_fn=collate, partial=False)]
    else:
        stages = [wds.SimpleShardList(urls), split_by_rank(rank, world), wds.split_by_worker,
                  wds.tarfile_to_samples(handler=wds.reraise_exception), wds.map(decode_sample),
                  wds.batched(batch_size, collation_fn=collate, partial=True)]
    dataset = wds.DataPipeline(*stages)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                           persistent_workers=False, pin_memory=False,
                           worker_init_fn=(functools.partial(preemption_proof_worker, owner=os.getpid())
                                           if num_workers > 0 else None))
    if resampled:
        loader = loader.with_epoch(batches_per_epoch)
    return ShardLoader(loader, epoch_stages, batches_per_epoch if resampled else None)
