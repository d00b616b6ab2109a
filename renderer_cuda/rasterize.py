"""Depth rasterization of triangle meshes: input checks, backend choice, supersampling.

Rule shared by every backend (see ``csrc/raster_math.h``):

- vertices are in pixel coordinates (x along width, y along height) with z the depth; pixel (i, j)
  samples the point (x = j + 0.5, y = i + 0.5);
- coverage is inclusive: a sample on a triangle's edge is covered (an edge at x = 10.4 covers column 9,
  whose centre is 9.5, and not column 10). Edge functions are antisymmetric bit for bit, so meshes are
  watertight: every sample on a shared edge is covered by at least one neighbour;
- both windings are drawn; degenerate triangles and ones with non-finite coordinates are skipped;
- depth is the minimum over covering triangles, interpolated linearly in screen space, or with 1/z linear
  when ``perspective=True`` (triangles with a vertex at z <= 0 are then skipped). ``background`` only
  fills pixels nothing covers; it is not a far plane;
- ``supersample = s`` renders at (H*s, W*s) with x, y scaled by s, so the s x s subsamples of a pixel sit
  symmetrically around its centre, then each pixel takes the mean depth of its covered subsamples when
  at least half of them are covered, else ``background``. On a covered planar interior the mean of
  the subsamples is the depth at the pixel centre, so interiors stay exact (orthographic mode).
"""

from __future__ import annotations

import numbers
import typing
import warnings

import torch
import torch.nn.functional as F

from . import extension
from .reference import rasterize_reference

Backend = typing.Literal["auto", "cuda", "cpu", "torch"]  # the backend argument's choices (config fields use it)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
_MAX_SIZE = 1 << 15  # keeps a triangle box's pixel count within int32 in the kernels
_fallback_warned = False


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int, *, background: float,
              supersample: int = 1, perspective: bool = False, backend: str = "auto") -> torch.Tensor:
    """Depth images (B, H, W) float32 of a batch of meshes sharing one face list. Not differentiable.

    Args:
        vertices: (B, V, 3) float32, CPU or CUDA: x, y in pixels, z depth (mm).
        faces: (F, 3) int32 or int64 on the device of ``vertices``, indices in [0, V).
        height, width: output size in pixels.
        background: depth of pixels no triangle covers.
        supersample: s >= 1 subsamples per pixel and axis (see the module docstring for the rule).
        perspective: interpolate 1/z instead of z across each triangle.
        backend: "cuda" (CUDA tensors), "cpu" (compiled C++ kernel, CPU tensors), "torch" (pure-torch
            reference, any device, slow), or "auto": cuda for CUDA tensors, else cpu, falling back to
            torch with one warning that says why the compiled kernel is unavailable.

    Returns:
        (B, H, W) float32 on the device of ``vertices``.
    """
    _check_inputs(vertices, faces, height, width, background, supersample, backend)
    faces = faces.to(torch.int32).contiguous()
    vertices = vertices.contiguous()
    chosen = _choose_backend(backend, vertices.device)
    if chosen != "torch":  # the kernels scale x, y and combine the subsamples themselves
        kernel = extension.load(chosen)
        return kernel.rasterize(vertices, faces, height, width, float(background), perspective, supersample)
    if supersample == 1:
        return rasterize_reference(vertices, faces, height, width, float(background), perspective)
    scale = torch.tensor([supersample, supersample, 1.0], device=vertices.device)
    fine = rasterize_reference(vertices * scale, faces, height * supersample, width * supersample, float("nan"),
                               perspective)
    return combine_subsamples(fine, supersample, float(background))


def combine_subsamples(fine: torch.Tensor, supersample: int, background: float) -> torch.Tensor:
    """(B, H*s, W*s) depth with NaN where uncovered -> (B, H, W): mean of covered subsamples if at least
    half are covered, else ``background``. The torch backend's version of the kernels' resolve_pixel."""
    covered = ~torch.isnan(fine)
    # Average pooling is the fast strided reduction here; both pools divide by s*s, which cancels.
    pooled = F.avg_pool2d(torch.stack([covered.to(fine.dtype), torch.where(covered, fine, 0.0)], dim=1),
                          supersample)
    fraction, mean_part = pooled[:, 0], pooled[:, 1]
    mean = mean_part / fraction.clamp(min=1.0 / (supersample * supersample))
    return torch.where(2 * fraction >= 1.0, mean, torch.full_like(mean, background))


def available_backends() -> list[str]:
    """The backends that work on this machine (builds the compiled kernels on first call)."""
    found = []
    for kind in ("cuda", "cpu"):
        try:
            extension.load(kind)
            found.append(kind)
        except extension.ExtensionUnavailable:
            pass
    return found + ["torch"]


def _choose_backend(backend: str, device: torch.device) -> str:
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"vertices must be on a CUDA device for backend='cuda', got {device}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"vertices must be on the CPU for backend='cpu', got {device}")
    if backend != "auto":
        return backend
    kind = "cuda" if device.type == "cuda" else "cpu" if device.type == "cpu" else None
    if kind is None:
        _warn_fallback(f"no compiled kernel for device {device}")
        return "torch"
    try:
        extension.load(kind)
        return kind
    except extension.ExtensionUnavailable as error:
        _warn_fallback(str(error))
        return "torch"


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"renderer_cuda: compiled kernel unavailable ({reason}); using the pure-torch reference "
                      "rasterizer, which is much slower. Run `python -m renderer_cuda build` to see the full "
                      "build log.", RuntimeWarning, stacklevel=4)


def _check_inputs(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int, background: float,
                  supersample: int, backend: str) -> None:
    if not isinstance(vertices, torch.Tensor):
        raise TypeError(f"vertices must be a torch.Tensor, got {type(vertices).__name__}")
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"faces must be a torch.Tensor, got {type(faces).__name__}")
    if vertices.dtype != torch.float32:
        raise TypeError(f"vertices must be float32, got {vertices.dtype}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"faces must be int32 or int64, got {faces.dtype}")
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.device != vertices.device:
        raise ValueError(f"faces must be on the device of vertices ({vertices.device}), got {faces.device}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[1]):
        raise ValueError(f"faces must index vertices in [0, {vertices.shape[1]}), got values in "
                         f"[{int(faces.min())}, {int(faces.max())}]")
    for name, value in (("height", height), ("width", width), ("supersample", supersample)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if max(height, width) * supersample > _MAX_SIZE:
        raise ValueError(f"height/width times supersample must be at most {_MAX_SIZE}, got "
                         f"{height} x {width} at supersample {supersample}")
    if isinstance(background, bool) or not isinstance(background, numbers.Real):
        raise TypeError(f"background must be a real number, got {type(background).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
