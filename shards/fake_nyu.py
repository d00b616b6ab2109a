"""A small stand-in for the NYU data set, in NYU's layout, rendered from the hand model.

Three fixed depth cameras look at a hand held in front of a person and a wall (view 1 frontal, views 2 and
3 from the sides), like NYU's rig. The person (``body``, on by default) is a torso 150-350 mm behind the
palm, a head above or beside the hand and an upper arm from the shoulder to the forearm's far end, placed
anew for each frame: the label-free crop centre must find the hand in front of them, as in a real frame. The hand has a shape unlike the model's default (larger, longer fingers; a smaller
second test subject when the test split is large), a forearm leaving the crop cube, a wall behind, and
Kinect-like noise (depth-dependent jitter, mm quantisation, blob holes, dropout at depth edges), and
poses from a generator of its own (:func:`articulation`, not ``hand.sample_poses``), so it has a real
domain gap to the synthetic renders. Labels get a little annotation noise, and
``label_outliers`` makes some frames' side-view labels wrong, as a badly labelled frame would be.

Besides NYU's files, the root holds ``fake_nyu.npz``, what the generator knows and NYU does not: the
camera poses, per-frame poses/shapes, which joints each view sees, which labels were corrupted.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image
from scipy.ndimage import minimum_filter
from scipy.spatial.transform import Rotation
from tqdm import tqdm

import hand
from renderer_cuda import rasterize
from shards.nyu import (MAT_NAME, NUM_JOINTS, PALM_JOINT, NYU_IMAGE_HEIGHT, NYU_IMAGE_WIDTH, VIEWS, depth_path, encode_depth_png,
                        nyu_xyz_to_camera)
from shards.nyu_protocol import NYU_INTRINSICS, NYU_TEST_FRAMES, SUBJECT_2_FIRST_FRAME
from shards.nyu import project_nyu as project

RECORD_NAME = "fake_nyu.npz"
SCENE_CENTER = np.array([0.0, 0.0, 800.0])  # where the cameras look, in camera-1 (= world) coordinates
# (yaw about the vertical axis, pitch, distance from SCENE_CENTER) per view; view 1 sits at the origin.
CAMERA_RIG = ((0.0, 0.0, 800.0), (72.0, 6.0, 760.0), (-66.0, -4.0, 870.0))
SUBJECT_SHAPES = {1: (1.12, 1.07), 2: (0.93, 1.0)}  # (global scale, bone length scale)
NYU_TEST_SUBJECT_CHANGE = (SUBJECT_2_FIRST_FRAME - 1) / NYU_TEST_FRAMES  # NYU test's share of its first subject
FOREARM_LENGTH_MM = 300.0
BODY_STREAM = 1  # the person's random stream: [seed, split, frame, BODY_STREAM]
# The fake subject's own joint range (26,): the hand model's limits before issue 13 widened some of them, kept so
# that the fake data set does not change when the model's limits do.
SUBJECT_LOWER = np.concatenate([np.full(6, -np.inf), np.array([
    [-0.35, -0.35, -0.1, -0.2], [-0.35, -0.35, -0.1, -0.2], [-0.45, -0.35, -0.1, -0.2], [-0.7, -0.35, -0.1, -0.2],
    [-0.6, -0.4, -0.3, -0.3]]).reshape(-1)])
SUBJECT_UPPER = np.concatenate([np.full(6, np.inf), np.array([
    [0.6, 1.65, 1.9, 1.5], [0.35, 1.65, 1.9, 1.5], [0.3, 1.65, 1.9, 1.5], [0.3, 1.65, 1.9, 1.5],
    [0.6, 1.0, 1.2, 1.5]]).reshape(-1)])


@dataclass(frozen=True)
class FakeNyuConfig:
    """What ``python -m shards fake-nyu`` makes."""

    train: int = 48  # frames in train/
    test: int = 16  # frames in test/
    seed: int = 0
    label_noise_mm: float = 0.5  # Gaussian annotation noise per coordinate
    label_outliers: float = 0.0  # fraction of frames whose view-2 or view-3 labels are shifted 25..50 mm
    sensor_noise: bool = True  # False: clean depth, only mm quantisation
    body: bool = True  # a person (torso, head, upper arm) behind the hand; False: hand, forearm and wall only


def camera_to_world(view: int) -> tuple[np.ndarray, np.ndarray]:
    """View 0..2 -> rotation M and origin o with world point = M @ camera point + o."""
    yaw, pitch, distance = CAMERA_RIG[view]
    rotation = Rotation.from_euler("YX", [yaw, pitch], degrees=True).as_matrix()
    origin = SCENE_CENTER - distance * rotation[:, 2]
    return rotation, origin


def camera_poses() -> np.ndarray:
    """(3, 4, 4) camera-k -> camera-1 transforms of the rig (what ``--cameras fixed`` should recover)."""
    out = np.stack([np.eye(4)] * VIEWS)
    for view in range(VIEWS):
        out[view, :3, :3], out[view, :3, 3] = camera_to_world(view)
    return out


def world_to_camera(points: np.ndarray, view: int) -> np.ndarray:
    rotation, origin = camera_to_world(view)
    return (points - origin) @ rotation


def subject_of(split: str, frame_index: int, frames: int) -> int:
    if split == "test" and frames >= 100 and frame_index >= round(frames * NYU_TEST_SUBJECT_CHANGE):
        return 2
    return 1


def shape_vector(subject: int, shape_dim: int) -> torch.Tensor:
    global_scale, bone_scale = SUBJECT_SHAPES[subject]
    shape = torch.full((1, shape_dim), bone_scale)
    shape[0, 0] = global_scale
    return shape


def arm_rotation(rng: np.random.Generator) -> np.ndarray:
    """Global hand orientation: forearm down and away from camera 1, random roll and tilt."""
    roll = rng.uniform(-80, 80)
    pitch = 45 + rng.uniform(-20, 20)
    tilt = rng.uniform(-30, 30)
    return Rotation.from_euler("ZXY", [tilt, pitch, roll], degrees=True).as_matrix()


def articulation(rng: np.random.Generator, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(26,) pose of the fake subject, drawn from a generator of its own (not ``hand.sample_poses``).

    A real hand moves in synergies: one grasp level closes all four fingers together, each finger
    deviating from it; the distal joint follows the middle one (about 2/3 of its flexion); fingers spread
    only while open; counting gestures stretch some fingers out of a closed hand; the thumb opposes more
    the more the hand closes. Global rotation and translation are left at zero (the caller sets them).
    """
    grasp = rng.beta(0.6, 0.6)
    flex = np.clip(grasp + rng.normal(0.0, 0.18, 4), 0.0, 1.0)
    if rng.random() < 0.35:  # a counting gesture: the first n fingers (index first) out, the rest closed
        extended = int(rng.integers(1, 4))
        flex[:extended] = rng.uniform(0.0, 0.15, extended)
        flex[extended:] = np.maximum(flex[extended:], rng.uniform(0.7, 1.0, 4 - extended))
    spread = rng.uniform(-0.05, 0.3) * (1.0 - flex.mean())
    pose = np.zeros(26)
    for finger in range(4):
        mcp = 1.45 * flex[finger] + rng.normal(0.0, 0.08)
        pip = 1.7 * flex[finger] + rng.normal(0.0, 0.1)
        dip = 0.66 * pip + rng.normal(0.0, 0.05)
        abduct = (1.0, 0.2, -0.5, -1.1)[finger] * spread + rng.normal(0.0, 0.04)
        pose[6 + 4 * finger:10 + 4 * finger] = abduct, mcp, pip, dip
    opposition = np.clip(0.7 * grasp + rng.normal(0.15, 0.25), 0.0, 1.0)
    pose[22:26] = (rng.uniform(-0.3, 0.4), 0.9 * opposition - 0.2 + rng.normal(0.0, 0.1),
                   0.5 * opposition + rng.normal(0.0, 0.15), rng.uniform(0.0, 1.1))
    return np.clip(pose, lower, upper)


