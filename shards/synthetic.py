"""``python -m shards synthetic``: pose, shape and sensor-noise parameters for on-the-fly rendering.

Sample i draws from generators seeded by (seed, i) alone, so the shards are identical whatever the
worker count or shard size. Training renders the depth itself (``train`` owns rendering).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.format import SYNTHETIC_AUGMENT_FIELDS, SYNTHETIC_KEYS, ShardsError, encode_sample
from shards.writer import BuildSpec, ItemResult, build

# Ranges of the sensor-noise parameters (training applies them after rendering a crop).
JITTER_PX = 2.0  # std of the crop-centre jitter, crop pixels
DEPTH_NOISE_MM = (0.0, 4.0)
HOLE_FRACTION = (0.0, 0.06)


@dataclass(frozen=True)
class SyntheticConfig:
    """Arguments of ``python -m shards synthetic``."""

    out: Path
    num_samples: int
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int = 1

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.samples_per_shard < 1 or self.workers < 1:
            raise ShardsError("--num-samples, --samples-per-shard and --workers must be >= 1")

    def build_args(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "seed": self.seed, "samples_per_shard": self.samples_per_shard}


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] & ((1 << 63) - 1))


@dataclass
class SampleJob:
    """Draws sample ``index``; picklable."""

    seed: int

    def __call__(self, index: int) -> ItemResult:
        import torch

        import hand

        generator = torch.Generator().manual_seed(sample_seed(self.seed, index))
        pose = hand.sample_poses(1, generator=generator)[0]
        shape = hand.sample_shapes(1, generator=generator)[0]
        rng = np.random.default_rng([self.seed, index, 1])
        augment = np.array([rng.normal(0, JITTER_PX), rng.normal(0, JITTER_PX), rng.uniform(*DEPTH_NOISE_MM),
                            rng.uniform(*HOLE_FRACTION), rng.integers(0, 2**24)], dtype=np.float32)
        assert len(augment) == len(SYNTHETIC_AUGMENT_FIELDS)
        sample = {"pose.npy": pose.numpy().astype(np.float32), "shape.npy": shape.numpy().astype(np.float32),
                  "augment.npy": augment}
        return ItemResult(index, key=f"{index:09d}", entries=encode_sample(sample))


def build_synthetic(config: SyntheticConfig) -> dict[str, Any]:
    spec = BuildSpec(directory=Path(config.out), kind="synthetic", keys=SYNTHETIC_KEYS, args=config.build_args(),
                     num_items=config.num_samples, per_shard=config.samples_per_shard, workers=config.workers,
                     desc="synthetic", extra_manifest={"augment_fields": list(SYNTHETIC_AUGMENT_FIELDS)})
    return build(spec, SampleJob(config.seed))
