"""``python -m shards fit-poses``: fit the hand model to a data set's labelled joints; a pose bank for
``python -m shards synthetic --poses``, and a measure of how well the model fits real hands.

    python -m shards fit-poses --labels labels.txt --out fits/nyu-test --frames 300
    python -m shards fit-poses --labels data/nyu-shards/train --out fits/train

``--labels`` is a file in the field's results format (:mod:`shards.nyu_protocol`: one line per frame, the
14 NYU evaluation joints as ``u v d`` in view-1 pixels of the NYU Kinect), or an NYU shard split dir (its
labels, read the same way). They become camera-frame points (mm, y down) and :func:`hand.fit.fit_joints`
fits the model's spheres ``NYU_EVAL_JOINTS`` to them.

Writes ``OUT/poses.npz`` (``frames`` 1-based, ``poses`` (N, 26) camera frame, ``shapes`` (N, 17),
``residual_mm`` (N, 14) per joint) and ``OUT/pose_fit.json`` (``mean_residual_mm``, ``per_joint_mm`` by NYU
joint name, the fraction of finger angles that end at a joint limit, per parameter too, the settings).
A pose bank fitted to a data set's labels uses those labels: never fit NYU's test labels for training.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fileio import write_json_atomic
from hand import HandModel
from hand.fit import PoseFitConfig, fit_joints
from shards.format import BadInputError
from shards.nyu_protocol import NYU_EVAL_JOINTS, read_labels, uvd_to_camera

POSES_NAME = "poses.npz"
SUMMARY_NAME = "pose_fit.json"


def pick_frames(total: int, count: int | None) -> np.ndarray:
    """0-based indices of ``count`` frames spread evenly over ``total`` (all when ``count`` is None)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


def fit_labels(labels: Path, out: Path, frames: int | None, config: PoseFitConfig,
               progress: bool = True) -> dict[str, object]:
    """Fit ``frames`` of the labelled frames of ``labels`` (a results file or a shard split), write
    ``OUT/poses.npz`` and ``OUT/pose_fit.json``; returns what the JSON holds."""
    if frames is not None and frames < 1:
        raise BadInputError(labels, f"--frames must be >= 1, got {frames}")
    uvd = read_labels(labels).values
    labelled = np.flatnonzero(np.isfinite(uvd).all(axis=(1, 2)))
    if not len(labelled):
        raise BadInputError(labels, "holds no labelled frame (every line is nan)")
    chosen = labelled[pick_frames(len(labelled), frames)]
    start = time.perf_counter()
    result = fit_joints(uvd_to_camera(uvd[chosen]), NYU_EVAL_JOINTS, config, progress)
    summary = {"labels": str(labels), **result.summary(HandModel(), NYU_EVAL_JOINTS),
               "seconds": round(time.perf_counter() - start, 1), "config": asdict(config)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / POSES_NAME, frames=chosen + 1, poses=result.poses, shapes=result.shapes,
             residual_mm=result.residual_mm)
    write_json_atomic(out / SUMMARY_NAME, summary, sort_keys=False)  # per-joint figures in the labels' order
    return summary
