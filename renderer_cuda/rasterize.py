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

How closely the backends agree: the CPU and CUDA kernels evaluate the same expressions of
``csrc/raster_math.h`` in the same order with every operation rounded alike (no FMAs), so they agree bit
for bit at every supersample (tests/test_renderer_cuda_on_cpu.py runs the CUDA kernel's source on the
CPU against the CPU kernel). The torch reference agrees with them bit for bit at supersample 1; above
that it averages the subsamples in another order, so the same pixels are covered and a covered pixel's
depth may differ in its last bits.
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
        faces: (F, 3) int32 or int64 on the device of ``vertices``, indices in [0, V). Checked on the CPU;
            on a CUDA device the check would wait for the device on every call, so there a triangle with
            an index out of range is skipped instead (as the kernels do for every caller).
        height, width: output size in pixels.
        background: depth of pixels no triangle covers.
        supersample: s >= 1 subsamples per pixel and axis (see the module docstring for the rule).
        perspective: interpolate 1/z instead of z across each triangle.
        backend: "cuda" (CUDA tensors), "cpu" (compiled C++ kernel, CPU tensors), "torch" (pure-torch
            reference, any device, slow), or "auto" (see :func:`resolve_backend`): the compiled kernel of
            the device; on the CPU only, the torch reference with one warning when the kernel is unavailable.

    Returns:
        (B, H, W) float32 on the device of ``vertices``.

    Raises:
        ExtensionUnavailable: the compiled kernel that ``backend`` needs on this device cannot be used;
            the one-line message says why and where the build log is.
    """
    _check_inputs(vertices, faces, height, width, background, supersample, backend)
    faces = faces.to(torch.int32).contiguous()
    vertices = vertices.contiguous()
    chosen = resolve_backend(backend, vertices.device)
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


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend ("cuda", "cpu" or "torch") that ``rasterize(..., backend=backend)`` runs for tensors on
    ``device``, loading (or building) the compiled kernel it needs.

    "auto" is the compiled kernel of the device. Only on the CPU does "auto" fall back to the pure-torch
    reference, with one warning, when the kernel is unavailable: on a CUDA device that fallback would
    make every step ~1,000x slower, so it is an error there, as with ``backend="cuda"``. "torch" always
    works. Call this once at startup to refuse a run early with one line.

    Raises:
        ValueError: ``backend`` is not one of BACKENDS, or names a kernel of another device.
        ExtensionUnavailable: the kernel cannot be used; the message says why and where the build log is.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("cuda", "cpu") and device.type != backend:
        raise ValueError(f"vertices must be on {'a CUDA device' if backend == 'cuda' else 'the CPU'} for "
                         f"backend={backend!r}, got {device}")
    if backend == "torch":
        return "torch"
    if device.type not in extension.KINDS:
        raise extension.ExtensionUnavailable(f"no compiled rasterizer kernel for device {device}; pass "
                                             "backend='torch' for the (slow) pure-torch reference")
    try:
        extension.load(device.type)
    except extension.ExtensionUnavailable as error:
        if backend == "auto" and device.type == "cpu":
            _warn_fallback(str(error))
            return "torch"
        raise extension.ExtensionUnavailable(f"{error}. On a CUDA device rasterize does not fall back to the "
                                             "pure-torch reference (~1,000x slower); pass backend='torch' to "
                                             "ask for it") from None
    return device.type


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"renderer_cuda: compiled kernel unavailable ({reason}); using the pure-torch reference "
                      "rasterizer, which is much slower", RuntimeWarning, stacklevel=4)


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
    # On a CUDA device this check would wait for the device on every call: the kernels skip such triangles.
    if faces.device.type == "cpu" and faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[1]):
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
