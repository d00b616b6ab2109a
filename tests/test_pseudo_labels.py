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
from tests.conftest import CROP, render_depth
from tests.test_shards_corrupt import flip_payload
from geometry import invert_transform, transform_points
from train.network import cell_centres
from train.pseudo_labels import (AUDIT_NAME, FITTED_ENTRY, HAND_SCALES, SUMMARY_NAME, PseudoLabelConfig,
                                 calibration_costs, fit_frames, free_space_violation_mm, main, predict_crops,
                                 trusted_joints)

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
    losses = cfg.losses(model, CROP)
    result = fit_frames(ViewsWithNoise(scene["joints"], 8.0), losses, scene["depth"], scene["cams"], cfg, CROP)
    network, fused, fitted = (view1_error(result[k], scene["joints"]) for k in ("network", "fused", "fitted"))
    assert fused < 0.85 * network, (network, fused)
    assert fitted < 0.8 * fused, (fused, fitted)
    assert result["cost"][-1] < 0.5 * result["cost"][0]
    unfitted = fit_frames(ViewsWithNoise(scene["joints"], 8.0), losses, scene["depth"], scene["cams"],
                          PseudoLabelConfig(steps=0), CROP)
    torch.testing.assert_close(unfitted["fitted"], unfitted["fused"])


class ViewsWithSharedError(nn.Module):
    """View 1 predicts the truth with one-hot heatmaps; views 2 and 3 are both 10 mm off the same way (one
    network's views share errors) with flat heatmaps: unsure."""

    def __init__(self, joints: torch.Tensor, cams: torch.Tensor) -> None:
        super().__init__()
        wrong = transform_points(invert_transform(cams), (transform_points(cams, joints) + torch.tensor([10.0, 0, 0])))
        self.joints = torch.cat([joints[:, :1], wrong[:, 1:]], dim=1)
        self.register_buffer("cell_centres_px", cell_centres(64, 16))

    def forward(self, images: torch.Tensor) -> NetworkOutput:
        frames, views, spheres = self.joints.shape[:3]
        heatmaps = torch.full((frames, views, spheres, 16, 16), 1 / 256)
        heatmaps[:, 0] = 0.0
        heatmaps[:, 0, :, 8, 8] = 1.0
        return NetworkOutput([heatmaps.flatten(0, 1)], [], self.joints.flatten(0, 1))


def test_confidence_fusion_prefers_the_view_that_is_sure(model: hand.HandModel, scene: dict) -> None:
    net = ViewsWithSharedError(scene["joints"], scene["cams"])
    losses = PseudoLabelConfig().losses(model, CROP)
    results = {fusion: fit_frames(net, losses, scene["depth"], scene["cams"], PseudoLabelConfig(steps=0, fusion=fusion),
                                  CROP) for fusion in ("median", "confidence")}
    errors = {fusion: view1_error(result["fused"], scene["joints"]) for fusion, result in results.items()}
    assert errors["median"] > 9.0 and errors["confidence"] < 0.1, errors
    # The view spread is the middle view's distance from the fused joint: two agreeing views make it 0 (the
    # median sits on them), the sure view then lies 10 mm from the confidence-fused joint and the others too.
    assert float(results["median"]["view_spread"].max()) < 1e-3
    assert float(results["confidence"]["view_spread"].min()) > 9.0


def test_joints_the_fit_cannot_vouch_for_keep_no_target(model: hand.HandModel, scene: dict) -> None:
    crop = CROP
    fitted = scene["joints"].clone()
    common = transform_points(scene["cams"], fitted)[:, :1]  # view 1's frame
    common[:, 0, 5, 2] -= 40.0  # sphere 5 floats 40 mm before the hand towards camera 1
    moved = transform_points(invert_transform(scene["cams"]), common.expand(-1, 3, -1, -1))
    violation = free_space_violation_mm(moved, model.radii, scene["depth"], crop)
    assert float(violation[:, 5].min()) > 25.0 and float(violation[:, :5].max()) < 5.0, violation
    spread = torch.zeros(2, 41)
    spread[:, 7] = 30.0
    result = {"fitted": moved, "view_spread": spread}
    kept = trusted_joints(result, scene["depth"], model.radii, crop,
                          PseudoLabelConfig(max_view_spread_mm=20.0, max_free_space_mm=15.0))
    assert (~kept).nonzero()[:, 1].unique().tolist() == [5, 7]
    assert trusted_joints(result, scene["depth"], model.radii, crop, PseudoLabelConfig()).all()  # checks off


class CentroidNetwork(nn.Module):
    """Predicts every joint at the centroid of the crop's foreground, plus ``bias_mm`` along the image's x:
    a network that turns with the crop (its answer turns and scales with the image) but for an error fixed in
    the image frame."""

    def __init__(self, bias_mm: float) -> None:
        super().__init__()
        self.bias_mm = bias_mm

    def forward(self, images: torch.Tensor) -> NetworkOutput:
        foreground = (images[:, 0] < CROP.background_depth).float()  # (N, S, S)
        rows, columns = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
        count = foreground.sum((-2, -1))
        uvz = torch.stack([(foreground * columns).sum((-2, -1)) / count, (foreground * rows).sum((-2, -1)) / count,
                           (foreground * images[:, 0]).sum((-2, -1)) / count], dim=-1)
        centroid = CROP.from_pixels(uvz) + torch.tensor([self.bias_mm, 0.0, 0.0])
        return NetworkOutput([], [], centroid[:, None].expand(-1, 41, -1))


