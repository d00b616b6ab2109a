"""Training losses: synthetic supervision and the self-supervised fitting terms on real multi-view depth.

Every term is its own module computing an *unweighted* scalar; :class:`Losses` applies the weights and
switches of :class:`LossConfig` (YAML keys ``loss.<term>.weight`` / ``loss.<term>.enabled``) and returns
dicts of already weighted scalars named after the terms. Terms that act on predicted joints are summed
over the hourglass stacks (intermediate supervision, as the reference does).

Units: millimetres throughout (crop frame of each view); the prior works on joints / 100.
Definitions (``r`` = model sphere radii, ``d`` = distances between sphere centres):

- ``synthetic_heatmap``: MSE between the raw heatmap scores and Gaussian targets (peak 1, std
  ``heatmap_sigma_cells`` cells) centred on the true keypoints' cell coordinates.
- ``synthetic_depth``: MSE (mm^2) between decoded and true joint depth z.
- ``projection``: for each frame, the spheres predicted in view k (centres = predicted joints, radii = the
  hand model's radii) are mapped into the crop frame of every view j (``inv(cams[j]) @ cams[k]``) and
  (a) model-to-data: rendered with the analytic sphere renderer and compared with view j's observed depth,
  squared error (mm^2) where either image is foreground, averaged over all pixels;
  (b) data-to-model: every foreground pixel of view j, back-projected to a 3D point p, costs its unsigned
  distance to the nearest sphere surface, ``min_i abs(|p - c_i| - r_i)``, clipped at
  ``projection_max_distance_mm`` and times ``projection_data_scale``, averaged over all pixels (the
  reference's definition; its clip is 50 mm, ours 20: see ``LossConfig``). Both parts are summed over the
  view pairs and averaged over frames; ``projection_pairs`` picks the pairs (``schedule``: all 3 x 3 during
  the consistency phase of an epoch, then only the same-view pairs, as the reference does).
- ``consistency``: joints of the 3 views mapped to view 1's frame (``cams[k]``); MSE (mm^2) to their
  per-coordinate median over views. Active only in the consistency phase, ``step % epoch_steps <
  consistency_steps``.
- ``prior``: negative ELBO (nats per pose) of the palm-centred joints / 100 under the frozen pose VAE
  of :mod:`train.prior`.
- ``collision``: for every pair of :func:`collision_pairs` (spheres of different fingers, and palm and
  finger spheres clear of each other at the rest pose) the penetration depth ``r_i + r_j - d_ij`` (mm)
  beyond an allowed ``collision_tolerance_mm``: ``relu(r_i + r_j - d_ij - tolerance)^2``, summed over
  pairs, averaged over poses.
- ``bone_length``: for every rigid pair of :func:`rigid_pairs` (25 finger bones, 20 palm pairs) the
  length l against its template length L at the hand model's rest pose:
  ``relu(bone_min_ratio * L - l)^2 + relu(l - bone_max_ratio * L)^2`` (mm^2), averaged over poses and
  pairs: absolute scale, and a rigid palm.
- ``supervised`` (off by default): MSE (mm^2) of each view's predicted NYU joints against the labels.
- ``fitted`` (off by default): MSE (mm^2) of each view's predicted spheres against the fitted pseudo-labels
  that ``python -m train.pseudo_labels`` adds to unlabelled shards (``fitted.npy``: a frozen network's
  views fused and fitted to the depth by the fitting terms; see that module).
- ``heatmap_mean``: mean squared raw heatmap score on real images (the reference's "hm_mean": a weak L2
  pull of the pre-softmax scores towards zero, keeping real-image heatmaps in the value range the
  synthetic targets train so the temperature softmax does not saturate into a hard arg-max).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Callable, Literal

import torch
from torch import nn
from torch.nn import functional as F

from geometry import Crop, invert_transform, transform_points
from renderer_cuda import render_spheres
from train.network import NetworkOutput
from train.prior import load_prior, prior_inputs
from train.schema import Range

if TYPE_CHECKING:  # only for annotations: the hand package is passed in by the caller
    from hand import HandModel

NUM_VIEWS = 3
FITTED_KEY = "fitted"  # the batch key of the pseudo-labels that loss.fitted reads
FITTED_ENTRY = f"{FITTED_KEY}.npy"  # their shard entry (train.pseudo_labels writes it)
ProjectionPairs = Literal["schedule", "all", "same_view"]
HandSize = Literal["template", "predicted"]


@dataclass
class TermConfig:
    """One loss term's switch and weight."""

    weight: Annotated[float, Range(ge=0)]  # multiplies the unweighted term
    enabled: bool = True  # False: the term is neither computed nor returned


