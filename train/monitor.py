"""What rank 0 watches during training: held-out evaluation and TensorBoard images.

Evaluation: on ``data.real``/test when real data is configured (the predictions of
:mod:`train.predictions`), and on a fixed held-out synthetic set rendered once when synthetic data is
configured; the headline ``eval/mean_error_mm`` is the real error when there is real data, else the
synthetic one. Errors are mean 3D distances in mm over the NYU protocol's joints, computed by
:mod:`train.scores` (one error function for evaluation and monitoring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Callable

import numpy as np
import torch
from torch import nn

from geometry import Crop
from hand.render import render_sphere_depth
from shards.format import ShardsError
from shards.reader import make_loader
from shards.sources import subdir
from train.distributed import PREEMPTION_SIGNALS, agree_on_error, all_gather_objects
from train.predictions import collect_errors
from train.schema import Range
from train.scores import FrameErrors, compute_metrics, joint_errors, metric_scalars

@dataclass
class EvalConfig:
    """Evaluation during training, logged as eval/mean_error_mm."""

    every: Annotated[int, Range(ge=0)] = 500  # steps between evaluations (0: never); the first evaluation is at step 0 of a fresh run
    at_start: bool = True  # evaluate the untrained (or init) network before the first step
    real_batches: Annotated[int | None, Range(ge=1, off="null: the whole split")] = 8  # batches of data.real/test per evaluation (None: the whole split)
    batch_size: Annotated[int, Range(ge=1)] = 16  # frames per evaluation batch
    synthetic_samples: Annotated[int, Range(ge=1)] = 64  # held-out synthetic samples rendered once (synthetic-only runs)
    synthetic_seed: Annotated[int, Range(ge=0)] = 12345  # seed of the held-out synthetic set (disjoint from the shard seeds)

    @property
    def enabled(self) -> bool:
        """Whether the run evaluates at all (periodically or once at the start), i.e. reads data.real/test."""
        return self.every > 0 or self.at_start

    def due(self, step: int, steps: int) -> bool:
        """Whether to evaluate after ``step`` of a ``steps``-step run (periodically and at the end)."""
        return self.every > 0 and (step % self.every == 0 or step == steps)


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
        self.real_test = subdir(real_root, "test") if real_root else None
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
        depth, keypoints = self.synthetic  # type: ignore[misc]
        was_training = net.training
        net.eval()
        try:
            errors = [joint_errors(net(d).joints.float().cpu().numpy(), k.float().cpu().numpy())
                      for d, k in zip(depth.split(self.batch_size), keypoints.split(self.batch_size))]
        finally:
            net.train(was_training)
        return float(np.concatenate(errors).mean())

    def _real_metrics(self, net: nn.Module) -> dict[str, float]:
        loader = make_loader(self.real_test, batch_size=self.batch_size, batches_per_epoch=None,
                             num_workers=self.num_workers, resampled=False, protect_signals=PREEMPTION_SIGNALS)
        # A corrupt test shard stops every rank here, not one rank (its peers would wait in the gather).
        share = agree_on_error(lambda: collect_errors(net, loader, device=self.device, max_batches=self.max_batches),
                               ShardsError)
        shares = all_gather_objects(share)
        if self.rank != 0:
            return {}
        metrics = compute_metrics(FrameErrors.concatenate(shares))  # type: ignore[arg-type]
        return {f"eval/real/{name}": value for name, value in metric_scalars(metrics).items()}


def build_evaluator(cfg: EvalConfig, *, real_root: str | None,
                    synthetic: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None, num_workers: int,
                    device: torch.device, rank: int, world_size: int) -> Evaluator | None:
    """The evaluator of ``cfg`` (None when the run never evaluates); ``synthetic`` renders the held-out
    synthetic set, called on rank 0 only."""
    if not cfg.enabled:
        return None
    return Evaluator(real_root=real_root, synthetic=synthetic() if synthetic is not None and rank == 0 else None,
                     batch_size=cfg.batch_size, real_batches=cfg.real_batches, num_workers=num_workers,
                     device=device, rank=rank, world_size=world_size)


# ---------------------------------------------------------------------------------------------------
# Images for TensorBoard: depth crops as grey RGB (near = bright), keypoints as coloured dots.

IMAGE_SCALE = 4  # crops are 64 px; upscale so the dots are visible


def depth_to_rgb(depth: torch.Tensor, crop: Crop) -> np.ndarray:
    """(S, S) crop depth in mm to a (3, S*k, S*k) float image in [0, 1]."""
    grey = (crop.half_mm - crop.clip_depth(depth.detach().float().cpu())) / crop.cube_mm
    grey = grey.repeat_interleave(IMAGE_SCALE, 0).repeat_interleave(IMAGE_SCALE, 1)
    return grey[None].expand(3, -1, -1).numpy().copy()


def draw_points(image: np.ndarray, uv: torch.Tensor, color: tuple[float, float, float]) -> np.ndarray:
    """Dots at crop-pixel positions ``uv`` (N, 2) on an upscaled image (in place, returned)."""
    height, width = image.shape[1:]
    for u, v in (uv.detach().float().cpu() * IMAGE_SCALE).tolist():
        if not (math.isfinite(u) and math.isfinite(v)):
            continue
        j, i = int(u), int(v)
        i0, i1, j0, j1 = max(i - 1, 0), min(i + 2, height), max(j - 1, 0), min(j + 2, width)
        if i0 < i1 and j0 < j1:
            image[:, i0:i1, j0:j1] = np.asarray(color, dtype=image.dtype)[:, None, None]
    return image


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Panels left to right with a 2-pixel separator."""
    height = images[0].shape[1]
    gap = np.ones((3, height, 2), dtype=images[0].dtype)
    parts: list[np.ndarray] = []
    for k, image in enumerate(images):
        parts += [gap, image] if k else [image]
    return np.concatenate(parts, axis=2)


