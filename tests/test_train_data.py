"""Training data streams refuse NYU shards cut at another crop than the run's (the one crop check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geometry import Crop
from shards.format import (NYU_KEYS, ShardRecord, ShardsError, encode_sample, read_crop, shard_name, write_manifest,
                           write_tar)
from shards.nyu_shards import NyuBuildConfig
from train.data import DataConfig, build_streams


def write_nyu_split(directory: Path, *, size: int, cube: float, manifest: bool = True, fitted: bool = False) -> Path:
    """A two-frame NYU split dir in the shard format; the manifest's args are the real builder's.
    ``fitted``: with the pseudo-label entry that train.pseudo_labels adds."""
    directory.mkdir(parents=True)
    extra = {"fitted.npy": np.zeros((3, 41, 3), np.float32)} if fitted else {}
    samples = [(f"{frame:07d}", encode_sample({
        "depth.npy": np.full((3, size, size), cube / 2, np.float32),
        "joints.npy": np.zeros((3, 36, 3), np.float32),
        "cams.npy": np.broadcast_to(np.eye(4, dtype=np.float32), (3, 4, 4)),
        "meta.json": {"frame": frame, "split": "train", "size": size, "cube": cube}, **extra})) for frame in (1, 2)]
    sha = write_tar(directory / shard_name(0), samples)
    if manifest:
        args = NyuBuildConfig(nyu_root=directory, out=directory.parent, crop=Crop(size, cube)).build_args("train")
        write_manifest(directory, kind="nyu", keys=(*NYU_KEYS, *extra), records=[ShardRecord(shard_name(0), 2, sha, [])],
                       args=args)
    return directory


def config(root: Path, **overrides) -> DataConfig:
    return DataConfig(real=str(root), synthetic=None, real_batch=2, batches_per_epoch=1, num_workers=0,
                      **overrides)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "first-meta"])
def test_read_crop_reads_the_split_metadata(tmp_path, manifest):
    split = write_nyu_split(tmp_path / "nyu" / "train", size=32, cube=250.0, manifest=manifest)
    assert read_crop(split) == Crop(32, 250.0)


def test_read_crop_refuses_a_dir_without_metadata(tmp_path):
    with pytest.raises(ShardsError, match="no manifest.json and no shard"):
        read_crop(tmp_path)


def test_matching_geometry_builds_the_real_stream(tmp_path):
    write_nyu_split(tmp_path / "nyu" / "train", size=64, cube=300.0)
    synthetic, real = build_streams(config(tmp_path / "nyu"), crop=Crop(64, 300.0), seed=0)
    assert synthetic is None and real is not None
    assert real.next()["depth"].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "first-meta"])
def test_cube_mismatch_is_refused(tmp_path, manifest):
    split = write_nyu_split(tmp_path / "nyu" / "train", size=64, cube=250.0, manifest=manifest)
    with pytest.raises(ShardsError) as error:
        build_streams(config(tmp_path / "nyu"), crop=Crop(64, 300.0), seed=0)
    message = str(error.value)
    assert str(split) in message and "cut at 64 px / 250 mm" in message and "uses 64 px / 300 mm" in message
    assert "crop.cube_mm" in message  # the config keys to change


def test_size_mismatch_is_refused(tmp_path):
    split = write_nyu_split(tmp_path / "nyu" / "train", size=32, cube=300.0)
    with pytest.raises(ShardsError, match=rf"{split} were cut at 32 px / 300 mm, but this run .* uses 64 px / 300 mm"):
        build_streams(config(tmp_path / "nyu"), crop=Crop(64, 300.0), seed=0)
