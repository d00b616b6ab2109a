"""The NYU hand pose data set on disk: labels, depth PNGs, validation, crop centres and orthographic crops.

Layout (as NYU publishes it; README "Building shards from the real NYU data set"): ``SPLIT/joint_data.mat``
with ``joint_xyz``/``joint_uvd`` (3 views, N, 36, 3), xyz in mm with y up;
``SPLIT/depth_{1,2,3}_{NNNNNNN}.png``: 640x480 RGB, depth mm = G << 8 | B, 0 and 32001 mean no depth. Everything here is numpy; every failure names the file.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from geometry import Crop, Intrinsics, project, unproject
from shards.format import BadInputError
from shards.nyu_protocol import NYU_INTRINSICS

VIEWS = 3
NUM_JOINTS = 36
PALM_JOINT = 32
MISSING_DEPTH_VALUES = (0, 32001)
DEPTH_FILE = re.compile(r"^depth_([123])_(\d{7})\.png$")
MAT_NAME = "joint_data.mat"

NYU_IMAGE_WIDTH = 640
NYU_IMAGE_HEIGHT = 480


def nyu_xyz_to_camera(xyz: np.ndarray) -> np.ndarray:
    """NYU ``joint_xyz`` (y up) to the camera frame (y down); its own inverse."""
    return np.stack([xyz[..., 0], -xyz[..., 1], xyz[..., 2]], axis=-1)


def project_nyu(points: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., 3) mm to NYU image (u, v, depth mm) with :data:`NYU_INTRINSICS`."""
    return project(points, NYU_INTRINSICS)


def depth_path(split_dir: Path, view: int, frame: int) -> Path:
    """``view`` 1..3 and ``frame`` 1-based, as NYU numbers them."""
    return Path(split_dir) / f"depth_{view}_{frame:07d}.png"


@dataclass
class NyuLabels:
    """One split's ``joint_data.mat``: joints in each view's camera frame (image axes, y down)."""

    path: Path
    joints: np.ndarray  # (3, N, 36, 3) float64 mm, camera frame
    uvd: np.ndarray  # (3, N, 36, 3) pixels and mm
    names: list[str]

    @property
    def num_frames(self) -> int:
        return self.joints.shape[1]


def load_labels(split_dir: Path) -> NyuLabels:
    path = Path(split_dir) / MAT_NAME
    if not path.exists():
        raise BadInputError(path, "missing (every NYU split directory holds joint_data.mat)")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises several types for corrupt files
        raise BadInputError(path, f"cannot be read as a MATLAB file ({type(error).__name__}: {error})") from None
    for key in ("joint_xyz", "joint_uvd", "joint_names"):
        if key not in mat:
            raise BadInputError(path, f"has no {key!r} variable")
    xyz, uvd = np.asarray(mat["joint_xyz"], np.float64), np.asarray(mat["joint_uvd"], np.float64)
    for key, value in (("joint_xyz", xyz), ("joint_uvd", uvd)):
        if value.ndim != 4 or value.shape[0] != VIEWS or value.shape[2:] != (NUM_JOINTS, 3):
            raise BadInputError(path, f"{key} has shape {value.shape}, expected (3, N, 36, 3)")
    if xyz.shape != uvd.shape:
        raise BadInputError(path, f"joint_xyz {xyz.shape} and joint_uvd {uvd.shape} disagree")
    names = [str(np.asarray(n).reshape(-1)[0]) if np.asarray(n).size else "" for n in mat["joint_names"].reshape(-1)]
    return NyuLabels(path=path, joints=nyu_xyz_to_camera(xyz), uvd=uvd, names=names)


@dataclass
class FrameProblem:
    """A frame that cannot be used, the file at fault and why."""

    frame: int  # 1-based
    path: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"frame": self.frame, "path": self.path, "reason": self.reason}


@dataclass
class SplitCheck:
    """Outcome of the fast checks of one split: the frames to build and those that cannot be built."""

    labels: NyuLabels
    frames: list[int]  # 1-based frame numbers that passed
    problems: list[FrameProblem] = field(default_factory=list)


