"""The crop frame and camera maths: the one ground-floor module every package imports.

It imports nothing of the project (numpy and torch only), so ``hand``, ``shards`` and ``train`` can all
use it. Facts of one data set (the NYU Kinect's intrinsics, its evaluation protocol) live with that data
set in :mod:`shards.nyu_protocol`; NYU's file layout and y-up labels in :mod:`shards.nyu`.

Frames (all lengths in millimetres):

- **camera frame** of a view: image axes, x right, y down, z away from the camera.
- **image pixels**: ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` (:func:`project`); pixel (i, j)
  covers ``u in [j, j+1)``, ``v in [i, i+1)`` (the rasterizer samples its centre, ``j + 0.5``).
- **crop frame** of a view: the camera frame minus the crop centre.
- **crop pixels**: an orthographic S x S window onto a ``cube`` mm cube around the centre (a
  :class:`Crop`), ``u = x * S / cube + S / 2``, ``v = y * S / cube + S / 2`` (:meth:`Crop.to_pixels`);
  crop depth is ``z`` in the crop frame. Pixels the hand does not cover, and missing sensor depth, hold
  :attr:`Crop.background_depth`, the far face of the cube; depth is clipped to ``[-cube/2, cube/2]``
  (:meth:`Crop.clip_depth`).

Every function takes numpy arrays or torch tensors and returns the same kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Crop:
    """The orthographic crop every image of a run shares: ``size`` x ``size`` pixels onto a ``cube_mm`` cube.

    One value, so that shards, synthesis, the network, the losses and checkpoints all agree on it (a
    checkpoint records it; a run, an evaluation or a fit at another crop is refused: the mm-per-pixel scale
    would be silently wrong).
    """

    size: int = 64  # crop side S in pixels
    cube_mm: float = 300.0  # edge of the cube around the crop centre, mm

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"crop size must be an integer >= 8 pixels, got {self.size!r}")
        if not (isinstance(self.cube_mm, (int, float)) and math.isfinite(self.cube_mm) and self.cube_mm > 0):
            raise ValueError(f"crop cube must be a finite length > 0 mm, got {self.cube_mm!r}")

    def __str__(self) -> str:
        return f"{self.size} px / {self.cube_mm:g} mm"

    @property
    def half_mm(self) -> float:
        """Half the cube edge: the crop frame spans ``[-half, half]`` mm on every axis."""
        return self.cube_mm / 2.0

    @property
    def background_depth(self) -> float:
        """Crop depth of uncovered pixels and missing sensor depth: the cube's far face."""
        return self.half_mm

    @property
    def mm_per_pixel(self) -> float:
        """Edge of one crop pixel in mm (``cube / S``)."""
        return self.cube_mm / self.size

    def clip_depth(self, depth: Array) -> Array:
        """Crop depth clipped into the cube, ``[-cube/2, cube/2]``."""
        half = self.half_mm
        return depth.clamp(-half, half) if isinstance(depth, torch.Tensor) else np.clip(depth, -half, half)

    def inside(self, points: Array) -> Array:
        """(..., 3) crop-frame points -> (...) bool: strictly inside the cube."""
        inside = abs(points) < self.half_mm
        return inside.all(-1) if isinstance(inside, torch.Tensor) else np.all(inside, axis=-1)

    def to_pixels(self, points: Array) -> Array:
        """Crop-frame points (..., 3) mm to crop pixels (u, v) and crop depth (mm), orthographic."""
        scale, middle = 1.0 / self.mm_per_pixel, self.size / 2
        return _stack([points[..., 0] * scale + middle, points[..., 1] * scale + middle, points[..., 2]])

    def from_pixels(self, uvz: Array) -> Array:
        """Inverse of :meth:`to_pixels`."""
        scale, middle = self.mm_per_pixel, self.size / 2
        return _stack([(uvz[..., 0] - middle) * scale, (uvz[..., 1] - middle) * scale, uvz[..., 2]])


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


def turn_and_scale_points(points: Array, turn_rad: float, scale: float) -> Array:
    """Crop-frame points (..., 3) mm turned by ``turn_rad`` about the crop's z axis (the viewing direction:
    +angle turns x towards y, i.e. clockwise on the image) and scaled by ``scale`` about the crop centre."""
    cos, sin = math.cos(turn_rad), math.sin(turn_rad)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return _stack([(cos * x - sin * y) * scale, (sin * x + cos * y) * scale, z * scale])


def turn_and_scale_depth(depth: torch.Tensor, crop: Crop, turn_rad: float, scale: float) -> torch.Tensor:
    """(torch only) Crop depth images (..., S, S) as :func:`turn_and_scale_points` would see the same surface: the crop is
    orthographic, so a turn about its z axis is the image turned about its centre and a scale about the
    centre is the image zoomed with the depth scaled. Nearest sampling (no depth mixed across an edge);
    pixels that come from outside the crop or from background stay background."""
    size = depth.shape[-1]
    images = depth.reshape(-1, 1, size, size)
    cos, sin = math.cos(turn_rad) / scale, math.sin(turn_rad) / scale
    # Output pixel p reads the input at R(-turn) p / scale (normalised coordinates, x right, y down).
    inverse = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=images.dtype, device=images.device)
    grid = torch.nn.functional.affine_grid(inverse.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    background = crop.background_depth
    sampled = torch.nn.functional.grid_sample(images - background, grid, mode="nearest", padding_mode="zeros",
                                              align_corners=False) + background
    foreground = sampled < background
    return torch.where(foreground, crop.clip_depth(sampled * scale), sampled).reshape(depth.shape)