def ellipsoid(center: np.ndarray, half_axes: np.ndarray, rotation: np.ndarray = np.eye(3), rings: int = 10,
              segments: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A closed ellipsoid mesh: vertices (V, 3) = center + rotation @ (half_axes * unit sphere), faces (F, 3)."""
    polar = np.linspace(0.0, np.pi, rings + 1)[1:-1]
    azimuth = np.arange(segments) * (2 * np.pi / segments)
    sphere = np.stack([np.outer(np.sin(polar), np.cos(azimuth)), np.outer(np.cos(polar), np.ones(segments)),
                       np.outer(np.sin(polar), np.sin(azimuth))], axis=-1).reshape(-1, 3)
    sphere = np.concatenate([sphere, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])  # the two poles
    j = np.arange(segments)
    faces = []
    for ring in range(rings - 2):  # quads between neighbouring rings, two triangles each
        a, b = ring * segments + j, ring * segments + (j + 1) % segments
        faces += [np.stack([a, b, a + segments], 1), np.stack([b, b + segments, a + segments], 1)]
    top, bottom, last = len(sphere) - 2, len(sphere) - 1, (rings - 2) * segments
    faces += [np.stack([np.full(segments, top), (j + 1) % segments, j], 1),
              np.stack([np.full(segments, bottom), last + j, last + (j + 1) % segments], 1)]
    return center + (sphere * half_axes) @ rotation.T, np.concatenate(faces)


def person(palm: np.ndarray, elbow: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The person the hand belongs to, in world (camera-1) coordinates mm: vertices (V, 3), faces (F, 3).

    The torso's front lies 150-350 mm behind the palm and to one side of it; the hand is in front of the chest
    (head above it) or raised (head beside it); an upper arm joins the shoulder on the hand's side to the
    forearm's far end (``elbow``). Sizes follow the hand's ``scale``.
    """
    torso_axes = scale * rng.uniform([140.0, 240.0, 85.0], [175.0, 290.0, 115.0])
    side = rng.choice([-1.0, 1.0])  # which side of the torso the hand is held on (from camera 1)
    behind = rng.uniform(150.0, 350.0)
    torso = palm + np.array([-side * rng.uniform(60.0, 220.0), rng.uniform(60.0, 380.0), behind + torso_axes[2]])
    lean = Rotation.from_euler("ZY", rng.uniform([-8.0, -25.0], [8.0, 25.0]), degrees=True).as_matrix()
    head_axes = scale * rng.uniform([72.0, 95.0, 85.0], [85.0, 112.0, 100.0])
    head = torso + lean @ np.array([rng.uniform(-30.0, 30.0), -torso_axes[1] - head_axes[1] - 25.0,
                                    rng.uniform(-20.0, 20.0)])
    shoulder = torso + lean @ np.array([side * (torso_axes[0] - 25.0), -(torso_axes[1] - 55.0), 0.0])
    upper_arm = elbow - shoulder
    length = np.linalg.norm(upper_arm)
    axis = upper_arm / max(length, 1e-6)  # the ellipsoid's long (y) axis runs shoulder -> elbow
    across = np.cross(axis, [0.0, 0.0, 1.0])
    across = across / np.linalg.norm(across) if np.linalg.norm(across) > 1e-6 else np.array([1.0, 0.0, 0.0])
    arm_frame = np.stack([across, axis, np.cross(across, axis)], axis=1)
    arm_radius = 40.0 * scale
    parts = [ellipsoid(torso, torso_axes, lean), ellipsoid(head, head_axes, lean),
             ellipsoid((shoulder + elbow) / 2, np.array([arm_radius, length / 2 + arm_radius, arm_radius]), arm_frame)]
    vertices, faces, first = [], [], 0
    for part_vertices, part_faces in parts:
        vertices.append(part_vertices)
        faces.append(part_faces + first)
        first += len(part_vertices)
    return np.concatenate(vertices), np.concatenate(faces)


_PIXEL_CENTRES = np.mgrid[0:NYU_IMAGE_HEIGHT, 0:NYU_IMAGE_WIDTH] + 0.5


class FakeScene:
    """Renders frames of the fake rig: hand model mesh + forearm (+ person) + wall, per view."""

    def __init__(self, config: FakeNyuConfig) -> None:
        self.config = config
        self.model = hand.HandModel()
        self.radii = self.model.radii.detach().numpy().astype(np.float64)

    def frame(self, split: str, index: int, frames: int) -> dict[str, np.ndarray]:
        """Everything about one frame; depth (3, 480, 640) mm with 0 = missing, joints camera frames."""
        split_id = 0 if split == "train" else 1
        rng = np.random.default_rng([self.config.seed, split_id, index])
        pose = torch.from_numpy(articulation(rng, SUBJECT_LOWER, SUBJECT_UPPER))[None].float()
        rotation = arm_rotation(rng)
        pose[0, :3] = torch.from_numpy(Rotation.from_matrix(rotation).as_rotvec()).float()
        pose[0, 3:6] = 0.0
        subject = subject_of(split, index, frames)
        shape = shape_vector(subject, self.model.shape_dim)
        with torch.no_grad():
            vertices, faces = self.model.mesh(pose, shape)
            keypoints = self.model.keypoints(pose, shape)[0].double().numpy()
            scale = SUBJECT_SHAPES[subject][0]
            arm_vertices, arm_faces = self.model.forearm(pose, shape, radii_mm=torch.tensor([[31.0, 21.0]]) * scale,
                                                         length_mm=FOREARM_LENGTH_MM)
        offset = SCENE_CENTER + rng.uniform([-40, -60, -60], [40, 20, 60])
        world = np.concatenate([vertices[0].double().numpy(), arm_vertices[0].double().numpy()]) + offset
        all_faces = np.concatenate([faces.numpy(), arm_faces.numpy() + vertices.shape[1]])
        joints_world = keypoints + offset
        if self.config.body:  # its own generator: the hand, labels and sensor noise stay those of --no-body
            body_rng = np.random.default_rng([self.config.seed, split_id, index, BODY_STREAM])
            elbow = arm_vertices[0, -1].double().numpy() + offset  # the forearm's far cap centre
            body_vertices, body_faces = person(joints_world[PALM_JOINT], elbow, scale, body_rng)
            all_faces = np.concatenate([all_faces, body_faces + len(world)])
            world = np.concatenate([world, body_vertices])
        out = {"pose": pose[0].numpy(), "shape": shape[0].numpy(), "offset": offset, "subject": subject}
        depth, clean, joints, visible = [], [], [], []
        for view in range(VIEWS):
            camera_joints = world_to_camera(joints_world, view)
            surface = self._render(world_to_camera(world, view), all_faces)
            clean.append(surface)
            visible.append(self._visible(surface, camera_joints, SUBJECT_SHAPES[subject][0]))
            depth.append(self._sensor(surface, view, rng))
            joints.append(camera_joints[:NUM_JOINTS])
        out.update(depth=np.stack(depth), clean=np.stack(clean), joints=np.stack(joints), visible=np.stack(visible))
        return out

    def _render(self, camera_vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(project(camera_vertices)).float()[None]
        image = rasterize(pixels, torch.from_numpy(faces).int(), NYU_IMAGE_HEIGHT, NYU_IMAGE_WIDTH,
                          background=0.0, perspective=True)
        return image[0].numpy().astype(np.float64)

    def _visible(self, surface: np.ndarray, joints: np.ndarray, scale: float) -> np.ndarray:
        """A joint is visible when, within 4 px of its pixel (a 64-px crop cell at any offset), the nearest
        surface is its own sphere's front: nothing lies more than 3 mm before it."""
        uvz = project(joints[:NUM_JOINTS])
        i = np.clip(uvz[:, 1].astype(int), 0, NYU_IMAGE_HEIGHT - 1)
        j = np.clip(uvz[:, 0].astype(int), 0, NYU_IMAGE_WIDTH - 1)
        nearest = minimum_filter(np.where(surface > 0, surface, np.inf), size=9)[i, j]
        return np.isfinite(nearest) & (nearest >= uvz[:, 2] - scale * self.radii[:NUM_JOINTS] - 3.0)

    def _sensor(self, surface: np.ndarray, view: int, rng: np.random.Generator) -> np.ndarray:
        """Wall behind, then Kinect-like noise; returns mm depth with 0 where the sensor gives none."""
        rows, cols = _PIXEL_CENTRES
        normal = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.25, -0.05), 1.0])
        rays = ((cols - NYU_INTRINSICS.cx) / NYU_INTRINSICS.fx, (rows - NYU_INTRINSICS.cy) / NYU_INTRINSICS.fy)
        wall = rng.uniform(1350, 1550) / (normal[0] * rays[0] + normal[1] * rays[1] + normal[2])
        depth = np.where(surface > 0, np.minimum(surface, wall), wall)
        if not self.config.sensor_noise:
            return depth
        depth = depth + rng.normal(size=depth.shape) * (0.4 + 1.5e-6 * depth**2)
        edges = np.zeros(depth.shape, bool)
        edges[:, 1:] |= np.abs(np.diff(depth, axis=1)) > 25
        edges[1:, :] |= np.abs(np.diff(depth, axis=0)) > 25
        edges[:, :-1] |= edges[:, 1:].copy()
        holes = edges & (rng.random(depth.shape) < 0.6)
        blobs = np.asarray(Image.fromarray(rng.random((24, 32)).astype(np.float32), mode="F")
                           .resize((NYU_IMAGE_WIDTH, NYU_IMAGE_HEIGHT), Image.BILINEAR))
        holes |= blobs > 0.93
        holes |= rng.random(depth.shape) < 0.004
        depth[holes] = 0.0
        return depth


