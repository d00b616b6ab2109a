"""Stacked hourglass network: crop depth in, per-sphere heatmaps + depth maps out, soft-argmax to 3D.

Architecture (facts of the reference prototype, our own code): a 5x5 stride-2 stem convolution and a
max-pool bring an S x S crop to S/4 x S/4 (16 x 16 for S = 64); pre-activation bottleneck residual blocks
with GroupNorm; ``stacks`` hourglasses of ``hourglass_depth`` levels, each followed by a 1x1 head that
scores 2 * J channels (J raw heatmap scores, J depth maps); intermediate heads feed back into the trunk.

Decoding (per stack): heatmap = spatial softmax of ``softmax_temperature * score``; the (u, v) position is
the heatmap expectation of the cell centres mapped to crop pixels (a cell is S / H pixels wide), turned
into crop-frame x, y in mm with :meth:`geometry.Crop.from_pixels`; z = sum(heatmap * depth map).
Input depth is in mm and scaled by ``1 / depth_scale_mm`` inside; depth-map outputs are multiplied by
``depth_scale_mm`` so that the network works with values of order one.

Precision: under autocast (``optim.amp``) the trunk runs in bf16/fp16, but each stack's 1x1 head and the
decoding run in fp32, so every field of :class:`NetworkOutput` is fp32 whatever the autocast state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F

from geometry import Crop
from train.schema import Range


@dataclass
class NetworkConfig:
    """Size of the stacked hourglass (defaults: the reference prototype)."""

    stacks: Annotated[int, Range(ge=1)] = 2  # number of hourglass stacks (intermediate supervision on each)
    width: Annotated[int, Range(ge=1)] = 128  # bottleneck channels; features between blocks carry 2 * width channels
    hourglass_depth: Annotated[int, Range(ge=1)] = 2  # down-sampling levels inside one hourglass (16 -> 4 for depth 2)
    blocks: Annotated[int, Range(ge=1)] = 1  # residual blocks per hourglass stage
    softmax_temperature: Annotated[float, Range(gt=0)] = 20.0  # scores are multiplied by this before the spatial softmax
    depth_scale_mm: Annotated[float, Range(gt=0)] = 100.0  # input depth is divided by this; depth-map outputs multiplied by it

    def __post_init__(self) -> None:
        if self.width % 2:
            raise ValueError(f"model.width must be even, got {self.width}")


@dataclass
class NetworkOutput:
    """What :class:`HourglassNet` returns (batch first everywhere; J spheres, H x H heatmap grid).

    The first three fields are the contract; ``logits`` (raw heatmap scores, before the softmax) and
    ``stack_joints`` (decoded joints of every stack, the last equal to ``joints``) feed the losses.
    """

    heatmaps: list[torch.Tensor]  # per stack (B, J, H, H) spatial-softmax probabilities
    depthmaps: list[torch.Tensor]  # per stack (B, J, H, H) mm
    joints: torch.Tensor  # (B, J, 3) mm, crop frame, from the last stack
    logits: list[torch.Tensor] = field(default_factory=list)  # per stack (B, J, H, H) raw scores
    stack_joints: list[torch.Tensor] = field(default_factory=list)  # per stack (B, J, 3) mm

    def narrow(self, start: int, length: int) -> NetworkOutput:
        """The outputs of batch items ``start .. start + length - 1`` (e.g. split synthetic from real)."""
        def cut(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.narrow(0, start, length) for t in tensors]

        return NetworkOutput(cut(self.heatmaps), cut(self.depthmaps), self.joints.narrow(0, start, length),
                             cut(self.logits), cut(self.stack_joints))


def _norm(channels: int) -> nn.GroupNorm:
    # The prototype uses 16 groups; small CI widths need a divisor of the channel count.
    return nn.GroupNorm(math.gcd(16, channels), channels)


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: norm-relu-1x1, norm-relu-3x3, norm-relu-1x1 to 2 * planes, + skip."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = 2 * planes
        self.body = nn.Sequential(
            _norm(in_channels), nn.ReLU(), nn.Conv2d(in_channels, planes, 1),
            _norm(planes), nn.ReLU(), nn.Conv2d(planes, planes, 3, stride=stride, padding=1),
            _norm(planes), nn.ReLU(), nn.Conv2d(planes, out_channels, 1),
        )
        self.skip = (nn.Identity() if in_channels == out_channels and stride == 1
                     else nn.Conv2d(in_channels, out_channels, 1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def _residual(in_channels: int, planes: int, blocks: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, planes)]
    layers += [Bottleneck(2 * planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Hourglass(nn.Module):
    """Recursive encoder-decoder at constant width: skip branch + pooled branch, upsampled and added."""

    def __init__(self, planes: int, depth: int, blocks: int) -> None:
        super().__init__()
        channels = 2 * planes
        self.skip = _residual(channels, planes, blocks)
        self.down = _residual(channels, planes, blocks)
        self.inner = Hourglass(planes, depth - 1, blocks) if depth > 1 else _residual(channels, planes, blocks)
        self.up = _residual(channels, planes, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)


def check_crop_fits(crop: Crop, cfg: NetworkConfig) -> None:
    """The network's rule for the crop size: a multiple of 4 (the stem's stride), and large enough for the
    hourglass's down-sampling levels; ValueError saying so."""
    if crop.size % 4 or crop.size < 4 * 2 ** cfg.hourglass_depth:
        raise ValueError(f"crop size {crop.size} must be a multiple of 4 and at least "
                         f"{4 * 2 ** cfg.hourglass_depth} for model.hourglass_depth={cfg.hourglass_depth}")


