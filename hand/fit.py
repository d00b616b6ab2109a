"""Fit the hand model's 26 pose parameters and 17 shape parameters to labelled 3D joints.

    python -m hand.fit --labels labels.txt --out fits/nyu-test --frames 300
    python -m shards labels data/nyu/test --out labels.txt      # an NYU shard split as a labels file first

``--labels`` is a file in the field's results format (:mod:`hand.results`: one line per frame, the 14
NYU evaluation joints as ``u v d`` in view-1 pixels of the NYU Kinect), turned into camera-frame
points (mm, y down: the frame our right hand is built in). The fit minimises the squared distance of
the model's spheres to the labelled joints, plus a weak pull of the shape towards the average hand
(``shape_prior_mm2`` per standard deviation of ``hand.sample_shapes``), with Adam; finger angles are
projected into the joint limits after every step. It is robust to the global rotation: the model's palm
triangle (``PALM_1``, ``PALM_2``, ``PALM_3``) is first aligned to the labelled one (Kabsch), then every
frame is fitted from several starts (that alignment turned about the palm's axes, open and bent
fingers) in one batch, and the start with the lowest residual wins.

Writes ``OUT/fit.json`` (``mean_residual_mm``, ``per_joint_mm`` by NYU joint name, the fraction of
finger angles that end at a joint limit, per parameter too) and ``OUT/poses.npz`` (``frames`` 1-based,
``poses`` (N, 26) camera frame, ``shapes`` (N, 17), ``residual_mm`` (N, 14) per joint). Exit status 2
for a bad labels file or argument.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from hand import anatomy
from hand.model import SHAPE_DIM, HandModel, axis_angle_to_matrix
from hand.results import ResultsFileError, read_results, uvd_to_camera

# Sphere of each labelled joint, in the labels' order (the results format's 14 evaluation joints).
LABELLED_SPHERES = tuple(anatomy.NYU_EVAL_JOINTS)
# Standard deviations of the shape prior: those of hand.sample_shapes (global scale 0.08, the rest 0.04).
SHAPE_STD = torch.tensor([0.08] + [0.04] * (SHAPE_DIM - 1))
AT_LIMIT_RAD = 1e-3  # a fitted angle this close to a limit counts as "at the limit"
# Rotation starts about the palm frame's axes after the alignment (axis-angle, rad) and finger flexion starts.
ROTATION_STARTS = ((0.0, 0.0, 0.0), (0.0, 0.6, 0.0), (0.0, -0.6, 0.0), (0.6, 0.0, 0.0), (-0.6, 0.0, 0.0),
                   (0.0, math.pi, 0.0))
FLEXION_STARTS = (0.1, 0.9)


@dataclass(frozen=True)
class FitConfig:
    """How ``python -m hand.fit`` fits."""

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
class FitResult:
    """Fitted poses (N, 26) camera frame, shapes (N, 17) and per-joint residuals (N, J) mm."""

    poses: np.ndarray
    shapes: np.ndarray
    residual_mm: np.ndarray

    def at_limit(self, model: HandModel) -> np.ndarray:
        """(N, 20) bool: which finger angles of each frame ended at a joint limit."""
        angles = self.poses[:, 6:]
        lower, upper = model.lower[6:].numpy(), model.upper[6:].numpy()
        return (angles <= lower + AT_LIMIT_RAD) | (angles >= upper - AT_LIMIT_RAD)

    def summary(self, model: HandModel) -> dict[str, object]:
        """What ``fit.json`` holds: residuals overall and by joint, angles at their limits."""
        at_limit = self.at_limit(model)
        names = [anatomy.SPHERE_NAMES[i] for i in LABELLED_SPHERES]
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


def _starts(target: torch.Tensor, model: HandModel, starts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start rotations (B*S, 3, 3), translations (B*S, 3) and finger angles (B*S, 20) for B frames."""
    palm = [LABELLED_SPHERES.index(anatomy.SPHERE_NAMES.index(name)) for name in ("PALM_1", "PALM_2", "PALM_3")]
    rest = model.keypoints(torch.zeros(1, model.num_params, dtype=target.dtype))[:, [LABELLED_SPHERES[i] for i in palm]]
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


