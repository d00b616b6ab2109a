"""Tests of the hand model: forward kinematics, shape, limits, mesh and the pose prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import hand
from hand import anatomy

CUBE = 300.0


@pytest.fixture(scope="module")
def model() -> hand.HandModel:
    return hand.HandModel()


def _poses(n: int, seed: int) -> torch.Tensor:
    return hand.sample_poses(n, torch.Generator().manual_seed(seed))


def test_contract_attributes(model):
    assert model.num_params == 26 and model.num_spheres == 41 and model.shape_dim == hand.SHAPE_DIM == 17
    assert model.radii.shape == (41,) and model.radii.dtype == torch.float32
    assert model.lower.shape == model.upper.shape == (26,)
    assert torch.isinf(model.lower[:6]).all() and torch.isfinite(model.lower[6:]).all()
    assert (model.lower[6:] < model.upper[6:]).all()
    assert len(hand.PARAM_NAMES) == 26 and len(set(hand.PARAM_NAMES)) == 26
    assert len(hand.NYU_JOINT_NAMES) == 36 and hand.NYU_JOINT_NAMES[0] == "F1_KNU3_A"
    assert hand.NYU_JOINT_NAMES[24] == "TH_KNU3_A" and hand.NYU_JOINT_NAMES[32] == "PALM_3"
    assert hand.FINGERS == ("index", "middle", "ring", "little", "thumb") and hand.PALM_CENTER == 32
    assert model.sphere_finger[:6].eq(3).all() and model.sphere_finger[18:24].eq(0).all()
    assert model.sphere_finger[24:30].eq(4).all() and model.sphere_finger[30:].eq(-1).all()
    assert model.bones.shape == (25, 2)
    # Every bone pair joins spheres of one finger.
    assert (model.sphere_finger[model.bones[:, 0]] == model.sphere_finger[model.bones[:, 1]]).all()
    assert (model.radii[[0, 6, 12, 18]] > 6).all() and (model.radii[[0, 6, 12, 18]] < 9).all()
    assert (model.radii[30:] >= 14).all() and (model.radii[30:] <= 20).all()


def test_zero_pose_rest_frame(model):
    kp = model.keypoints(torch.zeros(1, 26))[0]
    assert torch.allclose(kp[hand.PALM_CENTER], torch.zeros(3))
    assert torch.allclose(kp[30:], torch.tensor(anatomy.PALM_SPHERES[:, :3], dtype=torch.float32))
    tips, knuckles = kp[[0, 6, 12, 18]], kp[[5, 11, 17, 23]]
    assert (tips[:, 1] < knuckles[:, 1] - 60).all(), "fingers point up the image (-y)"
    assert torch.allclose(tips[:, 2], torch.zeros(4), atol=1e-5), "straight fingers lie in the palm plane"
    assert kp[18, 0] > kp[0, 0] and kp[24, 0] > kp[18, 0], "right hand seen palm-first: thumb at +x"
    # Finger spheres lie on a straight line from the knuckle to the tip at the zero pose.
    for block in range(4):
        chain = kp[block * 6:block * 6 + 6]
        direction = (chain[0] - chain[5]) / (chain[0] - chain[5]).norm()
        offsets = chain - chain[5]
        assert torch.allclose(torch.cross(offsets, direction.expand_as(offsets), dim=-1), torch.zeros(6, 3),
                              atol=1e-4)


def test_wrist_sides_follow_nyu(model):
    """NYU's PALM_1 is the wrist point on the little-finger side, PALM_2 the one on the thumb side."""
    rest = model.keypoints(torch.zeros(1, 26))[0]
    palm_1, palm_2 = rest[hand.NYU_JOINT_NAMES.index("PALM_1")], rest[hand.NYU_JOINT_NAMES.index("PALM_2")]
    thumb_base, little_base = rest[hand.NYU_JOINT_NAMES.index("TH_KNU1_B")], rest[hand.NYU_JOINT_NAMES.index("F1_KNU1_B")]
    assert little_base[0] < palm_1[0] < rest[hand.PALM_CENTER][0] < palm_2[0] < thumb_base[0]
    assert anatomy.WRIST_LITTLE_SIDE == 30 and anatomy.WRIST_THUMB_SIDE == 31
    # At any pose: PALM_2 nearer the thumb's base joints (TH_KNU2_B..TH_KNU1_B; an opposed thumb tip may reach
    # across the palm) than PALM_1 is, PALM_1 nearer the little finger's knuckle.
    kp = model.keypoints(_poses(50, 13))
    thumb = kp[:, 27:30]
    assert ((thumb - kp[:, 31:32]).norm(dim=-1) < (thumb - kp[:, 30:31]).norm(dim=-1)).all()
    assert ((kp[:, 5] - kp[:, 30]).norm(dim=-1) < (kp[:, 5] - kp[:, 31]).norm(dim=-1)).all()


