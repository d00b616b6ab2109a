"""The CUDA kernel's source executed on the CPU, compared bit for bit with the CPU backend.

``renderer_cuda/csrc/raster_cuda.cu`` is compiled as host C++ with ``tests/cuda_on_cpu/`` first on the
include path (its ``cuda_runtime.h`` shim: warps as fibers, launch limits checked, see the files there),
and ``tests/cuda_on_cpu/harness.cpp`` calls the real launcher ``rasterize_cuda`` on scenes written here:
hand batches with a forearm (small triangles per thread, the forearm's large ones per warp) at supersample
1 and 2, an adversarial scene (huge, degenerate, NaN/inf, back-facing, out-of-range indices, perspective),
an empty face list, and a 65,537-image batch (more images than grid.y may launch). Three builds: the host
branch of ``raster_math.h``; with ``-D__CUDA_ARCH__=900`` its device branch (the intrinsics); and that one
with AddressSanitizer and UndefinedBehaviorSanitizer. Each is built once per source hash into the kernel
cache (a few seconds). Runs with ``SIMULATOR_SEED`` set visit blocks, warps and lanes in shuffled order.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import hand
from geometry import Crop
from renderer_cuda import extension

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tests" / "cuda_on_cpu"
KERNEL_FILES = [extension.CSRC / name for name in ("raster_cuda.cu", "raster_cuda.h", "raster_math.h")]
COMPILER = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
# -ffp-contract=off as in the real builds; without _FORTIFY_SOURCE, glibc's longjmp accepts the switch
# to another fiber's stack.
COMMON_FLAGS = ("-std=c++17", "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-Wall", "-Wextra", "-Werror")
BUILDS = {
    "host": ("-O2",),
    "device": ("-O2", "-D__CUDA_ARCH__=900"),
    "sanitized": ("-O1", "-g", "-D__CUDA_ARCH__=900", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"),
}
MAGIC = 0x31524853  # "SHR1", see harness.cpp

pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++/c++ or $CXX)")


@dataclass(frozen=True)
class Scene:
    vertices: torch.Tensor  # (B, V, 3) float32
    faces: torch.Tensor  # (F, 3) int32
    height: int
    width: int
    background: float
    supersample: int = 1
    perspective: bool = False

    def write(self, path: Path) -> None:
        batch, vertices, _ = self.vertices.shape
        header = np.array([MAGIC, batch, vertices, self.faces.shape[0], self.height, self.width, self.supersample,
                           int(self.perspective)], np.int32)
        path.write_bytes(header.tobytes() + np.float32(self.background).tobytes()
                         + self.vertices.numpy().astype(np.float32).tobytes()
                         + self.faces.numpy().astype(np.int32).tobytes())

    def render_cpu(self) -> torch.Tensor:
        """The CPU backend's kernel, called directly: rasterize() would refuse the out-of-range indices."""
        return extension.load("cpu").rasterize(self.vertices, self.faces, self.height, self.width, self.background,
                                               self.perspective, self.supersample)

    def largest_box(self) -> float:
        """The largest triangle box in subsamples (above 16 a warp samples it cooperatively)."""
        corners = self.vertices[:, self.faces.clamp(0, self.vertices.shape[1] - 1).long()] * self.supersample
        extent = corners.amax(dim=2) - corners.amin(dim=2)
        area = (extent[..., 0].clamp(0, self.width * self.supersample)
                * extent[..., 1].clamp(0, self.height * self.supersample))
        return float(torch.nan_to_num(area, nan=0.0).max())


# ---- scenes -------------------------------------------------------------------------------------------------

def hand_scene(batch: int, supersample: int, seed: int = 0) -> Scene:
    """Random hand poses with a forearm, in a 64 x 64 crop of 300 mm, as the synthesizer draws them."""
    generator = torch.Generator().manual_seed(seed)
    model = hand.HandModel()
    pose = hand.sample_poses(batch, generator=generator)
    radii = torch.tensor([28.0, 20.0]) + 6.0 * torch.rand(batch, 2, generator=generator)
    with torch.no_grad():
        vertices, faces = model.mesh(pose)
        arm, arm_faces = model.forearm(pose, radii_mm=radii, wrist_flexion=torch.rand(batch, generator=generator) - 0.5)
    vertices = Crop(64, 300.0).to_pixels(torch.cat([vertices, arm], dim=1).float()).contiguous()
    faces = torch.cat([faces, arm_faces + vertices.shape[1] - arm.shape[1]]).int()
    return Scene(vertices, faces, 64, 64, background=150.0, supersample=supersample)


