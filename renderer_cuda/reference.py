"""Pure-torch reference rasterizer: the same rule as the compiled kernels, vectorized and chunked.

It evaluates the expressions of ``csrc/raster_math.h`` in the same order (canonical edge functions,
inclusive coverage, depth normalised by the edge-function sum), so it agrees with the kernels bit for bit
(tests/test_renderer.py checks it on random and hand meshes). Every (triangle, pixel) pair is tested, in
chunks of triangles and images that keep each intermediate tensor under ``max_elements`` elements. Works
on any device; slow by design.
"""

from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 1 << 21


def edge_function(ax: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor, by: torch.Tensor,
                  px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of (a, b, p), antisymmetric in (a, b) bit for bit (see raster_math.h)."""
    swap = (bx < ax) | ((bx == ax) & (by < ay))
    x0, y0 = torch.where(swap, bx, ax), torch.where(swap, by, ay)
    x1, y1 = torch.where(swap, ax, bx), torch.where(swap, ay, by)
    e = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    return torch.where(swap, -e, e)


def rasterize_reference(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int, background: float,
                        perspective: bool = False, max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Depth (B, H, W) float32 of meshes ``vertices`` (B, V, 3) float32 sharing ``faces`` (F, 3) int.

    Arguments are assumed checked (see :func:`renderer_cuda.rasterize`).
    """
    batch = vertices.shape[0]
    tri = vertices[:, faces.long()]  # (B, F, 3 corners, 3 coords)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    valid = torch.isfinite(tri).all(dim=-1).all(dim=-1)
    if perspective:
        valid &= (z > 0).all(dim=-1)
        z = torch.ones_like(z) / z
    area = edge_function(x[..., 0], y[..., 0], x[..., 1], y[..., 1], x[..., 2], y[..., 2])
    valid &= area != 0

    px = (torch.arange(width, device=vertices.device, dtype=torch.float32) + 0.5).view(1, 1, 1, width)
    py = (torch.arange(height, device=vertices.device, dtype=torch.float32) + 0.5).view(1, 1, height, 1)
    best = torch.full((batch, height, width), float("inf"), device=vertices.device)
    images = max(1, min(batch, max_elements // (height * width)))
    tris = max(1, max_elements // (images * height * width))
    for b0 in range(0, batch, images):
        for f0 in range(0, faces.shape[0], tris):
            part = (slice(b0, b0 + images), slice(f0, f0 + tris))
            depth = _sample(x[part], y[part], z[part], area[part], valid[part], px, py, perspective)
            best[b0:b0 + images] = torch.minimum(best[b0:b0 + images], depth.amin(dim=1))
    return torch.where(torch.isinf(best), torch.full_like(best, background), best)


def _sample(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, area: torch.Tensor, valid: torch.Tensor,
            px: torch.Tensor, py: torch.Tensor, perspective: bool) -> torch.Tensor:
    """Depth (b, t, H, W) of t triangles at every pixel centre; +inf where not covered."""
    c = [(x[..., k, None, None], y[..., k, None, None], z[..., k, None, None]) for k in range(3)]
    w0 = edge_function(c[1][0], c[1][1], c[2][0], c[2][1], px, py)
    w1 = edge_function(c[2][0], c[2][1], c[0][0], c[0][1], px, py)
    w2 = edge_function(c[0][0], c[0][1], c[1][0], c[1][1], px, py)
    positive = area[..., None, None] > 0
    covered = torch.where(positive, (w0 >= 0) & (w1 >= 0) & (w2 >= 0), (w0 <= 0) & (w1 <= 0) & (w2 <= 0))
    total = w0 + w1 + w2
    weighted = w0 * c[0][2] + w1 * c[1][2] + w2 * c[2][2]
    depth = total / weighted if perspective else weighted / total
    covered &= valid[..., None, None] & (total != 0) & torch.isfinite(depth)
    return torch.where(covered, depth, torch.full_like(depth, float("inf")))