def test_flexion_curls_towards_the_palm(model):
    pose = torch.zeros(1, 26)
    pose[0, 7] = 1.0  # index MCP flexion
    kp = model.keypoints(pose)[0]
    assert kp[18, 2] < -20, "a flexed finger moves towards the camera (-z), the palm side"
    pose = torch.zeros(1, 26)
    pose[0, 6] = 0.3  # index abduction
    assert model.keypoints(pose)[0, 18, 0] > model.keypoints(torch.zeros(1, 26))[0, 18, 0]


def test_consecutive_finger_distances_are_pose_invariant(model):
    shape = hand.sample_shapes(1, torch.Generator().manual_seed(1)).expand(8, -1)
    poses = torch.cat([torch.zeros(1, 26), _poses(7, 2)]).double()
    kp = model.keypoints(poses, shape.double())
    for block in range(5):
        chain = kp[:, block * 6:block * 6 + 6]
        lengths = (chain[:, 1:] - chain[:, :-1]).norm(dim=-1)
        assert torch.allclose(lengths, lengths[:1].expand_as(lengths), atol=1e-6)
    pairs = (kp[:, model.bones[:, 0]] - kp[:, model.bones[:, 1]]).norm(dim=-1)
    assert torch.allclose(pairs, pairs[:1].expand_as(pairs), atol=1e-6)
    assert (pairs > 5).all()


def test_global_rotation_then_translation(model):
    local = _poses(4, 3)
    local[:, :6] = 0
    posed = local.clone()
    rotvec = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0], [3.0, 0.1, 0.0], [-0.5, 0.5, 0.5]])
    posed[:, :3], posed[:, 3:6] = rotvec, torch.tensor([10.0, -20.0, 30.0])
    rotation = torch.tensor(Rotation.from_rotvec(rotvec.double().numpy()).as_matrix(), dtype=torch.float32)
    expected = model.keypoints(local) @ rotation.transpose(1, 2) + torch.tensor([10.0, -20.0, 30.0])
    assert torch.allclose(model.keypoints(posed), expected, atol=1e-3)


def test_gradients_match_finite_differences(model):
    model64 = hand.HandModel().double()
    pose = _poses(2, 4).double()
    pose[:, 6:] = pose[:, 6:].clamp(-1.0, 1.0)
    pose.requires_grad_(True)
    shape = hand.sample_shapes(2, torch.Generator().manual_seed(4)).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, s: model64.keypoints(p, s), (pose, shape), eps=1e-6, atol=1e-5)
    # The zero rotation is a smooth point of the axis-angle map.
    zero = torch.zeros(1, 26, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: model64.keypoints(p), (zero,), eps=1e-6, atol=1e-5)


