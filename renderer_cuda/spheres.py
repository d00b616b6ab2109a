"""Analytic, differentiable depth of spheres (the fitting loss renders the hand's 41 spheres with it)."""

from __future__ import annotations

import torch

# Floor of r^2 - d^2 (mm^2) under the square root: keeps the gradient at a silhouette rim finite.
_SQRT_FLOOR = 1e-6
_CHUNK_ELEMENTS = 1 << 23


def render_spheres(centers: torch.Tensor, radii: torch.Tensor, height: int, width: int, *, background: float,
                   pixels_per_mm: float = 1.0) -> torch.Tensor:
    """Depth (B, H, W) of the front surfaces of spheres, min over spheres, ``background`` elsewhere.

    Args:
        centers: (B, N, 3) float32/float64, any device: x, y in pixel coordinates (pixel (i, j) samples
            x = j + 0.5, y = i + 0.5), z in mm.
        radii: (N,) or (B, N), same dtype and device, in mm.
        height, width: image size in pixels.
        background: depth of pixels no sphere covers.
        pixels_per_mm: image radius of a sphere = radius * pixels_per_mm (an orthographic S x S crop of a
            ``cube`` mm cube has S / cube).

    A pixel at image distance d (in mm) from a centre is covered when d < r; its depth is
    z - sqrt(r^2 - d^2). Differentiable with respect to centres and radii (the gradient of the minimum
    goes to the nearest sphere; the silhouette itself is not differentiated). Memory: the search for the
    nearest sphere runs without autograd in chunks of spheres; only the winners' (B, H, W) depth is
    recomputed with autograd, so the graph stays O(B * H * W).
    """
    _check_spheres(centers, radii, height, width, pixels_per_mm)
    batch, count = centers.shape[:2]
    radii = radii.expand(batch, count) if radii.dim() == 1 else radii
    if count == 0:
        return torch.full((batch, height, width), background, device=centers.device, dtype=centers.dtype)
    px = torch.arange(width, device=centers.device, dtype=centers.dtype) + 0.5
    py = torch.arange(height, device=centers.device, dtype=centers.dtype) + 0.5

    with torch.no_grad():
        nearest, covered = _nearest_sphere(centers, radii, px, py, pixels_per_mm)
    index = nearest.view(batch, height * width)
    center = torch.gather(centers, 1, index[..., None].expand(-1, -1, 3)).view(batch, height, width, 3)
    radius = torch.gather(radii, 1, index).view(batch, height, width)
    d2 = _distance2(center[..., 0], center[..., 1], px.view(1, 1, width), py.view(1, height, 1), pixels_per_mm)
    depth = _front_depth(center[..., 2], radius, d2)
    return torch.where(covered, depth, torch.full_like(depth, background))


def _distance2(cx: torch.Tensor, cy: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
               pixels_per_mm: float) -> torch.Tensor:
    """Squared image-plane distance in mm^2 between pixel centres and sphere centres."""
    return ((px - cx) ** 2 + (py - cy) ** 2) / pixels_per_mm**2


def _front_depth(cz: torch.Tensor, radius: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    return cz - torch.sqrt(torch.clamp(radius**2 - d2, min=_SQRT_FLOOR))


def _nearest_sphere(centers: torch.Tensor, radii: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                    pixels_per_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (B, H, W) of the front-most covering sphere, and whether any sphere covers the pixel."""
    batch, count = centers.shape[:2]
    height, width = py.numel(), px.numel()
    best = torch.full((batch, height, width), float("inf"), device=centers.device, dtype=centers.dtype)
    best_index = torch.zeros((batch, height, width), device=centers.device, dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, batch * height * width))
    for n0 in range(0, count, step):
        c = centers[:, n0:n0 + step, :, None, None]  # (B, n, 3, 1, 1)
        r = radii[:, n0:n0 + step, None, None]
        d2 = _distance2(c[:, :, 0], c[:, :, 1], px.view(1, 1, 1, width), py.view(1, 1, height, 1), pixels_per_mm)
        depth = torch.where(d2 < r**2, _front_depth(c[:, :, 2], r, d2), torch.full_like(d2, float("inf")))
        chunk_best, chunk_index = depth.min(dim=1)
        better = chunk_best < best
        best = torch.where(better, chunk_best, best)
        best_index = torch.where(better, chunk_index + n0, best_index)
    return best_index, torch.isfinite(best)


def _check_spheres(centers: torch.Tensor, radii: torch.Tensor, height: int, width: int,
                   pixels_per_mm: float) -> None:
    for name, value in (("centers", centers), ("radii", radii)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if centers.dim() != 3 or centers.shape[-1] != 3:
        raise ValueError(f"centers must have shape (B, N, 3), got {tuple(centers.shape)}")
    batch, count = centers.shape[:2]
    if tuple(radii.shape) not in ((count,), (batch, count)):
        raise ValueError(f"radii must have shape ({count},) or ({batch}, {count}), got {tuple(radii.shape)}")
    if radii.dtype != centers.dtype:
        raise TypeError(f"radii must have the dtype of centers ({centers.dtype}), got {radii.dtype}")
    if radii.device != centers.device:
        raise ValueError(f"radii must be on the device of centers ({centers.device}), got {radii.device}")
    _check_size("height", height)
    _check_size("width", width)
    if not pixels_per_mm > 0:
        raise ValueError(f"pixels_per_mm must be positive, got {pixels_per_mm}")


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
