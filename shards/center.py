"""Crop centres from depth alone (``--center com``, ``train.predict --center com``): no labels are read.

A real depth frame shows the person the hand belongs to (torso, head, the other arm), and a centre of the
whole foreground lands on them (the finder before issue 21 landed on the head). What singles the hand out:
it is usually the nearest thing to the camera (NYU, hand-tracking setups), it is hand-sized, and what
surrounds it in the image lies well behind it (only the arm joins it). So, on every ``STRIDE``-th pixel
with depth in range (``MIN_DEPTH_MM``..``MAX_DEPTH_MM``):

1. The nearest point, robust to speckle: each pixel's depth is taken as the farthest in its
   ``SPECKLE_PX`` x ``SPECKLE_PX`` block, so a flying pixel or a blob smaller than the block cannot be the
   nearest; a finger can.
2. The hand layer: the points at most ``HAND_DEPTH_MM`` behind that nearest point, which holds a hand in any
   orientation but not a torso 150 mm or more behind it. Less than ``MIN_HAND_AREA_MM2`` of it within
   ``HAND_RADIUS_MM`` of the nearest point is too small for a hand.
3. Mean shift with a hand-sized ball over that layer, from the mean of those points: it settles on the
   hand's mass (the palm pulls harder than the forearm stub the layer holds).
4. The hand test: at least ``MIN_SURROUNDINGS_BEHIND`` of the ring ``RING_MM`` around the result (in the
   image, lateral mm at its depth) lies ``SURROUNDINGS_GAP_MM`` behind it or has no depth in range. A
   shoulder, a flank or an elbow seen from the side fails (their surface goes on beside them); then the
   points within ``EXCLUDE_RADIUS_MM`` of it are set aside and the next nearest object is tried, up to
   ``MAX_CANDIDATES``. None passing, or nothing in range: :class:`HandNotFound` with the reasons.
5. The visible surface lies in front of the palm joint: move the result back by ``SURFACE_OFFSET_MM``,
   measured on rendered frontal views (``python -m shards fake-nyu --seed 11``, a seed the benchmark does
   not use).

Accuracy and time: BENCHMARKS.md, "Label-free crop centre" (``python benchmarks/centre.py``). A frontal view
finds the hand with or without a person behind it; a view from the side can see the elbow nearer than the
hand and take it when the arm there stands out like a hand.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from geometry import Intrinsics
from shards.nyu_protocol import NYU_INTRINSICS

MIN_DEPTH_MM = 200.0  # nearer than any depth camera measures
MAX_DEPTH_MM = 2000.0  # a hand farther than this is too small in the image to crop
STRIDE = 4
SPECKLE_PX = 2  # in strided pixels: a near blob smaller than 8x8 image pixels is noise, not a hand
HAND_DEPTH_MM = 150.0  # a hand's depth extent (fingers pointing at the camera) fits; the body behind does not
HAND_RADIUS_MM = 90.0
MIN_HAND_AREA_MM2 = 800.0  # a fingertip pointing at the camera shows more within HAND_RADIUS_MM; a speck does not
MAX_CANDIDATES = 8  # a torso seen from the side takes a few: each round sets a ball of it aside
EXCLUDE_RADIUS_MM = 150.0  # around the rejected object's nearest point and its centre
RING_MM = (120.0, 200.0)  # beyond the fingers of a hand centred within it
SURROUNDINGS_GAP_MM = 100.0  # the body is 150 mm or more behind a raised hand
MIN_SURROUNDINGS_BEHIND = 0.92  # hands scored >= 0.92 on fake-NYU (seed 11), shoulders and flanks ~0.6-0.8
SURFACE_OFFSET_MM = np.array([0.0, -7.0, 40.0])  # camera frame: from the visible hand's centre to the palm joint


class HandNotFound(Exception):
    """No hand in a depth frame; ``reason`` says what was seen instead (for a skip record or an error line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def find_center(depth: np.ndarray, intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """(H, W) depth mm (0 = missing) -> crop centre (3,) float64, camera frame mm (x right, y down, z away).

    Raises :class:`HandNotFound` when no depth lies in range or none of the nearest objects is a hand.
    """
    strided = depth[::STRIDE, ::STRIDE].astype(np.float64)
    valid = (strided >= MIN_DEPTH_MM) & (strided <= MAX_DEPTH_MM)
    if not valid.any():
        raise HandNotFound(f"no depth between {MIN_DEPTH_MM:g} and {MAX_DEPTH_MM:g} mm")
    rows, cols = np.indices(strided.shape) * STRIDE + 0.5
    rays = np.stack([(cols - intrinsics.cx) / intrinsics.fx, (rows - intrinsics.cy) / intrinsics.fy], axis=-1)
    depths = np.where(valid, strided, np.inf)
    points = np.concatenate([rays * strided[..., None], strided[..., None]], axis=-1)[valid]  # (N, 3)
    robust = maximum_filter(depths, size=SPECKLE_PX, mode="constant", cval=np.inf)  # beyond the image: no depth
    if not np.isfinite(robust).any():
        raise HandNotFound(f"only isolated depth pixels between {MIN_DEPTH_MM:g} and {MAX_DEPTH_MM:g} mm")
    rejected = []
    for _ in range(MAX_CANDIDATES):
        if not np.isfinite(robust).any():
            break
        row, col = np.unravel_index(np.argmin(robust), robust.shape)
        nearest = np.append(rays[row, col] * robust[row, col], robust[row, col])
        layer = points[points[:, 2] <= nearest[2] + HAND_DEPTH_MM]
        around = layer[np.linalg.norm(layer - nearest, axis=-1) < HAND_RADIUS_MM]
        area = surface_area(around[:, 2], intrinsics)
        if area < MIN_HAND_AREA_MM2:
            rejected.append(f"{area / 100:.0f} cm^2 at {nearest[2]:.0f} mm is smaller than a hand")
            center = nearest
        else:
            center = mean_shift(layer, around.mean(axis=0), HAND_RADIUS_MM)
            behind = surroundings_behind(depths, rays, center)
            if behind >= MIN_SURROUNDINGS_BEHIND:
                return center + SURFACE_OFFSET_MM
            rejected.append(f"the object at {center[2]:.0f} mm has only {100 * behind:.0f}% of its surroundings "
                            f"behind it (a hand: >= {100 * MIN_SURROUNDINGS_BEHIND:.0f}%)")
        seen = np.concatenate([rays * robust[..., None], robust[..., None]], axis=-1)
        robust[(np.linalg.norm(seen - nearest, axis=-1) < EXCLUDE_RADIUS_MM)
               | (np.linalg.norm(seen - center, axis=-1) < EXCLUDE_RADIUS_MM)] = np.inf
    more = f"; {len(rejected) - 3} more" if len(rejected) > 3 else ""
    raise HandNotFound(f"no hand among the {len(rejected)} nearest objects: " + "; ".join(rejected[:3]) + more)


def surroundings_behind(depths: np.ndarray, rays: np.ndarray, center: np.ndarray) -> float:
    """Fraction of the ring RING_MM around ``center`` (lateral mm at its depth, in the image) that lies
    ``SURROUNDINGS_GAP_MM`` or more behind it or has no depth in range: most of it for a hand (only the arm
    joins it), half or less for a shoulder or a flank, whose surface goes on beside it."""
    lateral = np.linalg.norm(rays * center[2] - center[:2], axis=-1)
    ring = (lateral >= RING_MM[0]) & (lateral <= RING_MM[1])
    if not ring.any():  # the object fills the image: nothing beside it to tell it from a hand
        return 1.0
    return float(np.mean(depths[ring] >= center[2] + SURROUNDINGS_GAP_MM))


def surface_area(depths: np.ndarray, intrinsics: Intrinsics) -> float:
    """mm^2 of surface seen by the strided pixels at ``depths`` (each covers (STRIDE * z / f)^2, facing the camera)."""
    return float(np.sum((STRIDE * depths) ** 2) / (intrinsics.fx * intrinsics.fy))


def mean_shift(points: np.ndarray, center: np.ndarray, radius: float, iterations: int = 15) -> np.ndarray:
    """Move ``center`` to the mean of the points within ``radius`` until it stops (flat kernel)."""
    for _ in range(iterations):
        near = points[np.linalg.norm(points - center, axis=-1) < radius]
        if len(near) == 0:
            break
        moved = near.mean(axis=0)
        if np.linalg.norm(moved - center) < 0.25:
            return moved
        center = moved
    return center
