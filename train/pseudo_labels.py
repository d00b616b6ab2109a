"""Fitted pseudo-labels: training by fitting, amortised. A frozen network's predictions on unlabelled
multi-view frames, fused over the views and fitted to the observed depth, become the targets of the next
training stage (``loss.fitted``).

    python -m train.pseudo_labels --checkpoint runs/synthetic --data shards/nyu --out shards/nyu-fitted \
        [--config configs/pseudo-labels.yaml] [steps=100 collision=1.0 ...] [--device cpu]

Per frame of ``DATA/train``: the network predicts every view (3 images; with ``consistency_turns_deg`` /
``consistency_scales`` each image also turned / zoomed, the joints mapped back and their median kept); the
views' joints are mapped into view 1's frame and fused (``fusion``: their per-coordinate median, the
multi-view consistency estimate, or each joint weighted by how sharp its heatmap is in each view); then the
fused sphere centres are refined by Adam on the fitting terms of :mod:`train.losses` (projection into all
views, collision, bone length; :meth:`train.losses.Losses.real_cost`) for ``steps`` steps, with the template
hand scaled by ``hand_scale`` (or the size that ``calibrate_hand_scale`` finds in the split's depth). Joints
the fit cannot vouch for can be left without a target (``nan`` in ``fitted.npy``; ``loss.fitted`` skips them):
those whose views disagree (``max_view_spread_mm``) and those whose fitted sphere floats in front of the
observed depth in some view, where the camera would have seen it (``max_free_space_mm``). The settings are a
:class:`PseudoLabelConfig` (defaults, then ``--config`` YAML, then ``key=value`` overrides, checked as
strictly as the training config). ``OUT/train`` gets every sample unchanged plus ``fitted.npy`` ((3, J, 3) mm,
the fit in each view's crop frame; :mod:`shards.derive` writes it); ``OUT/test`` links to ``DATA/test`` so
that ``data.real=OUT`` trains on the fits and evaluates on the real test split. No label is read to make a
fit; where the shards carry labels, ``OUT/train/pseudo_labels.json`` reports how far the network, the fusion
and the fit are from them (a diagnosis, read after the fact).

Why not fine-tune on the fitting terms' gradients alone: on a synthetic-pretrained network the gradients of
the fitting terms move the soft-argmax joints less than they move the heatmaps off the hand (BENCHMARKS.md,
"Training by fitting"); regressing fixed fitted targets keeps the heatmaps peaked and lets every frame be
fitted for many steps once instead of one step per visit.
"""

from __future__ import annotations

import argparse
import json
import sys
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fileio import write_atomic, write_json_atomic
from geometry import Crop, invert_transform, transform_points, turn_and_scale_depth, turn_and_scale_points
from hand import HandModel
from shards.derive import derive_split, first_samples, link_split
from shards.format import ShardsError, check_crop, read_manifest
from shards.nyu_protocol import NYU_EVAL_JOINTS
from train.checkpoint import CheckpointError, load_network, resolve_checkpoint
from train.losses import FITTED_ENTRY, LossConfig, Losses, RealInputs, TermConfig, build_losses, fuse_views
from train.network import heatmap_spread_px
from train.schema import ConfigError, load_yaml
from train.scores import joint_errors

SUMMARY_NAME = "pseudo_labels.json"
AUDIT_NAME = "label_errors.npz"  # per frame and evaluated joint, where the shards carry labels (a diagnosis)
FITTING_TERMS = ("projection", "collision", "bone_length")
# The hand sizes calibrate_hand_scale tries (times the template's radii and bone lengths).
HAND_SCALES = tuple(round(0.8 + 0.1 * step, 1) for step in range(9))