def generate(out: Path, config: FakeNyuConfig, progress: bool = True) -> dict[str, object]:
    """Write ``out/train`` and ``out/test`` in NYU's layout and ``out/fake_nyu.npz``."""
    scene = FakeScene(config)
    record: dict[str, np.ndarray] = {"camera_poses": camera_poses()}
    for split, frames in (("train", config.train), ("test", config.test)):
        split_dir = Path(out) / split
        split_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([config.seed, 7, 0 if split == "train" else 1])
        joints, poses, shapes, visible = [], [], [], []
        for index in tqdm(range(frames), desc=f"fake-nyu {split}", unit="frame", disable=not progress):
            frame = scene.frame(split, index, frames)
            for view in range(VIEWS):
                encode_depth_png(frame["depth"][view]).save(depth_path(split_dir, view + 1, index + 1), compress_level=1)
                _write_distractor(split_dir / f"rgb_{view + 1}_{index + 1:07d}.png")
            joints.append(frame["joints"])
            poses.append(frame["pose"])
            shapes.append(frame["shape"])
            visible.append(frame["visible"])
        joints_arr = np.stack(joints, axis=1) if frames else np.zeros((VIEWS, 0, NUM_JOINTS, 3))
        labelled, outliers = _label(joints_arr, config, rng)
        _write_mat(split_dir / MAT_NAME, labelled)
        record.update({f"{split}_poses": np.array(poses), f"{split}_shapes": np.array(shapes),
                       f"{split}_visible": np.stack(visible, axis=1) if frames else np.zeros((VIEWS, 0, NUM_JOINTS), bool),
                       f"{split}_joints_true": joints_arr, f"{split}_outliers": outliers})
    np.savez(Path(out) / RECORD_NAME, **record)
    (Path(out) / "fake_nyu.json").write_text(json.dumps({"config": asdict(config), "camera_rig": CAMERA_RIG}, indent=2))
    return record


