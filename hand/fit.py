"""Fit the hand model's 26 pose parameters and 17 shape parameters to labelled 3D joints (arrays in, arrays out).

``fit_joints(target, spheres)`` takes labelled joints (N, K, 3) in mm in a camera frame (y down: the frame
our right hand is built in) and the hand model's sphere of each of the K labels. The fit minimises the
squared distance of those spheres to the labels, plus a weak pull of the shape towards the average hand
(``shape_prior_mm2`` per standard deviation of ``hand.sample_shapes``), with Adam; finger angles are
projected into the joint limits after every step. It is robust to the global rotation: the model's palm
triangle (``PALM_1``, ``PALM_2``, ``PALM_3``, which the labels must include) is first aligned to the
labelled one (Kabsch), then every frame is fitted from several starts (that alignment turned about the
palm's axes, open and bent fingers) in one batch, and the start with the lowest residual wins.

The command that fits a data set's labels (NYU's results format, or a shard split) and writes a pose bank
is ``python -m shards fit-poses`` (:mod:`shards.pose_fit`): files are the data package's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from hand import anatomy
from hand.model import SHAPE_DIM, HandModel, axis_angle_to_matrix

PALM_TRIANGLE = ("PALM_1", "PALM_2", "PALM_3")  # aligned first (Kabsch): every label set must include them
# Standard deviations of the shape prior: those of hand.sample_shapes (global scale 0.08, the rest 0.04).
SHAPE_STD = torch.tensor([0.08] + [0.04] * (SHAPE_DIM - 1))
AT_LIMIT_RAD = 1e-3  # a fitted angle this close to a limit counts as "at the limit"
# Rotation starts about the palm frame's axes after the alignment (axis-angle, rad) and finger flexion starts.
ROTATION_STARTS = ((0.0, 0.0, 0.0), (0.0, 0.6, 0.0), (0.0, -0.6, 0.0), (0.6, 0.0, 0.0), (-0.6, 0.0, 0.0),
                   (0.0, math.pi, 0.0))
FLEXION_STARTS = (0.1, 0.9)


@dataclass(frozen=True)
class PoseFitConfig:
    """How :func:`fit_joints` fits."""

    steps: int = 300  # Adam steps per batch
    starts: int = 12  # starts per frame, at most len(ROTATION_STARTS) * len(FLEXION_STARTS)
    batch_frames: int = 256  # frames fitted together (times starts hands per batch)
    lr_angle: float = 0.04  # rad per step: finger angles and the global rotation
    lr_translation: float = 2.0  # mm per step
    lr_shape: float = 0.004  # per step
    shape_prior_mm2: float = 1.0  # squared residual (mm^2) one prior standard deviation of shape costs

    def __post_init__(self) -> None:
        limit = len(ROTATION_STARTS) * len(FLEXION_STARTS)
        if not 1 <= self.starts <= limit:
            raise ValueError(f"starts must be in 1..{limit}, got {self.starts}")
        if self.steps < 1 or self.batch_frames < 1:
            raise ValueError(f"steps and batch_frames must be >= 1, got {self.steps} and {self.batch_frames}")


@dataclass
class PoseFit:
    """Fitted poses (N, 26) camera frame, shapes (N, 17) and per-label residuals (N, K) mm."""

    poses: np.ndarray
    shapes: np.ndarray
    residual_mm: np.ndarray

    def at_limit(self, model: HandModel) -> np.ndarray:
        """(N, 20) bool: which finger angles of each frame ended at a joint limit."""
        angles = self.poses[:, 6:]
        lower, upper = model.lower[6:].numpy(), model.upper[6:].numpy()
        return (angles <= lower + AT_LIMIT_RAD) | (angles >= upper - AT_LIMIT_RAD)

    def summary(self, model: HandModel, spheres: Sequence[int]) -> dict[str, object]:
        """Residuals overall and by labelled sphere (``spheres``), finger angles at their limits."""
        at_limit = self.at_limit(model)
        names = [anatomy.SPHERE_NAMES[i] for i in spheres]
        return {"frames": len(self.poses), "mean_residual_mm": float(self.residual_mm.mean()),
                "median_frame_residual_mm": float(np.median(self.residual_mm.mean(1))),
                "per_joint_mm": {name: float(v) for name, v in zip(names, self.residual_mm.mean(0))},
                "max_joint_residual_mm": float(self.residual_mm.max()),
                "at_limit_fraction": float(at_limit.mean()),
                "at_limit_by_param": {name: float(v) for name, v in zip(anatomy.PARAM_NAMES[6:], at_limit.mean(0))}}


def kabsch(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K, 3) point sets -> (B, 3, 3) proper rotations R minimising |R (source - mean) - (target - mean)|."""
    a = source - source.mean(1, keepdim=True)
    b = target - target.mean(1, keepdim=True)
    u, _, vh = torch.linalg.svd(a.transpose(1, 2) @ b)
    sign = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    return vh.transpose(1, 2) @ fix @ u.transpose(1, 2)


