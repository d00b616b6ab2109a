"""Depth rendering for the hand pipeline: a triangle depth rasterizer (CUDA kernel, CPU C++ kernel, pure
torch reference) and a differentiable analytic sphere renderer.

- :func:`rasterize` (vertices (B, V, 3) float32, faces (F, 3) int) -> (B, H, W) float32 depth.
- :func:`render_spheres` (centers (B, N, 3), radii (N,) or (B, N)) -> (B, H, W) depth, differentiable.
- :func:`available_backends` lists the rasterizer backends that work here; :func:`resolve_backend` says
  which one ``rasterize`` runs for a device, or raises :class:`ExtensionUnavailable` with the reason (call
  it at startup to refuse a run early: on a CUDA device there is no silent fallback to the slow reference).

The compiled kernels build on first use with ninja into a per-machine cache (``$SPHERE_HAND_CACHE`` or
``~/.cache/sphere_hand``; see :mod:`renderer_cuda.extension`); ``python -m renderer_cuda build`` prebuilds them.
"""

from .extension import ExtensionUnavailable
from .rasterize import BACKENDS, available_backends, rasterize, resolve_backend
from .spheres import render_spheres

__all__ = ["BACKENDS", "ExtensionUnavailable", "available_backends", "rasterize", "render_spheres",
           "resolve_backend"]
