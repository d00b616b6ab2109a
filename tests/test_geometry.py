"""The shared frames: projections invert each other, crops follow the documented formula."""

import math

import numpy as np
import pytest
import torch

import geometry
from shards import nyu


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_project_unproject_round_trip(kind):
    points = np.array([[10.0, -25.0, 700.0], [-80.0, 40.0, 950.0]])
    if kind == "torch":
        points = torch.tensor(points)
    uvz = geometry.project(points, nyu.NYU_INTRINSICS)
    back = geometry.unproject(uvz, nyu.NYU_INTRINSICS)
    assert type(back) is type(points)
    np.testing.assert_allclose(np.asarray(back), np.asarray(points), atol=1e-9)


def test_project_principal_point_and_focal():
    k = nyu.NYU_INTRINSICS
    uvz = geometry.project(np.array([[0.0, 0.0, 500.0], [100.0, 50.0, 1000.0]]), k)
    np.testing.assert_allclose(uvz[0], [k.cx, k.cy, 500.0])
    np.testing.assert_allclose(uvz[1], [k.cx + 0.1 * k.fx, k.cy + 0.05 * k.fy, 1000.0])


def test_crop_pixels_formula_and_inverse():
    crop = geometry.Crop(64, 300.0)
    points = np.array([[0.0, 0.0, 5.0], [150.0, -150.0, -20.0], [-75.0, 30.0, 0.0]])
    pixels = crop.to_pixels(points)
    np.testing.assert_allclose(pixels[0], [32.0, 32.0, 5.0])
    np.testing.assert_allclose(pixels[1], [64.0, 0.0, -20.0])
    np.testing.assert_allclose(pixels[2], [-75 * 64 / 300 + 32, 30 * 64 / 300 + 32, 0.0])
    np.testing.assert_allclose(crop.from_pixels(pixels), points, atol=1e-12)
    assert crop.background_depth == 150.0 and crop.mm_per_pixel == 300.0 / 64
    np.testing.assert_array_equal(crop.inside(points), [True, False, True])
    np.testing.assert_array_equal(crop.clip_depth(np.array([-200.0, 0.0, 200.0])), [-150.0, 0.0, 150.0])


@pytest.mark.parametrize("size, cube", [(0, 300.0), (7, 300.0), (64, 0.0), (64, float("nan")), (64.5, 300.0)])
def test_a_crop_refuses_impossible_values(size, cube):
    with pytest.raises(ValueError, match="crop"):
        geometry.Crop(size, cube)


def test_nyu_y_up_flip_is_its_own_inverse():
    xyz = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(nyu.nyu_xyz_to_camera(xyz), [[1.0, -2.0, 3.0]])
    np.testing.assert_allclose(nyu.nyu_xyz_to_camera(nyu.nyu_xyz_to_camera(xyz)), xyz)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_rigid_transforms_compose_and_invert(kind):
    rotation = _rotation_z(0.7)
    translation = np.array([5.0, -3.0, 12.0])
    points = np.random.default_rng(0).normal(size=(2, 7, 3)) * 50
    if kind == "torch":
        rotation, translation, points = (torch.tensor(a) for a in (rotation, translation, points))
    transform = geometry.make_transform(rotation, translation)
    moved = geometry.transform_points(transform, points)
    expected = np.asarray(points) @ np.asarray(rotation).T + np.asarray(translation)
    np.testing.assert_allclose(np.asarray(moved), expected, atol=1e-9)
    back = geometry.transform_points(geometry.invert_transform(transform), moved)
    np.testing.assert_allclose(np.asarray(back), np.asarray(points), atol=1e-9)


@pytest.mark.parametrize("turn_rad, scale", [(0.4, 1.0), (0.0, 1.2), (-0.6, 0.9)])
def test_turned_and_scaled_crop_depth_shows_the_turned_and_scaled_spheres(turn_rad, scale):
    from renderer_cuda import render_spheres

    crop = geometry.Crop(64, 300.0)
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(1, 20, 3, generator=generator) * torch.tensor([40.0, 25.0, 20.0])
    radii = 6.0 + 6.0 * torch.rand(1, 20, generator=generator)

    def render(points: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return render_spheres(crop.to_pixels(points), sizes, 64, 64, background=crop.background_depth,
                              pixels_per_mm=64 / 300.0).clamp(max=crop.background_depth)

    warped = geometry.turn_and_scale_depth(render(centres, radii), crop, turn_rad, scale)
    expected = render(geometry.turn_and_scale_points(centres, turn_rad, scale), radii * scale)
    foreground = (warped < crop.background_depth) & (expected < crop.background_depth)
    # Nearest sampling moves edges by up to a pixel: the silhouettes agree but for the edge pixels.
    assert float(((warped < 150) == (expected < 150)).float().mean()) > 0.97
    assert float((warped - expected)[foreground].abs().median()) < 1.5
    back = geometry.turn_and_scale_points(geometry.turn_and_scale_points(centres, turn_rad, scale), -turn_rad, 1 / scale)
    torch.testing.assert_close(back, centres)
    assert type(geometry.turn_and_scale_points(centres.numpy(), turn_rad, scale)) is np.ndarray