# ---------------------------------------------------------------------------------------------------
# Images: what the network sees and what it predicts.


class ImageMaker:
    """Builds the TensorBoard panels from one training step's inputs and outputs."""

    def __init__(self, radii: torch.Tensor, crop: Crop) -> None:
        self.radii = radii
        self.crop = crop

    def _pixels(self, points: torch.Tensor) -> torch.Tensor:
        return self.crop.to_pixels(points.detach().float())

    def spheres(self, joints: torch.Tensor) -> torch.Tensor:
        """(J, 3) crop-frame joints rendered as the hand model's spheres, (S, S) depth."""
        return render_sphere_depth(joints.detach()[None], self.radii, crop=self.crop)[0]

    def real(self, depth: torch.Tensor, joints: torch.Tensor) -> dict[str, np.ndarray]:
        """Observed view with predicted joints | predicted spheres | observed depth."""
        observed = depth_to_rgb(depth, self.crop)
        with_joints = draw_points(observed.copy(), self._pixels(joints)[:, :2], PREDICTED)
        spheres = depth_to_rgb(self.spheres(joints), self.crop)
        return {"images/real/joints": with_joints, "images/real/spheres_vs_depth": side_by_side(spheres, observed)}

    def synthetic(self, depth: torch.Tensor, joints: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
        """Synthetic render with true (green) and predicted (red) joints | spheres at the true keypoints."""
        render = depth_to_rgb(depth, self.crop)
        draw_points(render, self._pixels(target)[:, :2], TARGET)
        draw_points(render, self._pixels(joints)[:, :2], PREDICTED)
        target_spheres = depth_to_rgb(self.spheres(target), self.crop)
        return {"images/synthetic/render_vs_target": side_by_side(render, target_spheres)}


def step_images(maker: ImageMaker, joints: torch.Tensor, synthetic: tuple[torch.Tensor, torch.Tensor] | None,
                real: dict | None) -> dict[str, np.ndarray]:
    """Panels of the first sample of each source in a step.

    ``joints`` are the step's predicted joints, synthetic images first; ``synthetic`` the rendered
    (depth (B, 1, S, S), keypoints) and ``real`` the NYU batch, None for an absent source.
    """
    images: dict[str, np.ndarray] = {}
    n_synthetic = synthetic[0].shape[0] if synthetic is not None else 0
    with torch.no_grad():
        if synthetic is not None:
            images.update(maker.synthetic(synthetic[0][0, 0], joints[0], synthetic[1][0]))
        if real is not None:
            images.update(maker.real(real["depth"][0, 0], joints[n_synthetic]))
    return images
