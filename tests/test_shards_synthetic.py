"""Synthetic pose shards: contract keys and shapes; identical for a seed whatever the worker count."""

from __future__ import annotations

import json

import numpy as np
import torch

import hand
from conftest import run_shards
from fileio import sha256_file
from shards.format import SYNTHETIC_AUGMENT_FIELDS
from shards.reader import make_loader


def digests(directory):
    return {p.name: sha256_file(p) for p in sorted(directory.glob("shard-*.tar"))}


def test_same_seed_any_worker_count_same_shards(synthetic_shards, tmp_path):
    run_shards("synthetic", "--out", tmp_path, "--num-samples", 40, "--samples-per-shard", 10, "--seed", 5,
               "--workers", 2)
    assert digests(tmp_path) == digests(synthetic_shards) and len(digests(tmp_path)) == 4
    other = tmp_path / "other-seed"
    run_shards("synthetic", "--out", other, "--num-samples", 10, "--samples-per-shard", 10, "--seed", 6)
    assert digests(other)["shard-000000.tar"] != digests(synthetic_shards)["shard-000000.tar"]


def test_samples_follow_the_contract(synthetic_shards):
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    assert manifest["kind"] == "synthetic" and manifest["samples"] == 40
    assert manifest["augment_fields"] == list(SYNTHETIC_AUGMENT_FIELDS)
    batches = list(make_loader(synthetic_shards, batch_size=16, batches_per_epoch=None, num_workers=0,
                               resampled=False))
    assert [len(b["pose"]) for b in batches] == [16, 16, 8]
    pose = np.concatenate([b["pose"].numpy() for b in batches])
    shape = np.concatenate([b["shape"].numpy() for b in batches])
    augment = np.concatenate([b["augment"].numpy() for b in batches])
    assert pose.shape == (40, 26)
    assert shape.shape == (40, hand.SHAPE_DIM) and augment.shape == (40, 5)
    assert len(np.unique(pose[:, 6])) == 40, "every sample should draw its own pose"
    seeds = augment[:, SYNTHETIC_AUGMENT_FIELDS.index("noise_seed")]
    assert np.all(seeds == np.round(seeds)) and seeds.max() < 2**24 and len(np.unique(seeds)) == 40
    assert np.all(np.abs(shape - 1.0) < 0.5)


def test_poses_from_a_pose_bank(tmp_path):
    """--poses: every sample's finger articulation is a row of the bank, under the sampler's global rotations."""
    bank = hand.sample_poses(5, torch.Generator().manual_seed(1)).numpy()
    np.savez(tmp_path / "poses.npz", poses=bank, shapes=np.ones((5, hand.SHAPE_DIM), np.float32))
    out = tmp_path / "synth"
    run_shards("synthetic", "--out", out, "--num-samples", 12, "--samples-per-shard", 6, "--poses", tmp_path / "poses.npz")
    pose = np.concatenate([b["pose"].numpy() for b in make_loader(out, batch_size=12, batches_per_epoch=None,
                                                                   num_workers=0, resampled=False)])
    nearest = np.abs(pose[:, None, 6:] - bank[None, :, 6:]).max(-1).min(1)
    assert pose.shape == (12, 26) and (nearest < 1e-6).all()
    assert len(np.unique(pose[:, 0])) == 12, "each sample gets its own global rotation"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["poses"]["sha256"] == sha256_file(tmp_path / "poses.npz")


def test_a_bad_pose_bank_is_named(tmp_path):
    np.savez(tmp_path / "wrong.npz", poses=np.zeros((3, 20), np.float32))
    for bank, reason in ((tmp_path / "wrong.npz", "'poses' has shape (3, 20), expected (M >= 1, 26)"),
                         (tmp_path / "absent.npz", "missing")):
        result = run_shards("synthetic", "--out", tmp_path / "out", "--num-samples", 4, "--poses", bank, check=False)
        assert result.returncode == 2 and f"error: {bank}: {reason}" in result.stderr
    assert not (tmp_path / "out").exists()
