"""Rigid transforms between the three NYU views, from labelled joints.

``per-frame``: one Kabsch fit per frame (what the reference code does; it reads the labels of every frame).
``fixed``: one transform per view pair for a whole split, fitted to all frames' joints at once with
iterative rejection of frames whose residual is far above the median, so a few mislabelled frames do
not move the calibration. Both give camera-frame-k -> camera-frame-1 transforms; :func:`crop_cams` adds
the crop centres to make the contract's ``cams.npy``.
"""

from __future__ import annotations

import numpy as np

from geometry import make_transform, transform_points


def kabsch(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rigid 4x4 ``T`` minimising sum w |T(source) - target|^2 over point pairs (..., N, 3) -> (4, 4)."""
    source = source.reshape(-1, 3).astype(np.float64)
    target = target.reshape(-1, 3).astype(np.float64)
    w = np.ones(len(source)) if weights is None else weights.reshape(-1).astype(np.float64)
    w = w / w.sum()
    mu_s = w @ source
    mu_t = w @ target
    covariance = (source - mu_s).T @ ((target - mu_t) * w[:, None])
    u, _, vt = np.linalg.svd(covariance)
    # The sign correction keeps a proper rotation (no reflection) when the points are nearly planar.
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return make_transform(rotation, mu_t - rotation @ mu_s)


def per_frame_transforms(joints: np.ndarray) -> np.ndarray:
    """joints (3 views, 36, 3) camera frames -> (3, 4, 4) view-k -> view-1 transforms, [0] = identity."""
    out = np.stack([np.eye(4)] * joints.shape[0])
    for k in range(1, joints.shape[0]):
        out[k] = kabsch(joints[k], joints[0])
    return out


def fixed_transforms(joints: np.ndarray, *, iterations: int = 10, threshold: float = 3.0,
                     floor_mm: float = 0.5) -> tuple[np.ndarray, dict[str, list[int]]]:
    """joints (3 views, N frames, 36, 3) -> one (3, 4, 4) calibration for the split and the rejected frames.

    Each pass fits all kept frames at once, then keeps the frames whose mean joint residual is below
    ``median + threshold * 1.4826 * MAD`` (at least ``floor_mm``), until the kept set stops changing.
    """
    views, frames = joints.shape[:2]
    if frames == 0:
        raise ValueError("no frames to calibrate the cameras from")
    out = np.stack([np.eye(4)] * views)
    rejected: dict[str, list[int]] = {}
    for k in range(1, views):
        keep = np.ones(frames, dtype=bool)
        for _ in range(iterations):
            transform = kabsch(joints[k, keep], joints[0, keep])
            residual = np.linalg.norm(transform_points(transform, joints[k]) - joints[0], axis=-1).mean(-1)
            median = np.median(residual[keep])
            mad = np.median(np.abs(residual[keep] - median))
            new_keep = residual <= median + max(threshold * 1.4826 * mad, floor_mm)
            if new_keep.sum() < max(3, frames // 4) or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        out[k] = kabsch(joints[k, keep], joints[0, keep])
        rejected[f"view{k + 1}"] = [int(i) for i in np.flatnonzero(~keep)]
    return out, rejected


def translation_matrix(offset: np.ndarray) -> np.ndarray:
    return make_transform(np.eye(3), np.asarray(offset, dtype=np.float64))


def crop_cams(camera_transforms: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Camera-k -> camera-1 transforms (3, 4, 4) and crop centres (3, 3) -> crop-k -> crop-1 (3, 4, 4).

    A crop-frame point p_k is the camera point p_k + c_k; mapped to camera 1 and minus c_1.
    """
    out = np.empty_like(camera_transforms)
    back = translation_matrix(-centers[0])
    for k in range(len(camera_transforms)):
        out[k] = back @ camera_transforms[k] @ translation_matrix(centers[k])
    out[0] = np.eye(4)
    return out


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """Angle of a rotation matrix (e.g. the difference of two estimates), in degrees."""
    cosine = (np.trace(rotation) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
