"""Camera and crop geometry: the one place that defines the project's frames.

Frames (all lengths in millimetres):

- **camera frame** of a view: image axes, x right, y down, z away from the camera.
  NYU's ``joint_xyz`` is y-up; :func:`nyu_xyz_to_camera` flips it.
- **image pixels**: ``u = fx * x / z + cx``, ``v = fy * y / z + cy``; pixel (i, j) covers
  ``u in [j, j+1)``, ``v in [i, i+1)`` (the rasterizer samples its centre, ``j + 0.5``).
- **crop frame** of a view: the camera frame minus the crop centre.
- **crop pixels**: an orthographic S x S window onto a ``cube`` mm cube around the centre,
  ``u = x * S / cube + S / 2``, ``v = y * S / cube + S / 2``; crop depth is ``z`` in the crop frame.
  Pixels the hand does not cover, and missing sensor depth, hold :func:`background_depth`, the far
  face of the cube; depth is clipped to ``[-cube/2, cube/2]``.

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


# The values DESIGN.md gives for the NYU Kinect (the prototype used 588.235 / 587.084).
NYU_INTRINSICS = Intrinsics(fx=588.03, fy=587.07, cx=320.0, cy=240.0)
NYU_IMAGE_WIDTH = 640
NYU_IMAGE_HEIGHT = 480


def background_depth(cube_mm: float = DEFAULT_CUBE_MM) -> float:
    """Crop depth of uncovered pixels and missing sensor depth: the cube's far face."""
    return cube_mm / 2.0


def _stack(parts: list[Array]) -> Array:
    if isinstance(parts[0], torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def nyu_xyz_to_camera(xyz: Array) -> Array:
    """NYU ``joint_xyz`` (y up) to the camera frame (y down); its own inverse."""
    return _stack([xyz[..., 0], -xyz[..., 1], xyz[..., 2]])


def project(points: Array, intrinsics: Intrinsics = NYU_INTRINSICS) -> Array:
    """Camera-frame points (..., 3) mm to (u, v, z): image pixels and depth in mm."""
    z = points[..., 2]
    return _stack([intrinsics.fx * points[..., 0] / z + intrinsics.cx,
                   intrinsics.fy * points[..., 1] / z + intrinsics.cy, z])


def unproject(uvz: Array, intrinsics: Intrinsics = NYU_INTRINSICS) -> Array:
    """(u, v, z) image pixels and depth (..., 3) back to camera-frame points in mm."""
    z = uvz[..., 2]
    return _stack([(uvz[..., 0] - intrinsics.cx) * z / intrinsics.fx,
                   (uvz[..., 1] - intrinsics.cy) * z / intrinsics.fy, z])


def crop_to_pixels(points: Array, size: int = DEFAULT_CROP_SIZE, cube_mm: float = DEFAULT_CUBE_MM) -> Array:
    """Crop-frame points (..., 3) mm to crop pixels (u, v) and crop depth (mm), orthographic."""
    scale = size / cube_mm
    return _stack([points[..., 0] * scale + size / 2, points[..., 1] * scale + size / 2, points[..., 2]])


def pixels_to_crop(uvz: Array, size: int = DEFAULT_CROP_SIZE, cube_mm: float = DEFAULT_CUBE_MM) -> Array:
    """Inverse of :func:`crop_to_pixels`."""
    scale = cube_mm / size
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
