"""Stacked hourglass network: shapes, soft-argmax decoding, gradients."""

from __future__ import annotations

import pytest
import torch

from geometry import Crop
from train.network import (NetworkConfig, NetworkOutput, build_network, cell_centres, decode_joints,
                           heatmap_spread_px, spatial_softmax)
from train.schema import from_dict

TINY = NetworkConfig(stacks=1, width=16)


@pytest.mark.parametrize("cfg, size, num_spheres", [
    (TINY, 64, 41),
    (NetworkConfig(stacks=2, width=16), 64, 41),
    (NetworkConfig(stacks=3, width=8, hourglass_depth=1, blocks=2), 32, 5),
])
def test_output_shapes(cfg: NetworkConfig, size: int, num_spheres: int) -> None:
    net = build_network(cfg, num_spheres=num_spheres, crop=Crop(size))
    out = net(torch.rand(3, 1, size, size) * 300 - 150)
    grid = size // 4
    assert len(out.heatmaps) == len(out.depthmaps) == len(out.logits) == len(out.stack_joints) == cfg.stacks
    for heatmap, depthmap in zip(out.heatmaps, out.depthmaps):
        assert heatmap.shape == depthmap.shape == (3, num_spheres, grid, grid)
        torch.testing.assert_close(heatmap.sum(dim=(-2, -1)), torch.ones(3, num_spheres))
    assert out.joints.shape == (3, num_spheres, 3)
    torch.testing.assert_close(out.joints, out.stack_joints[-1])


def test_default_config_is_the_prototype_size() -> None:
    cfg = NetworkConfig()
    assert (cfg.stacks, cfg.width, cfg.hourglass_depth, cfg.softmax_temperature) == (2, 128, 2, 20.0)


def test_bad_input_shape_is_named() -> None:
    net = build_network(TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        net(torch.zeros(2, 64, 64))


def test_bad_config_is_named() -> None:  # configs and checkpoint model sections load through train.schema
    with pytest.raises(ValueError, match="'model.stacks': 0 must be >= 1"):
        from_dict(NetworkConfig, {"stacks": 0}, prefix="model.")


def test_soft_argmax_of_one_hot_heatmap_is_the_cell_centre() -> None:
    size, cube, grid = 64, 300.0, 16
    heatmap = torch.zeros(1, 3, grid, grid)
    cells = [(0, 0), (5, 11), (15, 7)]  # (row, column)
    for joint, (row, col) in enumerate(cells):
        heatmap[0, joint, row, col] = 1.0
    depthmap = torch.full((1, 3, grid, grid), 999.0)
    for joint, (row, col) in enumerate(cells):
        depthmap[0, joint, row, col] = 10.0 * joint - 7.0
    crop = Crop(size, cube)
    joints = decode_joints(heatmap, depthmap, cell_centres(size, grid), crop)
    cell = size / grid
    expected = torch.tensor([[(col + 0.5) * cell, (row + 0.5) * cell, 10.0 * j - 7.0]
                             for j, (row, col) in enumerate(cells)])
    torch.testing.assert_close(joints[0], crop.from_pixels(expected))
    # The centre of the crop (x = y = 0) lies between cells 7 and 8.
    assert abs(crop.from_pixels(torch.tensor([8 * cell, 8 * cell, 0.0]))).sum() == 0


def test_peaked_softmax_decodes_close_to_the_peak() -> None:
    scores = torch.zeros(1, 1, 16, 16)
    scores[0, 0, 4, 9] = 1.0
    joints = decode_joints(spatial_softmax(scores, 20.0), torch.zeros(1, 1, 16, 16), cell_centres(64, 16), Crop())
    target = Crop().from_pixels(torch.tensor([9.5 * 4, 4.5 * 4, 0.0]))
    assert torch.allclose(joints[0, 0], target, atol=1e-3)


def test_symmetric_heatmap_decodes_between_cells() -> None:
    heatmap = torch.zeros(1, 1, 16, 16)
    heatmap[0, 0, 3, 4] = heatmap[0, 0, 3, 5] = 0.5
    joints = decode_joints(heatmap, torch.zeros_like(heatmap), cell_centres(64, 16), Crop())
    assert torch.allclose(joints[0, 0], Crop().from_pixels(torch.tensor([5.0 * 4, 3.5 * 4, 0.0])))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(stacks=2, width=16))
    out = net(torch.rand(2, 1, 64, 64) * 100)
    loss = out.joints.pow(2).mean() + sum(l.pow(2).mean() for l in out.logits)
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert sum(p.grad.abs().sum() for p in net.parameters()) > 0


def test_input_is_scaled_inside() -> None:
    # The stem must see depth / depth_scale_mm (the reference feeds depth / 100). The outputs cannot tell:
    # GroupNorm after the stem cancels an input scale, so the test reads what the stem receives.
    net = build_network(TINY).eval()
    seen = []
    net.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    depth = torch.full((1, 1, 64, 64), 150.0)
    depth[..., 20:40, 20:40] = -35.0
    with torch.no_grad():
        out = net(depth)
    assert TINY.depth_scale_mm == 100.0 and len(seen) == 1
    torch.testing.assert_close(seen[0], depth / 100.0)
    assert torch.isfinite(out.joints).all() and out.logits[0].abs().max() < 100


def test_narrow_splits_every_field() -> None:
    net = build_network(NetworkConfig(stacks=2, width=16))
    out = net(torch.rand(5, 1, 64, 64))
    part = out.narrow(2, 3)
    assert isinstance(part, NetworkOutput) and part.joints.shape[0] == 3
    assert all(t.shape[0] == 3 for t in part.heatmaps + part.depthmaps + part.logits + part.stack_joints)
    torch.testing.assert_close(part.joints, out.joints[2:])


def test_heatmap_spread_is_the_rms_distance_from_the_soft_argmax() -> None:
    centres = cell_centres(64, 16)  # 4 px cells
    sharp = torch.zeros(1, 2, 16, 16)
    sharp[0, 0, 5, 7] = 1.0
    sharp[0, 1, 5, 7] = sharp[0, 1, 5, 9] = 0.5  # two cells 8 px apart in u: 4 px from their mean
    torch.testing.assert_close(heatmap_spread_px(sharp, centres), torch.tensor([[0.0, 4.0]]))
    uniform = torch.full((1, 1, 16, 16), 1 / 256)
    assert float(heatmap_spread_px(uniform, centres)) > 20.0  # sqrt(2) * 64 / sqrt(12) px
