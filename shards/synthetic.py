"""``python -m shards synthetic``: pose, shape and sensor-noise parameters for on-the-fly rendering.

Sample i draws from generators seeded by (seed, i) alone, so the shards are identical whatever the
worker count or shard size. Training renders the depth itself (``train`` owns rendering).

Poses come from the joint-angle pose sampler (``hand.sample_poses``), or with ``--poses FILE`` from a pose
bank: the finger articulations of its poses, drawn uniformly, under the sampler's global rotations
(``hand.sample_poses_from_bank``). A bank fitted to a data set's labels (``python -m hand.fit``) makes
those labels training data: use labels of training splits only, never NYU's test labels, which are
what the field evaluates on. The bank's path and sha256 go into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hand
from fileio import sha256_file
from shards.format import SYNTHETIC_AUGMENT_FIELDS, SYNTHETIC_KEYS, BadInputError, ShardsError, encode_sample
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
    poses: Path | None = None  # a pose bank (.npz with 'poses' (M, 26), e.g. hand.fit's poses.npz); None: the sampler

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.samples_per_shard < 1 or self.workers < 1:
            raise ShardsError("--num-samples, --samples-per-shard and --workers must be >= 1")

    def build_args(self) -> dict[str, Any]:
        args = {"num_samples": self.num_samples, "seed": self.seed, "samples_per_shard": self.samples_per_shard}
        if self.poses is not None:
            args["poses"] = {"path": str(self.poses), "sha256": sha256_file(Path(self.poses))}
        return args


def load_pose_bank(path: Path) -> np.ndarray:
    """(M, 26) float32 poses of a pose bank file: an .npz holding ``poses`` (M >= 1, 26), finite."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "missing (--poses names an .npz file holding 'poses' (M, 26))")
    try:
        with np.load(path, allow_pickle=False) as bank:
            if "poses" not in bank:
                raise BadInputError(path, f"holds no 'poses' array (it holds {sorted(bank.files)})")
            poses = np.asarray(bank["poses"], np.float32)
    except (OSError, ValueError, AttributeError) as error:  # not an npz, or a bare .npy without keys
        raise BadInputError(path, f"cannot be read as an .npz pose bank ({error})") from None
    if poses.ndim != 2 or poses.shape[1] != 26 or len(poses) == 0:
        raise BadInputError(path, f"'poses' has shape {poses.shape}, expected (M >= 1, 26)")
    bad = np.flatnonzero(~np.isfinite(poses).all(axis=1))
    if len(bad):
        raise BadInputError(path, f"'poses' row {int(bad[0])} holds nan or inf")
    return poses


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] & ((1 << 63) - 1))


@dataclass
class SampleJob:
    """Draws sample ``index``; picklable."""

    seed: int
    bank: np.ndarray | None = None  # (M, 26) pose bank, or None for the sampler

    def __call__(self, index: int) -> ItemResult:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, index))
        if self.bank is None:
            pose = hand.sample_poses(1, generator=generator)[0]
        else:
            pose = hand.sample_poses_from_bank(torch.from_numpy(self.bank), 1, generator=generator)[0]
        shape = hand.sample_shapes(1, generator=generator)[0]
        rng = np.random.default_rng([self.seed, index, 1])
        augment = np.array([rng.normal(0, JITTER_PX), rng.normal(0, JITTER_PX), rng.uniform(*DEPTH_NOISE_MM),
                            rng.uniform(*HOLE_FRACTION), rng.integers(0, 2**24)], dtype=np.float32)
        assert len(augment) == len(SYNTHETIC_AUGMENT_FIELDS)
        sample = {"pose.npy": pose.numpy().astype(np.float32), "shape.npy": shape.numpy().astype(np.float32),
                  "augment.npy": augment}
        return ItemResult(index, key=f"{index:09d}", entries=encode_sample(sample))


def build_synthetic(config: SyntheticConfig) -> dict[str, Any]:
    bank = None if config.poses is None else load_pose_bank(config.poses)  # checked before anything is written
    spec = BuildSpec(directory=Path(config.out), kind="synthetic", keys=SYNTHETIC_KEYS, args=config.build_args(),
                     num_items=config.num_samples, per_shard=config.samples_per_shard, workers=config.workers,
                     desc="synthetic", extra_manifest={"augment_fields": list(SYNTHETIC_AUGMENT_FIELDS)})
    return build(spec, SampleJob(config.seed, bank))