def adversarial_scene(perspective: bool) -> Scene:
    """Three 37 x 53 images: a full-image plane, sub-pixel, huge, degenerate, non-finite and back-facing
    triangles, edges through pixel centres, vertices behind the camera, and indices out of range."""
    inf, nan, big = float("inf"), float("nan"), 3.0e38
    triangles = [
        [(-5, -5, 400), (80, -5, 420), (-5, 60, 380)],  # covers the image: a plane behind the rest
        [(10.2, 10.1, 50), (10.4, 10.6, 50), (10.9, 10.3, 50)],  # smaller than a pixel
        [(-big, -big, 90), (big, -big, 95), (0, big, 99)],  # huge: clamped in float before any int cast
        [(-1e7, 3, 80), (1e7, 4, 80), (5, 1e7, 81)],
        [(3, 3, 40), (20, 20, 40), (37, 37, 40)],  # collinear: zero area
        [(8, 8, 30), (8, 8, 30), (8, 8, 30)],
        [(1, 1, nan), (30, 2, 20), (2, 30, 20)],  # non-finite coordinates
        [(1, 1, 20), (inf, 2, 20), (2, 30, 20)],
        [(20.5, 5.5, 60), (40.5, 5.5, 60), (20.5, 25.5, 60)],  # edges through pixel centres
        [(20.5, 25.5, 61), (40.5, 5.5, 61), (40.5, 25.5, 61)],
        [(45, 2, 70), (30, 30, 65), (52, 30, 75)],  # back-facing (clockwise in image coordinates)
        [(45, 2, 30), (52, 30, 35), (30, 30, 25)],  # the same, front-facing and nearer
        [(2, 20, -5), (30, 22, 10), (12, 35, 12)],  # a vertex behind the camera (perspective skips it)
        [(5, 5, 1e-39), (15, 5, 10), (5, 15, 10)],  # 1/z overflows in perspective
        [(-20, 30, 33), (15, 50, 34), (-10, 80, 35)],  # partly outside the image
    ]
    corners = torch.tensor(triangles, dtype=torch.float32).reshape(-1, 3)
    jitter = torch.rand(3, corners.shape[0], 2, generator=torch.Generator().manual_seed(7)) - 0.5
    vertices = corners.expand(3, -1, -1).clone()
    vertices[..., :2] += torch.where(torch.isfinite(vertices[..., :2]) & (vertices[..., :2].abs() < 1e6), jitter, 0)
    count = corners.shape[0]
    faces = torch.arange(count, dtype=torch.int32).reshape(-1, 3)
    bad = torch.tensor([[-1, 0, 1], [0, count, 1], [0, 1, 2**31 - 1]], dtype=torch.int32)  # skipped by the kernels
    return Scene(vertices.contiguous(), torch.cat([faces, bad]), 37, 53, background=1000.0, perspective=perspective)


def empty_scene() -> Scene:
    return Scene(torch.zeros(2, 3, 3), torch.zeros(0, 3, dtype=torch.int32), 8, 8, background=-3.5)


def many_images_scene(batch: int = 65537) -> Scene:
    """More images than one launch's grid.y (65,535): the kernel's image loop must reach the last two.
    Each image's triangles lie at its own depth, so an image drawn into another's slot shows."""
    generator = torch.Generator().manual_seed(11)
    vertices = torch.rand(batch, 4, 3, generator=generator) * torch.tensor([8.0, 6.0, 1.0]) - torch.tensor([1, 1, 0])
    vertices[..., 2] += torch.arange(batch, dtype=torch.float32)[:, None]
    return Scene(vertices, torch.tensor([[0, 1, 2], [1, 3, 2]], dtype=torch.int32), 4, 6, background=-1.0)


SCENES = {
    "hand-ss1": lambda: hand_scene(8, 1),
    "hand-ss2": lambda: hand_scene(8, 2, seed=1),
    "hand-small-ss1": lambda: hand_scene(3, 1, seed=2),
    "hand-small-ss2": lambda: hand_scene(3, 2, seed=3),
    "adversarial": lambda: adversarial_scene(perspective=False),
    "adversarial-perspective": lambda: adversarial_scene(perspective=True),
    "empty": empty_scene,
    "65537-images": many_images_scene,
}
# (build, SIMULATOR_SEED or None, scenes). The sanitized build costs ~10x: it gets the small scenes.
RUNS = [
    ("device", None, ["hand-ss1", "hand-ss2", "adversarial", "adversarial-perspective", "empty", "65537-images"]),
    ("device", 1, ["hand-ss1", "hand-ss2", "adversarial", "adversarial-perspective"]),
    ("host", 2, ["hand-ss1", "hand-ss2", "adversarial", "adversarial-perspective", "empty"]),
    ("sanitized", 3, ["hand-small-ss1", "hand-small-ss2", "adversarial", "adversarial-perspective", "empty"]),
]