def _fit_batch(target: torch.Tensor, model: HandModel, config: FitConfig) -> FitResult:
    """Fit B frames (B, J, 3) from ``config.starts`` starts each; the best start per frame."""
    frames, starts = len(target), config.starts
    rotation0, translation0, angles0 = _starts(target, model, starts)
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
        """(B*S, J) distances of the labelled spheres to their labels, mm."""
        local = torch.cat([torch.zeros(len(angles), 6), angles], 1)
        points = model.keypoints(local, 1 + shape_offset)[:, LABELLED_SPHERES]
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
        return FitResult(poses.numpy(), (1 + shape_offset[pick]).numpy(), distances[torch.arange(frames), best].numpy())


def fit_joints(target: np.ndarray, config: FitConfig = FitConfig(), progress: bool = True) -> FitResult:
    """Fit the model to labelled joints (N, 14, 3) mm in a camera frame (y down), the labels' order being
    ``LABELLED_SPHERES``; batched over frames, a tqdm bar per batch of frames."""
    from tqdm import tqdm

    target = torch.as_tensor(np.asarray(target), dtype=torch.float32)
    if target.ndim != 3 or target.shape[1:] != (len(LABELLED_SPHERES), 3):
        raise ValueError(f"labelled joints have shape {tuple(target.shape)}, expected (frames, {len(LABELLED_SPHERES)}, 3)")
    if not torch.isfinite(target).all():
        raise ValueError("labelled joints hold nan or inf; leave out frames without labels")
    model = HandModel()
    parts = []
    batches = range(0, len(target), config.batch_frames)
    for begin in tqdm(batches, desc="fit", unit="batch", disable=not progress):
        parts.append(_fit_batch(target[begin:begin + config.batch_frames], model, config))
    if not parts:
        return FitResult(np.zeros((0, anatomy.NUM_PARAMS), np.float32), np.zeros((0, SHAPE_DIM), np.float32),
                         np.zeros((0, len(LABELLED_SPHERES)), np.float32))
    return FitResult(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("poses", "shapes", "residual_mm")))


def pick_frames(total: int, count: int | None) -> np.ndarray:
    """0-based indices of ``count`` frames spread evenly over ``total`` (all when ``count`` is None)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


def fit_labels_file(labels: Path, out: Path, frames: int | None, config: FitConfig,
                    progress: bool = True) -> dict[str, object]:
    """Read a results-format labels file, fit ``frames`` of its frames, write ``out/fit.json`` and
    ``out/poses.npz``; returns what ``fit.json`` holds."""
    uvd = read_results(labels)
    labelled = np.flatnonzero(np.isfinite(uvd).all(axis=(1, 2)))
    if not len(labelled):
        raise ResultsFileError(labels, "holds no labelled frame (every line is nan)")
    chosen = labelled[pick_frames(len(labelled), frames)]
    start = time.perf_counter()
    result = fit_joints(uvd_to_camera(uvd[chosen]), config, progress)
    summary = {"labels": str(labels), **result.summary(HandModel()), "seconds": round(time.perf_counter() - start, 1),
               "config": asdict(config)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "poses.npz", frames=chosen + 1, poses=result.poses, shapes=result.shapes,
             residual_mm=result.residual_mm)
    (out / "fit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hand.fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, required=True,
                        help="labels in the field's results format (14 NYU evaluation joints, u v d, view 1)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for fit.json and poses.npz")
    parser.add_argument("--frames", type=int, default=None,
                        help="fit this many frames spread evenly over the file (default: all labelled frames)")
    defaults = FitConfig()
    parser.add_argument("--starts", type=int, default=defaults.starts,
                        help=f"starts per frame, 1..{len(ROTATION_STARTS) * len(FLEXION_STARTS)} (default {defaults.starts})")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"Adam steps (default {defaults.steps})")
    parser.add_argument("--batch-frames", type=int, default=defaults.batch_frames,
                        help=f"frames fitted together (default {defaults.batch_frames})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames is not None and args.frames < 1:
        print(f"error: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    try:
        config = FitConfig(steps=args.steps, starts=args.starts, batch_frames=args.batch_frames)
        summary = fit_labels_file(args.labels, args.out, args.frames, config)
    except (ResultsFileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{summary['frames']} frames: mean residual {summary['mean_residual_mm']:.2f} mm, "
          f"{100 * summary['at_limit_fraction']:.0f}% of finger angles at a joint limit; wrote {args.out}/fit.json "
          f"and {args.out}/poses.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