def test_turned_crops_map_back_onto_the_crop(scene: dict) -> None:
    images = scene["depth"].reshape(-1, 1, 64, 64)
    copies = PseudoLabelConfig(consistency_turns_deg=[-30.0, 30.0], consistency_scales=[0.9, 1.15]).crop_copies()
    alone, _ = predict_crops(CentroidNetwork(0.0), images, CROP, [(0.0, 1.0)], spread=False)
    for copy in copies[1:]:  # each copy, mapped back, sees the hand where the crop does (to a pixel: nearest sampling)
        mapped, _ = predict_crops(CentroidNetwork(0.0), images, CROP, [copy], spread=False)
        assert float((mapped - alone).norm(dim=-1).max()) < CROP.mm_per_pixel, copy
    # An error fixed in the image frame turns with the copies: their median undoes part of it.
    biased, _ = predict_crops(CentroidNetwork(10.0), images, CROP, copies, spread=False)
    assert float((biased - alone).norm(dim=-1).mean()) < 9.5
    unturned, _ = predict_crops(CentroidNetwork(10.0), images, CROP, [(0.0, 1.0)], spread=False)
    assert float((unturned - alone).norm(dim=-1).mean()) == pytest.approx(10.0, abs=1e-3)


def test_calibration_finds_the_hand_size_from_the_depth(model: hand.HandModel, scene: dict) -> None:
    cfg = PseudoLabelConfig(steps=40)
    chosen = {}
    for size in (1.0, 1.2):
        joints = scene["joints"] * size  # a hand this much larger about the crop centre, its spheres too
        samples = [{"depth": depth, "cams": cams} for depth, cams in zip(render_depth(joints, model.radii * size).numpy(),
                                                                          scene["cams"].numpy())]
        costs = calibration_costs(ViewsWithNoise(joints, 3.0), model, CROP, samples, cfg, "cpu")
        assert set(costs) == set(HAND_SCALES)
        chosen[size] = min(costs, key=costs.get)
    assert chosen == {1.0: 1.0, 1.2: 1.2}, chosen


def save_network(path: Path, crop: Crop = CROP) -> Path:
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
    assert set(summary["label_error_mm"]) == {"network", "fused", "fitted", "fitted_kept"}
    assert summary["kept_share"] == 1.0
    audit = np.load(out / "train" / AUDIT_NAME)
    assert audit["fitted"].shape == audit["kept"].shape == (summary["frames"], 14)
    assert float(audit["fitted"].mean()) == pytest.approx(summary["label_error_mm"]["fitted"])
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
    assert "expected one of 'median', 'confidence', got 'mean'" in fails(
        "--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"), "fusion=mean")
    assert "'max_free_space_mm' is a distance >= 0" in fails("--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"),
                                                             "max_free_space_mm=-2")
    assert "'consistency_scales' holds scales > 0, got [0.0]" in fails(
        "--data", str(nyu_shards_gt), "--out", str(tmp_path / "o"), "consistency_scales=[0]")
    assert "'hand_scale' holds scales > 0, got -1.0" in fails("--data", str(nyu_shards_gt), "--out",
                                                              str(tmp_path / "o"), "hand_scale=-1")
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


def test_untrusted_joints_are_written_as_nan(checkpoint: Path, nyu_shards_gt: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fitted"
    assert main(["--checkpoint", str(checkpoint), "--data", str(nyu_shards_gt), "--out", str(out), "steps=1",
                 "fusion=confidence", "max_view_spread_mm=40"]) == 0
    summary = json.loads(capsys.readouterr().out)
    batch = next(iter(make_loader(out / "train", batch_size=64, batches_per_epoch=None, num_workers=0,
                                  resampled=False)))
    unknown = torch.isnan(batch["fitted"]).all(dim=-1)  # (B, 3, 41): a joint has a target in every view or none
    assert (unknown == unknown[:, :1]).all()
    assert 0.0 < summary["kept_share"] < 1.0
    assert float(1 - unknown[:, 0].float().mean()) == pytest.approx(summary["kept_share"])


def test_command_calibrates_the_hand_scale_and_predicts_turned_copies(checkpoint: Path, nyu_shards_gt: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fitted"
    assert main(["--checkpoint", str(checkpoint), "--data", str(nyu_shards_gt), "--out", str(out), "steps=2",
                 "calibrate_hand_scale=true", "calibration_frames=4", "consistency_turns_deg=[-20,20]"]) == 0
    summary = json.loads(capsys.readouterr().out)
    costs = {float(scale): cost for scale, cost in summary["calibration"].items()}
    assert sorted(costs) == list(HAND_SCALES) and len(set(costs.values())) == len(costs)  # each size its own fit
    assert summary["settings"]["hand_scale"] == min(costs, key=costs.get)
    assert summary["settings"]["consistency_turns_deg"] == [-20.0, 20.0]
    assert json.loads((out / "train" / SUMMARY_NAME).read_text()) == summary
    assert summary["frames"] == json.loads((nyu_shards_gt / "train" / "manifest.json").read_text())["samples"]