def test_shape_scales_lengths(model):
    base = model.keypoints(torch.zeros(1, 26))
    shape = torch.ones(1, hand.SHAPE_DIM)
    shape[0, 0] = 1.1
    scaled = model.keypoints(torch.zeros(1, 26), shape)
    assert torch.allclose(scaled, base * 1.1, atol=1e-4)
    assert torch.allclose(model.sphere_radii(shape)[0], model.radii * 1.1)
    # The index proximal phalanx: shape entry 2 + 3 * 0 + 0 scales the PIP-to-MCP spheres only.
    shape = torch.ones(1, hand.SHAPE_DIM)
    shape[0, 2] = 1.2
    kp = model.keypoints(torch.zeros(1, 26), shape)
    pip_mcp = (kp[0, 21] - kp[0, 23]).norm() / (base[0, 21] - base[0, 23]).norm()
    tip_dip = (kp[0, 18] - kp[0, 19]).norm() / (base[0, 18] - base[0, 19]).norm()
    assert pip_mcp == pytest.approx(1.2, rel=1e-4) and tip_dip == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(kp[0, 24:], base[0, 24:]), "other fingers do not change"
    with pytest.raises(ValueError, match="shape must be"):
        model.keypoints(torch.zeros(2, 26), torch.ones(2, 5))


def test_clamp_and_sampler_limits(model):
    poses = _poses(300, 5)
    assert poses.shape == (300, 26) and poses.dtype == torch.float32
    assert (poses[:, 6:] >= model.lower[6:]).all() and (poses[:, 6:] <= model.upper[6:]).all()
    assert (poses[:, 3:5].abs() <= 15).all() and (poses[:, 5] >= -35).all() and (poses[:, 5] <= 15).all()
    assert (poses[:, :3].norm(dim=1) <= np.pi + 1e-4).all()
    wild = torch.full((1, 26), 10.0)
    clamped = model.clamp(wild)
    assert torch.equal(clamped[0, 6:], model.upper[6:]) and torch.equal(clamped[0, :6], wild[0, :6])