def check_split(split_dir: Path, intrinsics: Intrinsics = NYU_INTRINSICS) -> SplitCheck:
    """Labels against files and image bounds, without decoding any image (that happens per frame)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise BadInputError(split_dir, "not a directory")
    labels = load_labels(split_dir)
    present: list[set[int]] = [set() for _ in range(VIEWS)]
    for entry in split_dir.iterdir():
        match = DEPTH_FILE.match(entry.name)
        if match:
            present[int(match.group(1)) - 1].add(int(match.group(2)))
    last_file = max((max(views) for views in present if views), default=0)
    problems: list[FrameProblem] = []
    if last_file != labels.num_frames:
        reason = (f"has {labels.num_frames} frames but the depth PNGs go up to frame {last_file} "
                  f"(depth_*_{last_file:07d}.png)")
        problems.append(FrameProblem(0, str(labels.path), reason))
        for frame in range(labels.num_frames + 1, last_file + 1):
            problems.append(FrameProblem(frame, str(labels.path), "no labels for this frame"))
    frames = []
    for frame in range(1, labels.num_frames + 1):
        problem = _frame_problem(split_dir, labels, frame, present, intrinsics)
        if problem:
            problems.append(problem)
        else:
            frames.append(frame)
    return SplitCheck(labels=labels, frames=frames, problems=problems)


def _frame_problem(split_dir: Path, labels: NyuLabels, frame: int, present: list[set[int]],
                   intrinsics: Intrinsics) -> FrameProblem | None:
    for view in range(1, VIEWS + 1):
        if frame not in present[view - 1]:
            return FrameProblem(frame, str(depth_path(split_dir, view, frame)), "missing")
    uvd = labels.uvd[:, frame - 1]
    outside = ((uvd[..., 0] < 0) | (uvd[..., 0] >= NYU_IMAGE_WIDTH) | (uvd[..., 1] < 0)
               | (uvd[..., 1] >= NYU_IMAGE_HEIGHT) | (labels.joints[:, frame - 1, :, 2] <= 0))
    if outside.any():
        view, joint = (int(i) for i in np.argwhere(outside)[0])
        u, v, d = uvd[view, joint]
        return FrameProblem(frame, str(labels.path), f"frame {frame} view {view + 1}: joint {joint} at "
                            f"u={u:.1f} v={v:.1f} d={d:.1f} lies outside the {NYU_IMAGE_WIDTH}x{NYU_IMAGE_HEIGHT} image")
    if not np.isfinite(labels.joints[:, frame - 1]).all():
        return FrameProblem(frame, str(labels.path), f"frame {frame}: joints are not finite")
    return None


DEPTH_PNG_MODE_NOTE = "Pillow's mode name: L 8-bit gray, I;16 16-bit gray, RGBA with alpha, P palette"


def read_depth(path: Path) -> np.ndarray:
    """Depth PNG -> (480, 640) float32 mm, 0 where the sensor gave none."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":  # a grayscale PNG would decode as G = B = gray: silently wrong depth
                raise BadInputError(path, f"is a {image.mode} image ({DEPTH_PNG_MODE_NOTE}); NYU depth PNGs are "
                                          "3-channel 8-bit RGB with the depth in G (high byte) and B (low byte)")
            if image.size != (NYU_IMAGE_WIDTH, NYU_IMAGE_HEIGHT):
                raise BadInputError(path, f"is {image.size[0]}x{image.size[1]}, expected "
                                          f"{NYU_IMAGE_WIDTH}x{NYU_IMAGE_HEIGHT}")
            pixels = np.asarray(image.convert("RGB"))
    except BadInputError:
        raise
    except FileNotFoundError:
        raise BadInputError(path, "missing") from None
    except (OSError, SyntaxError, ValueError, zlib.error) as error:
        raise BadInputError(path, f"cannot be decoded as PNG ({error})") from None
    depth = (pixels[..., 1].astype(np.uint16) << 8) | pixels[..., 2]
    depth = depth.astype(np.float32)
    depth[np.isin(depth, MISSING_DEPTH_VALUES)] = 0.0
    return depth


def encode_depth_png(depth_mm: np.ndarray) -> Image.Image:
    """(480, 640) depth mm -> NYU-style RGB image (R unused, G high byte, B low byte); 0 = missing."""
    value = np.clip(np.rint(depth_mm), 0, 65535).astype(np.uint16)
    rgb = np.zeros(value.shape + (3,), np.uint8)
    rgb[..., 1] = value >> 8
    rgb[..., 2] = value & 0xFF
    return Image.fromarray(rgb, mode="RGB")


def backproject(depth: np.ndarray, window: tuple[int, int, int, int] | None = None,
                intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """Valid depth pixels (inside ``window`` = u0, u1, v0, v1) -> camera points (N, 3) at pixel centres."""
    u0, u1, v0, v1 = window or (0, depth.shape[1], 0, depth.shape[0])
    sub = depth[v0:v1, u0:u1]
    vs, us = np.nonzero(sub > 0)
    uvz = np.stack([us + u0 + 0.5, vs + v0 + 0.5, sub[vs, us].astype(np.float64)], axis=-1)
    return unproject(uvz, intrinsics)


def cube_window(center: np.ndarray, crop: Crop, intrinsics: Intrinsics = NYU_INTRINSICS) -> tuple[int, int, int, int]:
    """Image window (u0, u1, v0, v1) that holds every pixel whose ray can meet the crop's cube around ``center``."""
    half = crop.half_mm
    z_near = max(center[2] - half, 1.0)
    z_far = max(center[2] + half, z_near)
    corners = np.array([[center[0] + sx * half, center[1] + sy * half, z]
                        for sx in (-1, 1) for sy in (-1, 1) for z in (z_near, z_far)], dtype=np.float64)
    uv = project(corners, intrinsics)
    us, vs = uv[:, 0], uv[:, 1]
    clamp = lambda value, hi: int(np.clip(value, 0, hi))  # noqa: E731
    return (clamp(np.floor(min(us)), NYU_IMAGE_WIDTH), clamp(np.ceil(max(us)) + 1, NYU_IMAGE_WIDTH),
            clamp(np.floor(min(vs)), NYU_IMAGE_HEIGHT), clamp(np.ceil(max(vs)) + 1, NYU_IMAGE_HEIGHT))


def crop_depth(depth: np.ndarray, center: np.ndarray, crop: Crop, intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """Orthographic S x S crop of the cube around ``center`` (camera frame mm) -> (S, S) float32.

    Valid depth pixels are back-projected, those inside the cube are mapped to crop pixels and
    z-buffered (the nearest point wins, like a depth camera looking along +z); the rest is background.
    """
    size = crop.size
    points = backproject(depth, cube_window(center, crop, intrinsics), intrinsics) - center
    points = points[crop.inside(points)]
    grid = np.full(size * size, np.inf)
    cells = np.floor(crop.to_pixels(points)[:, :2]).astype(np.int64).clip(0, size - 1)
    np.minimum.at(grid, cells[:, 1] * size + cells[:, 0], points[:, 2])
    grid[np.isinf(grid)] = crop.background_depth
    return crop.clip_depth(grid).reshape(size, size).astype(np.float32)
