"""On-the-fly synthesis: shapes, reproducible seeded noise, jitter consistent between depth and keypoints."""

from __future__ import annotations

import pytest
import torch

from hand import PALM_CENTER, HandModel
from shards.format import SYNTHETIC_AUGMENT_FIELDS
from geometry import Crop
from train.synthesis import Synthesizer, held_out_batch

CROP = Crop(64, 300.0)
SIZE, CUBE = CROP.size, CROP.cube_mm
BG = CROP.background_depth
FIELD = {name: i for i, name in enumerate(SYNTHETIC_AUGMENT_FIELDS)}


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer(HandModel(), crop=CROP)


@pytest.fixture(scope="module")
def clean() -> dict[str, torch.Tensor]:
    return held_out_batch(HandModel(), 6, seed=3)


def with_augment(batch: dict[str, torch.Tensor], **fields: float | list[float]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in batch.items()}
    for name, value in fields.items():
        out["augment"][:, FIELD[name]] = torch.as_tensor(value, dtype=torch.float32)
    return out


def test_shapes_range_and_background(synth, clean):
    depth, keypoints = synth(with_augment(clean, depth_noise_mm=4.0, hole_fraction=0.1, noise_seed=[1, 2, 3, 4, 5, 6]))
    assert depth.shape == (6, 1, SIZE, SIZE) and depth.dtype == torch.float32
    assert keypoints.shape == (6, 41, 3) and keypoints.dtype == torch.float32
    assert depth.min() >= -CUBE / 2 and depth.max() <= CUBE / 2
    hand = (depth < BG).float().mean(dim=(1, 2, 3))
    assert bool(((hand > 0.01) & (hand < 0.6)).all()), f"hand pixel fractions {hand.tolist()}"
    assert (depth == BG).any(), "uncovered pixels hold the background depth"


def test_keypoints_sit_on_the_rendered_hand(synth, clean):
    depth, keypoints = synth(clean)
    palm = CROP.to_pixels(keypoints[:, PALM_CENTER])
    for b in range(depth.shape[0]):
        i, j = int(palm[b, 1]), int(palm[b, 0])
        window = depth[b, 0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
        assert (window < BG).any(), "the palm centre projects onto hand pixels"
        nearest = (window - keypoints[b, PALM_CENTER, 2]).abs().min()
        # Seen face-on the palm's surface lies ~20 mm before its centre; seen nearly edge-on (sample 0 of this
        # batch since the pose sampler of issue 13: palm normal 81 deg off the view axis) the ray through the
        # centre first meets the palm's side, 43 mm before it.
        assert nearest < 60.0, f"surface depth {window.min():.1f} vs palm centre z {keypoints[b, PALM_CENTER, 2]:.1f}"


def test_noise_is_reproducible_per_sample(synth, clean):
    batch = with_augment(clean, depth_noise_mm=5.0, hole_fraction=0.2, noise_seed=[11, 12, 13, 14, 15, 16])
    first, k1 = synth(batch)
    again, k2 = synth(batch)
    assert torch.equal(first, again) and torch.equal(k1, k2)
    # A sample's noise depends on its own seed, not on its place in the batch.
    reversed_batch = {k: v.flip(0) for k, v in batch.items()}
    flipped, _ = synth(reversed_batch)
    assert torch.equal(flipped.flip(0), first)
    other, _ = synth(with_augment(batch, noise_seed=[21, 22, 23, 24, 25, 26]))
    assert not torch.equal(other, first)


def test_depth_noise_and_holes_follow_augment(synth, clean):
    base, _ = synth(clean)
    hand = base < BG
    noisy, _ = synth(with_augment(clean, depth_noise_mm=5.0, noise_seed=7))
    diff = (noisy - base)[hand]
    assert abs(float(diff.std()) - 5.0) < 0.75 and abs(float(diff.mean())) < 0.5
    assert torch.equal(noisy[~hand], base[~hand]), "noise only on the hand"
    holed, _ = synth(with_augment(clean, hole_fraction=0.3, noise_seed=7))
    holes = (holed == BG) & hand
    assert abs(float(holes.sum() / hand.sum()) - 0.3) < 0.06
    assert torch.equal(holed[hand & ~holes], base[hand & ~holes])


@pytest.mark.parametrize("jx, jy", [(3, 0), (0, -2), (-4, 5)])
def test_jitter_moves_crop_and_keypoints_together(synth, clean, jx, jy):
    base, k0 = synth(clean)
    moved, k1 = synth(with_augment(clean, jitter_x_px=float(jx), jitter_y_px=float(jy)))
    shift = torch.tensor([jx * CUBE / SIZE, jy * CUBE / SIZE, 0.0])
    assert torch.allclose(k1, k0 - shift, atol=1e-3)
    # Moving the crop window by (jx, jy) pixels moves the image content by (-jx, -jy).
    expected = torch.roll(base, shifts=(-jy, -jx), dims=(2, 3))
    margin = 6
    inner = (slice(None), slice(None), slice(margin, SIZE - margin), slice(margin, SIZE - margin))
    mismatch = ((moved[inner] - expected[inner]).abs() > 0.5).float().mean()
    assert mismatch < 0.01, f"{100 * mismatch:.2f}% of pixels differ from the shifted render"
    p0 = CROP.to_pixels(k0)
    p1 = CROP.to_pixels(k1)
    assert torch.allclose(p1[..., :2] - p0[..., :2], torch.tensor([-float(jx), -float(jy)]), atol=1e-3)


def test_forearm_and_scale_augmentation(clean):
    from train.synthesis import SynthesisConfig

    seeds = with_augment(clean, noise_seed=[11, 12, 13, 14, 15, 16])
    plain, plain_keypoints = Synthesizer(HandModel(), crop=CROP)(seeds)
    arm, arm_keypoints = Synthesizer(HandModel(), crop=CROP, cfg=SynthesisConfig(forearm=1.0))(seeds)
    # The arm only adds surface: labels unchanged, more foreground, and nowhere a farther depth.
    torch.testing.assert_close(arm_keypoints, plain_keypoints)
    assert ((arm < BG).sum(dim=(1, 2, 3)) > (plain < BG).sum(dim=(1, 2, 3)) + 20).all()
    assert (arm <= plain + 1e-4).all()
    again, _ = Synthesizer(HandModel(), crop=CROP, cfg=SynthesisConfig(forearm=1.0))(seeds)
    assert torch.equal(arm, again)  # drawn from each sample's seed: the same render every time
    # Scale jitter scales hand and labels together about the palm centre, within the configured range.
    cfg = SynthesisConfig(scale_jitter=0.15)
    _, scaled = Synthesizer(HandModel(), crop=CROP, cfg=cfg)(seeds)
    spread = lambda k: (k - k[:, PALM_CENTER:PALM_CENTER + 1]).norm(dim=-1).mean(dim=1)  # noqa: E731
    ratio = spread(scaled) / spread(plain_keypoints)
    assert ((ratio > 0.84) & (ratio < 1.16)).all() and ratio.std() > 0.01
