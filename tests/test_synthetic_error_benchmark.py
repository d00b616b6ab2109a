"""``benchmarks/synthetic_error.py``: where a network's held-out synthetic error comes from."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from geometry import Crop
from hand.model import HandModel
from hand.sampler import sample_poses
from train.network import NetworkConfig, build_network

REPO = Path(__file__).resolve().parents[1]
TINY = NetworkConfig(stacks=1, width=8)


@pytest.fixture
def synthetic_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import synthetic_error
    return synthetic_error


def test_axis_errors_split_the_3d_error(synthetic_error) -> None:
    truth = torch.zeros(2, 36, 3)
    errors = synthetic_error.axis_errors(truth + torch.tensor([3.0, 4.0, 12.0]), truth)
    assert errors == pytest.approx({"3d": 13.0, "xy": 5.0, "z": 12.0})
    joints = synthetic_error.per_joint(truth + torch.tensor([0.0, 0.0, -2.0]), truth)
    assert len(joints) == 14 and joints["PALM_3"] == pytest.approx({"3d": 2.0, "xy": 0.0, "z": 2.0})


def test_decoding_floor_is_small_for_wide_targets_and_not_for_narrow_ones(synthetic_error) -> None:
    net = build_network(TINY, crop=Crop())
    keypoints = HandModel().keypoints(sample_poses(64, generator=torch.Generator().manual_seed(0)).float())
    # A soft-argmax over 16 x 16 cells of 18.75 mm: Gaussian targets 2 cells wide through the softmax
    # temperature 20 decode to within a millimetre; half a cell wide, the softmax is nearly a hard arg-max.
    wide, narrow = (synthetic_error.decoding_floor(net, keypoints, sigma)["xy"] for sigma in (2.0, 0.5))
    assert wide < 1.0 and narrow > 3.0, (wide, narrow)
    assert synthetic_error.decoding_floor(net, keypoints, 2.0)["z"] < 1e-3  # depth maps hold the true depth


def test_the_command_reports_a_checkpoint(tmp_path: Path, synthetic_shards: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    config = {"model": asdict(TINY), "crop": asdict(Crop()), "loss": {"heatmap_sigma_cells": 2.0}}
    torch.manual_seed(0)
    torch.save({"step": 1, "model": build_network(TINY, crop=Crop()).state_dict(), "config": config},
               tmp_path / "checkpoints" / "step-000000001.pt")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthetic_error.py"), "--checkpoint",
                             str(tmp_path), "--synthetic", str(synthetic_shards), "--samples", "8", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures["training"]) == {"clean", "augmented"} and len(figures["joints"]) == 14
    assert figures["decoding_floor"]["3d"] < 1.0 < figures["held_out"]["3d"]  # an untrained network
    assert "| held-out synthetic (8) |" in result.stdout
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthetic_error.py"), "--checkpoint",
                              str(tmp_path), "--synthetic", str(synthetic_shards), "--samples", "0"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--samples 0: must be at least 1" in refused.stderr