def test_sampler_reproducible_and_covers_the_modes():
    a, b, c = _poses(200, 7), _poses(200, 7), _poses(200, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    flexion = hand.mean_flexion(a)
    assert (flexion > 1.0).float().mean() > 0.1, "closed fists"
    assert (flexion < 0.3).float().mean() > 0.1, "open hands"
    per_finger = a[:, 6:22].reshape(-1, 4, 4)[:, :, 1:].mean(-1)
    mixed = (per_finger.max(1).values > 1.0) & (per_finger.min(1).values < 0.3)
    assert mixed.float().mean() > 0.1, "hands with some fingers open and some closed"
    thumb_cmc = a[:, 23]
    assert (thumb_cmc < 0.1).float().mean() > 0.3 and (thumb_cmc > 0.1).float().mean() > 0.3
    # Rotations cover all directions of the palm normal.
    normals = torch.tensor(Rotation.from_rotvec(a[:, :3].double().numpy()).as_matrix())[:, :, 2]
    assert (normals[:, 2] > 0.5).any() and (normals[:, 2] < -0.5).any()


def test_sampler_synergies_and_thumb_range(model):
    poses = _poses(3000, 14)
    flexion = poses[:, 6:22].reshape(-1, 4, 4)[:, :, 1:]  # (N, finger, MCP/PIP/DIP)
    correlation = torch.corrcoef(flexion[:, :, :2].mean(-1).T)
    neighbours = correlation[[0, 1, 2], [1, 2, 3]]  # index-middle, middle-ring, ring-little
    assert neighbours[0] > 0.5 and neighbours[1] > 0.6 and neighbours[2] > 0.45, "neighbouring fingers flex together"
    assert correlation[0, 3] < neighbours.min(), "index and little the least coupled"
    pip_dip = torch.corrcoef(torch.stack([flexion[:, :, 1].flatten(), flexion[:, :, 2].flatten()]))[0, 1]
    assert pip_dip > 0.8, "the DIP follows the PIP"
    # The thumb's whole motion: 1st..99th percentile of every thumb angle spans most of its joint range.
    thumb, lower, upper = poses[:, 22:26], model.lower[22:26], model.upper[22:26]
    span = (thumb.quantile(0.99, dim=0) - thumb.quantile(0.01, dim=0)) / (upper - lower)
    assert (span > 0.85).all(), f"thumb angles span {span.tolist()} of their ranges"


def test_sample_poses_from_bank():
    bank = _poses(4, 15)
    drawn = hand.sample_poses_from_bank(bank, 50, torch.Generator().manual_seed(2))
    assert drawn.shape == (50, 26)
    assert ((drawn[:, None, 6:] - bank[None, :, 6:]).abs().amax(-1).amin(1) < 1e-6).all()
    assert len(set(drawn[:, 6].tolist())) == 4, "every bank row is drawn"
    assert torch.equal(drawn, hand.sample_poses_from_bank(bank, 50, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="a pose bank is"):
        hand.sample_poses_from_bank(torch.zeros(3, 20), 1)


def test_sample_shapes():
    shapes = hand.sample_shapes(500, torch.Generator().manual_seed(0), spread=0.08)
    assert shapes.shape == (500, hand.SHAPE_DIM)
    assert shapes.mean().item() == pytest.approx(1.0, abs=0.01)
    assert 0.06 < shapes[:, 0].std().item() < 0.1 and (shapes > 0.7).all()
    assert torch.equal(hand.sample_shapes(3, torch.Generator().manual_seed(1)),
                       hand.sample_shapes(3, torch.Generator().manual_seed(1)))


@pytest.mark.cuda
def test_runs_on_cuda(model):
    cuda = hand.HandModel().cuda()
    pose, shape = _poses(3, 9), hand.sample_shapes(3, torch.Generator().manual_seed(9))
    kp = cuda.keypoints(pose.cuda(), shape.cuda())
    vertices, faces = cuda.mesh(pose.cuda(), shape.cuda())
    assert kp.device.type == "cuda" and vertices.device.type == "cuda" and faces.device.type == "cuda"
    assert torch.allclose(kp.cpu(), model.keypoints(pose, shape), atol=1e-3)
    assert torch.allclose(vertices.cpu(), model.mesh(pose, shape)[0], atol=1e-3)


# ---------------------------------------------------------------- mesh
def test_mesh_size_and_closed_parts(model):
    vertices, faces = model.mesh(torch.zeros(1, 26))
    assert 2000 <= faces.shape[0] <= 10000 and faces.dtype == torch.long
    assert faces.min() >= 0 and faces.max() < vertices.shape[1]
    # Closed: every undirected edge is used by exactly two faces, once in each direction (consistent winding).
    directed = [tuple(edge) for edge in torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()]
    edges = set(directed)
    assert len(edges) == len(directed)
    assert all((b, a) in edges for a, b in directed)
    # Outward: the total signed volume is positive.
    tri = vertices[0][faces].double()
    volume = (tri[:, 0] * torch.cross(tri[:, 1], tri[:, 2], dim=-1)).sum() / 6
    assert volume > 1e5  # mm^3; a hand is a few hundred cm^3


def test_mesh_follows_the_skeleton(model):
    poses, shapes = _poses(3, 10), hand.sample_shapes(3, torch.Generator().manual_seed(10))
    vertices, _ = model.mesh(poses, shapes)
    kp = model.keypoints(poses, shapes)
    # Every vertex stays near some sphere surface: the skin hugs the spheres at any pose.
    distance = torch.cdist(vertices, kp) - model.sphere_radii(shapes)[:, None, :]
    nearest = distance.min(-1).values
    assert nearest.abs().max() < 25 and nearest.abs().median() < 6


def test_sphere_centres_inside_the_mesh(model):
    poses = torch.cat([torch.zeros(1, 26), _poses(3, 11)])
    shapes = torch.cat([torch.ones(1, hand.SHAPE_DIM), hand.sample_shapes(3, torch.Generator().manual_seed(11))])
    vertices, faces = model.mesh(poses, shapes)
    kp = model.keypoints(poses, shapes)
    for b in range(len(poses)):
        winding = hand.winding_number(vertices[b].double(), faces, kp[b].double())
        assert (winding > 0.5).all(), f"pose {b}: spheres {torch.nonzero(winding <= 0.5).flatten().tolist()} outside"
        outside = kp[b].mean(0) + torch.tensor([[0.0, 0.0, 200.0], [300.0, 0.0, 0.0]])
        assert (hand.winding_number(vertices[b].double(), faces, outside.double()).abs() < 1e-6).all()


def test_mesh_and_sphere_silhouettes_agree(model):
    renderer = pytest.importorskip("renderer_cuda")
    size = 64
    poses = torch.cat([torch.zeros(1, 26), _poses(7, 12)])
    shapes = torch.cat([torch.ones(1, hand.SHAPE_DIM), hand.sample_shapes(7, torch.Generator().manual_seed(12))])
    scale = torch.tensor([size / CUBE, size / CUBE, 1.0])
    shift = torch.tensor([size / 2, size / 2, 0.0])
    vertices, faces = model.mesh(poses, shapes)
    mesh = renderer.rasterize((vertices * scale + shift).contiguous(), faces.int(), size, size, background=CUBE / 2)
    spheres = renderer.render_spheres(model.keypoints(poses, shapes) * scale + shift, model.sphere_radii(shapes),
                                      size, size, background=CUBE / 2, pixels_per_mm=size / CUBE)
    mesh_mask, sphere_mask = mesh < CUBE / 2, spheres < CUBE / 2
    iou = (mesh_mask & sphere_mask).sum((1, 2)) / (mesh_mask | sphere_mask).sum((1, 2))
    assert (iou >= 0.8).all(), f"silhouette IoU {iou.tolist()}"
    # Where both are seen, the mesh is in front of or near the sphere surfaces (it wraps them).
    both = mesh_mask & sphere_mask
    assert ((mesh - spheres)[both] < 5).float().mean() > 0.95


def test_forearm_leaves_the_wrist_along_the_arm() -> None:
    model = hand.HandModel()
    pose = hand.sample_poses(3, torch.Generator().manual_seed(4))
    radii = torch.tensor([[30.0, 20.0], [25.0, 18.0], [0.0, 0.0]])
    vertices, faces = model.forearm(pose, radii_mm=radii, length_mm=250.0)
    assert vertices.shape == (3, 34, 3) and faces.shape == (64, 3) and int(faces.max()) == 33
    wrist = model.keypoints(pose)[:, hand.NYU_JOINT_NAMES.index("PALM_6")]
    centre = model.keypoints(pose)[:, hand.PALM_CENTER]
    near, far = vertices[:, -2], vertices[:, -1]  # the cap centres
    torch.testing.assert_close((near - wrist).norm(dim=-1), torch.full((3,), 8.0), atol=1e-3, rtol=0)
    torch.testing.assert_close((far - wrist).norm(dim=-1), torch.full((3,), 250.0), atol=1e-3, rtol=0)
    assert ((far - centre).norm(dim=-1) > (wrist - centre).norm(dim=-1) + 200).all()  # away from the fingers
    # Zero radii collapse the arm onto its axis: every triangle has zero area, nothing is drawn.
    triangles = vertices[2][faces]
    area = torch.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0], dim=-1).norm(dim=-1)
    assert float(area.max()) < 1e-2  # mm^2: float rounding only
    bent, _ = model.forearm(pose, radii_mm=radii, length_mm=250.0, wrist_flexion=torch.full((3,), 0.4))
    assert float((bent[:, -1] - far).norm(dim=-1).min()) > 50  # flexion turns the arm about the wrist