def _term(weight: float) -> TermConfig:
    return field(default_factory=lambda: TermConfig(weight))


@dataclass
class LossConfig:
    """Loss terms (defaults: the reference weights) and their settings."""

    synthetic_heatmap: TermConfig = _term(1e3)  # raw heatmap scores vs Gaussian targets (synthetic)
    synthetic_depth: TermConfig = _term(0.1)  # decoded joint depth MSE, mm^2 (synthetic)
    projection: TermConfig = _term(1.0)  # mutual projection, model-to-data + data-to-model (real)
    consistency: TermConfig = _term(1e-3)  # multi-view joint agreement, mm^2 (real)
    prior: TermConfig = _term(1e-2)  # pose VAE negative ELBO of joints / 100 (real)
    collision: TermConfig = _term(1.0)  # finger-finger and palm-finger sphere penetration, mm^2 (real)
    bone_length: TermConfig = _term(1.0)  # rigid pair lengths outside the band around the template (real)
    heatmap_mean: TermConfig = _term(1e-2)  # mean squared raw heatmap score (real)
    supervised: TermConfig = field(default_factory=lambda: TermConfig(0.1, enabled=False))  # labelled real joints
    fitted: TermConfig = field(default_factory=lambda: TermConfig(0.1, enabled=False))  # fitted pseudo-labels
    prior_path: str | None = None  # pose VAE file written by `python -m train.prior`
    heatmap_sigma_cells: Annotated[float, Range(gt=0)] = 1.0  # std of the synthetic Gaussian heatmap targets, heatmap cells
    projection_data_scale: Annotated[float, Range(ge=0)] = 500.0  # data-to-model cost per mm of distance to the nearest sphere surface
    # Data-to-model distances are clipped here: observed depth farther from every sphere (the forearm,
    # clutter) costs a constant and pulls nothing. The reference clips at 50 mm; at 50 the forearm drags
    # the fit off the hand (the fitting test), so the default is 20.
    projection_max_distance_mm: Annotated[float, Range(gt=0)] = 20.0
    projection_pairs: ProjectionPairs = "schedule"  # view pairs: all 3 x 3 in the consistency phase, then same-view
    # Sphere radii (projection) and bone lengths (bone_length) at the template's size (the reference) or
    # scaled to each predicted hand (HandSizer).
    hand_size: HandSize = "template"
    # The template's radii and bone lengths times this (a subject's calibrated size; train.pseudo_labels).
    hand_scale: Annotated[float, Range(gt=0)] = 1.0
    consistency_steps: Annotated[int, Range(ge=0)] = 1500  # consistency is active for the first this many steps of each epoch
    epoch_steps: int = 2910  # steps per epoch (reference: 72,757 frames / 25); <= 0: consistency always on
    collision_tolerance_mm: Annotated[float, Range(ge=0)] = 6.0  # sphere interpenetration allowed before collision costs
    bone_min_ratio: Annotated[float, Range(gt=0)] = 0.80  # rigid pairs shorter than this times their template length cost
    bone_max_ratio: Annotated[float, Range(gt=0)] = 1.05  # rigid pairs longer than this times their template length cost

    def terms(self) -> dict[str, TermConfig]:
        return {name: getattr(self, name) for name in SYNTHETIC_TERMS + REAL_TERMS}


SYNTHETIC_TERMS = ("synthetic_heatmap", "synthetic_depth")
REAL_TERMS = ("projection", "consistency", "prior", "collision", "bone_length", "heatmap_mean", "supervised",
              "fitted")


