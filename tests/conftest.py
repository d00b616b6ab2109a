"""Shared, session-scoped test data: a small fake-NYU set and shards built from it (made once per run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hand
from geometry import Crop, invert_transform, make_transform, transform_points
from renderer_cuda import render_spheres

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN, FAKE_TEST = 48, 16
CROP = Crop(64, 300.0)  # the crop of the sphere scene
SIZE, CUBE = CROP.size, CROP.cube_mm



@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for tiny models: a second only adds spin-waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_shards(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m shards ARGS`` as a user runs it, from the repository root."""
    result = subprocess.run([sys.executable, "-m", "shards", *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"shards {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def fake_nyu_dir(tmp_path_factory) -> Path:
    """NYU-layout data rendered from the hand model: 48 train + 16 test frames, 10% mislabelled side views."""
    out = tmp_path_factory.mktemp("fake-nyu")
    run_shards("fake-nyu", "--out", out, "--train", FAKE_TRAIN, "--test", FAKE_TEST, "--seed", 3,
               "--label-outliers", 0.1)
    return out


@pytest.fixture(scope="session")
def nyu_shards_gt(fake_nyu_dir, tmp_path_factory) -> Path:
    """``shards nyu`` with the default label-based centres and per-frame cameras, 2 workers."""
    out = tmp_path_factory.mktemp("nyu-gt")
    run_shards("nyu", "--nyu-root", fake_nyu_dir, "--out", out, "--samples-per-shard", 20, "--workers", 2)
    return out


@pytest.fixture(scope="session")
def nyu_shards_com_fixed(fake_nyu_dir, tmp_path_factory) -> Path:
    """``shards nyu`` label-free: depth-only centres and one camera calibration per split."""
    out = tmp_path_factory.mktemp("nyu-com-fixed")
    run_shards("nyu", "--nyu-root", fake_nyu_dir, "--out", out, "--center", "com", "--cameras", "fixed",
               "--samples-per-shard", 32)
    return out


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """40 synthetic samples in 4 shards."""
    out = tmp_path_factory.mktemp("synthetic")
    run_shards("synthetic", "--out", out, "--num-samples", 40, "--samples-per-shard", 10, "--seed", 5)
    return out


@pytest.fixture(scope="session")
def model() -> hand.HandModel:
    return hand.HandModel()


@pytest.fixture(scope="session")
def scene(model: hand.HandModel) -> dict:
    """Two frames of three views: true joints per view, cams, and the spheres rendered as observed depth."""
    generator = torch.Generator().manual_seed(3)
    poses = hand.sample_poses(2, generator=generator)
    poses[:, :6] = 0.0  # palm facing the camera, centred in the crop
    poses[1, 6:] *= 0.5
    joints_1 = model.keypoints(poses)  # (2, 41, 3) in view 1's crop frame
    angles = [0.0, 0.6, -0.5]
    cams = []
    for k, angle in enumerate(angles):
        rotation = hand.axis_angle_to_matrix(torch.tensor([0.2 * k, angle, 0.0]))
        cams.append(make_transform(rotation, torch.tensor([4.0 * k, -3.0 * k, 5.0 * k])))
    cams = torch.stack(cams)[None].repeat(2, 1, 1, 1)  # (2, 3, 4, 4): view k -> view 1
    joints = transform_points(invert_transform(cams), joints_1[:, None])  # (2, 3, 41, 3) per view
    return {"joints": joints, "cams": cams, "depth": render_depth(joints, model.radii)}


def render_depth(joints: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Per-view sphere centres (B, V, J, 3) -> the spheres' crop depth (B, V, S, S) mm."""
    pixels = CROP.to_pixels(joints).reshape(-1, joints.shape[-2], 3)
    depth = render_spheres(pixels, radii, SIZE, SIZE, background=CROP.background_depth, pixels_per_mm=SIZE / CUBE)
    return depth.reshape(*joints.shape[:2], SIZE, SIZE).clamp(max=CROP.background_depth)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (``pytest -m cuda`` selects them: the GPU suite) skip where no GPU is visible."""
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
