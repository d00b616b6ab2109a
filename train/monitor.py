"""What rank 0 watches during training: held-out evaluation and TensorBoard images.

Evaluation: on ``data.real``/test when real data is configured (``train.evaluate.evaluate``), and on a
fixed held-out synthetic set rendered once when synthetic data is configured; the headline
``eval/mean_error_mm`` is the real error when there is real data, else the synthetic one.
Errors are mean 3D distances in mm over ``hand.NYU_EVAL_JOINTS``, computed by ``train.evaluate``'s
functions (one error function for evaluation and monitoring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shards.geometry import background_depth, crop_to_pixels
from train.distributed import all_gather_objects
from train.metrics import depth_to_rgb, draw_points, side_by_side

PREDICTED = (1.0, 0.2, 0.2)  # red dots: predicted joints
TARGET = (0.2, 1.0, 0.2)  # green dots: true keypoints


class Evaluator:
    """Held-out evaluation of the bare network (no DDP wrapper); collective: every rank calls it.

    Each rank evaluates its own share of data.real/test (the reader splits shards by rank) and rank 0
    combines the per-frame errors, so the metrics are those of the whole split; the synthetic set is
    evaluated on rank 0 alone. Only rank 0's return value is complete.
    """

    def __init__(self, *, real_root: str | None, synthetic: tuple[torch.Tensor, torch.Tensor] | None,
                 batch_size: int, real_batches: int | None, num_workers: int, device: torch.device,
                 rank: int, world_size: int) -> None:
        self.real_test = Path(real_root) / "test" if real_root else None
        self.synthetic = synthetic  # (depth (N,1,S,S), keypoints (N,41,3)) rendered once, rank 0 only
        self.batch_size = batch_size
        # eval.real_batches caps the whole evaluation; each rank reads its share.
        self.max_batches = None if real_batches is None else -(-real_batches // world_size)
        self.num_workers = num_workers
        self.device = device
        self.rank = rank

    @torch.no_grad()
    def __call__(self, net: nn.Module) -> dict[str, float]:
        values: dict[str, float] = {}
        if self.synthetic is not None and self.rank == 0:
            values["eval/synthetic/mean_error_mm"] = self._synthetic_error(net)
        if self.real_test is not None:
            values.update(self._real_metrics(net))
        headline = values.get("eval/real/mean_error_mm", values.get("eval/synthetic/mean_error_mm"))
        if headline is not None:
            values["eval/mean_error_mm"] = headline
        return values

    def _synthetic_error(self, net: nn.Module) -> float:
        from hand import NYU_EVAL_JOINTS
        from train.evaluate import joint_errors

        depth, keypoints = self.synthetic  # type: ignore[misc]
        was_training = net.training
        net.eval()
        try:
            errors = [joint_errors(net(d).joints.float().cpu().numpy(), k.float().cpu().numpy(), list(NYU_EVAL_JOINTS))
                      for d, k in zip(depth.split(self.batch_size), keypoints.split(self.batch_size))]
        finally:
            net.train(was_training)
        return float(np.concatenate(errors).mean())

    def _real_metrics(self, net: nn.Module) -> dict[str, float]:
        from shards.reader import make_loader
        from train.evaluate import FrameErrors, collect_errors, compute_metrics, metric_scalars

        loader = make_loader(self.real_test, batch_size=self.batch_size, batches_per_epoch=None,
                             num_workers=self.num_workers, resampled=False)
        shares = all_gather_objects(collect_errors(net, loader, device=self.device, max_batches=self.max_batches))
        if self.rank != 0:
            return {}
        metrics = compute_metrics(FrameErrors.concatenate(shares))  # type: ignore[arg-type]
        return {f"eval/real/{name}": value for name, value in metric_scalars(metrics).items()}


# ---------------------------------------------------------------------------------------------------
# Images: what the network sees and what it predicts.


class ImageMaker:
    """Builds the TensorBoard panels from one training step's inputs and outputs."""

    def __init__(self, radii: torch.Tensor, size: int, cube_mm: float) -> None:
        self.radii = radii
        self.size = size
        self.cube_mm = cube_mm
        self.background = background_depth(cube_mm)

    def _pixels(self, points: torch.Tensor) -> torch.Tensor:
        return crop_to_pixels(points.detach().float(), self.size, self.cube_mm)

    def spheres(self, joints: torch.Tensor) -> torch.Tensor:
        """(J, 3) crop-frame joints rendered as the hand model's spheres, (S, S) depth."""
        from renderer_cuda import render_spheres

        centres = self._pixels(joints)[None]
        rendered = render_spheres(centres, self.radii.to(centres.device), self.size, self.size,
                                  background=self.background, pixels_per_mm=self.size / self.cube_mm)
        return rendered[0]

    def real(self, depth: torch.Tensor, joints: torch.Tensor) -> dict[str, np.ndarray]:
        """Observed view with predicted joints | predicted spheres | observed depth."""
        observed = depth_to_rgb(depth, self.cube_mm)
        with_joints = draw_points(observed.copy(), self._pixels(joints)[:, :2], PREDICTED)
        spheres = depth_to_rgb(self.spheres(joints), self.cube_mm)
        return {"images/real/joints": with_joints, "images/real/spheres_vs_depth": side_by_side(spheres, observed)}

    def synthetic(self, depth: torch.Tensor, joints: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
        """Synthetic render with true (green) and predicted (red) joints | spheres at the true keypoints."""
        render = depth_to_rgb(depth, self.cube_mm)
        draw_points(render, self._pixels(target)[:, :2], TARGET)
        draw_points(render, self._pixels(joints)[:, :2], PREDICTED)
        target_spheres = depth_to_rgb(self.spheres(target), self.cube_mm)
        return {"images/synthetic/render_vs_target": side_by_side(render, target_spheres)}


def step_images(maker: ImageMaker, step_view: dict[str, Any]) -> dict[str, np.ndarray]:
    """Panels of the first sample of each source in a step (``step_view`` from the trainer)."""
    images: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if step_view.get("synthetic_depth") is not None:
            images.update(maker.synthetic(step_view["synthetic_depth"][0, 0], step_view["synthetic_joints"][0],
                                          step_view["synthetic_target"][0]))
        if step_view.get("real_depth") is not None:
            images.update(maker.real(step_view["real_depth"][0, 0], step_view["real_joints"][0]))
    return images
