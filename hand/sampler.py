"""Joint-angle pose sampler (synthetic training poses) and hand-shape sampling.

Not to be confused with the pose prior (VAE) of ``train.prior``, which is trained from these samples.

Real hands move in synergies, and depth data sets record gestures; the sampler draws from both, built from
published hand anatomy and gesture vocabularies, never from a data set's labels. Per hand, one of three
families:

- **synergy** (40%): one grasp level closes the four fingers together (the first postural synergy, Santello,
  Flanders & Soechting 1998, J. Neurosci. 18:10105), each finger deviating from it with noise that is
  correlated between neighbours, strongest for ring and little (finger enslaving, Häger-Ross & Schieber 2000,
  J. Neurosci. 20:8542); the thumb opposes more the more the hand closes.
- **gesture** (40%): a gesture of the vocabularies real hand data sets record (counting one to five in both
  conventions, fist, point, V, L, Y, I, horns, thumbs up, OK, pinch; e.g. MSRA 2015's 17 gestures, ASL
  letters), each finger extended or flexed with jitter, the thumb out or across the palm.
- **free** (20%): every finger and the thumb at its own random level, for the poses no synergy or gesture names.

A finger's level f (0 straight .. 1 fully flexed) and a posture h (-1 hook .. +1 flat hand: the second
synergy trades MCP against PIP flexion) set MCP = f (1.45 + 0.4 h), PIP = f (1.7 - 0.6 h), each with noise;
the DIP follows the PIP at about 2/3 of its flexion (Rijpkema & Girard 1991, SIGGRAPH). Fingers spread only
while open (one spread, fanned per finger). The thumb's opposition level o drives CMC flexion across the
palm (-0.4 .. 1.0 rad), MCP and IP flexion, with CMC abduction over its whole range: the thumb's full
motion, not only open or across. Global rotation: Euler angles x in [-pi, pi], y in [-pi, 0], z in
[-pi, pi] applied x then y then z, returned as axis-angle; translation x, y in [-15, 15] mm and z in
[-35, 15] mm. All angles are finally clamped into the joint limits.

:func:`sample_poses_from_bank` draws instead the articulations of a pose bank (e.g. poses fitted with
``python -m hand.fit`` to a labelled data set) under the same global rotations.
"""

from __future__ import annotations

import math

import torch
from scipy.spatial.transform import Rotation

from hand import anatomy
from hand.model import SHAPE_DIM

FAMILIES = (("synergy", 0.4), ("gesture", 0.4), ("free", 0.2))
# Correlation of the four fingers' deviations from the grasp level (index, middle, ring, little).
_ENSLAVING = torch.tensor([[1.0, 0.5, 0.3, 0.2], [0.5, 1.0, 0.7, 0.5], [0.3, 0.7, 1.0, 0.8],
                           [0.2, 0.5, 0.8, 1.0]], dtype=torch.float64)
_DEVIATION_STD = 0.18
_ENSLAVING_FACTOR = torch.linalg.cholesky(_ENSLAVING) * _DEVIATION_STD
# Gestures: flexion level of index, middle, ring, little (0 extended, 1 flexed; in between as given) and
# the thumb: "out" (away from the palm), "across" (over the palm or the fingers) or "half" (opposing a finger).
GESTURES = {
    "five": ((0, 0, 0, 0), "out"), "fist": ((1, 1, 1, 1), "across"), "one": ((0, 1, 1, 1), "across"),
    "two": ((0, 0, 1, 1), "across"), "three": ((0, 0, 0, 1), "across"), "three_thumb": ((0, 0, 1, 1), "out"),
    "four": ((0, 0, 0, 0), "across"), "L": ((0, 1, 1, 1), "out"), "Y": ((1, 1, 1, 0), "out"),
    "I": ((1, 1, 1, 0), "across"), "horns": ((0, 1, 1, 0), "across"), "thumbs_up": ((1, 1, 1, 1), "out"),
    "OK": ((0.5, 0, 0, 0), "half"), "pinch": ((0.45, 0.45, 0.55, 0.6), "half"),
}
_THUMB_OPPOSITION = {"out": (0.0, 0.2), "across": (0.7, 1.0), "half": (0.4, 0.7)}
_SPREAD_GAIN = torch.tensor([1.0, 0.25, -0.6, -1.2], dtype=torch.float64)  # + turns towards the thumb


