"""Crop centres from depth alone (``--center com``): no labels are read.

1. The hand is the object nearest the camera: take the nearest robust depth and the points up to a cube
   deep behind it (the wall and body further back drop out).
2. Mean shift with a cube-sized ball from the centre of the nearest points settles on hand + forearm.
3. The forearm leaves the ball; the points near the ball's surface give the arm direction. The palm
   centre is found by mean shift with a hand-sized ball started at the free (hand) end, which keeps the
   forearm out, then moved half a hand thickness back (the camera sees the palm's front surface).
"""

from __future__ import annotations

import numpy as np

from shards.geometry import NYU_INTRINSICS, Intrinsics
from shards.nyu import backproject

NEAREST_RANK = 40  # ignore this many nearest points: flying pixels and noise
SHELL = 0.8  # points beyond this fraction of the ball radius are where the arm leaves
HAND_RADIUS_MM = 60.0
SURFACE_TO_CENTRE_MM = 12.0


def find_center(depth: np.ndarray, cube: float = 300.0, intrinsics: Intrinsics = NYU_INTRINSICS,
                stride: int = 2) -> np.ndarray | None:
    """(480, 640) depth mm (0 = missing) -> crop centre (3,) camera frame mm, or None if nothing is seen."""
    sub = np.zeros_like(depth)
    sub[::stride, ::stride] = depth[::stride, ::stride]  # every stride-th pixel is plenty for a centre
    points = backproject(sub, intrinsics=intrinsics)
    if len(points) <= NEAREST_RANK:
        return None
    nearest = np.partition(points[:, 2], NEAREST_RANK)[NEAREST_RANK]
    points = points[points[:, 2] < nearest + cube]
    center = points[points[:, 2] < nearest + 50].mean(axis=0)
    center = _mean_shift(points, center, cube / 2)
    ball = points[np.linalg.norm(points - center, axis=-1) < cube / 2]
    radius = np.linalg.norm(ball - center, axis=-1)
    shell = ball[radius > SHELL * cube / 2]
    if len(shell) > 0.02 * len(ball):
        arm = center - shell.mean(axis=0)
        arm /= np.linalg.norm(arm) + 1e-9
        along = (ball - center) @ arm
        tip = np.percentile(along, 99)
        center = _mean_shift(points, center + arm * (tip - HAND_RADIUS_MM), HAND_RADIUS_MM)
    return center + np.array([0.0, 0.0, SURFACE_TO_CENTRE_MM])


def _mean_shift(points: np.ndarray, center: np.ndarray, radius: float, iterations: int = 10) -> np.ndarray:
    for _ in range(iterations):
        near = points[np.linalg.norm(points - center, axis=-1) < radius]
        if len(near) == 0:
            break
        moved = near.mean(axis=0)
        if np.linalg.norm(moved - center) < 0.5:
            return moved
        center = moved
    return center