# ---- builds -------------------------------------------------------------------------------------------------

def _build_key(flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256(repr(flags).encode())
    version = subprocess.run([COMPILER, "--version"], capture_output=True, text=True).stdout
    digest.update(version.encode())
    for path in sorted(SHIM.glob("*.[ch]*")) + KERNEL_FILES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def harnesses() -> dict[str, Path]:
    """Every build's harness executable, compiled in parallel where not cached."""
    flags = {name: COMMON_FLAGS + extra for name, extra in BUILDS.items()}
    paths = {name: extension.writable_cache_root() / "cuda-on-cpu" / f"{name}-{_build_key(flags[name])}" / "harness"
             for name in BUILDS}
    running = {}
    for name, path in paths.items():
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"harness.partial-{os.getpid()}")
        command = [COMPILER, *flags[name], f"-I{SHIM}", f"-I{extension.CSRC}", "-x", "c++", str(KERNEL_FILES[0]),
                   "-x", "none", str(SHIM / "simulator.cpp"), str(SHIM / "harness.cpp"), "-o", str(partial)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running[name] = (process, partial)
    for name, (process, partial) in running.items():
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, f"building the {name} harness failed:\n{output[-4000:]}"
        os.replace(partial, paths[name])  # atomic: a concurrent run sees a whole file or none
    return paths


@pytest.fixture(scope="module")
def scenes() -> dict[str, tuple[Scene, torch.Tensor]]:
    """Each scene and its image from the CPU backend."""
    made = {name: make() for name, make in SCENES.items()}
    return {name: (scene, scene.render_cpu()) for name, scene in made.items()}


def run_harness(harness: Path, scenes: list[Scene], folder: Path, seed: int | None) -> list[torch.Tensor]:
    """The harness's images of ``scenes`` (fails the test with the harness's message if it fails)."""
    arguments = []
    for k, scene in enumerate(scenes):
        scene.write(folder / f"scene{k}.bin")
        arguments += [str(folder / f"scene{k}.bin"), str(folder / f"out{k}.bin")]
    env = dict(os.environ, **({"SIMULATOR_SEED": str(seed)} if seed is not None else {}))
    result = subprocess.run([str(harness), *arguments], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"{harness.parent.name} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return [torch.from_numpy(np.fromfile(folder / f"out{k}.bin", np.float32)).view(scene.vertices.shape[0],
                                                                                  scene.height, scene.width)
            for k, scene in enumerate(scenes)]


# ---- tests --------------------------------------------------------------------------------------------------

def test_scenes_reach_both_sampling_paths_and_the_grid_limit(scenes):
    for name in ("hand-ss1", "hand-ss2", "hand-small-ss1", "adversarial"):
        scene, image = scenes[name]
        assert scene.largest_box() > 16, f"{name} has no triangle large enough for the warp-cooperative path"
        assert (image != scene.background).float().mean() > 0.05, f"{name} covers too little"
    scene, image = scenes["65537-images"]
    assert scene.vertices.shape[0] > 65535
    assert torch.all(image[-2:].amax(dim=(1, 2)) >= 65535), "the last two images are drawn (at their own depth)"


@pytest.mark.parametrize("build, seed, names", RUNS, ids=[f"{b}-{'shuffled' if s else 'in-order'}" for b, s, _ in RUNS])
def test_cuda_source_on_cpu_matches_cpu_kernel_bit_for_bit(harnesses, scenes, tmp_path, build, seed, names):
    images = run_harness(harnesses[build], [scenes[name][0] for name in names], tmp_path, seed)
    for name, image in zip(names, images):
        expected = scenes[name][1]
        differ = image.view(torch.int32) != expected.view(torch.int32)
        if differ.any():
            b, i, j = (int(k) for k in differ.nonzero()[0])
            pytest.fail(f"{name}: {int(differ.sum())} of {differ.numel()} pixels differ from the CPU kernel; first at "
                        f"image {b}, pixel ({i}, {j}): {image[b, i, j].item()} instead of {expected[b, i, j].item()}")
