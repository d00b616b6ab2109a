"""Rest-pose anatomy of an average adult right hand: names, sphere layout, bone lengths, limits.

Frame (millimetres): the crop/camera frame with image axes, x right, y down, z away from the camera.
At the zero pose the palm centre sphere (index 32, NYU's ``PALM_3``) is at the origin, the fingers
point up the image (-y), the palm faces the camera (-z) and the thumb is on the +x side (a right hand
seen palm-first). Positive flexion curls a finger towards the palm (-z); positive abduction turns a
finger about the palm normal towards the thumb side (+x).

Sphere layout (41 spheres): indices 0..35 are NYU's joints in NYU's order, six per finger block
(``F1`` = little, ``F2`` = ring, ``F3`` = middle, ``F4`` = index, ``TH`` = thumb), tip first:
``KNU3_A`` (fingertip), ``KNU3_B`` (distal joint), ``KNU2_A`` (middle of the middle phalanx),
``KNU2_B`` (middle joint), ``KNU1_A`` (middle of the proximal phalanx), ``KNU1_B`` (knuckle); for the
thumb the three segments are distal phalanx, proximal phalanx and metacarpal. Every ``*_B`` sphere
sits on the centre of the joint at the start of its phalanx, so it belongs rigidly to both bones that
meet there and every pair of consecutive spheres of a finger keeps its distance at every pose.
Then ``PALM_1..PALM_6`` (30..35: wrist little-finger side, wrist thumb side, palm centre, upper palm
under the index, mid palm, wrist centre) and 5 extra palm spheres (36..40) that fill the palm.

Wrist sides, as NYU labels them: ``PALM_1`` is the wrist point on the little-finger side and ``PALM_2``
the one on the thumb side (NYU test frame 1, view 1: PALM_1 at u = 184, PALM_2 at u = 210, the little
fingertip at u = 169, the thumb at u = 250..260; fitting the model to 300 public test frames gives
3.1 mm mean residual with these sides, 6.9 mm with them exchanged). The public labels (14 evaluation
joints) hold no ``PALM_4..6``, and NYU's documentation gives their names only, so those three keep
the placement above, unverified against NYU. :data:`WRIST_LITTLE_SIDE` and :data:`WRIST_THUMB_SIDE`
name the two wrist spheres for every part that needs a side (mesh, palm pairs).
"""

from __future__ import annotations

import numpy as np

FINGERS = ("index", "middle", "ring", "little", "thumb")
"""Finger order of the pose vector (and of ``sphere_finger``)."""

NUM_PARAMS = 26
NUM_SPHERES = 41
PALM_CENTER = 32

_NYU_BLOCKS = ("F1", "F2", "F3", "F4", "TH")
_NYU_SUFFIXES = ("KNU3_A", "KNU3_B", "KNU2_A", "KNU2_B", "KNU1_A", "KNU1_B")
NYU_JOINT_NAMES = [f"{b}_{s}" for b in _NYU_BLOCKS for s in _NYU_SUFFIXES] + [f"PALM_{k}" for k in range(1, 7)]
SPHERE_NAMES = NYU_JOINT_NAMES + [f"PALM_EXTRA_{k}" for k in range(1, 6)]
WRIST_LITTLE_SIDE = SPHERE_NAMES.index("PALM_1")
WRIST_THUMB_SIDE = SPHERE_NAMES.index("PALM_2")

NYU_BLOCK_FINGER = (3, 2, 1, 0, 4)
"""Pose-order finger (index into FINGERS) of each NYU block F1, F2, F3, F4, TH."""

_JOINT_NAMES = {
    "thumb": ("cmc", "mcp", "ip"),
}
PARAM_NAMES = ["rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"] + [
    f"{finger}_{dof}"
    for finger in FINGERS
    for dof in (("abduct",) + tuple(f"flex_{j}" for j in _JOINT_NAMES.get(finger, ("mcp", "pip", "dip"))))
]

# Sphere placement along a finger, NYU order (tip first): (phalanx 0=proximal..2=distal, fraction
# along that phalanx). The fingertip fraction is computed so the tip sphere touches the tip.
_FINGER_SLOTS = ((2, None), (2, 0.0), (1, 0.5), (1, 0.0), (0, 0.5), (0, 0.0))