class HourglassNet(nn.Module):
    """Stacked hourglass regressing J spheres from an S x S crop; see the module docstring."""

    def __init__(self, cfg: NetworkConfig, *, num_spheres: int = 41, crop: Crop = Crop()) -> None:
        super().__init__()
        check_crop_fits(crop, cfg)
        self.cfg, self.num_spheres, self.crop = cfg, num_spheres, crop
        size = crop.size
        planes, channels, stem = cfg.width, 2 * cfg.width, cfg.width // 2
        # Prototype trunk: 5x5/2 conv, residual to `width` channels, max-pool, residual, residual to 2*width.
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem, 5, stride=2, padding=2), _norm(stem), nn.ReLU(),
            _residual(stem, stem, 1), nn.MaxPool2d(2), _residual(planes, stem, 1), _residual(planes, planes, 1),
        )
        self.hourglasses = nn.ModuleList(Hourglass(planes, cfg.hourglass_depth, cfg.blocks)
                                         for _ in range(cfg.stacks))
        self.features = nn.ModuleList(
            nn.Sequential(_residual(channels, planes, cfg.blocks), nn.Conv2d(channels, channels, 1),
                          _norm(channels), nn.ReLU()) for _ in range(cfg.stacks))
        self.heads = nn.ModuleList(nn.Conv2d(channels, 2 * num_spheres, 1) for _ in range(cfg.stacks))
        # Intermediate supervision: each stack's features and scores are fed back into the trunk.
        self.feature_back = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(cfg.stacks - 1))
        self.score_back = nn.ModuleList(nn.Conv2d(2 * num_spheres, channels, 1) for _ in range(cfg.stacks - 1))
        self.register_buffer("cell_centres_px", cell_centres(size, size // 4), persistent=False)

    def forward(self, depth: torch.Tensor) -> NetworkOutput:
        """depth: (B, 1, S, S) crop depth in mm -> :class:`NetworkOutput`."""
        size = self.crop.size
        if depth.dim() != 4 or depth.shape[1] != 1 or depth.shape[-2:] != (size, size):
            raise ValueError(f"expected crop depth of shape (B, 1, {size}, {size}), "
                             f"got {tuple(depth.shape)}")
        x = self.stem(depth / self.cfg.depth_scale_mm)
        logits, heatmaps, depthmaps, joints = [], [], [], []
        for i in range(self.cfg.stacks):
            y = self.features[i](self.hourglasses[i](x))
            # The head and the decoding run in fp32 even under autocast: a bf16 soft-argmax or depth map
            # is off by millimetres (bf16 keeps 8 significant bits), and every loss reads these outputs.
            with torch.autocast(y.device.type, enabled=False):
                score = self.heads[i](y.float())
                logit, depthmap = score[:, :self.num_spheres], score[:, self.num_spheres:] * self.cfg.depth_scale_mm
                heatmap = spatial_softmax(logit, self.cfg.softmax_temperature)
                joints.append(decode_joints(heatmap, depthmap, self.cell_centres_px, self.crop))
            logits.append(logit)
            heatmaps.append(heatmap)
            depthmaps.append(depthmap)
            if i < self.cfg.stacks - 1:
                x = x + self.feature_back[i](y) + self.score_back[i](score)
        return NetworkOutput(heatmaps, depthmaps, joints[-1], logits, joints)


def spatial_softmax(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over the last two dims of (..., H, W) scores multiplied by ``temperature``."""
    flat = (scores * temperature).flatten(-2)
    return torch.softmax(flat.float(), dim=-1).to(scores.dtype).view_as(scores)


def decode_joints(heatmap: torch.Tensor, depthmap: torch.Tensor, cell_centres_px: torch.Tensor,
                  crop: Crop) -> torch.Tensor:
    """Soft-argmax: (B, J, H, W) probabilities and depth maps (mm) -> (B, J, 3) crop-frame mm.

    ``cell_centres_px`` (H,) holds the crop-pixel coordinate of each cell centre, ``(c + 0.5) * S / H``.
    """
    u = (heatmap.sum(dim=-2) * cell_centres_px).sum(dim=-1)  # marginal over rows, expectation over columns
    v = (heatmap.sum(dim=-1) * cell_centres_px).sum(dim=-1)
    z = (heatmap * depthmap).sum(dim=(-2, -1))
    return crop.from_pixels(torch.stack([u, v, z], dim=-1))


def heatmap_spread_px(heatmap: torch.Tensor, cell_centres_px: torch.Tensor) -> torch.Tensor:
    """(B, J, H, W) probabilities -> (B, J) root-mean-square distance (crop pixels) of the heatmap's mass from
    its soft-argmax position: how unsure the network is where each joint lies in the image (small: one peak)."""
    spread = []
    for marginal in (heatmap.sum(dim=-2), heatmap.sum(dim=-1)):  # over columns (u), then over rows (v)
        mean = (marginal * cell_centres_px).sum(dim=-1, keepdim=True)
        spread.append((marginal * (cell_centres_px - mean).square()).sum(dim=-1))
    return (spread[0] + spread[1]).sqrt()


def cell_centres(size: int, heatmap_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Crop-pixel coordinates (heatmap_size,) of the heatmap cell centres for an S x S crop."""
    return (torch.arange(heatmap_size, dtype=torch.float32, device=device) + 0.5) * (size / heatmap_size)


def build_network(cfg: NetworkConfig, *, num_spheres: int = 41, crop: Crop = Crop()) -> HourglassNet:
    """The hourglass network for the crops of ``crop``."""
    return HourglassNet(cfg, num_spheres=num_spheres, crop=crop)
