"""Joint-angle pose sampler (the prototype's synthetic pose distribution) and hand-shape sampling.

Not to be confused with the pose prior (VAE) of ``train.prior``, which is trained from these samples.

Per hand, one of eleven finger patterns is drawn uniformly: all straight, all open, all half-open,
all pinching, all closed; index open with the rest closed; little open with the rest closed; index
and middle open; middle, ring and little open; index and little open; each finger its own random
mode. "Open" modes are straight/open/half-open, "closed" modes pinching/closed. Flexions of one
finger are coupled (a curled joint drags its neighbours). The four fingers share one spread with
per-finger noise and fanned coefficients; the thumb is open or across the palm with equal odds.
Global rotation: Euler angles x in [-pi, pi], y in [-pi, 0], z in [-pi, pi] applied x then y then z,
returned as axis-angle; translation x, y in [-15, 15] mm and z in [-35, 15] mm. All angles are
finally clamped into the joint limits.
"""

from __future__ import annotations

import math

import torch
from scipy.spatial.transform import Rotation

from hand import anatomy
from hand.model import SHAPE_DIM

DEG = math.pi / 180

# Coupling of three joint drives into (MCP, PIP, DIP) flexion: rows are drives, columns joints.
_COUPLING = torch.tensor([[1.0, 0.2, 0.0], [0.2, 1.0, 0.7], [0.0, 0.2, 1.0]])
# Flexion (MCP, PIP, DIP) the coupled modes start from before adding the drives, rad.
_COUPLED_BASE = torch.tensor([-0.2, -0.4, -0.34], dtype=torch.float64)
# Drive ranges (degrees, low..high) of the coupled modes, per drive: (MCP, PIP, DIP).
_COUPLED_MODES = {
    "half_open": ((0, 30), (60, 90), (60, 90)),
    "pinching": ((60, 90), (5, 35), (5, 35)),
    "closed": ((60, 90), (60, 90), (60, 90)),
}
# Uniform ranges (radians) of the uncoupled modes per joint.
_PLAIN_MODES = {
    "straight": ((-0.2, 0.05), (-0.1, 0.05), (-0.15, 0.05)),
    "open": ((0.0, 0.25), (0.0, 0.4), (0.0, 0.34)),
}
_OPEN = ("straight", "open", "half_open")
_CLOSED = ("pinching", "closed")
_ALL = _OPEN + _CLOSED
# Patterns: per finger (index, middle, ring, little) a tuple of modes to choose from.
_PATTERNS = (
    [("straight",)] * 4, [("open",)] * 4, [("half_open",)] * 4, [("pinching",)] * 4, [("closed",)] * 4,
    [_OPEN, _CLOSED, _CLOSED, _CLOSED], [_CLOSED, _CLOSED, _CLOSED, _OPEN],
    [_OPEN, _OPEN, _CLOSED, _CLOSED], [_CLOSED, _OPEN, _OPEN, _OPEN],
    [_OPEN, _CLOSED, _CLOSED, _OPEN], [_ALL] * 4,
)
_SPREAD_GAIN = (1.0, 0.3, -0.6, -1.3)  # index, middle, ring, little: + turns towards the thumb


def _uniform(generator: torch.Generator | None, low: float, high: float, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def _finger_flexion(mode: str, generator: torch.Generator | None) -> torch.Tensor:
    if mode in _PLAIN_MODES:
        return torch.cat([_uniform(generator, lo, hi) for lo, hi in _PLAIN_MODES[mode]])
    # Each drive: its mode's range plus +-10 degrees of perturbation.
    drives = torch.cat([_uniform(generator, lo, hi) + _uniform(generator, -10, 10)
                        for lo, hi in _COUPLED_MODES[mode]]) * DEG
    return _COUPLED_BASE + drives @ _COUPLING.double()


def _choice(options: tuple, generator: torch.Generator | None):
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _fingers(generator: torch.Generator | None) -> torch.Tensor:
    """(4, 4) abduction and flexions of index, middle, ring, little."""
    pattern = _choice(_PATTERNS, generator)
    spread = _uniform(generator, -0.2, 0.4)
    rows = []
    for finger, modes in enumerate(pattern):
        abduct = _SPREAD_GAIN[finger] * (spread + _uniform(generator, -5, 5) * DEG)
        rows.append(torch.cat([abduct, _finger_flexion(_choice(modes, generator), generator)]))
    return torch.stack(rows)


def _thumb(generator: torch.Generator | None) -> torch.Tensor:
    """(4,) thumb abduction, CMC, MCP, IP flexion: open or across the palm, equal odds."""
    across = bool(torch.rand(1, generator=generator) < 0.5)
    cmc = _uniform(generator, 0.1, 0.9) if across else _uniform(generator, -0.3, 0.1)
    mcp = 0.25 * cmc + _uniform(generator, -0.1, 0.6)
    ip = _uniform(generator, -0.2, 1.2)
    abduct = _uniform(generator, -0.5, 0.5)
    return torch.cat([abduct, cmc, mcp, ip])


def _global(generator: torch.Generator | None) -> torch.Tensor:
    """(6,) axis-angle rotation and translation."""
    euler = torch.cat([_uniform(generator, -math.pi, math.pi), _uniform(generator, -math.pi, 0.0),
                       _uniform(generator, -math.pi, math.pi)])
    rotvec = Rotation.from_euler("xyz", euler.numpy()).as_rotvec()  # extrinsic x, then y, then z
    translation = torch.cat([_uniform(generator, -15, 15), _uniform(generator, -15, 15),
                             _uniform(generator, -35, 15)])
    return torch.cat([torch.from_numpy(rotvec), translation])


def sample_poses(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 26) float32 poses from the joint-angle pose sampler, within the joint limits.

    Reproducible for a seeded CPU ``generator``; ``None`` uses torch's global RNG.
    """
    lower, upper = (torch.from_numpy(limit) for limit in anatomy.joint_limits())
    poses = []
    for _ in range(n):
        pose = torch.cat([_global(generator), _fingers(generator).reshape(-1), _thumb(generator)])
        poses.append(torch.minimum(torch.maximum(pose, lower), upper))
    if not poses:
        return torch.zeros(0, anatomy.NUM_PARAMS)
    return torch.stack(poses).float()


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
