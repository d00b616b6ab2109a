"""The procedural skinned surface: tapered capsules rigidly attached to bones, and a winding number.

The surface is a union of closed, outward-oriented parts: one tapered capsule (the convex hull of two
spheres) per pair of neighbouring spheres along each finger, a web of capsules between the palm
spheres and knuckles, and three capsules for the wrist and forearm stub. Every vertex belongs to one
bone and is stored as ``(1 - w) * point[i0] + w * point[i1] + R_bone @ offset``, so posing the points
and bone rotations by forward kinematics poses the surface (rigid skinning; a sphere on a joint centre
belongs to both bones, so parts meet like ball joints when fingers bend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

AROUND = 12
"""Vertices around each capsule ring."""
CAP_RINGS = 3
"""Rings per hemispherical cap (besides the pole)."""


@dataclass
class SkinLayout:
    """Rest description of the surface: per vertex its bone, the two points it follows and its offset."""

    bone: np.ndarray      # (V,) int64 bone index (0 = palm)
    point0: np.ndarray    # (V,) int64 index into the posed points
    point1: np.ndarray    # (V,) int64
    weight: np.ndarray    # (V,) float64 blend towards point1
    offset: np.ndarray    # (V, 3) float64 offset in the bone's frame at unit global scale, mm
    faces: np.ndarray     # (F, 3) int64, outward (counter-clockwise seen from outside)


def _unit_frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(axis, e1)


def capsule(c0: np.ndarray, r0: float, c1: np.ndarray, r1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tapered capsule = convex hull of two spheres, as (weights (V,), offsets (V,3), faces (F,3)).

    Vertex k lies at ``c0 + w_k (c1 - c0) + offsets_k``. Caps meet the cone along the circles where
    the common tangent touches each sphere (polar angle ``acos(sin(alpha))`` from the axis).
    """
    length = float(np.linalg.norm(c1 - c0))
    axis = (c1 - c0) / length
    e1, e2 = _unit_frame(axis)
    sin_alpha = float(np.clip((r0 - r1) / length, -0.9, 0.9))
    tangent = np.arccos(sin_alpha)
    # Polar angles from +axis: cap 1 from the pole at 0 to the tangent circle, cap 0 on to pi.
    betas = np.concatenate([tangent * np.arange(1, CAP_RINGS + 1) / CAP_RINGS,
                            tangent + (np.pi - tangent) * np.arange(0, CAP_RINGS) / CAP_RINGS])
    on_end1 = np.arange(2 * CAP_RINGS) < CAP_RINGS
    psi = 2 * np.pi * np.arange(AROUND) / AROUND
    ring_dirs = np.cos(psi)[:, None] * e1 + np.sin(psi)[:, None] * e2
    weights, offsets = [1.0], [r1 * axis]
    for beta, end1 in zip(betas, on_end1):
        radius = r1 if end1 else r0
        dirs = np.cos(beta) * axis + np.sin(beta) * ring_dirs
        weights += [1.0 if end1 else 0.0] * AROUND
        offsets += list(radius * dirs)
    weights.append(0.0)
    offsets.append(-r0 * axis)
    faces = _capsule_faces(len(betas))
    return np.array(weights), np.array(offsets), faces


def _capsule_faces(rings: int) -> np.ndarray:
    """Faces of a pole-rings-pole grid; vertex 0 the +axis pole, last the -axis pole."""
    faces = []
    last = 1 + rings * AROUND
    for k in range(AROUND):
        k1 = (k + 1) % AROUND
        faces.append((0, 1 + k, 1 + k1))
        for ring in range(rings - 1):
            a, b = 1 + ring * AROUND, 1 + (ring + 1) * AROUND
            faces.append((a + k, b + k, b + k1))
            faces.append((a + k, b + k1, a + k1))
        base = 1 + (rings - 1) * AROUND
        faces.append((base + k, last, base + k1))
    return np.array(faces, dtype=np.int64)


def build_layout(parts: list[tuple[int, int, int]], points: np.ndarray, radii: np.ndarray,
                 bone_rotations: np.ndarray) -> SkinLayout:
    """Skin layout of capsules ``(point0, point1, bone)`` around rest points (P,3) with radii (P,).

    ``bone_rotations`` (bones, 3, 3) are the bones' rest rotations; offsets are stored in bone frames
    so they turn with their bone.
    """
    bone, point0, point1, weight, offset, faces = [], [], [], [], [], []
    count = 0
    for i0, i1, b in parts:
        w, off, f = capsule(points[i0], radii[i0], points[i1], radii[i1])
        bone.append(np.full(len(w), b))
        point0.append(np.full(len(w), i0))
        point1.append(np.full(len(w), i1))
        weight.append(w)
        offset.append(off @ bone_rotations[b])  # R^T applied to each row: world -> bone frame
        faces.append(f + count)
        count += len(w)
    return SkinLayout(np.concatenate(bone), np.concatenate(point0), np.concatenate(point1),
                      np.concatenate(weight), np.concatenate(offset), np.concatenate(faces))


def winding_number(vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Generalised winding number of query points w.r.t. a triangle surface (one mesh, no batch).

    vertices (V,3), faces (F,3), points (P,3) -> (P,). For a union of closed outward parts it counts
    the parts that contain a point (>= 1 inside, 0 outside); Van Oosterom-Strackee solid angles.
    """
    tri = vertices[faces]                                   # (F, 3, 3)
    rel = tri[None] - points[:, None, None, :]              # (P, F, 3, 3)
    a, b, c = rel[:, :, 0], rel[:, :, 1], rel[:, :, 2]
    la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
    det = (a * torch.cross(b, c, dim=-1)).sum(-1)
    den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
    return (2 * torch.atan2(det, den)).sum(-1) / (4 * np.pi)