# Per finger in pose order: knuckle (MCP, thumb CMC) centre in the palm frame (mm).
FINGER_BASE = np.array([
    [25.0, -20.0, 0.0],    # index
    [5.0, -25.0, 0.0],     # middle
    [-14.0, -22.0, 0.0],   # ring
    [-31.0, -14.0, 0.0],   # little
    [20.0, 45.0, -8.0],    # thumb (carpometacarpal joint, in the thenar)
])
# Phalanx lengths joint to joint (tip for the distal one), mm; thumb: metacarpal, proximal, distal.
PHALANX_LENGTH = np.array([
    [39.0, 23.0, 20.0],
    [44.0, 27.0, 21.0],
    [41.0, 26.0, 21.0],
    [32.0, 19.0, 19.0],
    [44.0, 32.0, 27.0],
])
# Sphere radii per finger in NYU slot order (tip, DIP, mid-middle, PIP, mid-proximal, MCP), mm.
FINGER_RADII = np.array([
    [7.5, 8.5, 8.8, 9.5, 10.0, 11.0],
    [7.8, 8.8, 9.0, 9.8, 10.2, 11.2],
    [7.5, 8.5, 8.7, 9.3, 9.8, 10.8],
    [6.8, 7.5, 7.8, 8.3, 8.8, 9.8],
    [8.5, 9.5, 10.0, 11.0, 12.5, 14.0],
])
# Fan of the straight fingers at rest: rotation about the palm normal (+ towards the thumb), rad.
FINGER_FAN = np.array([0.10, 0.02, -0.08, -0.18])
# Thumb at rest: direction of its long axis and the direction its tip moves when it flexes
# (across the palm, towards the little finger and the camera).
THUMB_DIRECTION = np.array([0.62, -0.74, -0.2])
THUMB_FLEX_DIRECTION = np.array([-0.75, -0.1, -0.65])

# Palm spheres 30..40 in the palm frame (x, y, z, radius), mm.
PALM_SPHERES = np.array([
    [-16.0, 66.0, 0.0, 15.0],   # 30 PALM_1 wrist, little-finger side (-x)
    [16.0, 66.0, 0.0, 15.0],    # 31 PALM_2 wrist, thumb side (+x)
    [0.0, 0.0, 0.0, 19.0],      # 32 PALM_3 palm centre (origin)
    [21.0, 2.0, 0.0, 17.0],     # 33 PALM_4 upper palm under the index
    [0.0, 28.0, 0.0, 19.0],     # 34 PALM_5 mid palm
    [0.0, 72.0, 0.0, 15.0],     # 35 PALM_6 wrist centre
    [0.0, 50.0, 0.0, 18.0],     # 36 lower palm
    [20.0, 48.0, -3.0, 17.0],   # 37 thenar
    [21.0, 25.0, 0.0, 17.0],    # 38 palm, index side
    [-21.0, 2.0, 0.0, 18.5],    # 39 upper palm under ring and little
    [-19.0, 38.0, 0.0, 18.5],   # 40 hypothenar
])
# Mesh-only points (not spheres): ends of the forearm stub, (x, y, z, radius), rigid with the palm.
FOREARM_POINTS = np.array([
    [15.0, 88.0, 0.0, 15.0],
    [-15.0, 88.0, 0.0, 15.0],
    [0.0, 92.0, 0.0, 15.0],
])

# Joint limits per finger (abduction, flex 1, flex 2, flex 3), rad; abduction is about the finger's rest fan
# (FINGER_FAN), + towards the thumb. Sources, per limit:
# - Flexion (upper): the clinical norms of active motion, MCP 90, PIP 100, DIP 90 deg (American Academy of
#   Orthopaedic Surgeons, "Joint Motion: Method of Measuring and Recording", 1965), with some slack for the
#   sphere model (1.65 / 1.9 / 1.5 rad = 95 / 109 / 86 deg). Thumb: CMC flexion across the palm with
#   opposition (1.0), MCP 50..70 deg (1.2 rad), IP 80..90 deg (1.5 rad).
# - Hyperextension (lower): MCP 20 deg (-0.35; the norms allow up to 45 passive); PIP 10 deg (-0.17) and DIP
#   20 deg (-0.35): the passive hyperextension common in healthy hands (the norms give 0 and 10 deg active).
#   PIP and DIP were -0.1 / -0.2 until fitting 300 public NYU test frames left 43% / 37% of the little finger's
#   and 9% / 7% of the ring finger's at that limit (issue 13). Thumb: CMC extension 20 deg, MCP and IP ~17 deg.
# - Abduction: about 20..30 deg each way at the extended MCP (Kapandji, "The Physiology of the Joints", vol. 1),
#   the index and little fingers the most mobile. The index's ulnar limit was -0.35, the middle's -0.35, the
#   ring's and little finger's radial limits 0.3, until the NYU fit left 15%, 6%, 6% and 17% of them there
#   (issue 13); now -0.5, -0.45, 0.4, 0.45. Thumb: CMC abduction +-0.6 about its rest direction.
FINGER_LOWER = np.array([
    [-0.5, -0.35, -0.17, -0.35],
    [-0.45, -0.35, -0.17, -0.35],
    [-0.45, -0.35, -0.17, -0.35],
    [-0.7, -0.35, -0.17, -0.35],
    [-0.6, -0.4, -0.3, -0.3],
])
FINGER_UPPER = np.array([
    [0.6, 1.65, 1.9, 1.5],
    [0.35, 1.65, 1.9, 1.5],
    [0.4, 1.65, 1.9, 1.5],
    [0.45, 1.65, 1.9, 1.5],
    [0.6, 1.0, 1.2, 1.5],
])