def _label(joints: np.ndarray, config: FakeNyuConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """True joints (3, N, 36, 3) -> labels with annotation noise; outliers[i] = view (1..2) shifted, or -1."""
    labelled = joints + rng.normal(scale=config.label_noise_mm, size=joints.shape)
    outliers = np.full(joints.shape[1], -1)
    for index in np.flatnonzero(rng.random(joints.shape[1]) < config.label_outliers):
        view = int(rng.integers(1, VIEWS))
        direction = rng.normal(size=3)
        labelled[view, index] += direction / np.linalg.norm(direction) * rng.uniform(25, 50)
        outliers[index] = view
    return labelled, outliers


def _write_mat(path: Path, joints_camera: np.ndarray) -> None:
    """NYU's variables: joint_names as a 1x36 cell array, joint_xyz y-up, joint_uvd (pixels, depth)."""
    names = np.empty((1, NUM_JOINTS), dtype=object)
    for i, name in enumerate(hand.NYU_JOINT_NAMES):
        names[0, i] = name
    scipy.io.savemat(str(path), {"joint_names": names, "joint_xyz": nyu_xyz_to_camera(joints_camera),
                                 "joint_uvd": project(joints_camera)}, do_compression=True)


def _write_distractor(path: Path) -> None:
    """Stand-in for NYU's ``rgb_*`` files, which the shard builder must ignore."""
    global _DISTRACTOR
    if _DISTRACTOR is None:
        buffer = io.BytesIO()
        Image.new("RGB", (NYU_IMAGE_WIDTH, NYU_IMAGE_HEIGHT), (96, 80, 72)).save(buffer, format="PNG")
        _DISTRACTOR = buffer.getvalue()
    path.write_bytes(_DISTRACTOR)


_DISTRACTOR: bytes | None = None
