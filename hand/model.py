"""The 26-DOF sphere hand: batched, differentiable forward kinematics and the skinned mesh.

Pose vector (26, radians except translation): ``rot_x, rot_y, rot_z`` (axis-angle about the origin),
``trans_x, trans_y, trans_z`` (mm, applied last), then for each finger in the order index, middle,
ring, little, thumb: ``abduct, flex_1, flex_2, flex_3`` (fingers: MCP abduction and MCP/PIP/DIP
flexion; thumb: CMC abduction and CMC/MCP/IP flexion). See :mod:`hand.anatomy` for the frame.

Shape vector (``shape_dim`` = 17, all 1.0 for the average hand): global scale (scales everything,
sphere radii and mesh thickness included), palm scale (knuckle and palm-sphere positions about the
palm centre), then one length scale per phalanx, fingers in pose order, proximal to distal (the
thumb's first "phalanx" is its metacarpal).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hand import anatomy, skin

NUM_BONES = 16
"""Palm (bone 0) plus three phalanges per finger: bone ``1 + 3 * finger + phalanx``."""
SHAPE_DIM = 2 + 15


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) axis-angle -> (..., 3, 3), smooth through zero."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    # Taylor series below 1e-4 rad keeps gradients finite at the zero rotation.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(rotvec.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * k + b * (k @ k)


def _axis_rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3) rotations about coordinate axis 0 (x) or 2 (z)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    else:
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    return torch.stack(rows, -1).reshape(angle.shape + (3, 3))


class HandModel(nn.Module):
    """Sphere hand with forward kinematics on any device; see the module docstring for parameters.

    Buffers (move with ``.to``): ``radii`` (41,) mm, ``lower``/``upper`` (26,), ``sphere_finger``
    (41,), ``bones`` (25, 2), ``palm_pairs`` (20, 2). ``keypoints`` gives the 41 sphere centres, ``mesh`` the skinned surface.
    """

    num_params = anatomy.NUM_PARAMS
    num_spheres = anatomy.NUM_SPHERES
    shape_dim = SHAPE_DIM

    def __init__(self) -> None:
        super().__init__()
        f32 = torch.float32
        lower, upper = anatomy.joint_limits()
        self.register_buffer("radii", torch.tensor(anatomy.sphere_radii(), dtype=f32))
        self.register_buffer("lower", torch.tensor(lower, dtype=f32))
        self.register_buffer("upper", torch.tensor(upper, dtype=f32))
        self.register_buffer("sphere_finger", torch.tensor(anatomy.sphere_finger()))
        self.register_buffer("bones", torch.tensor(anatomy.bone_pairs()))
        self.register_buffer("palm_pairs", torch.tensor(anatomy.palm_pairs()))
        self.register_buffer("finger_base", torch.tensor(anatomy.FINGER_BASE, dtype=f32))
        self.register_buffer("finger_rest", torch.tensor(anatomy.finger_rest_rotations(), dtype=f32))
        self.register_buffer("phalanx_length", torch.tensor(anatomy.PHALANX_LENGTH, dtype=f32))
        palm = np.concatenate([anatomy.PALM_SPHERES, anatomy.FOREARM_POINTS])[:, :3]
        self.register_buffer("palm_points", torch.tensor(palm, dtype=f32))
        self._register_slots()
        self._register_skin()

    # ------------------------------------------------------------------ construction
    def _register_slots(self) -> None:
        """Where each finger sphere sits: its phalanx and fraction along it."""
        phalanx = torch.zeros(5, 6, dtype=torch.long)
        fraction = torch.zeros(5, 6)
        index = torch.zeros(5, 6, dtype=torch.long)
        for f in range(5):
            for s, (ph, frac) in enumerate(anatomy.finger_slots(f)):
                phalanx[f, s], fraction[f, s] = ph, frac
                index[f, s] = anatomy.finger_sphere_index(f, s)
        self.register_buffer("slot_phalanx", phalanx)
        self.register_buffer("slot_fraction", fraction)
        self.register_buffer("slot_index", index)

    def _register_skin(self) -> None:
        with torch.no_grad():
            rest_points, _ = self._posed_points(torch.zeros(1, self.num_params, dtype=torch.float64),
                                                torch.ones(1, SHAPE_DIM, dtype=torch.float64))
        points = rest_points[0].double().numpy()
        radii = np.concatenate([anatomy.sphere_radii(), anatomy.FOREARM_POINTS[:, 3]])
        rest_rot = np.concatenate([np.eye(3)[None], np.repeat(anatomy.finger_rest_rotations(), 3, axis=0)])
        layout = skin.build_layout(self._skin_parts(), points, radii, rest_rot)
        self.register_buffer("skin_bone", torch.tensor(layout.bone))
        self.register_buffer("skin_point0", torch.tensor(layout.point0))
        self.register_buffer("skin_point1", torch.tensor(layout.point1))
        self.register_buffer("skin_weight", torch.tensor(layout.weight, dtype=torch.float32))
        self.register_buffer("skin_offset", torch.tensor(layout.offset, dtype=torch.float32))
        self.register_buffer("faces", torch.tensor(layout.faces))

    @staticmethod
    def _skin_parts() -> list[tuple[int, int, int]]:
        """Capsules (point0, point1, bone): finger chains, the palm web, wrist and forearm stub.

        No capsules join neighbouring knuckles: the gaps between finger bases stay open, as the
        spheres leave them.
        """
        parts = []
        for f in range(5):
            slots = anatomy.finger_slots(f)
            for s in range(5):
                bone = 1 + 3 * f + slots[s + 1][0]  # both spheres are rigid with this phalanx
                parts.append((anatomy.finger_sphere_index(f, s), anatomy.finger_sphere_index(f, s + 1), bone))
        knuckle = [anatomy.finger_sphere_index(f, 5) for f in range(5)]  # index, middle, ring, little, CMC
        ix, md, rg, lt, cmc = knuckle
        little_wrist, thumb_wrist = anatomy.WRIST_LITTLE_SIDE, anatomy.WRIST_THUMB_SIDE
        # 40 hypothenar, 37 thenar, 35 wrist centre; forearm points 41 (thumb side), 42 (little side), 43.
        palm_web = [(lt, 39), (rg, 39), (rg, 32), (md, 32), (md, 33), (ix, 33),
                    (39, 32), (32, 33), (39, 40), (32, 34), (33, 38), (32, 40), (32, 38), (40, 34), (34, 38),
                    (40, 36), (34, 36), (38, 37), (34, 37), (36, 37), (36, 35), (40, little_wrist),
                    (37, thumb_wrist), (little_wrist, 35), (35, thumb_wrist), (cmc, 37), (cmc, 38),
                    (cmc, thumb_wrist), (thumb_wrist, 41), (little_wrist, 42), (35, 43)]
        return parts + [(a, b, 0) for a, b in palm_web]

    # ------------------------------------------------------------------ kinematics
    def _check(self, pose: torch.Tensor, shape: torch.Tensor | None) -> torch.Tensor:
        if pose.ndim != 2 or pose.shape[1] != self.num_params:
            raise ValueError(f"pose must be (B, {self.num_params}), got {tuple(pose.shape)}")
        if shape is None:
            return torch.ones(pose.shape[0], SHAPE_DIM, dtype=pose.dtype, device=pose.device)
        if shape.shape != (pose.shape[0], SHAPE_DIM):
            raise ValueError(f"shape must be (B, {SHAPE_DIM}) = ({pose.shape[0]}, {SHAPE_DIM}), "
                             f"got {tuple(shape.shape)}")
        return shape.to(pose.dtype)

    def _posed_points(self, pose: torch.Tensor, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed points (B, 44, 3): 41 spheres then 3 forearm points; bone rotations (B, 16, 3, 3)."""
        dtype = pose.dtype
        batch = pose.shape[0]
        scale, palm_scale = shape[:, 0, None], shape[:, 1, None]
        lengths = self.phalanx_length.to(dtype) * shape[:, 2:].reshape(batch, 5, 3) * scale[:, :, None]
        local = torch.zeros(batch, 44, 3, dtype=dtype, device=pose.device)
        local = local.index_copy(1, torch.arange(30, 44, device=pose.device),
                                 self.palm_points.to(dtype)[None] * (scale * palm_scale)[:, :, None])
        rotations = [torch.eye(3, dtype=dtype, device=pose.device).expand(batch, 3, 3)]
        angles = pose[:, 6:].reshape(batch, 5, 4)
        down = torch.tensor([0.0, -1.0, 0.0], dtype=dtype, device=pose.device)
        for f in range(5):
            joint = self.finger_base[f].to(dtype) * (scale * palm_scale)
            rot = self.finger_rest[f].to(dtype) @ _axis_rotation(angles[:, f, 0], 2)
            joints, rots = [], []
            for ph in range(3):
                rot = rot @ _axis_rotation(angles[:, f, 1 + ph], 0)
                joints.append(joint)
                rots.append(rot)
                joint = joint + (rot @ down) * lengths[:, f, ph, None]
            joints, rots = torch.stack(joints, 1), torch.stack(rots, 1)  # (B, 3, 3) and (B, 3, 3, 3)
            rotations += rots.unbind(1)
            ph, frac = self.slot_phalanx[f], self.slot_fraction[f].to(dtype)
            along = (rots[:, ph] @ down) * (lengths[:, f, ph] * frac)[..., None]
            local = local.index_copy(1, self.slot_index[f], joints[:, ph] + along)
        global_rot = axis_angle_to_matrix(pose[:, :3])
        points = local @ global_rot.transpose(1, 2) + pose[:, None, 3:6]
        bone_rot = global_rot[:, None] @ torch.stack(rotations, 1)
        return points, bone_rot

    def keypoints(self, pose: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """Sphere centres (B, 41, 3) mm in the crop frame for pose (B, 26) and optional shape (B, 17)."""
        points, _ = self._posed_points(pose, self._check(pose, shape))
        return points[:, :self.num_spheres]

    def sphere_radii(self, shape: torch.Tensor | None = None) -> torch.Tensor:
        """Radii scaled by the global scale: (41,) without a shape, (B, 41) with one."""
        if shape is None:
            return self.radii
        return self.radii[None] * shape[:, :1].to(self.radii.dtype)

    def mesh(self, pose: torch.Tensor, shape: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Skinned surface: vertices (B, V, 3) mm in the crop frame and faces (F, 3) long."""
        shape = self._check(pose, shape)
        points, bone_rot = self._posed_points(pose, shape)
        w = self.skin_weight.to(pose.dtype)[None, :, None]
        centre = (1 - w) * points[:, self.skin_point0] + w * points[:, self.skin_point1]
        offset = self.skin_offset.to(pose.dtype) * shape[:, 0, None, None]
        turned = (bone_rot[:, self.skin_bone] @ offset[..., None])[..., 0]
        return centre + turned, self.faces

    def forearm(self, pose: torch.Tensor, shape: torch.Tensor | None = None, *, radii_mm: torch.Tensor,
                length_mm: float = 300.0, wrist_flexion: torch.Tensor | None = None,
                segments: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """A forearm: a closed elliptic cylinder from the wrist centre (``PALM_6``) along the arm side (+y of
        the hand frame), bent by ``wrist_flexion`` (B,) rad about the hand's x axis. ``radii_mm`` (B, 2) are
        its half-widths across the palm and through it (0 collapses it: nothing is drawn). Returns vertices
        (B, 2 * segments + 2, 3) mm in the crop frame and faces (4 * segments, 3) long."""
        shape = self._check(pose, shape)
        dtype, device = pose.dtype, pose.device
        wrist_index = anatomy.NYU_JOINT_NAMES.index("PALM_6") - 30  # palm_points holds spheres 30.. in order
        wrist = self.palm_points[wrist_index].to(dtype) * (shape[:, 0] * shape[:, 1])[:, None]  # (B, 3)
        angles = torch.arange(segments, dtype=dtype, device=device) * (2 * math.pi / segments)
        radii = radii_mm.to(dtype)
        ring = torch.stack([radii[:, :1] * angles.cos(), torch.zeros_like(radii[:, :1] * angles),
                            radii[:, 1:] * angles.sin()], dim=-1)  # (B, segments, 3)
        bend = torch.zeros(pose.shape[0], dtype=dtype, device=device) if wrist_flexion is None else wrist_flexion
        turn = _axis_rotation(bend.to(dtype), 0).transpose(1, 2)  # row vectors: v @ turn rotates v
        along = torch.tensor([[0.0, length_mm, 0.0]], dtype=dtype, device=device)
        near_end = wrist[:, None] + torch.tensor([0.0, -8.0, 0.0], dtype=dtype, device=device)  # (B, 1, 3)
        # Vertices: near ring, far ring, near cap centre, far cap centre.
        local = torch.cat([near_end + ring, wrist[:, None] + (ring + along) @ turn, near_end,
                           wrist[:, None] + along @ turn], dim=1)
        vertices = local @ axis_angle_to_matrix(pose[:, :3]).transpose(1, 2) + pose[:, None, 3:6]
        i = torch.arange(segments, device=device)
        j = (i + 1) % segments
        near_cap, far_cap = torch.full_like(i, 2 * segments), torch.full_like(i, 2 * segments + 1)
        faces = torch.cat([torch.stack(f, dim=1) for f in ((i, j, segments + i), (j, segments + j, segments + i),
                                                              (near_cap, j, i), (far_cap, segments + i, segments + j))])
        return vertices, faces

    def clamp(self, pose: torch.Tensor) -> torch.Tensor:
        """Pose with finger angles clamped into the joint limits (global parameters untouched)."""
        return torch.maximum(torch.minimum(pose, self.upper.to(pose.dtype)), self.lower.to(pose.dtype))
