"""Depth renders of the hand model in the orthographic crop of :mod:`geometry`: the one render path.

:func:`render_mesh_depth` rasterizes the skinned mesh (synthetic training depth in
``train.synthesis``, ``python -m shards inspect`` drawings, the viewer); :func:`render_sphere_depth`
renders spheres with the analytic sphere renderer (the viewer and the training monitor). Both return
crop depth in mm with the crop's background depth (:attr:`geometry.Crop.background_depth`) where the
hand is not.
"""

from __future__ import annotations

import torch

from geometry import Crop
from hand.model import HandModel
from renderer_cuda import rasterize, render_spheres


@torch.no_grad()
def render_mesh_depth(model: HandModel, pose: torch.Tensor, shape: torch.Tensor | None = None, *,
                      crop: Crop = Crop(), offset_mm: torch.Tensor | None = None, forearm: tuple[torch.Tensor, torch.Tensor] | None = None,
                      supersample: int = 1, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Poses (B, 26) and shapes -> (mesh depth (B, S, S) mm, keypoints (B, 41, 3) mm in the crop frame).

    ``offset_mm`` (B, 1, 3) is subtracted from mesh and keypoints alike (a moved crop centre), so image
    and labels stay consistent. ``forearm``: (radii (B, 2) mm, wrist flexion (B,) rad) of a forearm drawn
    with the hand (:meth:`HandModel.forearm`). Renders on the model's device.
    """
    device = model.radii.device
    pose = pose.to(device, torch.float32)
    shape = None if shape is None else shape.to(device, torch.float32)
    vertices, faces = model.mesh(pose, shape)
    if forearm is not None:
        arm, arm_faces = model.forearm(pose, shape, radii_mm=forearm[0].to(device), wrist_flexion=forearm[1].to(device))
        faces = torch.cat([faces.to(device), arm_faces + vertices.shape[1]])
        vertices = torch.cat([vertices, arm], dim=1)
    keypoints = model.keypoints(pose, shape)
    if offset_mm is not None:
        vertices, keypoints = vertices - offset_mm, keypoints - offset_mm
    pixels = crop.to_pixels(vertices).float().contiguous()
    depth = rasterize(pixels, faces.to(device=device, dtype=torch.int32), crop.size, crop.size,
                      background=crop.background_depth, supersample=supersample, backend=backend)
    return depth, keypoints.float()


def render_sphere_depth(centres_mm: torch.Tensor, radii: torch.Tensor, *, crop: Crop = Crop()) -> torch.Tensor:
    """Crop-frame sphere centres (B, N, 3) mm and radii (N,) mm -> (B, S, S) analytic sphere depth."""
    pixels = crop.to_pixels(centres_mm.float())
    return render_spheres(pixels, radii.to(pixels.device), crop.size, crop.size, background=crop.background_depth,
                          pixels_per_mm=1.0 / crop.mm_per_pixel)
