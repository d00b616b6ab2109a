"""A network's view-1 predictions over NYU shards: collected with the truth, scored, or written in the field's
results format.

:func:`collect_predictions` runs the network on view 1 of every batch (the evaluation protocol's view);
:meth:`FramePredictions.errors` scores them with :func:`train.scores.joint_errors`; :func:`export_results`
turns crop-frame predictions into an NYU results file (crop frame + the sample's view-1 crop centre ->
camera frame -> ``u v d`` with the sample's intrinsics, :func:`crop_to_uvd`, which ``train.predict`` shares).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geometry import Intrinsics
from shards.nyu_protocol import (NYU_EVAL_JOINTS, SplitLines, camera_to_uvd, frame_lines, sample_intrinsics,
                                 view1_centers, write_results)
from train.scores import FrameErrors, joint_errors


@dataclass
class FramePredictions:
    """The network's view-1 predictions over a data set, with the truth and each sample's meta."""

    predicted: np.ndarray  # (N, 41, 3) mm, view-1 crop frame
    truth: np.ndarray  # (N, 36, 3) mm, view-1 crop frame
    metas: list[dict]  # (N,) each sample's meta.json ({} where the batch had none)

    def errors(self) -> FrameErrors:
        """Per-frame errors on the protocol's joints."""
        return FrameErrors(joint_errors(self.predicted, self.truth),
                           np.asarray([int(m.get("frame", -1)) for m in self.metas], dtype=np.int64),
                           [str(m.get("split", "")) for m in self.metas])


@torch.no_grad()
def collect_predictions(net: nn.Module, loader: Iterable[dict], *, device: str | torch.device | None = None,
                        max_batches: int | None = None) -> FramePredictions:
    """Run the network on view 1 of every batch; the network's train/eval mode is restored."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    predicted, truth, metas = [], [], []
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            depth = batch["depth"][:, 0:1].to(device, torch.float32, non_blocking=True)
            predicted.append(net(depth).joints.float().cpu().numpy())
            truth.append(batch["joints"][:, 0].float().numpy())
            metas += batch.get("meta") or [{}] * len(depth)
    finally:
        net.train(was_training)
    if not predicted:
        return FramePredictions(np.zeros((0, 41, 3)), np.zeros((0, 36, 3)), [])
    return FramePredictions(np.concatenate(predicted), np.concatenate(truth), metas)


def collect_errors(net: nn.Module, loader: Iterable[dict], *, device: str | torch.device | None = None,
                   max_batches: int | None = None) -> FrameErrors:
    """Run the network on view 1 of every batch and return per-frame errors on the protocol's joints."""
    return collect_predictions(net, loader, device=device, max_batches=max_batches).errors()


def crop_to_uvd(crop_joints: np.ndarray, centers: np.ndarray, intrinsics: list[Intrinsics]) -> np.ndarray:
    """(N, J, 3) crop-frame joints, their (N, 3) crop centres (camera frame mm) and each frame's camera ->
    (N, J, 3) image ``u v d`` (pixels, depth mm): a results file's numbers."""
    camera = np.asarray(crop_joints, np.float64) + np.asarray(centers, np.float64)[:, None]
    return np.stack([camera_to_uvd(points, k) for points, k in zip(camera, intrinsics)]) if len(camera) else camera


def export_results(predictions: FramePredictions, split_dir: str | Path, path: str | Path) -> SplitLines:
    """Write view-1 predictions as an NYU results file, one line per frame of the split in frame order,
    ``nan`` lines for frames the shard build skipped; returns the lines written (``missing``: skipped frames)."""
    uvd = crop_to_uvd(predictions.predicted[:, NYU_EVAL_JOINTS], view1_centers(predictions.metas, split_dir),
                      sample_intrinsics(predictions.metas, split_dir))
    frames = np.asarray([int(m.get("frame", -1)) for m in predictions.metas], dtype=np.int64)
    lines = frame_lines(split_dir, frames, uvd)
    write_results(path, lines.values)
    return lines
