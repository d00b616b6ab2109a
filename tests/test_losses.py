"""Loss terms: minimal at the truth, growing away from it, and a gradient step reduces each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import hand
from geometry import Crop, invert_transform, transform_points
from train.losses import (BoneLengthLoss, CollisionLoss, ConsistencyLoss, HeatmapMeanLoss, HeatmapTargetLoss,
                          JointDepthLoss, LossConfig, ProjectionLoss, TermConfig, build_losses)
from train.network import NetworkConfig, NetworkOutput, build_network, spatial_softmax
from train.prior import PriorConfig, save_prior, train_prior

CROP = Crop(64, 300.0)
SIZE, CUBE = CROP.size, CROP.cube_mm


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prior") / "prior.pt"
    save_prior(train_prior(PriorConfig(steps=150, batch_size=64, pool_size=512), progress=False), path)
    return path


def descend(loss_fn, x: torch.Tensor, step_mm: float = 0.05) -> tuple[float, float]:
    """Loss before and after one small normalised gradient step on x."""
    x = x.detach().clone().requires_grad_(True)
    before = loss_fn(x)
    (grad,) = torch.autograd.grad(before, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        after = loss_fn(x - step_mm * grad / grad.abs().max())
    return float(before.detach()), float(after)


def test_defaults_are_the_reference_weights() -> None:
    cfg = LossConfig()
    weights = {name: term.weight for name, term in cfg.terms().items()}
    assert weights == {"synthetic_heatmap": 1e3, "synthetic_depth": 0.1, "projection": 1.0, "consistency": 1e-3,
                       "prior": 1e-2, "collision": 1.0, "bone_length": 1.0, "heatmap_mean": 1e-2, "supervised": 0.1, "fitted": 0.1}
    # labels and pseudo-labels: opt-in
    assert [name for name, term in cfg.terms().items() if not term.enabled] == ["supervised", "fitted"]
    assert (cfg.consistency_steps, cfg.collision_tolerance_mm, cfg.bone_min_ratio, cfg.bone_max_ratio) == \
        (1500, 6.0, 0.80, 1.05)
    assert (cfg.projection_data_scale, cfg.projection_pairs, cfg.hand_size) == (500.0, "schedule", "template")


def test_heatmap_targets_peak_at_the_keypoint_cell() -> None:
    term = HeatmapTargetLoss(CROP, 1.0)
    # Crop pixel (4 * 5 + 2, 4 * 9 + 2) is the centre of heatmap cell (row 9, column 5).
    point = torch.tensor([[[(22 - 32) * CUBE / SIZE, (38 - 32) * CUBE / SIZE, 0.0]]])
    target = term.targets(point, 16, 16)[0, 0]
    assert target[9, 5] == pytest.approx(1.0) and int(target.argmax()) == 9 * 16 + 5
    assert target[9, 6] == pytest.approx(math.exp(-0.5))


def test_synthetic_terms_vanish_for_ideal_outputs(model: hand.HandModel) -> None:
    keypoints = model.keypoints(torch.zeros(2, 26))
    heatmap_term, depth_term = HeatmapTargetLoss(CROP, 1.0), JointDepthLoss()
    ideal = heatmap_term.targets(keypoints, 16, 16)
    assert float(heatmap_term([ideal, ideal], keypoints)) < 1e-12
    assert float(heatmap_term([ideal.roll(1, dims=-1)], keypoints)) > 1e-3
    assert float(depth_term([keypoints], keypoints)) == 0.0
    assert float(depth_term([keypoints + torch.tensor([0.0, 0.0, 5.0])], keypoints)) == pytest.approx(25.0)
    before, after = descend(lambda s: heatmap_term([s], keypoints), ideal + 0.1 * torch.randn_like(ideal))
    assert after < before
    before, after = descend(lambda j: depth_term([j], keypoints), keypoints + 3.0)
    assert after < before


def test_synthetic_losses_through_the_network(model: hand.HandModel, prior_file: Path) -> None:
    losses = build_losses(LossConfig(), model, str(prior_file), crop=CROP)
    net = build_network(NetworkConfig(stacks=2, width=16))
    out = net(torch.rand(2, 1, SIZE, SIZE) * 100)
    keypoints = model.keypoints(torch.zeros(2, 26))
    terms = losses.synthetic(out, keypoints)
    assert set(terms) == {"synthetic_heatmap", "synthetic_depth"}
    heatmap_term = HeatmapTargetLoss(CROP, 1.0)
    expected = 1e3 * sum(heatmap_term([logit], keypoints) for logit in out.logits)
    torch.testing.assert_close(terms["synthetic_heatmap"], expected)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_projection_is_minimal_at_the_true_spheres(model: hand.HandModel, scene: dict) -> None:
    term = projection_term(model)
    truth = float(term(scene["joints"], scene["depth"], scene["cams"]))
    generator = torch.Generator().manual_seed(0)
    for sigma in (2.0, 8.0):
        noisy = scene["joints"] + sigma * torch.randn(scene["joints"].shape, generator=generator)
        assert float(term(noisy, scene["depth"], scene["cams"])) > truth + 1.0
    shifted = scene["joints"] + torch.tensor([6.0, 0.0, 0.0])
    assert float(term(shifted, scene["depth"], scene["cams"])) > truth + 1.0
    assert truth < 1.0  # sphere surfaces reproduce the rendered depth up to float noise
    before, after = descend(lambda j: term(j, scene["depth"], scene["cams"]), shifted)
    assert after < before


def test_projection_parts_see_every_view(model: hand.HandModel, scene: dict) -> None:
    term = projection_term(model)
    wrong_view = scene["joints"].clone()
    wrong_view[:, 2] += torch.tensor([0.0, 10.0, 0.0])  # only view 3's prediction is off
    centres_true = transform_points(term_view_to_view(scene["cams"]), scene["joints"][:, None])
    centres_wrong = transform_points(term_view_to_view(scene["cams"]), wrong_view[:, None])
    assert float(term.model_to_data(centres_true, scene["depth"])) < 1.0
    assert float(term.model_to_data(centres_wrong, scene["depth"])) > 10.0
    assert float(term.data_to_model(centres_wrong, scene["depth"])) > float(term.data_to_model(centres_true,
                                                                                                scene["depth"]))


def term_view_to_view(cams: torch.Tensor) -> torch.Tensor:
    from train.losses import view_to_view

    return view_to_view(cams)


def projection_term(model: hand.HandModel, **changes) -> ProjectionLoss:
    cfg = LossConfig()
    options = dict(data_scale=cfg.projection_data_scale, max_distance_mm=cfg.projection_max_distance_mm,
                   pairs=cfg.projection_pairs)
    return ProjectionLoss(model.radii, CROP, **{**options, **changes})


def test_data_to_model_is_unsigned_and_clipped(model: hand.HandModel) -> None:
    """An observed point costs its distance to the nearest sphere surface, inside or outside, up to the clip."""
    term = projection_term(model, data_scale=1.0, max_distance_mm=20.0)
    centre = torch.zeros(1, 1, 1, 41, 3)
    centre[..., 2] = 1000.0  # every sphere far away ...
    lateral = 0.5 * CUBE / SIZE  # pixel (32, 32) samples crop pixel (32.5, 32.5): this many mm off the centre
    centre[0, 0, 0, 0] = torch.tensor([lateral, lateral, 0.0])  # ... but sphere 0 right behind that pixel
    radius = float(model.radii[0])
    depth = torch.full((1, 1, SIZE, SIZE), CUBE / 2)
    costs = []
    for offset in (-4.0, 4.0, 60.0):  # inside, outside by as much, far outside
        depth[0, 0, SIZE // 2, SIZE // 2] = radius + offset
        costs.append(float(term.data_to_model(centre, depth)) * SIZE * SIZE)
    assert costs[0] == pytest.approx(4.0, abs=0.05) and costs[1] == pytest.approx(4.0, abs=0.05)
    assert costs[2] == pytest.approx(20.0)


def test_projection_pairs_follow_the_schedule(model: hand.HandModel, scene: dict) -> None:
    wrong_view = scene["joints"].clone()
    wrong_view[:, 2] += torch.tensor([0.0, 10.0, 0.0])
    args = (wrong_view, scene["depth"], scene["cams"])
    term = projection_term(model)
    assert term.uses_cross_views(True) and not term.uses_cross_views(False)
    assert projection_term(model, pairs="all").uses_cross_views(False)
    assert not projection_term(model, pairs="same_view").uses_cross_views(True)
    # Same-view pairs only: view 3's error is seen in view 3 alone, so it costs less than in all 3 x 3 pairs.
    assert 0 < float(term(*args, cross_views=False)) < float(term(*args, cross_views=True))


def test_consistency(scene: dict) -> None:
    term = ConsistencyLoss()
    assert float(term(scene["joints"], scene["cams"])) < 1e-8
    off = scene["joints"].clone()
    off[:, 1] += 5.0
    assert float(term(off, scene["cams"])) > 1.0
    before, after = descend(lambda j: term(j, scene["cams"]), off)
    assert after < before


def test_collision(model: hand.HandModel) -> None:
    from train.losses import collision_pairs

    pairs = collision_pairs(model, 6.0)
    term = CollisionLoss(model.radii, pairs, 6.0)
    rest = model.keypoints(torch.zeros(1, 26))
    assert float(term(rest)) == 0.0
    crossed = rest.clone()
    index = (model.sphere_finger == 0).nonzero().flatten()
    middle = (model.sphere_finger == 1).nonzero().flatten()
    crossed[0, index[:3]] = rest[0, middle[:3]] + torch.tensor([2.0, 0.0, 0.0])  # index tip inside middle
    assert float(term(crossed)) > 10.0
    before, after = descend(term, crossed)
    assert after < before
    # A fingertip pushed into the palm centre costs too (the palm-finger pairs).
    into_palm = rest.clone()
    into_palm[0, index[0]] = rest[0, hand.PALM_CENTER]
    assert float(term(into_palm)) > 100.0
    finger = model.sphere_finger[pairs]
    assert not (finger[:, 0] == finger[:, 1]).any()  # never two spheres of one finger (or of the palm)
    assert ((finger < 0).sum(dim=1) == 1).any()


def test_bone_length(model: hand.HandModel) -> None:
    from train.losses import rigid_pairs

    pairs, template = rigid_pairs(model)
    assert len(pairs) == 45  # 25 finger bones and 20 palm pairs
    term = BoneLengthLoss(pairs, template, 0.80, 1.05)
    generator = torch.Generator().manual_seed(1)
    joints = model.keypoints(hand.sample_poses(6, generator=generator))
    assert float(term(joints)) < 1e-6
    stretched = joints.clone()
    a, b = model.bones[0].tolist()
    stretched[2, b] = joints[2, a] + 1.5 * (joints[2, b] - joints[2, a])
    assert float(term(stretched)) > 0.1
    before, after = descend(term, stretched)
    assert after < before
    # Absolute scale: a hand 30% larger than the template costs, whatever the rest of the batch does.
    assert float(term(joints * 1.3)) > 1.0
    # The palm is rigid: moving a knuckle within the palm costs.
    bent = joints.clone()
    bent[:, hand.NYU_JOINT_NAMES.index("F4_KNU1_B")] += torch.tensor([0.0, 0.0, 12.0])
    assert float(term(bent)) > float(term(joints)) + 0.1


def test_prior_term(model: hand.HandModel, prior_file: Path) -> None:
    from train.losses import PriorLoss
    from train.prior import load_prior

    term = PriorLoss(load_prior(prior_file))
    generator = torch.Generator().manual_seed(5)
    joints = model.keypoints(hand.sample_poses(16, generator=generator))
    scrambled = joints[:, torch.randperm(41, generator=generator)]
    assert float(term(joints)) < float(term(scrambled))
    before, after = descend(term, scrambled)
    assert after < before
    assert not any(p.requires_grad for p in term.parameters())


def test_heatmap_mean() -> None:
    term = HeatmapMeanLoss()
    assert float(term([torch.zeros(2, 41, 16, 16)])) == 0.0
    scores = torch.randn(2, 41, 16, 16)
    assert float(term([scores, scores])) == pytest.approx(2 * float(scores.pow(2).mean()))
    before, after = descend(lambda s: term([s]), scores)
    assert after < before


def real_output(joints: torch.Tensor) -> NetworkOutput:
    """A network output whose decoded joints are ``joints`` (B * 3, J, 3)."""
    scores = torch.zeros(joints.shape[0], joints.shape[1], 16, 16)
    return NetworkOutput([spatial_softmax(scores)], [scores], joints, [scores], [joints])


def test_real_losses_combine_weighted_terms(model: hand.HandModel, scene: dict, prior_file: Path) -> None:
    cfg = LossConfig(epoch_steps=100, consistency_steps=10)
    losses = build_losses(cfg, model, str(prior_file), crop=CROP)
    batch = {"depth": scene["depth"], "cams": scene["cams"], "joints": scene["joints"][:, :, :36]}
    off = scene["joints"].clone()
    off[:, 1] += 5.0
    terms = losses.real(real_output(off.reshape(6, 41, 3)), batch, step=3)
    assert set(terms) == {"projection", "consistency", "prior", "collision", "bone_length", "heatmap_mean"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    torch.testing.assert_close(terms["consistency"], 1e-3 * ConsistencyLoss()(off, scene["cams"]))
    late = losses.real(real_output(off.reshape(6, 41, 3)), batch, step=150)
    assert float(late["consistency"]) == 0.0
    same_view = projection_term(model)(off, scene["depth"], scene["cams"], cross_views=False)
    torch.testing.assert_close(late["projection"], same_view)
    with pytest.raises(ValueError, match="3 views"):
        losses.real(real_output(off.reshape(6, 41, 3)[:4]), batch, step=0)


def test_real_losses_through_the_network(model: hand.HandModel, scene: dict, prior_file: Path) -> None:
    losses = build_losses(LossConfig(), model, str(prior_file), crop=CROP)
    net = build_network(NetworkConfig(stacks=2, width=16))
    out = net(scene["depth"].reshape(-1, 1, SIZE, SIZE))
    terms = losses.real(out, {"depth": scene["depth"], "cams": scene["cams"]}, step=0)
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_disabled_terms_are_absent_and_prior_needs_a_file(model: hand.HandModel) -> None:
    cfg = LossConfig(prior=TermConfig(1e-2, enabled=False), projection=TermConfig(1.0, enabled=False))
    losses = build_losses(cfg, model, None, crop=CROP)
    assert "prior" not in losses.terms and "projection" not in losses.terms
    with pytest.raises(ValueError, match=r"loss\.prior\.enabled.*loss\.prior_path"):
        build_losses(LossConfig(), model, None, crop=CROP)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_losses(LossConfig(), model, "missing.pt", crop=CROP)


@pytest.mark.parametrize("term, key, joints, needs", [("supervised", "joints", 36, "labelled"),
                                                      ("fitted", "fitted", 41, "train.pseudo_labels")])
def test_joint_target_terms_read_their_targets(model: hand.HandModel, scene: dict, term: str, key: str, joints: int,
                                               needs: str) -> None:
    cfg = LossConfig(**{term: TermConfig(0.5)}, prior=TermConfig(1e-2, enabled=False))
    losses = build_losses(cfg, model, None, crop=CROP)
    batch = {"depth": scene["depth"], "cams": scene["cams"], key: scene["joints"][:, :, :joints]}
    exact = losses.real(real_output(scene["joints"].reshape(6, 41, 3)), batch, step=0)
    assert float(exact[term]) == 0.0
    off = losses.real(real_output((scene["joints"] + torch.tensor([3.0, 0.0, 0.0])).reshape(6, 41, 3)), batch, step=0)
    assert float(off[term]) == pytest.approx(0.5 * 9.0 / 3)  # (3 mm)^2 on x, mean over x, y, z
    with pytest.raises(ValueError, match=needs):
        losses.real(real_output(scene["joints"].reshape(6, 41, 3)), {"depth": scene["depth"], "cams": scene["cams"]},
                    step=0)


def test_a_nan_pseudo_label_is_no_target(model: hand.HandModel, scene: dict) -> None:
    """Joints the pseudo-labels leave as nan cost nothing and pass no nan gradient; the rest keep their MSE."""
    losses = build_losses(LossConfig(fitted=TermConfig(1.0), prior=TermConfig(1e-2, enabled=False)), model, None,
                          crop=CROP)
    fitted = scene["joints"].clone()
    fitted[:, :, :20] = float("nan")
    predicted = (scene["joints"] + torch.tensor([3.0, 0.0, 0.0])).reshape(6, 41, 3)
    predicted[:, :20] += 50.0  # far off where there is no target: must not count
    predicted.requires_grad_(True)
    cost = losses.real(real_output(predicted), {"depth": scene["depth"], "cams": scene["cams"], "fitted": fitted},
                       step=0)["fitted"]
    assert float(cost.detach()) == pytest.approx(9.0 / 3)
    cost.backward()
    assert torch.isfinite(predicted.grad).all() and float(predicted.grad[:, :20].abs().max()) == 0.0


def test_hand_size_from_the_prediction(model: hand.HandModel) -> None:
    from train.losses import HandSizer, rigid_pairs

    pairs, template = rigid_pairs(model)
    sizer = HandSizer(model.bones, template[:len(model.bones)])
    joints = model.keypoints(hand.sample_poses(4, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(sizer(joints), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(sizer(joints * 1.2), torch.full((4,), 1.2), atol=1e-4, rtol=0)
    # Template lengths scaled to each hand: a uniformly larger hand keeps its proportions and costs nothing,
    # a stretched finger still costs.
    sized = BoneLengthLoss(pairs, template, 0.80, 1.05, sizer)
    absolute = BoneLengthLoss(pairs, template, 0.80, 1.05)
    assert float(sized(joints * 1.2)) < 1e-6 < 1.0 < float(absolute(joints * 1.2))
    stretched = joints.clone()
    a, b = model.bones[0].tolist()
    stretched[:, b] = joints[:, a] + 1.5 * (joints[:, b] - joints[:, a])
    assert float(sized(stretched)) > 0.1
    # The projection term renders spheres with radii scaled the same way.
    term = projection_term(model, sizer=sizer)
    centres = (joints * 1.2)[None, :3]  # one frame, three views
    depth = torch.full((1, 3, SIZE, SIZE), CUBE / 2)
    recorded = []
    original = term.model_to_data
    term.model_to_data = lambda c, d, radii: recorded.append(radii) or original(c, d, radii)
    term(centres, depth, torch.eye(4).expand(1, 3, 4, 4), cross_views=False)
    torch.testing.assert_close(recorded[0][0, :, 0], (model.radii * 1.2).expand(3, -1), atol=1e-3, rtol=0)