def _uniform(generator: torch.Generator | None, low: float, high: float, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def _normal(generator: torch.Generator | None, std: float, n: int) -> torch.Tensor:
    return torch.randn(n, generator=generator, dtype=torch.float64) * std


def _choice(options: tuple, generator: torch.Generator | None):
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _family(generator: torch.Generator | None) -> str:
    weights = torch.tensor([weight for _, weight in FAMILIES], dtype=torch.float64)
    return FAMILIES[int(torch.multinomial(weights, 1, generator=generator))][0]


def _levels(family: str, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flexion levels (4,) of index..little and the thumb's opposition level (1,), all in [0, 1]."""
    if family == "synergy":
        # Arcsine-distributed (Beta(1/2, 1/2)): open and closed hands more often than half-closed ones.
        grasp = (1.0 - torch.cos(math.pi * _uniform(generator, 0.0, 1.0))) / 2.0
        fingers = grasp + _ENSLAVING_FACTOR @ _normal(generator, 1.0, 4)
        opposition = 0.6 * grasp + _uniform(generator, -0.3, 0.7)
    elif family == "gesture":
        levels, thumb = GESTURES[_choice(tuple(GESTURES), generator)]
        fingers = torch.tensor(levels, dtype=torch.float64)
        fingers = torch.where(fingers >= 1, _uniform(generator, 0.75, 1.0, 4),
                              torch.where(fingers <= 0, _uniform(generator, 0.0, 0.15, 4),
                                          fingers + _uniform(generator, -0.1, 0.1, 4)))
        opposition = _uniform(generator, *_THUMB_OPPOSITION[thumb])
    else:
        fingers, opposition = _uniform(generator, 0.0, 1.0, 4), _uniform(generator, 0.0, 1.0)
    return fingers.clamp(0.0, 1.0), opposition.clamp(0.0, 1.0)


def _fingers(levels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(4, 4) abduction and MCP, PIP, DIP flexion of index, middle, ring, little from their levels."""
    posture = _uniform(generator, -1.0, 1.0)
    mcp = levels * (1.45 + 0.4 * posture) + _normal(generator, 0.08, 4)
    pip = levels * (1.7 - 0.6 * posture) + _normal(generator, 0.08, 4)
    dip = 0.67 * pip + _normal(generator, 0.07, 4)
    spread = _uniform(generator, -0.1, 0.45)
    abduct = _SPREAD_GAIN * spread * (1.0 - levels) + _normal(generator, 0.05, 4)
    return torch.stack([abduct, mcp, pip, dip], dim=1)


def _thumb(opposition: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(4,) thumb abduction, CMC, MCP, IP flexion from its opposition level."""
    abduct = _uniform(generator, -0.6, 0.6)
    cmc = -0.4 + 1.4 * opposition + _normal(generator, 0.1, 1)
    mcp = _uniform(generator, -0.3, 0.5) + 0.7 * opposition
    ip = _uniform(generator, -0.3, 0.8) + 0.7 * opposition
    return torch.cat([abduct, cmc, mcp, ip])


def _global(generator: torch.Generator | None) -> torch.Tensor:
    """(6,) axis-angle rotation and translation."""
    euler = torch.cat([_uniform(generator, -math.pi, math.pi), _uniform(generator, -math.pi, 0.0),
                       _uniform(generator, -math.pi, math.pi)])
    rotvec = Rotation.from_euler("xyz", euler.numpy()).as_rotvec()  # extrinsic x, then y, then z
    translation = torch.cat([_uniform(generator, -15, 15), _uniform(generator, -15, 15),
                             _uniform(generator, -35, 15)])
    return torch.cat([torch.from_numpy(rotvec), translation])


def _clamped(poses: list[torch.Tensor]) -> torch.Tensor:
    """(n, 26) float32: the poses with their finger angles clamped into the joint limits."""
    if not poses:
        return torch.zeros(0, anatomy.NUM_PARAMS)
    lower, upper = (torch.from_numpy(limit) for limit in anatomy.joint_limits())
    return torch.minimum(torch.maximum(torch.stack(poses), lower), upper).float()


def sample_poses(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 26) float32 poses from the joint-angle pose sampler, within the joint limits.

    Reproducible for a seeded CPU ``generator``; ``None`` uses torch's global RNG.
    """
    poses = []
    for _ in range(n):
        fingers, opposition = _levels(_family(generator), generator)
        poses.append(torch.cat([_global(generator), _fingers(fingers, generator).reshape(-1),
                                _thumb(opposition, generator)]))
    return _clamped(poses)


def sample_poses_from_bank(bank: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 26) float32 poses: the finger articulations (pose entries 6..25) of rows of ``bank`` (M, 26) drawn
    uniformly, under the sampler's global rotations and translations, clamped into the joint limits."""
    if bank.ndim != 2 or bank.shape[1] != anatomy.NUM_PARAMS or len(bank) == 0:
        raise ValueError(f"a pose bank is (M >= 1, {anatomy.NUM_PARAMS}), got {tuple(bank.shape)}")
    rows = torch.randint(len(bank), (n,), generator=generator)
    return _clamped([torch.cat([_global(generator), bank[int(row), 6:].double()]) for row in rows])


def sample_shapes(n: int, generator: torch.Generator | None = None, spread: float = 0.08) -> torch.Tensor:
    """(n, 17) float32 shape vectors around 1.0: global scale with ``spread`` std, palm and phalanx
    scales with half that std (relative proportions vary less than overall size), clipped to +-3 std.
    """
    std = torch.full((SHAPE_DIM,), spread / 2, dtype=torch.float64)
    std[0] = spread
    noise = torch.randn(n, SHAPE_DIM, generator=generator, dtype=torch.float64).clamp(-3, 3)
    return (1 + noise * std).float()


def mean_flexion(pose: torch.Tensor) -> torch.Tensor:
    """(B,) mean flexion of the four fingers (radians): ~0 open hand, > 1 closed fist."""
    flex = pose[:, 6:22].reshape(-1, 4, 4)[:, :, 1:]
    return flex.mean(dim=(1, 2))
