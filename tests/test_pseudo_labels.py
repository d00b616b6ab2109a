"""Fitted pseudo-labels: fusion and fitting bring noisy view predictions towards the truth, the command
writes checked shards that the trainer's `fitted` term reads, and bad inputs fail naming what is wrong."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hand
from geometry import Crop
from shards.reader import make_loader
from train.network import NetworkConfig, NetworkOutput, build_network
from tests.test_shards_corrupt import flip_payload
from train.pseudo_labels import FITTED_ENTRY, SUMMARY_NAME, PseudoLabelConfig, fit_frames, main

pytestmark = pytest.mark.usefixtures("single_thread")


class ViewsWithNoise(nn.Module):
    """Stands in for a trained network: each view's true spheres plus independent noise (the errors that
    fusion and fitting are there to remove)."""

    def __init__(self, joints: torch.Tensor, noise_mm: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.joints = joints + noise_mm * torch.randn(joints.shape, generator=generator)

    def forward(self, images: torch.Tensor) -> NetworkOutput:
        return NetworkOutput([], [], self.joints.reshape(images.shape[0], -1, 3))


def view1_error(joints: torch.Tensor, truth: torch.Tensor) -> float:
    return float((joints[:, 0] - truth[:, 0]).norm(dim=-1).mean())


def test_fusion_and_fitting_each_bring_the_views_closer_to_the_truth(model: hand.HandModel, scene: dict) -> None:
    cfg = PseudoLabelConfig(steps=60)
    losses = cfg.losses(model, Crop(64, 300.0))
    result = fit_frames(ViewsWithNoise(scene["joints"], 8.0), losses, scene["depth"], scene["cams"], cfg)
    network, fused, fitted = (view1_error(result[k], scene["joints"]) for k in ("network", "fused", "fitted"))
    assert fused < 0.85 * network, (network, fused)
    assert fitted < 0.8 * fused, (fused, fitted)
    assert result["cost"][-1] < 0.5 * result["cost"][0]
    unfitted = fit_frames(ViewsWithNoise(scene["joints"], 8.0), losses, scene["depth"], scene["cams"],
                          PseudoLabelConfig(steps=0))
    torch.testing.assert_close(unfitted["fitted"], unfitted["fused"])


def save_network(path: Path, crop: Crop = Crop(64, 300.0)) -> Path:
    torch.manual_seed(0)
    cfg = NetworkConfig(stacks=1, width=16)
    torch.save({"step": 1, "model": build_network(cfg, crop=crop).state_dict(),
                "config": {"model": asdict(cfg), "crop": asdict(crop)}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_network(tmp_path_factory.mktemp("net") / "step-1.pt")


def test_command_writes_checked_shards_with_fits(checkpoint: Path, nyu_shards_gt: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fitted"
    assert main(["--checkpoint", str(checkpoint), "--data", str(nyu_shards_gt), "--out", str(out),
                 "--config", str(Path(__file__).resolve().parents[1] / "configs/pseudo-labels.yaml"), "steps=3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    source = json.loads((nyu_shards_gt / "train" / "manifest.json").read_text())
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["samples"] == source["samples"] == summary["frames"]
    assert FITTED_ENTRY in manifest["keys"] and summary["settings"]["steps"] == 3
    assert json.loads((out / "train" / SUMMARY_NAME).read_text()) == summary
    assert set(summary["label_error_mm"]) == {"network", "fused", "fitted"}
    assert (out / "test").resolve() == (nyu_shards_gt / "test").resolve()
    assert not os.path.isabs(os.readlink(out / "test"))  # the pair moves (or mounts) together
    fitted = next(iter(make_loader(out / "train", batch_size=8, batches_per_epoch=None, num_workers=0,
                                   resampled=False)))  # format 2: every sample's checksums verified
    original = next(iter(make_loader(nyu_shards_gt / "train", batch_size=8, batches_per_epoch=None,
                                     num_workers=0, resampled=False)))
    assert fitted["fitted"].shape == (8, 3, 41, 3) and torch.isfinite(fitted["fitted"]).all()
    assert fitted["meta"] == original["meta"]
    for name in ("depth", "cams", "joints"):
        torch.testing.assert_close(fitted[name], original[name])


def test_command_bad_inputs_exit_2_naming_them(checkpoint: Path, nyu_shards_gt: Path, synthetic_shards: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def fails(*args: str, net: Path = checkpoint) -> str:
        assert main(["--checkpoint", str(net), *args]) == 2
        return capsys.readouterr().err

    assert "must differ from its source" in fails("--data", str(nyu_shards_gt), "--out", str(nyu_shards_gt))
    assert str(tmp_path / "absent" / "train") in fails("--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o"))
    synthetic_root = tmp_path / "synthetic-root"
    synthetic_root.mkdir()
    (synthetic_root / "train").symlink_to(synthetic_shards, target_is_directory=True)
    assert "kind 'synthetic'" in fails("--data", str(synthetic_root), "--out", str(tmp_path / "o"))
    assert "steps >= 0" in fails("--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"), "steps=-1")
    assert "unknown config key 'stepz'" in fails("--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"), "stepz=1")
    other_crop = save_network(tmp_path / "step-2.pt", Crop(64, 250.0))
    error = fails("--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"), net=other_crop)
    assert "cut at 64 px / 300 mm" in error and "uses 64 px / 250 mm" in error and error.count("\n") == 1
    assert "absent.pt" in fails("--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"),
                                net=tmp_path / "absent.pt")


def test_a_corrupt_source_shard_stops_it_naming_shard_and_sample(checkpoint: Path, nyu_shards_gt: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "nyu"
    shutil.copytree(nyu_shards_gt, data)
    shard = sorted((data / "train").glob("shard-*.tar"))[1]
    key = flip_payload(shard)
    assert main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert str(shard) in error and key in error and "CRC32" in error, error