def _starts(target: torch.Tensor, spheres: list[int], model: HandModel,
            starts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start rotations (B*S, 3, 3), translations (B*S, 3) and finger angles (B*S, 20) for B frames."""
    palm = [spheres.index(anatomy.SPHERE_NAMES.index(name)) for name in PALM_TRIANGLE]
    rest = model.keypoints(torch.zeros(1, model.num_params, dtype=target.dtype))[:, [spheres[i] for i in palm]]
    aligned = kabsch(rest.expand(len(target), -1, -1), target[:, palm])  # (B, 3, 3)
    combos = [(r, f) for f in FLEXION_STARTS for r in ROTATION_STARTS][:starts]
    turns = axis_angle_to_matrix(torch.tensor([r for r, _ in combos], dtype=target.dtype))  # (S, 3, 3) palm frame
    rotation = (aligned[:, None] @ turns[None]).reshape(-1, 3, 3)
    centre = (target[:, palm] - (rest[:, None] @ aligned[:, None].transpose(-1, -2))[:, 0]).mean(1)  # (B, 3)
    translation = centre.repeat_interleave(len(combos), 0)
    flexion = torch.zeros(len(combos), 5, 4, dtype=target.dtype)
    flexion[:, :, 1:] = torch.tensor([f for _, f in combos], dtype=target.dtype)[:, None, None]
    angles = model.clamp(torch.cat([torch.zeros(len(combos), 6, dtype=target.dtype), flexion.reshape(-1, 20)], 1))
    return rotation, translation, angles[:, 6:].repeat(len(target), 1)


def _fit_batch(target: torch.Tensor, spheres: list[int], model: HandModel, config: PoseFitConfig) -> PoseFit:
    """Fit B frames (B, K, 3) from ``config.starts`` starts each; the best start per frame."""
    frames, starts = len(target), config.starts
    rotation0, translation0, angles0 = _starts(target, spheres, model, starts)
    turn = torch.zeros(len(rotation0), 3, requires_grad=True)  # rotation = exp(turn) @ rotation0
    translation = translation0.clone().requires_grad_(True)
    angles = angles0.clone().requires_grad_(True)
    shape_offset = torch.zeros(len(rotation0), SHAPE_DIM, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [turn, angles], "lr": config.lr_angle},
                                  {"params": [translation], "lr": config.lr_translation},
                                  {"params": [shape_offset], "lr": config.lr_shape}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=0.0)
    goal = target.repeat_interleave(starts, 0)
    lower, upper = model.lower[6:], model.upper[6:]

    def residual() -> torch.Tensor:
        """(B*S, K) distances of the labelled spheres to their labels, mm."""
        local = torch.cat([torch.zeros(len(angles), 6), angles], 1)
        points = model.keypoints(local, 1 + shape_offset)[:, spheres]
        rotation = axis_angle_to_matrix(turn) @ rotation0
        return (points @ rotation.transpose(1, 2) + translation[:, None] - goal).norm(dim=-1)

    for _ in range(config.steps):
        optimizer.zero_grad()
        prior = ((shape_offset / SHAPE_STD) ** 2).sum(1) * config.shape_prior_mm2
        loss = ((residual() ** 2).sum(1) + prior).sum()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            angles.copy_(torch.maximum(torch.minimum(angles, upper), lower))
            shape_offset.clamp_(-0.4, 0.4)
    with torch.no_grad():
        distances = residual().reshape(frames, starts, -1)
        best = (distances ** 2).sum(-1).argmin(1)
        pick = torch.arange(frames) * starts + best
        rotation = (axis_angle_to_matrix(turn) @ rotation0)[pick]
        rotvec = torch.from_numpy(Rotation.from_matrix(rotation.double().numpy()).as_rotvec()).float()
        poses = torch.cat([rotvec, translation[pick], angles[pick]], 1)
        return PoseFit(poses.numpy(), (1 + shape_offset[pick]).numpy(), distances[torch.arange(frames), best].numpy())


def fit_joints(target: np.ndarray, spheres: Sequence[int], config: PoseFitConfig = PoseFitConfig(),
               progress: bool = True) -> PoseFit:
    """Fit the model to labelled joints (N, K, 3) mm in a camera frame (y down), label k being the model's
    sphere ``spheres[k]`` (the palm triangle among them); batched over frames, a tqdm bar per batch."""
    spheres = [int(i) for i in spheres]
    missing = [name for name in PALM_TRIANGLE if anatomy.SPHERE_NAMES.index(name) not in spheres]
    if missing:
        raise ValueError(f"the labels must include the palm triangle {PALM_TRIANGLE}; missing {missing}")
    target = torch.as_tensor(np.asarray(target), dtype=torch.float32)
    if target.ndim != 3 or target.shape[1:] != (len(spheres), 3):
        raise ValueError(f"labelled joints have shape {tuple(target.shape)}, expected (frames, {len(spheres)}, 3)")
    if not torch.isfinite(target).all():
        raise ValueError("labelled joints hold nan or inf; leave out frames without labels")
    model = HandModel()
    parts = []
    batches = range(0, len(target), config.batch_frames)
    for begin in tqdm(batches, desc="fit", unit="batch", disable=not progress):
        parts.append(_fit_batch(target[begin:begin + config.batch_frames], spheres, model, config))
    if not parts:
        return PoseFit(np.zeros((0, anatomy.NUM_PARAMS), np.float32), np.zeros((0, SHAPE_DIM), np.float32),
                       np.zeros((0, len(spheres)), np.float32))
    return PoseFit(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("poses", "shapes", "residual_mm")))
