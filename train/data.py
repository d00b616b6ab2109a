"""Training data streams: endless, per-rank, and a pure function of (seed, rank, step) so resume is exact.

``shards.reader.make_loader`` yields exactly ``batches_per_epoch`` batches per epoch on every rank
(uneven streams would hang DDP), in an order that is a function of (seed, epoch, rank, worker). So
the batch consumed at step ``s`` is always batch ``s % batches_per_epoch`` of epoch
``s // batches_per_epoch``. Resuming at step ``s`` reopens that epoch and skips the batches
already consumed: the data position is the step count and needs nothing else in the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from geometry import Crop
from shards.format import check_crop
from shards.reader import SKIPPED_KEY, make_loader
from shards.sources import is_remote, subdir
from train.distributed import PREEMPTION_SIGNALS
from train.schema import Range

log = logging.getLogger(__name__)

RUN_CROP = "this run (config keys crop.size, crop.cube_mm)"  # whose crop, in crop mismatch messages
NO_TRAINING_DATA = "no training data: set 'data.synthetic' and/or 'data.real' (with a batch size > 0)"


@dataclass
class DataConfig:
    """Shard sources and per-rank batch sizes."""

    # Sources: a local dir, an http(s):// URL or a pipe: command (shards.sources), e.g. pipe:aws s3 cp s3://b/x/{} -
    real: str | None = None  # NYU shards root holding train/ and test/ (None: no real data, no real loss terms)
    synthetic: str | None = None  # synthetic pose shards dir (None: real-only fine-tuning)
    real_batch: Annotated[int, Range(ge=0)] = 4  # real frames per rank and step (each frame gives 3 view images)
    synthetic_batch: Annotated[int, Range(ge=0)] = 16  # synthetic samples per rank and step
    batches_per_epoch: Annotated[int, Range(ge=1)] = 500  # batches per loader epoch and rank; resume reopens the epoch and skips
    num_workers: Annotated[int, Range(ge=0)] = 2  # loader worker processes per rank and source
    on_corrupt: Literal["error", "skip"] = "error"  # a corrupt sample/shard: stop the run, or drop it and go on
    max_corrupt_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.01  # skip: stop once more than this fraction of what a reader read is bad

    @property
    def has_real(self) -> bool:
        """Whether training steps read real NYU frames (a root and a batch size > 0)."""
        return bool(self.real) and self.real_batch > 0

    @property
    def has_synthetic(self) -> bool:
        """Whether training steps render synthetic samples (a shard dir and a batch size > 0)."""
        return bool(self.synthetic) and self.synthetic_batch > 0


class BatchStream:
    """Endless batches of one shard source for this rank; :meth:`start` positions it at a step.

    The reader draws one shard stream per (seed, epoch), identical on every rank, and splits it by
    rank, so all ranks pass the same seed; its sample shuffle is seeded by (seed, epoch, rank, worker).
    """

    def __init__(self, source: str | Path, *, batch_size: int, batches_per_epoch: int, num_workers: int,
                 seed: int, on_corrupt: Literal["error", "skip"] = "error", max_corrupt_fraction: float = 0.01) -> None:
        if not is_remote(source) and not Path(source).is_dir():
            raise FileNotFoundError(f"shard source {str(source)!r} is not a directory")
        self.source = str(source)
        self.batches_per_epoch = batches_per_epoch
        self.loader = make_loader(source, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                                  num_workers=num_workers, seed=seed, resampled=True, on_corrupt=on_corrupt,
                                  max_corrupt_fraction=max_corrupt_fraction, protect_signals=PREEMPTION_SIGNALS)
        self.skipped = 0  # corrupt samples this rank's readers dropped (data.on_corrupt=skip)
        self._logged: set[tuple[str, str]] = set()
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._first: dict[str, Any] | None = None
        self._epoch = 0
        self._offset = 0

    def _open(self, epoch: int) -> None:
        self._iterator = None  # lets the previous epoch's workers shut down first
        self.loader.set_epoch(epoch)
        # Workers start here; they ignore a job-wide SIGTERM (this rank checkpoints; protect_signals).
        self._iterator = iter(self.loader)
        self._first = next(self._iterator, None)
        self._epoch, self._offset = epoch, 0

    def start(self, step: int) -> None:
        """Position the stream so the next batch is the one an uninterrupted run uses at ``step``."""
        self._open(step // self.batches_per_epoch)
        for _ in range(step % self.batches_per_epoch):
            self.next()

    def next(self) -> dict[str, Any]:
        if self._iterator is None:
            self.start(0)
        if self._offset >= self.batches_per_epoch:
            self._open(self._epoch + 1)
        if self._first is not None:
            batch, self._first = self._first, None
        else:
            batch = next(self._iterator, None)  # type: ignore[arg-type]
        if batch is None:
            raise RuntimeError(f"{self.source}: loader ended after {self._offset} of {self.batches_per_epoch} "
                               "batches in an epoch (every rank must get the same number)")
        self._offset += 1
        self._count_skips(batch)
        return batch

    def _count_skips(self, batch: dict[str, Any]) -> None:
        """Count the samples the readers dropped since the previous batch; log each drop once."""
        for url, key, samples, reason in batch.pop(SKIPPED_KEY, []):
            self.skipped += samples
            if (url, key) not in self._logged:
                self._logged.add((url, key))
                log.warning("data.on_corrupt=skip: dropped %d sample(s) of %s: %s", samples, url, reason)


def training_dirs(cfg: DataConfig, *, evaluating: bool) -> list[tuple[str, str]]:
    """(config key, shard source) a run reads: the synthetic dir, NYU train/ and, evaluating, test/."""
    dirs = [("data.synthetic", str(cfg.synthetic))] if cfg.has_synthetic else []
    if cfg.real:
        dirs += [("data.real", subdir(cfg.real, split)) for split in (["train", "test"] if evaluating else ["train"])]
    return dirs


def build_streams(cfg: DataConfig, *, crop: Crop, seed: int) -> tuple[BatchStream | None, BatchStream | None]:
    """(synthetic, real) streams; None for a source that is absent or has batch size 0. The real shards
    must have been cut at ``crop``, the run's."""
    common = dict(batches_per_epoch=cfg.batches_per_epoch, num_workers=cfg.num_workers, on_corrupt=cfg.on_corrupt,
                  max_corrupt_fraction=cfg.max_corrupt_fraction)
    synthetic = real = None
    if cfg.has_synthetic:
        synthetic = BatchStream(cfg.synthetic, batch_size=cfg.synthetic_batch, seed=seed, **common)
    if cfg.has_real:
        check_crop(subdir(cfg.real, "train"), crop, RUN_CROP)
        real = BatchStream(subdir(cfg.real, "train"), batch_size=cfg.real_batch, seed=seed + 1, **common)
    if synthetic is None and real is None:
        raise ValueError(NO_TRAINING_DATA)
    return synthetic, real
