"""Rasterizer and sphere renderer: backend agreement, analytic truth, the sampling rules, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from renderer_cuda import (ExtensionUnavailable, available_backends, extension, rasterize, render_spheres,
                           resolve_backend)
from renderer_cuda.shapes import random_blobs, sphere_mesh

BG = 1000.0
ALL = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda), "torch"]  # cuda-marked tests skip without a GPU


@pytest.fixture(scope="session", autouse=True)
def cpu_kernel():
    """Builds (or loads from the default cache) the CPU kernel once; it must build on every machine."""
    return extension.load("cpu")


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def _render(backend: str, vertices: torch.Tensor, faces: torch.Tensor, size: int | tuple[int, int], **kw):
    h, w = (size, size) if isinstance(size, int) else size
    d = _device(backend)
    return rasterize(vertices.to(d), faces.to(d), h, w, background=kw.pop("background", BG), backend=backend,
                     **kw).cpu()


def _render1(backend: str, vertices: torch.Tensor, faces: torch.Tensor, size: int | tuple[int, int], **kw):
    """The single image of a batch of one."""
    return _render(backend, vertices, faces, size, **kw)[0]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def _quad(x0: float, y0: float, x1: float, y1: float, depth) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectangle [x0, x1] x [y0, y1] as two triangles; depth(x, y) gives each corner's z."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    vertices = torch.tensor([[[x, y, depth(x, y)] for x, y in corners]], dtype=torch.float32)
    return vertices, torch.tensor([[0, 1, 2], [0, 2, 3]])


def _centres(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x, y), each (size, size), in float64."""
    c = torch.arange(size, dtype=torch.float64) + 0.5
    return c[None, :].expand(size, size), c[:, None].expand(size, size)


# ---- backends agree --------------------------------------------------------------------------------------

