"""The crop frame and camera maths: the one ground-floor module every package imports.

It imports nothing of the project (numpy and torch only), so ``hand``, ``shards`` and ``train`` can all
use it. Facts of one data set (the NYU Kinect's intrinsics and image size, NYU's y-up labels) live with
that data set in :mod:`shards.nyu`.

Frames (all lengths in millimetres):

- **camera frame** of a view: image axes, x right, y down, z away from the camera.
- **image pixels**: ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` (:func:`project`); pixel (i, j)
  covers ``u in [j, j+1)``, ``v in [i, i+1)`` (the rasterizer samples its centre, ``j + 0.5``).
- **crop frame** of a view: the camera frame minus the crop centre.
- **crop pixels**: an orthographic S x S window onto a ``cube`` mm cube around the centre,
  ``u = x * S / cube + S / 2``, ``v = y * S / cube + S / 2`` (:func:`crop_to_pixels`); crop depth is
  ``z`` in the crop frame. Pixels the hand does not cover, and missing sensor depth, hold
  :func:`background_depth`, the far face of the cube; depth is clipped to ``[-cube/2, cube/2]``
  (:func:`clip_depth`).

Every function takes numpy arrays or torch tensors and returns the same kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

DEFAULT_CROP_SIZE = 64
DEFAULT_CUBE_MM = 300.0


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def half_cube(cube_mm: float = DEFAULT_CUBE_MM) -> float:
    """Half the cube edge: the crop frame spans ``[-half, half]`` mm on every axis."""
    return cube_mm / 2.0


def background_depth(cube_mm: float = DEFAULT_CUBE_MM) -> float:
    """Crop depth of uncovered pixels and missing sensor depth: the cube's far face."""
    return half_cube(cube_mm)


def clip_depth(depth: Array, cube_mm: float = DEFAULT_CUBE_MM) -> Array:
    """Crop depth clipped into the cube, ``[-cube/2, cube/2]``."""
    half = half_cube(cube_mm)
    return depth.clamp(-half, half) if isinstance(depth, torch.Tensor) else np.clip(depth, -half, half)


def inside_cube(points: Array, cube_mm: float = DEFAULT_CUBE_MM) -> Array:
    """(..., 3) crop-frame points -> (...) bool: strictly inside the crop cube."""
    inside = abs(points) < half_cube(cube_mm)
    return inside.all(-1) if isinstance(inside, torch.Tensor) else np.all(inside, axis=-1)


def mm_per_pixel(size: int = DEFAULT_CROP_SIZE, cube_mm: float = DEFAULT_CUBE_MM) -> float:
    """Edge of one crop pixel in mm (``cube / S``)."""
    return cube_mm / size


def _stack(parts: list[Array]) -> Array:
    if isinstance(parts[0], torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def project(points: Array, intrinsics: Intrinsics) -> Array:
    """Camera-frame points (..., 3) mm to (u, v, z): image pixels and depth in mm."""
    z = points[..., 2]
    return _stack([intrinsics.fx * points[..., 0] / z + intrinsics.cx,
                   intrinsics.fy * points[..., 1] / z + intrinsics.cy, z])


def unproject(uvz: Array, intrinsics: Intrinsics) -> Array:
    """(u, v, z) image pixels and depth (..., 3) back to camera-frame points in mm."""
    z = uvz[..., 2]
    return _stack([(uvz[..., 0] - intrinsics.cx) * z / intrinsics.fx,
                   (uvz[..., 1] - intrinsics.cy) * z / intrinsics.fy, z])


def crop_to_pixels(points: Array, size: int = DEFAULT_CROP_SIZE, cube_mm: float = DEFAULT_CUBE_MM) -> Array:
    """Crop-frame points (..., 3) mm to crop pixels (u, v) and crop depth (mm), orthographic."""
    scale = 1.0 / mm_per_pixel(size, cube_mm)
    return _stack([points[..., 0] * scale + size / 2, points[..., 1] * scale + size / 2, points[..., 2]])


def pixels_to_crop(uvz: Array, size: int = DEFAULT_CROP_SIZE, cube_mm: float = DEFAULT_CUBE_MM) -> Array:
    """Inverse of :func:`crop_to_pixels`."""
    scale = mm_per_pixel(size, cube_mm)
    return _stack([(uvz[..., 0] - size / 2) * scale, (uvz[..., 1] - size / 2) * scale, uvz[..., 2]])


def transform_points(transform: Array, points: Array) -> Array:
    """Apply rigid 4x4 transforms (..., 4, 4) to points (..., N, 3)."""
    rotation = transform[..., :3, :3]
    translation = transform[..., None, :3, 3]
    return points @ rotation.swapaxes(-1, -2) + translation


def make_transform(rotation: Array, translation: Array) -> Array:
    """Rigid 4x4 transform(s) from rotation (..., 3, 3) and translation (..., 3)."""
    if isinstance(rotation, torch.Tensor):
        out = torch.zeros(rotation.shape[:-2] + (4, 4), dtype=rotation.dtype, device=rotation.device)
    else:
        out = np.zeros(rotation.shape[:-2] + (4, 4), dtype=rotation.dtype)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def invert_transform(transform: Array) -> Array:
    """Inverse of rigid 4x4 transform(s)."""
    rotation_t = transform[..., :3, :3].swapaxes(-1, -2)
    translation = -(rotation_t @ transform[..., :3, 3:4])[..., 0]
    return make_transform(rotation_t, translation)