class HeatmapTargetLoss(nn.Module):
    """MSE of raw heatmap scores against Gaussian targets at the true keypoints, summed over stacks."""

    def __init__(self, crop: Crop, sigma_cells: float) -> None:
        super().__init__()
        self.crop, self.sigma = crop, sigma_cells

    def targets(self, keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, J, 3) crop-frame mm -> (B, J, H, W) Gaussians with peak 1 at the keypoints' cells."""
        pixels = self.crop.to_pixels(keypoints)
        # Cell c covers crop pixels [c, c + 1) * S / H; its centre has cell coordinate c.
        cu = pixels[..., 0] * (width / self.crop.size) - 0.5
        cv = pixels[..., 1] * (height / self.crop.size) - 0.5
        cols = torch.arange(width, device=keypoints.device, dtype=keypoints.dtype)
        rows = torch.arange(height, device=keypoints.device, dtype=keypoints.dtype)
        du = (cols - cu[..., None]) ** 2  # (B, J, W)
        dv = (rows - cv[..., None]) ** 2  # (B, J, H)
        return torch.exp(-(dv[..., :, None] + du[..., None, :]) / (2 * self.sigma ** 2))

    def forward(self, logits: list[torch.Tensor], keypoints: torch.Tensor) -> torch.Tensor:
        target = self.targets(keypoints, *logits[0].shape[-2:])
        return sum(F.mse_loss(score.float(), target) for score in logits)


class JointDepthLoss(nn.Module):
    """MSE (mm^2) of decoded joint depth against the true depth, summed over stacks."""

    def forward(self, stack_joints: list[torch.Tensor], keypoints: torch.Tensor) -> torch.Tensor:
        return sum(F.mse_loss(joints[..., 2].float(), keypoints[..., 2]) for joints in stack_joints)


def view_to_view(cams: torch.Tensor) -> torch.Tensor:
    """(B, V, 4, 4) view-k-to-view-1 transforms -> (B, V, V, 4, 4) whose [b, j, k] maps view k to view j."""
    return invert_transform(cams)[:, :, None] @ cams[:, None, :]


