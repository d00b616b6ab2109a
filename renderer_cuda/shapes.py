"""Procedural closed meshes for tests and benchmarks (the renderer itself knows nothing of hands)."""

from __future__ import annotations

import math

import torch


def sphere_mesh(rings: int = 16, segments: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed unit UV sphere: vertices (2 + (rings-1)*segments, 3) float32, faces (2*segments*(rings-1), 3)
    int64. ``rings`` latitude bands (>= 2), ``segments`` longitude steps (>= 3)."""
    if rings < 2 or segments < 3:
        raise ValueError(f"sphere_mesh needs rings >= 2 and segments >= 3, got {rings}, {segments}")
    theta = torch.arange(1, rings, dtype=torch.float64) * math.pi / rings
    phi = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    ring = torch.stack([torch.sin(theta)[:, None] * torch.cos(phi), torch.sin(theta)[:, None] * torch.sin(phi),
                        torch.cos(theta)[:, None].expand(-1, segments)], dim=-1).reshape(-1, 3)
    vertices = torch.cat([torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), ring,
                          torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)]).float()
    south = vertices.shape[0] - 1
    s = torch.arange(segments)
    nxt = (s + 1) % segments
    faces = [torch.stack([torch.zeros_like(s), 1 + s, 1 + nxt], dim=1)]
    for r in range(rings - 2):
        a, b = 1 + r * segments + s, 1 + r * segments + nxt
        c, d = a + segments, b + segments
        faces += [torch.stack([a, c, b], dim=1), torch.stack([b, c, d], dim=1)]
    last = 1 + (rings - 2) * segments
    faces.append(torch.stack([last + s, torch.full_like(s, south), last + nxt], dim=1))
    return vertices, torch.cat(faces)


def random_blobs(batch: int, blobs: int, size: int, *, rings: int = 8, segments: int = 16,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of meshes of ``blobs`` randomly deformed, overlapping ellipsoids inside a ``size`` x ``size``
    image: vertices (batch, V, 3) float32 in pixel coordinates with depth in [-size, size], faces (F, 3)
    int64 with F = blobs * 2 * segments * (rings - 1)."""
    unit, unit_faces = sphere_mesh(rings, segments)
    nv = unit.shape[0]
    axes = (0.08 + 0.2 * torch.rand(batch, blobs, 1, 3, generator=generator)) * size
    wobble = 1 + 0.15 * torch.sin(3 * unit[:, :1] + 6.28 * torch.rand(batch, blobs, 1, 1, generator=generator))
    centre = torch.rand(batch, blobs, 1, 3, generator=generator) * torch.tensor([0.7, 0.7, 1.0]) * size
    centre += torch.tensor([0.15, 0.15, -0.5]) * size
    vertices = (unit * axes * wobble + centre).reshape(batch, blobs * nv, 3)
    faces = torch.cat([unit_faces + k * nv for k in range(blobs)])
    return vertices.float(), faces
