"""The metric: per-frame joint errors, the mean error and the max-error success curve of the NYU protocol.

Protocol of the literature (:mod:`shards.nyu_protocol`): the 14 joints ``NYU_EVAL_JOINTS`` of view 1, mean
Euclidean error in mm; the success curve is the fraction of frames whose *worst* (maximum) joint error is
strictly below a threshold, 0..80 mm; the test split's two subjects are reported apart. One error function
(:func:`joint_errors`) serves evaluation, the training monitor, the report and the pseudo-label audit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hand import NYU_JOINT_NAMES
from shards.nyu_protocol import NYU_EVAL_JOINTS, subject_of

CURVE_THRESHOLDS_MM = np.arange(0, 81, dtype=np.float64)
CURVE_COLUMNS = ("threshold_mm", "fraction_below")  # fraction of frames with max joint error < threshold_mm


@dataclass
class FrameErrors:
    """Per-frame joint errors collected over a data set."""

    errors: np.ndarray  # (N, K) mm, Euclidean error of each evaluated joint
    frames: np.ndarray  # (N,) int, 1-based NYU frame number (-1 where the batch had no meta)
    splits: list[str]  # (N,) split name of each frame ("" where unknown)

    @staticmethod
    def concatenate(parts: list[FrameErrors]) -> FrameErrors:
        """The frames of several parts (e.g. every rank's share) in order."""
        return FrameErrors(np.concatenate([p.errors for p in parts]), np.concatenate([p.frames for p in parts]),
                           [split for p in parts for split in p.splits])


def joint_errors(predicted: np.ndarray, truth: np.ndarray, joints: list[int] = NYU_EVAL_JOINTS) -> np.ndarray:
    """(N, J, 3) predicted and true joints in mm -> (N, len(joints)) Euclidean errors of ``joints``.

    Predictions are the network's 41 spheres, truth NYU's 36 joints or synthetic keypoints; both must
    cover ``joints``. Accepts numpy arrays or (CPU) tensors.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    return np.linalg.norm(predicted[..., joints, :] - truth[..., joints, :], axis=-1)


def eval_joint_names() -> list[str]:
    """NYU names of the evaluated joints, in ``NYU_EVAL_JOINTS`` order."""
    return [NYU_JOINT_NAMES[i] for i in NYU_EVAL_JOINTS]


def success_curve(errors: np.ndarray, thresholds_mm: np.ndarray = CURVE_THRESHOLDS_MM) -> np.ndarray:
    """Fraction of frames whose maximum joint error is strictly below each threshold (non-decreasing)."""
    worst = errors.max(axis=1)
    return (worst[None, :] < thresholds_mm[:, None]).mean(axis=1)


def compute_metrics(collected: FrameErrors, joint_names: list[str] | None = None) -> dict:
    """Mean error, per-joint and per-subject errors of collected frame errors (default names: NYU's)."""
    joint_names = eval_joint_names() if joint_names is None else joint_names
    errors = collected.errors
    if len(errors) == 0:
        raise ValueError("no frames were evaluated (empty data set)")
    curve = success_curve(errors)
    metrics = {
        "mean_error_mm": float(errors.mean()),
        "per_joint_mm": {name: float(value) for name, value in zip(_unique(joint_names), errors.mean(axis=0))},
        "frames": int(len(errors)),
        "max_error_mean_mm": float(errors.max(axis=1).mean()),
        "success_at_mm": {str(t): float(curve[t]) for t in (10, 20, 30, 40, 50, 80)},
    }
    subjects = np.array([subject_of(int(f), s) or 0 for f, s in zip(collected.frames, collected.splits)])
    metrics["per_subject"] = {
        str(subject): {"mean_error_mm": float(errors[subjects == subject].mean()),
                       "frames": int((subjects == subject).sum())}
        for subject in sorted(set(subjects.tolist()) - {0})}
    return metrics


def _unique(names: list[str]) -> list[str]:
    return names if len(set(names)) == len(names) else [f"{i}_{name}" for i, name in enumerate(names)]


def metric_scalars(metrics: dict) -> dict[str, float]:
    """The scalar entries of :func:`compute_metrics`'s result, flat: ``mean_error_mm``, ``frames``,
    ``max_error_mean_mm``, ``success_at_{t}mm``, ``subject{s}/mean_error_mm``."""
    values = {key: float(metrics[key]) for key in ("mean_error_mm", "frames", "max_error_mean_mm")}
    values.update({f"success_at_{t}mm": float(v) for t, v in metrics.get("success_at_mm", {}).items()})
    values.update({f"subject{s}/mean_error_mm": float(entry["mean_error_mm"])
                   for s, entry in metrics.get("per_subject", {}).items()})
    return values
