"""The reader used by training and evaluation: a webdataset pipeline over a directory of shards.

Stages (resampled, for training):
  shard list resampled with a (seed, epoch) RNG, the same stream on every rank
  -> split by rank -> split by DataLoader worker
  -> checked samples: tar entries to samples, each sample's CRC32s verified (format 2), each shard's
     sample count compared with the manifest's; then decode only .npy (no pickle) / .json / .png,
     refuse anything else -> shuffle -> batch + collate
and the loader stops after exactly ``batches_per_epoch`` batches: every rank steps the same number of
times, even with fewer shards than ranks x workers, because the resampled stream never runs dry.
``resampled=False`` reads each shard once in order (evaluation) and keeps the last partial batch.

``source`` is a local shard directory, an ``http(s)://`` URL or a ``pipe:`` command (:mod:`shards.sources`):
every shard and the manifest are opened with webdataset's openers and the tar is read as a stream, with the
same checks; a remote source lists its shards in its manifest.

Corrupt data (a failed checksum, a tar that is damaged or ends early): ``on_corrupt="error"`` raises
:class:`shards.format.CorruptShardError` naming the shard and sample; ``"skip"`` drops the sample (or the
rest of the shard), lists the drop in the next batch's ``__skipped__`` entry as (shard, key, samples,
reason), and raises once more than ``max_corrupt_fraction`` of what a reader read was bad. Before
reading, every shard of the manifest must exist with its size (:func:`shards.format.check_shard_files`;
a remote source's sizes are not checked before reading).

The rank split comes from explicit ``rank``/``world_size`` arguments, else from torch.distributed when a
process group is initialised, else there is none: exported ``RANK``/``WORLD_SIZE`` variables alone never
split the data (a single-process evaluation inside a torchrun/SLURM shell must still read every sample).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
import signal
import tarfile
import threading
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from shards.format import (CHECKSUM_ENTRY, DECODABLE_EXTENSIONS, MANIFEST_NAME, CorruptShardError, ShardsError,
                           check_shard_files, has_checksums, read_tar_samples, sample_count_problem,
                           verify_checksums)
from shards.sources import is_remote, member

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1000
SHUFFLE_INITIAL = 100
SKIPPED_KEY = "__skipped__"  # batch entry: [(shard, key, samples, reason)] dropped since the last batch
# The bad fraction counts at least this many samples, so one bad sample among the first few read is no stop.
MIN_SAMPLES_FOR_FRACTION = 100
_WARNED_UNCHECKED: set[str] = set()


def _obey_owner_only(signals: tuple[int, ...], owner: int) -> None:
    """Wait for ``signals`` (blocked in every thread) and end the worker only when ``owner`` sent one."""
    while True:
        info = signal.sigwaitinfo(signals)
        if info.si_pid == owner:
            os._exit(128 + info.si_signo)


def signal_proof_worker(worker_id: int, *, signals: tuple[int, ...], owner: int) -> None:
    """``worker_init_fn``: a loader worker ignores ``signals`` (a scheduler's preemption signals, sent to
    every process of the job) from anyone but ``owner``, the pid of the process that made the loader (bound
    with ``functools.partial``: under forkserver or spawn the worker's parent process is not the loader's
    owner). The owner decides when to stop (it checkpoints first), so its workers must outlive the signals.

    Ignoring them outright is not enough: at exit (``multiprocessing``'s atexit hook, and the
    DataLoader's own shutdown) the parent ends its daemonic workers with SIGTERM and then joins them,
    while an idle worker only notices its parent's death after the parent is gone, so a worker that
    ignored that SIGTERM would hang its parent's exit forever. The signals are blocked and a thread
    takes them with ``sigwaitinfo``, which reports the sender: the owner's SIGTERM still ends the worker.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    threading.Thread(target=_obey_owner_only, args=(signals, owner),
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


def list_shards(source: str | Path, manifest: dict[str, Any] | None) -> list[str]:
    """The shard URLs of ``source``: the manifest's for a remote source, the directory's shard-*.tar files
    for a local one."""
    if is_remote(source):
        assert manifest is not None  # check_shard_files reads a remote source's manifest or raises
        shards = [member(source, shard["name"]) for shard in manifest.get("shards", [])]
    else:
        shards = sorted(str(p) for p in Path(source).glob("shard-*.tar"))
    if not shards:
        raise ShardsError(f"{source}: no shard-*.tar files (build them with `python -m shards nyu|synthetic`)")
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


def decode_sample(sample: dict[str, Any], *, checksums: bool | None = None) -> dict[str, Any]:
    """Tar entries -> arrays/dicts by extension; refuses pickle and any other type, naming the entry.

    ``checksums``: True verifies the sample's ``crc.json`` (required), False ignores it (format 1),
    None verifies it when present (a directory without a manifest). Raises CorruptShardError on a mismatch.
    """
    out = {"__key__": sample["__key__"], "__url__": sample.get("__url__", "?")}
    entries = {name: value for name, value in sample.items() if not name.startswith("__")}
    if checksums or (checksums is None and CHECKSUM_ENTRY in entries):
        verify_checksums(out["__url__"], out["__key__"], entries)
    for name, value in entries.items():
        if name == CHECKSUM_ENTRY:
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
            # formats=["PNG"]: PIL must not sniff the bytes and pick another (larger-attack-surface) decoder.
            try:
                with Image.open(io.BytesIO(value), formats=["PNG"]) as image:
                    out[field] = np.asarray(image)
            except (OSError, ValueError) as error:
                raise ShardsError(f"{out['__url__']}: entry {sample['__key__']}.{name} is not a PNG image "
                                  f"({error})") from None
    return out


class CorruptionLedger:
    """One reader's (loader worker's) count of samples read and dropped, and the drops not yet reported.

    ``drop`` raises :class:`CorruptShardError` with ``on_corrupt="error"``, and with ``"skip"`` once more than
    ``max_fraction`` of the samples read (counting at least ``MIN_SAMPLES_FOR_FRACTION``) were dropped.
    """

    def __init__(self, on_corrupt: Literal["error", "skip"], max_fraction: float) -> None:
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        self.on_corrupt, self.max_fraction = on_corrupt, max_fraction
        self.reset()

    def reset(self) -> None:
        self.read, self.dropped = 0, 0
        self.pending: list[tuple[str, str, int, str]] = []

    def drop(self, url: str, key: str, samples: int, reason: str) -> None:
        if self.on_corrupt == "error":
            raise CorruptShardError(reason)
        self.dropped += samples
        self.pending.append((url, key, samples, reason))
        seen = self.read + self.dropped
        if self.dropped > self.max_fraction * max(seen, MIN_SAMPLES_FOR_FRACTION):
            raise CorruptShardError(f"{url}: {self.dropped} of {seen} samples read were corrupt, more than "
                                    f"max_corrupt_fraction={self.max_fraction:g} allows (last: {reason})")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """:func:`collate`, with the drops since the previous batch under ``SKIPPED_KEY``."""
        batch = collate(samples)
        batch[SKIPPED_KEY], self.pending = self.pending, []
        return batch


class CheckedSamples:
    """Stage: shard URLs -> decoded samples, every sample checked, every shard's count compared with the
    manifest's (``expected``: path -> samples); corrupt data goes to the ``ledger``."""

    def __init__(self, expected: dict[str, int], ledger: CorruptionLedger, checksums: bool | None) -> None:
        self.expected, self.ledger, self.checksums = expected, ledger, checksums

    def __call__(self, source: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for item in source:
            yield from self.shard(item["url"])

    def shard(self, url: str) -> Iterator[dict[str, Any]]:
        expected, seen, key = self.expected.get(url), 0, "(none)"
        try:
            for key, entries in read_tar_samples(url):
                seen += 1
                try:
                    sample = decode_sample({"__key__": key, "__url__": url, **entries}, checksums=self.checksums)
                except CorruptShardError as error:
                    self.ledger.drop(url, key, 1, str(error))
                    continue
                self.ledger.read += 1
                yield sample
        except (tarfile.TarError, OSError, EOFError) as error:
            reason = f"{url}: damaged tar after sample {key} ({seen} samples read; {error})"
        else:
            reason = sample_count_problem(url, seen, expected)
            if reason is None or seen > expected:  # type: ignore[operator]  # extra samples were all checked
                return
        self.ledger.drop(url, key, max((expected or 0) - seen, 1), reason)


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

    def __init__(self, loader: wds.WebLoader, epoch_stages: list[Any], batches_per_epoch: int | None,
                 ledger: CorruptionLedger) -> None:
        self.loader, self.epoch_stages, self.batches_per_epoch = loader, epoch_stages, batches_per_epoch
        self.ledger = ledger
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (e.g. when resuming from a checkpoint)."""
        self.epoch = epoch - 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epoch += 1
        for stage in self.epoch_stages:  # workers copy the pipeline at iter(), so this reaches them
            stage.epoch = self.epoch
        self.ledger.reset()  # the bad fraction counts per reader and epoch
        return iter(self.loader)

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("a non-resampled loader has no fixed length")
        return self.batches_per_epoch


def make_loader(source: str | Path, *, batch_size: int, batches_per_epoch: int | None, num_workers: int = 2,
                seed: int = 0, resampled: bool = True, rank: int | None = None,
                world_size: int | None = None, on_corrupt: Literal["error", "skip"] = "error",
                max_corrupt_fraction: float = 0.01, protect_signals: tuple[int, ...] = ()) -> ShardLoader:
    """Batches (dicts of tensors, ``meta`` a list, ``__skipped__`` the drops) from the shards in ``source``;
    see the module doc. Raises ShardsError at once when a shard of the manifest is missing or resized.

    ``rank``/``world_size``: this reader's share of the data; default: the initialised process group's,
    else the whole data set. ``on_corrupt``/``max_corrupt_fraction``: what corrupt samples do.
    ``protect_signals``: signals the loader's workers take from this process only (:func:`signal_proof_worker`).
    """
    if resampled and not batches_per_epoch:
        raise ValueError("resampled=True needs batches_per_epoch (the stream is endless)")
    manifest = check_shard_files(source)
    urls = list_shards(source, manifest)
    rank, world = resolve_rank_world(rank, world_size)
    ledger = CorruptionLedger(on_corrupt, max_corrupt_fraction)
    expected, checksums = _expectations(str(source), manifest)
    checked = CheckedSamples(expected, ledger, checksums)
    epoch_stages: list[Any] = []
    if resampled:
        shard_list = EpochResampledShards(urls, seed)
        shuffle = EpochShuffle(seed, rank)
        epoch_stages = [shard_list, shuffle]
        stages = [shard_list, split_by_rank(rank, world), wds.split_by_worker, checked, shuffle,
                  wds.batched(batch_size, collation_fn=ledger.collate, partial=False)]
    else:
        stages = [wds.SimpleShardList(urls), split_by_rank(rank, world), wds.split_by_worker, checked,
                  wds.batched(batch_size, collation_fn=ledger.collate, partial=True)]
    dataset = wds.DataPipeline(*stages)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                           persistent_workers=False, pin_memory=False,
                           worker_init_fn=(functools.partial(signal_proof_worker, signals=protect_signals,
                                                             owner=os.getpid())
                                           if num_workers > 0 and protect_signals else None))
    if resampled:
        loader = loader.with_epoch(batches_per_epoch)
    return ShardLoader(loader, epoch_stages, batches_per_epoch if resampled else None, ledger)


def _expectations(directory: str, manifest: dict[str, Any] | None) -> tuple[dict[str, int], bool | None]:
    """(shard path -> sample count, checksums) for :class:`CheckedSamples`: format 2 checks every sample,
    format 1 none (one warning per directory), a directory without a manifest the samples that have one."""
    if manifest is None:
        return {}, None
    expected = {member(directory, shard["name"]): int(shard["samples"]) for shard in manifest["shards"]}
    if has_checksums(manifest):
        return expected, True
    if directory not in _WARNED_UNCHECKED:
        _WARNED_UNCHECKED.add(directory)
        log.warning("%s: shard format version 1 has no per-sample checksums: its samples are read unchecked "
                    "(rebuild the shards with `python -m shards` for format 2)", member(directory, MANIFEST_NAME))
    return expected, False