@pytest.mark.parametrize("perspective, supersample", [(False, 1), (True, 1), (False, 3)])
def test_cpu_matches_torch_on_random_meshes(perspective, supersample):
    vertices, faces = random_blobs(3, 5, 32, generator=torch.Generator().manual_seed(1))
    if perspective:
        vertices[..., 2] += 100.0  # in front of the camera
    size = 32 if supersample == 1 else 16
    cpu = _render("cpu", vertices / (32 // size), faces, size, perspective=perspective, supersample=supersample)
    ref = _render("torch", vertices / (32 // size), faces, size, perspective=perspective, supersample=supersample)
    assert (cpu < BG).float().mean() > 0.2, "the test meshes should cover a good part of the image"
    if supersample == 1:
        assert _same_bits(cpu, ref)
    else:  # the same pixels covered; the subsamples are averaged in another order (see renderer_cuda.rasterize)
        assert torch.equal(cpu == BG, ref == BG)
        assert torch.allclose(cpu, ref, rtol=1e-6, atol=0)


def test_cpu_matches_torch_on_hand_meshes():
    hand = pytest.importorskip("hand")
    from geometry import Crop

    model = hand.HandModel()
    vertices, faces = model.mesh(hand.sample_poses(2, generator=torch.Generator().manual_seed(0)))
    pixels = Crop(32).to_pixels(vertices.detach().float()).contiguous()
    cpu = _render("cpu", pixels, faces, 32, background=150.0)
    ref = _render("torch", pixels, faces, 32, background=150.0)
    assert (cpu < 150.0).any()
    assert _same_bits(cpu, ref)


@pytest.mark.cuda
@pytest.mark.parametrize("supersample", [1, 3])
def test_cuda_matches_cpu(supersample):
    vertices, faces = random_blobs(8, 12, 64, generator=torch.Generator().manual_seed(2))
    cuda = _render("cuda", vertices, faces, 64, supersample=supersample)
    cpu = _render("cpu", vertices, faces, 64, supersample=supersample)
    assert _same_bits(cuda, cpu)


@pytest.mark.cuda
def test_cuda_rasterize_does_not_wait_for_the_device_and_skips_bad_indices():
    vertices, faces = random_blobs(4, 6, 64, generator=torch.Generator().manual_seed(6))
    bad = torch.tensor([[-1, 0, 1], [0, vertices.shape[1], 1]])
    expected = _render("cpu", vertices, faces, 64)
    torch.cuda.set_sync_debug_mode("error")  # a synchronizing call (e.g. int(faces.min())) raises
    try:
        depth = rasterize(vertices.cuda(), torch.cat([faces, bad]).cuda(), 64, 64, background=BG, backend="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert _same_bits(depth.cpu(), expected)


# ---- analytic truth --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL)
def test_tilted_plane_is_exact(backend):
    plane = lambda x, y: 40.0 + 1.7 * x - 0.9 * y  # noqa: E731
    vertices, faces = _quad(3.2, 4.7, 27.9, 29.3, plane)
    depth = _render1(backend, vertices, faces, 32).double()
    x, y = _centres(32)
    inside = (x > 3.2) & (x < 27.9) & (y > 4.7) & (y < 29.3)
    assert torch.all(depth[inside] < BG), "every pixel centre inside the quad is covered"
    assert torch.all(depth[~inside] == BG)
    assert torch.allclose(depth[inside], plane(x, y)[inside], rtol=0, atol=1e-3)


@pytest.mark.parametrize("backend", ALL)
def test_fine_sphere_matches_analytic_sphere(backend):
    rings, segments = (48, 96) if backend != "torch" else (40, 80)  # torch tests every pair: keep it small
    unit, faces = sphere_mesh(rings, segments)
    centre, radius = torch.tensor([16.3, 15.8, 50.0]), 12.0
    depth = _render1(backend, (unit * radius + centre)[None], faces, 32).double()
    analytic = render_spheres(centre[None, None].double(), torch.tensor([radius], dtype=torch.float64), 32, 32,
                              background=BG)[0]
    x, y = _centres(32)
    d = torch.sqrt((x - 16.3) ** 2 + (y - 15.8) ** 2)
    closed_form = 50.0 - torch.sqrt((radius**2 - d**2).clamp(min=0))
    interior = d < 0.95 * radius
    assert torch.all(depth[interior] < BG)
    assert (depth[interior] - closed_form[interior]).abs().max() < 0.01 * radius
    assert (depth[interior] - analytic[interior]).abs().max() < 0.01 * radius
    assert torch.all(depth[d > radius + 0.01] == BG), "the inscribed mesh never covers outside the sphere"


@pytest.mark.parametrize("backend", ALL)
def test_pixel_centre_rule(backend):
    # The right edge at x = 10.4 covers column 9 (centre 9.5) and not column 10 (centre 10.5).
    depth = _render1(backend, *_quad(0.0, 0.0, 10.4, 16.0, lambda x, y: 5.0), 16)
    assert torch.all(depth[:, 9] == 5.0) and torch.all(depth[:, 10] == BG)
    # Inclusive: an edge exactly through the centres (x = 10.5) covers them.
    depth = _render1(backend, *_quad(0.0, 0.0, 10.5, 16.0, lambda x, y: 5.0), 16)
    assert torch.all(depth[:, 10] == 5.0) and torch.all(depth[:, 11] == BG)


@pytest.mark.parametrize("backend", ALL)
def test_perspective_plane_is_exact(backend):
    # A plane seen by a pinhole camera has 1/z affine in the image: 1/z = a*u + b*v + c.
    inverse = lambda x, y: 1.0 / 400.0 + 2e-5 * x - 1.5e-5 * y  # noqa: E731
    vertices, faces = _quad(2.0, 2.0, 30.0, 30.0, lambda x, y: 1.0 / inverse(x, y))
    x, y = _centres(32)
    inside = (x > 2) & (x < 30) & (y > 2) & (y < 30)
    truth = 1.0 / inverse(x, y)
    perspective = _render1(backend, vertices, faces, 32, perspective=True).double()
    assert torch.allclose(perspective[inside], truth[inside], rtol=0, atol=1e-3)
    linear = _render1(backend, vertices, faces, 32).double()
    assert (linear[inside] - truth[inside]).abs().max() > 0.1, "screen-linear z differs on this plane"


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("supersample", [2, 3, 4])
def test_supersampled_plane_interior_is_exact(backend, supersample):
    plane = lambda x, y: -20.0 + 0.8 * x + 1.3 * y  # noqa: E731
    vertices, faces = _quad(3.3, 2.1, 13.6, 14.2, plane)
    depth = _render1(backend, vertices, faces, 16, supersample=supersample).double()
    x, y = _centres(16)
    interior = (x > 4.5) & (x < 12.5) & (y > 3.5) & (y < 13.5)  # every subsample of these pixels is covered
    assert torch.allclose(depth[interior], plane(x, y)[interior], rtol=0, atol=1e-3)
    far = (x < 2.5) | (x > 14.5) | (y < 1.5) | (y > 15)
    assert torch.all(depth[far] == BG)


@pytest.mark.parametrize("backend", ALL)
def test_supersample_half_coverage_rule(backend):
    # Column 10's four subsample columns sit at x = 10.125, 10.375, 10.625, 10.875.
    quarter = _render1(backend, *_quad(0.0, 0.0, 10.3, 8.0, lambda x, y: 5.0), (8, 16), supersample=4)
    half = _render1(backend, *_quad(0.0, 0.0, 10.4, 8.0, lambda x, y: 5.0), (8, 16), supersample=4)  # 2 of 4
    assert torch.all(half[:, 10] == 5.0) and torch.all(quarter[:, 10] == BG)
    assert torch.all(half[:, 11] == BG) and torch.all(half[:, 9] == 5.0)


@pytest.mark.parametrize("backend", ALL)
def test_background_where_nothing_is_drawn(backend):
    empty = _render(backend, torch.zeros(2, 3, 3), torch.zeros(0, 3, dtype=torch.long), 8, background=-3.5)
    assert empty.shape == (2, 8, 8) and torch.all(empty == -3.5)
    outside = _render1(backend, *_quad(20.0, 20.0, 30.0, 30.0, lambda x, y: 1.0), 8)
    assert torch.all(outside == BG)
    degenerate = torch.tensor([[[1.0, 1.0, 2.0], [6.0, 6.0, 2.0], [3.0, 3.0, 2.0]]])  # zero area
    assert torch.all(_render1(backend, degenerate, torch.tensor([[0, 1, 2]]), 8) == BG)
    nan = torch.tensor([[[1.0, 1.0, 2.0], [7.0, 1.0, float("nan")], [1.0, 7.0, 2.0]]])
    assert torch.all(_render1(backend, nan, torch.tensor([[0, 1, 2]]), 8) == BG)


@pytest.mark.parametrize("backend", ALL)
def test_both_windings_are_drawn_and_nearest_wins(backend):
    vertices = torch.tensor([[[1.0, 1.0, 9.0], [14.0, 2.0, 9.0], [3.0, 13.0, 9.0],
                              [0.0, 0.0, 4.0], [16.0, 0.0, 4.0], [0.0, 16.0, 4.0]]])
    front = _render1(backend, vertices, torch.tensor([[0, 1, 2]]), 16)
    back = _render1(backend, vertices, torch.tensor([[0, 2, 1]]), 16)
    assert (front < BG).sum() > 40 and torch.equal(front, back)
    both = _render1(backend, vertices, torch.tensor([[0, 1, 2], [3, 5, 4]]), 16)
    assert torch.all(both[front < BG] == 4.0), "the nearer triangle wins where both cover"


@pytest.mark.parametrize("backend", ALL)
def test_mesh_is_watertight_when_edges_cross_pixel_centres(backend):
    # A 2-triangles-per-cell grid whose diagonals run exactly through pixel centres: no sample may fall
    # between neighbours.
    n, step = 6, 2.0
    grid = torch.stack(torch.meshgrid(torch.arange(n + 1.0), torch.arange(n + 1.0), indexing="xy"), dim=-1)
    xy = (grid * step + 1.5).reshape(-1, 2)
    vertices = torch.cat([xy, 7.0 + 0.3 * xy[:, :1] - 0.2 * xy[:, 1:]], dim=1)[None]
    k = torch.arange(n * (n + 1)).view(n, n + 1)[:, :n].reshape(-1)
    faces = torch.cat([torch.stack([k, k + 1, k + n + 2], 1), torch.stack([k, k + n + 2, k + n + 1], 1)])
    depth = _render1(backend, vertices, faces, 16)
    assert torch.all(depth[1:14, 1:14] < BG)


def test_auto_uses_the_cpu_kernel_without_warning(recwarn):
    vertices, faces = random_blobs(2, 3, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rasterize(vertices, faces, 16, 16, background=BG),
                       rasterize(vertices, faces, 16, 16, background=BG, backend="cpu"))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_available_backends_lists_the_working_ones():
    assert available_backends() == (["cuda"] if extension.cuda_problem() is None else []) + ["cpu", "torch"]


def test_resolve_backend_names_the_backend_rasterize_runs():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert resolve_backend("cpu", torch.device("cpu")) == "cpu"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("gpu", "cpu")
    with pytest.raises(ValueError, match="CUDA device for backend='cuda'"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(ExtensionUnavailable, match="no compiled rasterizer kernel for device meta"):
        resolve_backend("auto", "meta")


@pytest.mark.skipif(extension.cuda_problem() is None, reason="the CUDA kernel is usable here")
@pytest.mark.parametrize("backend", ["auto", "cuda"])
def test_no_silent_fallback_on_a_cuda_device(backend, recwarn):
    # What a trainer on a CUDA device checks at startup: the one-line reason, no fallback, no warning.
    with pytest.raises(ExtensionUnavailable) as caught:
        resolve_backend(backend, "cuda")
    message = str(caught.value)
    assert extension.cuda_problem() in message and "backend='torch'" in message and "\n" not in message
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert resolve_backend("torch", "cuda") == "torch", "asking for the torch reference always works"


def test_non_contiguous_inputs_are_accepted():
    vertices, faces = random_blobs(2, 3, 16, generator=torch.Generator().manual_seed(4))
    strided = vertices.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    assert torch.equal(rasterize(strided, faces.t().contiguous().t(), 16, 16, background=BG, backend="cpu"),
                       rasterize(vertices, faces, 16, 16, background=BG, backend="cpu"))


# ---- render_spheres --------------------------------------------------------------------------------------

def test_render_spheres_closed_form_and_min():
    centers = torch.tensor([[[8.0, 8.0, 30.0], [12.0, 8.0, 25.0]]])
    radii = torch.tensor([6.0, 2.0])
    depth = render_spheres(centers, radii, 16, 16, background=BG, pixels_per_mm=0.5)
    x, y = _centres(16)
    d1 = torch.sqrt((x - 8) ** 2 + (y - 8) ** 2) / 0.5
    d2 = torch.sqrt((x - 12) ** 2 + (y - 8) ** 2) / 0.5
    s1 = torch.where(d1 < 6, 30 - torch.sqrt((36 - d1**2).clamp(min=0)), torch.full_like(d1, math.inf))
    s2 = torch.where(d2 < 2, 25 - torch.sqrt((4 - d2**2).clamp(min=0)), torch.full_like(d2, math.inf))
    truth = torch.minimum(s1, s2)
    truth = torch.where(torch.isinf(truth), torch.full_like(truth, BG), truth)
    assert torch.allclose(depth.double()[0], truth, atol=2e-3)  # the sqrt floor shifts rims by <= 1e-3
    per_image = render_spheres(centers, radii[None], 16, 16, background=BG, pixels_per_mm=0.5)
    assert torch.equal(depth, per_image)


def test_render_spheres_gradcheck():
    torch.manual_seed(0)
    centers = torch.tensor([[[5.3, 6.1, 20.0], [9.7, 8.4, 18.0]], [[7.2, 7.9, 10.0], [4.4, 9.3, 11.0]]],
                           dtype=torch.float64, requires_grad=True)
    radii = torch.tensor([[4.3, 3.1], [3.7, 2.9]], dtype=torch.float64, requires_grad=True)
    render = lambda c, r: render_spheres(c, r, 14, 14, background=40.0, pixels_per_mm=0.9)  # noqa: E731
    assert torch.autograd.gradcheck(render, (centers, radii), eps=1e-6, atol=1e-5)


def test_render_spheres_gradient_moves_towards_target():
    target = render_spheres(torch.tensor([[[10.0, 9.0, 20.0]]]), torch.tensor([5.0]), 20, 20, background=40.0)
    centers = torch.tensor([[[8.5, 10.0, 23.0]]], requires_grad=True)
    optimizer = torch.optim.SGD([centers], lr=0.02)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = (render_spheres(centers, torch.tensor([5.0]), 20, 20, background=40.0) - target).pow(2).mean()
        loss.backward()
        assert torch.isfinite(centers.grad).all()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    error = (centers.detach() - torch.tensor([10.0, 9.0, 20.0])).abs()[0, 0]
    assert error[:2].max() < 0.2, "the silhouette offset is corrected"
    assert error[2] < 3.0 - 0.5, "depth moves towards the target"


def test_render_spheres_training_size_has_finite_gradients():
    generator = torch.Generator().manual_seed(5)
    centers = (torch.rand(75, 41, 3, generator=generator) * torch.tensor([64.0, 64.0, 100.0])).requires_grad_()
    radii = (3 + 8 * torch.rand(41, generator=generator)).requires_grad_()
    depth = render_spheres(centers, radii, 64, 64, background=150.0, pixels_per_mm=64 / 300)
    assert depth.shape == (75, 64, 64)
    depth.sum().backward()
    assert torch.isfinite(centers.grad).all() and torch.isfinite(radii.grad).all()
    assert centers.grad[..., 2].abs().sum() > 0


# ---- input errors ----------------------------------------------------------------------------------------

_V = torch.zeros(1, 3, 3)
_F = torch.tensor([[0, 1, 2]])


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(vertices=_V.double()), TypeError, "vertices"),
    (dict(vertices=_V[..., :2]), ValueError, "vertices"),
    (dict(vertices=_V[0]), ValueError, "vertices"),
    (dict(vertices=_V.numpy()), TypeError, "vertices"),
    (dict(faces=_F.float()), TypeError, "faces"),
    (dict(faces=_F[:, :2]), ValueError, "faces"),
    (dict(faces=_F + 1), ValueError, "faces"),
    (dict(faces=_F - 1), ValueError, "faces"),
    (dict(height=0), ValueError, "height"),
    (dict(width=8.0), TypeError, "width"),
    (dict(supersample=0), ValueError, "supersample"),
    (dict(background="far"), TypeError, "background"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(backend="cuda"), ValueError, "vertices"),
])
def test_rasterize_input_errors_name_the_argument(kwargs, error, name):
    args = dict(vertices=_V, faces=_F, height=8, width=8, background=BG, backend="cpu") | kwargs
    vertices, faces, height, width = (args.pop(k) for k in ("vertices", "faces", "height", "width"))
    with pytest.raises(error, match=name):
        rasterize(vertices, faces, height, width, **args)


def test_binding_checks_name_the_argument(cpu_kernel):
    faces = _F.int()
    with pytest.raises(ValueError, match="vertices must be contiguous"):
        cpu_kernel.rasterize(torch.zeros(1, 3, 3).transpose(1, 2), faces, 8, 8, BG, False, 1)
    with pytest.raises(TypeError, match="vertices must be float32"):
        cpu_kernel.rasterize(_V.double(), faces, 8, 8, BG, False, 1)
    with pytest.raises(TypeError, match="faces must be int32"):
        cpu_kernel.rasterize(_V, _F, 8, 8, BG, False, 1)
    with pytest.raises(ValueError, match="faces must have shape"):
        cpu_kernel.rasterize(_V, faces[:, :2].contiguous(), 8, 8, BG, False, 1)
    with pytest.raises(ValueError, match="height and width"):
        cpu_kernel.rasterize(_V, faces, 0, 8, BG, False, 1)
    with pytest.raises(ValueError, match="supersample"):
        cpu_kernel.rasterize(_V, faces, 8, 8, BG, False, 0)


@pytest.mark.parametrize("centers, radii, error, name", [
    (torch.zeros(1, 2, 2), torch.ones(2), ValueError, "centers"),
    (torch.zeros(1, 2, 3, dtype=torch.long), torch.ones(2), TypeError, "centers"),
    (torch.zeros(1, 2, 3), torch.ones(3), ValueError, "radii"),
    (torch.zeros(1, 2, 3), torch.ones(2, dtype=torch.float64), TypeError, "radii"),
    (torch.zeros(1, 2, 3), [1.0, 1.0], TypeError, "radii"),
])
def test_render_spheres_input_errors_name_the_argument(centers, radii, error, name):
    with pytest.raises(error, match=name):
        render_spheres(centers, radii, 8, 8, background=BG)