@dataclass
class PseudoLabelConfig:
    """How each frame's fused joints are fitted to its depth (``configs/pseudo-labels.yaml``)."""

    steps: int = 50  # Adam steps per frame (0: the fused views alone)
    fuse: bool = True  # fuse the views before fitting (False: each view's prediction is fitted on its own)
    # median: per coordinate over the views; confidence: each view's joint weighted by 1 / (its heatmap's
    # spread)^2, so the view that sees a joint clearly outvotes those that guess (one network's views share
    # their errors, which a median does not remove).
    fusion: Literal["median", "confidence"] = "median"
    max_view_spread_mm: float = 0.0  # no target for a joint whose views lie further apart (0: keep every joint)
    max_free_space_mm: float = 0.0  # no target for a sphere this far before the depth in a view (0: keep)
    lr_mm: float = 0.5  # Adam step size, mm per step
    projection: float = 1.0  # weight of the mutual projection term (the fused hand against each view's depth)
    # Collision and bone length weigh 10x their training defaults (loss.collision, loss.bone_length: 1.0):
    # a fit moves free sphere centres, with nothing else to keep the hand a hand (per-frame fits: 37.6 -> 36.2
    # mm at 10x, BENCHMARKS.md "Training by fitting").
    collision: float = 10.0  # weight of the collision term
    bone_length: float = 10.0  # weight of the bone-length term (template lengths)
    batch_frames: int = 32  # frames fitted together
    # Augmentation consistency: each crop is also predicted turned in its image plane by each of these angles
    # and zoomed by each of these scales, the joints mapped back to the crop; the network's joints are the
    # per-coordinate median over the crop and its copies (one network's error depends on how the hand lies
    # in the image: turned copies make different errors). Empty: the crop alone.
    consistency_turns_deg: list[float] = field(default_factory=list)
    consistency_scales: list[float] = field(default_factory=list)
    # The hand's size in the fit: the template's sphere radii and bone lengths times hand_scale. NYU's train
    # split is one person: calibrate_hand_scale sets it to the scale of HAND_SCALES whose fits of the split's
    # first calibration_frames frames explain their depth best (lowest model-to-data cost: on fake NYU the
    # data-to-model cost keeps falling past 1.6x, the forearm's points nearer as the spheres grow).
    hand_scale: float = 1.0
    calibrate_hand_scale: bool = False
    calibration_frames: int = 32

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_frames < 1 or not self.lr_mm > 0 or self.calibration_frames < 1:
            raise ValueError(f"bad pseudo-label settings {asdict(self)}: steps >= 0, batch_frames >= 1, lr_mm > 0, "
                             "calibration_frames >= 1")
        for name in ("hand_scale", "consistency_scales"):
            values = getattr(self, name)
            if not all(value > 0 for value in (values if isinstance(values, list) else [values])):
                raise ValueError(f"pseudo-label setting {name!r} holds scales > 0, got {values}")
        for name in ("max_view_spread_mm", "max_free_space_mm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"pseudo-label setting {name!r} is a distance >= 0 (0: off), got {getattr(self, name)}")
        for name in FITTING_TERMS:
            if getattr(self, name) < 0:
                raise ValueError(f"pseudo-label setting {name!r} is a weight >= 0 (0: off), got {getattr(self, name)}")

    def losses(self, hand: HandModel, crop: Crop) -> Losses:
        """The fitting terms with this config's weights (each weight 0 turns its term off)."""
        off = {name: TermConfig(0.0, enabled=False) for name in LossConfig().terms() if name not in FITTING_TERMS}
        on = {name: TermConfig(getattr(self, name), enabled=getattr(self, name) > 0) for name in FITTING_TERMS}
        # One fused hand seen in every view: each view's own pair is enough (the cross pairs repeat them).
        return build_losses(LossConfig(**off, **on, projection_pairs="same_view", hand_scale=self.hand_scale), hand,
                            crop=crop)

    def crop_copies(self) -> list[tuple[float, float]]:
        """(turn in radians, scale) of each copy the network predicts: the crop itself first."""
        return ([(0.0, 1.0)] + [(math.radians(turn), 1.0) for turn in self.consistency_turns_deg]
                + [(0.0, scale) for scale in self.consistency_scales])


def fuse_by_confidence(common: torch.Tensor, spread_px: torch.Tensor) -> torch.Tensor:
    """The views' joints in one frame (B, V, J, 3) and their heatmap spreads (B, V, J) -> (B, 1, J, 3): each
    joint the mean of the views weighted by 1 / spread^2 (the inverse variance of a heatmap's position)."""
    weight = spread_px.clamp_min(1e-3).square().reciprocal().unsqueeze(-1)
    return (common * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True)


def free_space_violation_mm(joints: torch.Tensor, radii: torch.Tensor, depth: torch.Tensor, crop: Crop) -> torch.Tensor:
    """Per-view spheres (B, V, J, 3) crop-frame mm -> (B, J): how far (mm) a sphere's front lies before the
    observed depth at its pixel, at most over the views (> 0: the camera sees past where the sphere is). The
    depth is the nearest within 1 px (a missing sensor pixel reads as background); outside the crop: 0."""
    size = depth.shape[-1]
    nearest = -F.max_pool2d(-depth, kernel_size=3, stride=1, padding=1)
    uvz = crop.to_pixels(joints)
    column, row = uvz[..., 0].floor().long(), uvz[..., 1].floor().long()
    inside = (column >= 0) & (column < size) & (row >= 0) & (row < size)
    index = (row.clamp(0, size - 1) * size + column.clamp(0, size - 1))
    observed = nearest.flatten(-2).gather(-1, index)
    gap = observed - (joints[..., 2] - radii.to(joints))
    return torch.where(inside, gap, torch.zeros_like(gap)).amax(dim=1).clamp_min(0)


def predict_crops(net: torch.nn.Module, images: torch.Tensor, crop: Crop, copies: list[tuple[float, float]],
                  spread: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop depth (N, 1, S, S) -> joints (N, J, 3): the per-coordinate median of the network's joints over the
    crop's ``copies`` ((turn, scale) each, :meth:`PseudoLabelConfig.crop_copies`), each mapped back to the
    crop; and with ``spread`` the heatmaps' spread (N, J) px, its mean over the copies (else None)."""
    joints, spreads = [], []
    for turn, scale in copies:
        output = net(turn_and_scale_depth(images, crop, turn, scale) if (turn, scale) != (0.0, 1.0) else images)
        joints.append(turn_and_scale_points(output.joints.float(), -turn, 1.0 / scale))
        if spread:
            spreads.append(heatmap_spread_px(output.heatmaps[-1].float(), net.cell_centres_px))
    return torch.stack(joints).median(dim=0).values, torch.stack(spreads).mean(0) if spread else None


def fit_frames(net: torch.nn.Module, losses: Losses, depth: torch.Tensor, cams: torch.Tensor,
               cfg: PseudoLabelConfig, crop: Crop) -> dict[str, torch.Tensor]:
    """depth (B, V, S, S) mm, cams (B, V, 4, 4) -> per-view joints (B, V, J, 3) of the network (``network``:
    over the crop copies of ``cfg``, :func:`predict_crops`),
    of the fit's start (``fused``: the fused views, or the network's with ``fuse`` off) and of the fit
    (``fitted``), the fitting cost per step (``cost``) and how far apart the views' predictions lie
    (``view_spread``, (B, J) mm: the middle view's distance from the fused joint; two views that agree
    make it small)."""
    frames, views, size = depth.shape[0], depth.shape[1], depth.shape[-1]
    with torch.no_grad():
        predicted, spread_px = predict_crops(net, depth.reshape(-1, 1, size, size), crop, cfg.crop_copies(),
                                             spread=cfg.fusion == "confidence")
        network = predicted.reshape(frames, views, -1, 3)
    to_views = invert_transform(cams)

    def per_view(common: torch.Tensor) -> torch.Tensor:  # (B, 1 or V, J, 3) in view 1's frame -> (B, V, J, 3)
        return transform_points(to_views, common.expand(-1, views, -1, -1))

    def cost_of(joints: torch.Tensor) -> torch.Tensor:
        return losses.real_cost(RealInputs([per_view(joints)], [], depth, cams, None, None, consistency_phase=True))

    common, fused = fuse_views(network, cams)  # (B, V, J, 3) and (B, 1, J, 3), view 1's frame
    if spread_px is not None:  # confidence fusion
        fused = fuse_by_confidence(common, spread_px.reshape(frames, views, -1))
    start = fused if cfg.fuse else common
    joints = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([joints], lr=cfg.lr_mm)
    costs = []
    for _ in range(cfg.steps):
        cost = cost_of(joints)
        costs.append(cost.detach())
        optimizer.zero_grad()
        cost.backward()
        optimizer.step()
    with torch.no_grad():
        costs.append(cost_of(joints))
    return {"network": network, "fused": per_view(start), "fitted": per_view(joints.detach()),
            "cost": torch.stack(costs), "view_spread": (common - fused).norm(dim=-1).median(dim=1).values}


def trusted_joints(result: dict[str, torch.Tensor], depth: torch.Tensor, radii: torch.Tensor, crop: Crop,
                   cfg: PseudoLabelConfig) -> torch.Tensor:
    """(B, J) bool: the joints of :func:`fit_frames`' result that keep a target under ``cfg``'s checks."""
    kept = torch.ones_like(result["view_spread"], dtype=torch.bool)
    if cfg.max_view_spread_mm > 0:
        kept &= result["view_spread"] <= cfg.max_view_spread_mm
    if cfg.max_free_space_mm > 0:
        kept &= free_space_violation_mm(result["fitted"], radii, depth, crop) <= cfg.max_free_space_mm
    return kept


@dataclass
class PseudoLabelSummary:
    """What ``OUT/train/pseudo_labels.json`` records."""

    checkpoint: str
    source: str
    frames: int
    settings: dict
    cost_fused: float  # mean fitting cost at the fused views
    cost_fitted: float  # mean fitting cost after the fit
    kept_share: float  # share of the frames' spheres that keep a target (1.0 without the trust checks)
    # With calibrate_hand_scale: the model-to-data cost of the calibration frames' fits at each hand scale
    # (the lowest chose settings.hand_scale).
    calibration: dict[str, float] | None
    # View-1 mean error of network / fused / fitted on the 14 NYU joints, and of the fitted joints that kept a
    # target (fitted_kept), if labelled; per frame and joint in label_errors.npz.
    label_error_mm: dict | None


class FrameFitter:
    """The ``add`` step of :func:`shards.derive.derive_split`: fits chunks of decoded samples, leaves the
    joints it cannot vouch for without a target (``nan``), and keeps the costs and (where the samples carry
    labels) the per-joint errors for the summary and the audit."""

    def __init__(self, net: torch.nn.Module, losses: Losses, cfg: PseudoLabelConfig, radii: torch.Tensor,
                 crop: Crop, device: str) -> None:
        self.net, self.losses, self.cfg, self.radii, self.crop, self.device = net, losses, cfg, radii, crop, device
        self.costs: list[torch.Tensor] = []
        self.kept: list[np.ndarray] = []  # (B, J) per chunk
        self.frames: list[int] = []
        self.errors: dict[str, list[np.ndarray]] = {"network": [], "fused": [], "fitted": []}  # (B, 14) per chunk
        self.labelled = True

    def __call__(self, samples: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        depth = self._stacked(samples, "depth")
        result = fit_frames(self.net, self.losses, depth, self._stacked(samples, "cams"), self.cfg, self.crop)
        kept = trusted_joints(result, depth, self.radii, self.crop, self.cfg).cpu().numpy()
        self.costs.append(result["cost"][[0, -1]].cpu())
        self.kept.append(kept)
        self.frames += [int(sample.get("meta", {}).get("frame", -1)) for sample in samples]
        self.labelled &= all("joints" in sample for sample in samples)
        if self.labelled:
            labels = np.stack([sample["joints"][0] for sample in samples])
            for name, errors in self.errors.items():
                errors.append(joint_errors(result[name][:, 0].cpu().numpy(), labels))
        fitted = result["fitted"].cpu().numpy().astype(np.float32)
        fitted[~np.broadcast_to(kept[:, None, :, None], fitted.shape)] = np.nan
        return [{FITTED_ENTRY: joints} for joints in fitted]

    def _stacked(self, samples: list[dict[str, Any]], field: str) -> torch.Tensor:
        return torch.tensor(np.stack([sample[field] for sample in samples]), dtype=torch.float32, device=self.device)

    def kept_share(self) -> float:
        return float(np.concatenate(self.kept).mean()) if self.kept else 1.0

    def label_errors(self) -> dict[str, np.ndarray] | None:
        """Per frame and evaluated joint (N, 14): each stage's error, and ``kept`` (bool); None if unlabelled."""
        if not self.labelled or not self.errors["network"]:
            return None
        errors = {name: np.concatenate(chunks) for name, chunks in self.errors.items()}
        return errors | {"kept": np.concatenate(self.kept)[:, NYU_EVAL_JOINTS], "frame": np.asarray(self.frames)}


def mean_label_errors(errors: dict[str, np.ndarray]) -> dict[str, float]:
    """:meth:`FrameFitter.label_errors` -> the mean error of each stage and of the fitted joints that kept a target."""
    means = {name: float(errors[name].mean()) for name in ("network", "fused", "fitted")}
    return means | {"fitted_kept": float(errors["fitted"][errors["kept"]].mean()) if errors["kept"].any()
                    else float("nan")}


def calibration_costs(net: torch.nn.Module, hand: HandModel, crop: Crop, samples: list[dict[str, Any]],
                      cfg: PseudoLabelConfig, device: str) -> dict[float, float]:
    """The model-to-data cost (mean over ``samples``) of their fits at each of :data:`HAND_SCALES`: how well
    a hand of that size explains the depth. A bigger hand covers more of the observed hand (and, near the
    wrist, of the forearm); a hand too big covers background the camera saw past."""
    depth, cams = (torch.tensor(np.stack([sample[key] for sample in samples]), dtype=torch.float32, device=device)
                   for key in ("depth", "cams"))
    costs = {}
    for scale in tqdm(HAND_SCALES, desc="calibrating the hand scale", unit="scale"):
        losses = replace(cfg, hand_scale=scale).losses(hand, crop).to(device)
        fitted = fit_frames(net, losses, depth, cams, cfg, crop)["fitted"]
        projection = losses.terms["projection"]
        costs[scale] = float(projection.model_to_data(fitted[:, :, None], depth, projection.radii))
    return costs


def pseudo_label(checkpoint: str | Path, data: str | Path, out: str | Path, cfg: PseudoLabelConfig,
                 device: str = "cpu") -> PseudoLabelSummary:
    """Writes ``OUT/train`` (the samples of ``DATA/train`` plus ``fitted.npy``, and ``pseudo_labels.json``:
    the settings and what the fit did) and links ``OUT/test``."""
    source, target = Path(data) / "train", Path(out) / "train"
    kind = read_manifest(source).get("kind")
    if kind != "nyu":
        raise ShardsError(f"{source}: kind {kind!r}, pseudo-labels need NYU shards (kind 'nyu')")
    checkpoint = resolve_checkpoint(checkpoint)
    net, crop, _ = load_network(checkpoint, device)
    check_crop(source, crop, f"the network of {checkpoint}")
    hand = HandModel()
    calibration = None
    if cfg.calibrate_hand_scale:
        calibration = calibration_costs(net, hand, crop, first_samples(source, cfg.calibration_frames), cfg, device)
        cfg = replace(cfg, hand_scale=min(calibration, key=calibration.get))
    radii = hand.radii.detach().float().to(device) * cfg.hand_scale
    fitter = FrameFitter(net, cfg.losses(hand, crop).to(device), cfg, radii, crop, device)
    manifest = derive_split(source, target, fitter, chunk=cfg.batch_frames, desc="fitting frames")
    cost = torch.stack(fitter.costs).mean(0).tolist() if fitter.costs else [float("nan")] * 2
    audit = fitter.label_errors()
    summary = PseudoLabelSummary(str(checkpoint), str(source), int(manifest["samples"]), asdict(cfg), cost[0], cost[1],
                                 fitter.kept_share(),
                                 None if calibration is None else {f"{k:g}": v for k, v in calibration.items()},
                                 None if audit is None else mean_label_errors(audit))
    if audit is not None:
        write_atomic(target / AUDIT_NAME, lambda file: np.savez(file, **audit))
    write_json_atomic(target / SUMMARY_NAME, asdict(summary))
    link_split(Path(data), Path(out), "test")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.pseudo_labels",
        description="Fit a frozen network's fused multi-view predictions to the depth of unlabelled NYU train "
                    "frames and write shards that carry the fits (fitted.npy) for `loss.fitted`.",
        epilog="Settings (key=value, or a YAML file with --config): "
               + ", ".join(f"{name}={value}" for name, value in asdict(PseudoLabelConfig()).items())
               + ". Then: torchrun ... -m train --config configs/selfsup-cpu.yaml init=CHECKPOINT data.real=OUT "
               "(or any config with loss.fitted.enabled=true). No label is read to make the fits; OUT/test links "
               "to DATA/test for the evaluation.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (its newest)")
    parser.add_argument("--data", required=True, help="NYU shards root holding train/ (and test/)")
    parser.add_argument("--out", required=True, help="output root: OUT/train gets the shards with fits")
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings (configs/pseudo-labels.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. steps=0 fuse=false")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda where available, else cpu)")
    args = parser.parse_args(argv)
    try:
        cfg = load_yaml(PseudoLabelConfig, args.config, args.overrides)
        summary = pseudo_label(args.checkpoint, args.data, args.out, cfg, args.device)
    except (ShardsError, CheckpointError, ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