def finger_sphere_index(finger: int, slot: int) -> int:
    """Sphere index of NYU slot ``slot`` (0 = tip .. 5 = knuckle) of pose-order finger ``finger``."""
    return NYU_BLOCK_FINGER.index(finger) * 6 + slot


def finger_slots(finger: int) -> list[tuple[int, float]]:
    """(phalanx, fraction along it) of the six spheres of a finger, NYU slot order."""
    distal_length = PHALANX_LENGTH[finger, 2]
    tip_fraction = (distal_length - FINGER_RADII[finger, 0]) / distal_length
    return [(ph, tip_fraction if frac is None else frac) for ph, frac in _FINGER_SLOTS]


def bone_pairs() -> np.ndarray:
    """(25, 2) sphere pairs of consecutive spheres along each finger (rigid at every pose)."""
    pairs = [(finger_sphere_index(f, s), finger_sphere_index(f, s + 1)) for f in range(5) for s in range(5)]
    return np.array(pairs, dtype=np.int64)


# Pairs of spheres rigid with the palm whose distances keep the palm from deforming: the knuckle chain,
# each knuckle (thumb: carpometacarpal) to the palm centre, the wrist triangle, the palm centre to the
# wrist, two diagonals, the thumb base to the wrist and the mid palm sphere. By NYU name: 20 pairs.
_PALM_PAIRS = (
    ("F4_KNU1_B", "F3_KNU1_B"), ("F3_KNU1_B", "F2_KNU1_B"), ("F2_KNU1_B", "F1_KNU1_B"),
    ("F4_KNU1_B", "PALM_3"), ("F3_KNU1_B", "PALM_3"), ("F2_KNU1_B", "PALM_3"), ("F1_KNU1_B", "PALM_3"),
    ("TH_KNU1_B", "PALM_3"),
    ("PALM_1", "PALM_2"), ("PALM_1", "PALM_6"), ("PALM_2", "PALM_6"),
    ("PALM_3", "PALM_1"), ("PALM_3", "PALM_2"), ("PALM_3", "PALM_6"),
    ("F4_KNU1_B", "PALM_1"), ("F1_KNU1_B", "PALM_2"),  # diagonals: index knuckle to little-side wrist and back
    ("TH_KNU1_B", "PALM_2"), ("TH_KNU1_B", "PALM_6"),  # thumb base to the thumb-side wrist
    ("PALM_5", "PALM_3"), ("PALM_5", "PALM_6"),
)


def palm_pairs() -> np.ndarray:
    """(20, 2) sphere pairs rigid with the palm (fixed distance at every pose): the palm's shape."""
    return np.array([(SPHERE_NAMES.index(a), SPHERE_NAMES.index(b)) for a, b in _PALM_PAIRS], dtype=np.int64)


def sphere_radii() -> np.ndarray:
    """(41,) radii in mm in sphere order."""
    radii = np.zeros(NUM_SPHERES)
    for f in range(5):
        for s in range(6):
            radii[finger_sphere_index(f, s)] = FINGER_RADII[f, s]
    radii[30:] = PALM_SPHERES[:, 3]
    return radii


def sphere_finger() -> np.ndarray:
    """(41,) pose-order finger of each sphere, -1 for palm spheres."""
    owner = np.full(NUM_SPHERES, -1, dtype=np.int64)
    for block, finger in enumerate(NYU_BLOCK_FINGER):
        owner[block * 6:block * 6 + 6] = finger
    return owner


def thumb_rest_rotation() -> np.ndarray:
    """Rotation whose local -y is the thumb's long axis and local -z its flexion direction."""
    down = THUMB_DIRECTION / np.linalg.norm(THUMB_DIRECTION)
    flex = THUMB_FLEX_DIRECTION - THUMB_FLEX_DIRECTION @ down * down
    flex /= np.linalg.norm(flex)
    y_axis, z_axis = -down, -flex
    return np.stack([np.cross(y_axis, z_axis), y_axis, z_axis], axis=1)


def finger_rest_rotations() -> np.ndarray:
    """(5, 3, 3) rest rotation of each finger's base frame (fan for fingers, thumb frame)."""
    rotations = np.zeros((5, 3, 3))
    for f, angle in enumerate(FINGER_FAN):
        c, s = np.cos(angle), np.sin(angle)
        rotations[f] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    rotations[4] = thumb_rest_rotation()
    return rotations


def joint_limits() -> tuple[np.ndarray, np.ndarray]:
    """(26,) lower and upper limits; the 6 global parameters are unbounded."""
    lower = np.concatenate([np.full(6, -np.inf), FINGER_LOWER.reshape(-1)])
    upper = np.concatenate([np.full(6, np.inf), FINGER_UPPER.reshape(-1)])
    return lower, upper
