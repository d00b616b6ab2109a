"""The method at its smallest scale: fit hand poses to fake-NYU depth with the self-supervised terms alone.

Three frames x three views of the session's fake-NYU sample (forearm, wall and sensor noise included).
The hand model's 26 pose parameters per frame (true shape, no labels) start about 20 mm mean joint
error away from the truth and are fitted with Adam to the mutual projection term at its defaults. The
fit must at least halve the error; the old weighting (data-to-model only outside the spheres, 1 per mm,
clipped at 50 mm) drifts off the hand instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hand
from geometry import Crop, invert_transform, transform_points
from shards.reader import make_loader
from train.losses import LossConfig, ProjectionLoss

FRAMES = 3
START_ERROR_MM = 20.0
STEPS = 150


def _frames(nyu_shards: Path, fake_nyu_dir: Path) -> dict[str, torch.Tensor]:
    """FRAMES correctly labelled train frames (their crop centres and cameras come from the labels): depth,
    cams, and the true pose/shape in view 1's crop frame."""
    record = np.load(fake_nyu_dir / "fake_nyu.npz")
    loader = make_loader(nyu_shards / "train", batch_size=16, batches_per_epoch=None, num_workers=0,
                         resampled=False)
    batch = next(iter(loader))
    keep = [i for i, meta in enumerate(batch["meta"]) if record["train_outliers"][int(meta["frame"]) - 1] < 0]
    keep = keep[:FRAMES]
    batch = {"depth": batch["depth"][keep], "cams": batch["cams"][keep], "meta": [batch["meta"][i] for i in keep]}
    index = [int(meta["frame"]) - 1 for meta in batch["meta"]]
    pose = torch.from_numpy(record["train_poses"][index]).float()
    # The crop is centred on the labelled palm centre, which the model puts at its translation: zero.
    pose[:, 3:6] = 0.0
    return {"depth": batch["depth"].float(), "cams": batch["cams"].float(), "pose": pose,
            "shape": torch.from_numpy(record["train_shapes"][index]).float()}


def perturbed(model: hand.HandModel, pose: torch.Tensor, shape: torch.Tensor, target_mm: float) -> torch.Tensor:
    """``pose`` moved along a fixed random direction until the mean joint error is ``target_mm``."""
    direction = torch.randn(pose.shape, generator=torch.Generator().manual_seed(0))
    direction *= torch.tensor([0.15] * 3 + [8.0] * 3 + [0.35] * 20)
    truth = model.keypoints(pose, shape)[:, :36]
    low, high = 0.0, 4.0
    for _ in range(30):
        middle = (low + high) / 2
        error = (model.keypoints(model.clamp(pose + middle * direction), shape)[:, :36] - truth).norm(dim=-1).mean()
        low, high = (middle, high) if error < target_mm else (low, middle)
    return model.clamp(pose + low * direction)


def fit(model: hand.HandModel, frames: dict, start: torch.Tensor, term: ProjectionLoss) -> torch.Tensor:
    """Adam on the pose parameters (translation in 10 mm units) against the projection term alone."""
    unit = torch.tensor([1.0] * 3 + [10.0] * 3 + [1.0] * 20)
    delta = torch.zeros_like(start, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=0.02)
    to_views = invert_transform(frames["cams"])  # view 1 -> view k
    for _ in range(STEPS):
        spheres = model.keypoints(model.clamp(start + delta * unit), frames["shape"])
        loss = term(transform_points(to_views, spheres[:, None]), frames["depth"], frames["cams"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.clamp(start + delta.detach() * unit)


@pytest.mark.slow
def test_fitting_to_depth_halves_the_pose_error(nyu_shards_gt: Path, fake_nyu_dir: Path, single_thread) -> None:
    model = hand.HandModel()
    frames = _frames(nyu_shards_gt, fake_nyu_dir)
    truth = model.keypoints(frames["pose"], frames["shape"])[:, :36]
    start = perturbed(model, frames["pose"], frames["shape"], START_ERROR_MM)
    cfg = LossConfig()
    term = ProjectionLoss(model.sphere_radii(frames["shape"])[0], Crop(64, 300.0), data_scale=cfg.projection_data_scale,
                          max_distance_mm=cfg.projection_max_distance_mm, pairs=cfg.projection_pairs)
    fitted = fit(model, frames, start, term)
    start_error = float((model.keypoints(start, frames["shape"])[:, :36] - truth).norm(dim=-1).mean())
    error = float((model.keypoints(fitted, frames["shape"])[:, :36] - truth).norm(dim=-1).mean())
    assert start_error == pytest.approx(START_ERROR_MM, abs=0.1)
    assert error <= 0.5 * start_error, f"fitting moved the mean joint error from {start_error:.1f} to {error:.1f} mm"