class HandSizer(nn.Module):
    """The size of predicted hands relative to the template: per hand, the median over the finger bones of
    predicted length / template length (detached, clamped to [0.6, 1.6]).

    The fitting terms otherwise compare every subject with the template's sphere radii and bone lengths:
    a hand 20% larger than the template can then lower the projection cost only by misplacing its joints
    over the depth it cannot cover, and the bone band pulls it smaller."""

    def __init__(self, bones: torch.Tensor, template: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bones", bones.long().cpu(), persistent=False)
        self.register_buffer("template", template.detach().float().cpu(), persistent=False)

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        """joints (..., J, 3) mm -> (...) scale factors."""
        joints = joints.detach().float()
        length = (joints[..., self.bones[:, 0], :] - joints[..., self.bones[:, 1], :]).norm(dim=-1)
        return (length / self.template).median(dim=-1).values.clamp(0.6, 1.6)


@dataclass
class RealInputs:
    """What every self-supervised term reads: one real batch and the network's predictions for it."""

    stack_joints: list[torch.Tensor]  # per hourglass stack, (B, V, J, 3) mm, each view in its own crop frame
    logits: list[torch.Tensor]  # per stack, (B * V, J, H, W) raw heatmap scores
    depth: torch.Tensor  # (B, V, S, S) observed crop depth, mm
    cams: torch.Tensor  # (B, V, 4, 4) view-k-to-view-1 transforms
    labels: torch.Tensor | None  # (B, V, 36, 3) labelled joints (only the supervised term reads them)
    fitted: torch.Tensor | None  # (B, V, J, 3) fitted pseudo-labels of train.pseudo_labels (the fitted term)
    consistency_phase: bool  # the first ``consistency_steps`` of an epoch: consistency on, all view pairs


class ProjectionLoss(nn.Module):
    """Mutual projection of predicted spheres against observed depth (see the module docstring)."""

    def __init__(self, radii: torch.Tensor, crop: Crop, *, data_scale: float,
                 max_distance_mm: float, pairs: ProjectionPairs, sizer: HandSizer | None = None) -> None:
        super().__init__()
        self.register_buffer("radii", radii.detach().float().clone(), persistent=False)
        self.crop = crop
        self.data_scale, self.max_distance, self.pairs = data_scale, max_distance_mm, pairs
        self.sizer = sizer  # None: the template radii; else radii scaled to each predicted hand
        self.background = crop.background_depth

    def forward(self, joints: torch.Tensor, depth: torch.Tensor, cams: torch.Tensor, *,
                cross_views: bool = True) -> torch.Tensor:
        """joints (B, V, J, 3) mm, observed depth (B, V, S, S) mm, cams (B, V, 4, 4) -> scalar.

        ``cross_views``: every view's spheres in every view (3 x 3 pairs), else each view in its own only.
        """
        joints = joints.float()
        radii = self.radii if self.sizer is None else self.radii * self.sizer(joints)[..., None]  # (J,) or (B, V, J)
        radii = radii.expand(joints.shape[:-1])  # (B, Vk, J)
        if cross_views:
            centres = transform_points(view_to_view(cams.float()), joints[:, None])  # (B, Vj, Vk, J, 3)
            radii = radii[:, None].expand(centres.shape[:-1])
        else:
            centres, radii = joints[:, :, None], radii[:, :, None]  # (B, V, 1, J, 3), (B, V, 1, J)
        return self.model_to_data(centres, depth.float(), radii) + self.data_to_model(centres, depth.float(), radii)

    def uses_cross_views(self, consistency_phase: bool) -> bool:
        """Whether this step pairs views: always, never, or (``schedule``) during the consistency phase."""
        return self.pairs == "all" or (self.pairs == "schedule" and consistency_phase)

    def model_to_data(self, centres: torch.Tensor, depth: torch.Tensor,
                      radii: torch.Tensor | None = None) -> torch.Tensor:
        """centres (B, Vj, K, J, 3) in view j's frame (radii (B, Vj, K, J), default the template's) -> mean
        squared depth difference, summed over pairs."""
        batch, views, sources, num, _ = centres.shape
        radii = (self.radii if radii is None else radii).expand(centres.shape[:-1]).reshape(-1, num)
        size = self.crop.size
        pixels = self.crop.to_pixels(centres).reshape(-1, num, 3)
        rendered = render_spheres(pixels, radii, size, size, background=self.background,
                                  pixels_per_mm=size / self.crop.cube_mm)
        rendered = rendered.reshape(batch, views, sources, size, size).clamp(max=self.background)
        observed = depth[:, :, None]
        foreground = (rendered < self.background) | (observed < self.background)
        squared = torch.where(foreground, (rendered - observed) ** 2, torch.zeros_like(rendered))
        return squared.mean(dim=(-2, -1)).sum(dim=(1, 2)).mean()

    def data_to_model(self, centres: torch.Tensor, depth: torch.Tensor,
                      radii: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned distance of each observed point to the nearest sphere surface, clipped, per pixel."""
        radii = (self.radii if radii is None else radii).expand(centres.shape[:-1])[..., None, :]  # (B, Vj, K, 1, J)
        points, foreground = self.foreground_points(depth)  # (B, Vj, F, 3), (B, Vj, F)
        # Squared distances via |p|^2 + |c|^2 - 2 p.c: (B, Vj, K, F, J) without a (..., 3) intermediate.
        cross = points[:, :, None] @ centres.transpose(-1, -2)
        squared = (points ** 2).sum(-1)[:, :, None, :, None] + (centres ** 2).sum(-1)[..., None, :] - 2 * cross
        surface = (squared.clamp_min(1e-6).sqrt() - radii).abs().min(dim=-1).values  # (B, Vj, K, F)
        cost = surface.clamp(max=self.max_distance) * self.data_scale
        cost = torch.where(foreground[:, :, None], cost, torch.zeros_like(cost))
        return (cost.sum(dim=-1) / depth[0, 0].numel()).sum(dim=(1, 2)).mean()  # a mean over all S * S pixels

    def foreground_points(self, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, S, S) crop depth -> the crop-frame points of the foreground pixels, (B, V, F, 3), F the
        largest foreground count of any image, and (B, V, F) which of them are real (the rest pad): the
        data-to-model distances are computed for these only (a hand covers a fraction of its crop)."""
        points = self.depth_points(depth)  # (B, V, P, 3)
        foreground = (depth < self.background).flatten(-2)
        count = max(int(foreground.sum(-1).max()), 1)
        first = foreground.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[..., :count]
        return points.gather(-2, first[..., None].expand(-1, -1, -1, 3)), foreground.gather(-1, first)

    def depth_points(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, V, S, S) crop depth -> (B, V, S*S, 3) crop-frame points at the pixel centres."""
        centre = torch.arange(self.crop.size, device=depth.device, dtype=depth.dtype) + 0.5
        v, u = torch.meshgrid(centre, centre, indexing="ij")
        uvz = torch.stack([u.expand_as(depth), v.expand_as(depth), depth], dim=-1)
        return self.crop.from_pixels(uvz).flatten(-3, -2)

    def real(self, inputs: RealInputs) -> torch.Tensor:
        cross = self.uses_cross_views(inputs.consistency_phase)
        return sum(self(j, inputs.depth, inputs.cams, cross_views=cross) for j in inputs.stack_joints)


def fuse_views(joints: torch.Tensor, cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view joints (B, V, J, 3) -> (the views' joints in view 1's frame (B, V, J, 3), their per-coordinate
    median over the views (B, 1, J, 3)): the multi-view estimate that consistency pulls every view towards."""
    common = transform_points(cams.float(), joints.float())
    return common, common.median(dim=1, keepdim=True).values


class ConsistencyLoss(nn.Module):
    """MSE (mm^2) of each view's joints, mapped to view 1, to the per-coordinate median over views."""

    def forward(self, joints: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        common, centre = fuse_views(joints, cams)
        return F.mse_loss(common, centre.expand_as(common))

    def real(self, inputs: RealInputs) -> torch.Tensor:
        if not inputs.consistency_phase:
            return inputs.depth.new_zeros(())
        return sum(self(j, inputs.cams) for j in inputs.stack_joints)


class PoseTerm(nn.Module):
    """A term on predicted poses alone, (N, J, 3) mm -> scalar; ``real`` sums it over views and stacks."""

    def real(self, inputs: RealInputs) -> torch.Tensor:
        return sum(self(j.flatten(0, 1)) for j in inputs.stack_joints)


class PriorLoss(PoseTerm):
    """Negative ELBO of palm-centred joints / 100 under a frozen pose VAE."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PriorLoss:
        super().train(mode)
        self.vae.eval()  # the prior is a fixed density: its norms never switch to training behaviour
        return self

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        return self.vae.negative_elbo(prior_inputs(joints.float())).mean()


def collision_pairs(hand: HandModel, tolerance_mm: float) -> torch.Tensor:
    """(P, 2) sphere pairs that may not interpenetrate: spheres of different fingers, and palm and finger
    spheres that are clear of each other at the rest pose (a knuckle sphere overlaps the palm by design)."""
    finger = hand.sphere_finger.long().cpu()
    first, second = torch.triu_indices(len(finger), len(finger), offset=1)
    fingers = (finger[first] >= 0) & (finger[second] >= 0) & (finger[first] != finger[second])
    rest = hand.keypoints(torch.zeros(1, hand.num_params, device=hand.radii.device))[0].detach().cpu().float()
    radii = hand.radii.detach().cpu().float()
    clear = radii[first] + radii[second] - (rest[first] - rest[second]).norm(dim=-1) <= tolerance_mm
    palm_finger = ((finger[first] < 0) != (finger[second] < 0)) & clear
    keep = fingers | palm_finger
    return torch.stack([first[keep], second[keep]], dim=1)


class CollisionLoss(PoseTerm):
    """Squared interpenetration beyond a tolerance (mm^2) of the pairs of :func:`collision_pairs`."""

    def __init__(self, radii: torch.Tensor, pairs: torch.Tensor, tolerance_mm: float) -> None:
        super().__init__()
        self.register_buffer("pairs", pairs.long().cpu(), persistent=False)
        radii = radii.detach().float().cpu()
        self.register_buffer("touching", radii[self.pairs[:, 0]] + radii[self.pairs[:, 1]], persistent=False)
        self.tolerance = tolerance_mm

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        """joints (N, J, 3) mm -> scalar."""
        joints = joints.float()
        distance = (joints[:, self.pairs[:, 0]] - joints[:, self.pairs[:, 1]]).norm(dim=-1)
        return F.relu(self.touching - distance - self.tolerance).pow(2).sum(dim=-1).mean()


class BoneLengthLoss(PoseTerm):
    """Lengths of rigid sphere pairs (finger bones, palm) outside [min_ratio, max_ratio] x template (mm^2)."""

    def __init__(self, pairs: torch.Tensor, template: torch.Tensor, min_ratio: float, max_ratio: float,
                 sizer: HandSizer | None = None) -> None:
        super().__init__()
        self.register_buffer("pairs", pairs.long().cpu(), persistent=False)
        self.register_buffer("template", template.detach().float().cpu(), persistent=False)
        self.min_ratio, self.max_ratio = min_ratio, max_ratio
        self.sizer = sizer  # None: absolute template lengths; else scaled to each predicted hand

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        """joints (N, J, 3) mm -> scalar."""
        joints = joints.float()
        length = (joints[:, self.pairs[:, 0]] - joints[:, self.pairs[:, 1]]).norm(dim=-1)  # (N, K)
        template = self.template if self.sizer is None else self.template * self.sizer(joints)[:, None]
        short = F.relu(self.min_ratio * template - length)
        long = F.relu(length - self.max_ratio * template)
        return (short ** 2 + long ** 2).mean()


def rigid_pairs(hand: HandModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The finger bones and the palm's rigid pairs (45, 2) with their template lengths (mm) at the rest pose."""
    pairs = torch.cat([hand.bones, hand.palm_pairs]).long().cpu()
    rest = hand.keypoints(torch.zeros(1, hand.num_params, device=hand.radii.device))[0].detach().cpu().float()
    return pairs, (rest[pairs[:, 0]] - rest[pairs[:, 1]]).norm(dim=-1)


class HeatmapMeanLoss(nn.Module):
    """Mean squared raw heatmap score, summed over stacks."""

    def forward(self, logits: list[torch.Tensor]) -> torch.Tensor:
        return sum(score.float().pow(2).mean() for score in logits)

    def real(self, inputs: RealInputs) -> torch.Tensor:
        if not inputs.logits:
            raise ValueError("loss.heatmap_mean needs NetworkOutput.logits (the raw heatmap scores)")
        return self(inputs.logits)


class JointTargetLoss(nn.Module):
    """MSE (mm^2) of each view's predicted joints against per-view targets, summed over stacks: the labels
    (``supervised``: the 36 NYU joints) or the fitted pseudo-labels (``fitted``: every sphere). A ``nan``
    target is no target: the mean runs over the known coordinates (pseudo-labels leave the joints their fit
    cannot vouch for as ``nan``)."""

    def __init__(self, target: Literal["labels", "fitted"], missing: str) -> None:
        super().__init__()
        self.target, self.missing = target, missing  # which RealInputs field; the error when it is absent

    def real(self, inputs: RealInputs) -> torch.Tensor:
        target = getattr(inputs, self.target)
        if target is None:
            raise ValueError(self.missing)
        known = torch.isfinite(target)
        count = known.sum().clamp_min(1)
        return sum(torch.where(known, j[..., :target.shape[-2], :].float() - target, 0.0).square().sum() / count
                   for j in inputs.stack_joints)


class Losses(nn.Module):
    """All enabled terms with their weights; ``synthetic`` and ``real`` return weighted scalars by name."""

    def __init__(self, cfg: LossConfig, hand: HandModel, vae: nn.Module | None, *, crop: Crop) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = {name: float(term.weight) for name, term in cfg.terms().items() if term.enabled}
        radii = hand.radii.detach().float().cpu() * cfg.hand_scale
        pairs, template = rigid_pairs(hand)
        template = template * cfg.hand_scale
        bones = len(hand.bones)  # rigid_pairs lists the finger bones first
        sizer = HandSizer(pairs[:bones], template[:bones]) if cfg.hand_size == "predicted" else None
        modules: dict[str, Callable[[], nn.Module]] = {
            "synthetic_heatmap": lambda: HeatmapTargetLoss(crop, cfg.heatmap_sigma_cells),
            "synthetic_depth": JointDepthLoss,
            "projection": lambda: ProjectionLoss(
                radii, crop, data_scale=cfg.projection_data_scale,
                max_distance_mm=cfg.projection_max_distance_mm, pairs=cfg.projection_pairs, sizer=sizer),
            "consistency": ConsistencyLoss,
            "prior": lambda: PriorLoss(vae),
            "collision": lambda: CollisionLoss(radii, collision_pairs(hand, cfg.collision_tolerance_mm),
                                               cfg.collision_tolerance_mm),
            "bone_length": lambda: BoneLengthLoss(pairs, template, cfg.bone_min_ratio, cfg.bone_max_ratio, sizer),
            "heatmap_mean": HeatmapMeanLoss,
            "supervised": lambda: JointTargetLoss("labels", "loss.supervised needs labelled real frames (batch['joints'])"),
            "fitted": lambda: JointTargetLoss("fitted", f"loss.fitted needs shards with fitted targets ({FITTED_ENTRY}; "
                                                        "build them with `python -m train.pseudo_labels`)"),
        }
        self.terms = nn.ModuleDict({name: make() for name, make in modules.items() if name in self.weights})

    def _weighted(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value * self.weights[name]

    def synthetic(self, output: NetworkOutput, keypoints: torch.Tensor) -> dict[str, torch.Tensor]:
        """Supervised terms for synthetic images; keypoints (B, J, 3) crop-frame mm."""
        keypoints = keypoints.to(output.joints.device, torch.float32)
        result = {}
        if "synthetic_heatmap" in self.terms:
            if not output.logits:
                raise ValueError("loss.synthetic_heatmap needs NetworkOutput.logits (the raw heatmap scores)")
            result["synthetic_heatmap"] = self._weighted(
                "synthetic_heatmap", self.terms["synthetic_heatmap"](output.logits, keypoints))
        if "synthetic_depth" in self.terms:
            result["synthetic_depth"] = self._weighted(
                "synthetic_depth", self.terms["synthetic_depth"](_stack_joints(output), keypoints))
        return result

    def consistency_active(self, step: int) -> bool:
        """Whether this global step is in the consistency phase of its epoch (consistency, all view pairs)."""
        if self.cfg.epoch_steps <= 0:
            return True
        return step % self.cfg.epoch_steps < self.cfg.consistency_steps

    def real(self, output: NetworkOutput, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Self-supervised terms; output holds B * 3 view images, view-major per frame (index b * 3 + k)."""
        device = output.joints.device
        depth = batch["depth"].to(device, torch.float32, non_blocking=True)
        frames = depth.shape[0]
        if output.joints.shape[0] != frames * NUM_VIEWS:
            raise ValueError(f"network output has {output.joints.shape[0]} images for {frames} frames of "
                             f"{NUM_VIEWS} views; feed batch['depth'].reshape(-1, 1, S, S)")

        def optional(key: str) -> torch.Tensor | None:
            value = batch.get(key)
            return None if value is None else value.to(device, torch.float32, non_blocking=True)

        inputs = RealInputs(
            stack_joints=[j.reshape(frames, NUM_VIEWS, *j.shape[1:]) for j in _stack_joints(output)],
            logits=output.logits, depth=depth, cams=batch["cams"].to(device, torch.float32, non_blocking=True),
            labels=optional("joints"), fitted=optional(FITTED_KEY), consistency_phase=self.consistency_active(step))
        return self.real_terms(inputs)

    def real_terms(self, inputs: RealInputs) -> dict[str, torch.Tensor]:
        """Every enabled self-supervised term of ``inputs``, weighted, by name."""
        return {name: self._weighted(name, self.terms[name].real(inputs)) for name in REAL_TERMS
                if name in self.terms}

    def real_cost(self, inputs: RealInputs) -> torch.Tensor:
        """The weighted sum of the enabled self-supervised terms: the cost a per-frame fit minimises
        (``train.pseudo_labels`` builds a Losses with its fitting terms and weights)."""
        return torch.stack(list(self.real_terms(inputs).values())).sum()


def _stack_joints(output: NetworkOutput) -> list[torch.Tensor]:
    return output.stack_joints or [output.joints]


def build_losses(cfg: LossConfig, hand: HandModel, prior_path: str | None = None, *, crop: Crop) -> Losses:
    """The loss module; ``prior_path`` (or ``cfg.prior_path``) names the pose VAE file of ``train.prior``."""
    vae = load_prior(prior_path or cfg.prior_path) if cfg.prior.enabled else None
    return Losses(cfg, hand, vae, crop=crop)
