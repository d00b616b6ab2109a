"""Fitted pseudo-labels: training by fitting, amortised. A frozen network's predictions on unlabelled
multi-view frames, fused over the views and fitted to the observed depth, become the targets of the next
training stage (``loss.fitted``).

    python -m train.pseudo_labels --checkpoint runs/synthetic --data shards/nyu --out shards/nyu-fitted \
        [--config configs/pseudo-labels.yaml] [steps=100 collision=1.0 ...] [--device cpu]

Per frame of ``DATA/train``: the network predicts every view (3 images); the views' joints are mapped into
view 1's frame and fused by their per-coordinate median (the multi-view consistency estimate); then the
fused sphere centres are refined by Adam on the fitting terms of :mod:`train.losses` (projection into all
views, collision, bone length; :meth:`train.losses.Losses.real_cost`) for ``steps`` steps. The settings are
a :class:`PseudoLabelConfig` (defaults, then ``--config`` YAML, then ``key=value`` overrides, checked as
strictly as the training config). ``OUT/train`` gets every sample unchanged plus ``fitted.npy`` ((3, J, 3)
mm, the fit in each view's crop frame; :mod:`shards.derive` writes it); ``OUT/test`` links to ``DATA/test``
so that ``data.real=OUT`` trains on the fits and evaluates on the real test split. No label is read to
make a fit; where the shards carry labels, ``OUT/train/pseudo_labels.json`` reports how far the network,
the fusion and the fit are from them (a diagnosis, read after the fact).

Why not fine-tune on the fitting terms' gradients alone: on a synthetic-pretrained network the gradients of
the fitting terms move the soft-argmax joints less than they move the heatmaps off the hand (BENCHMARKS.md,
"Training by fitting"); regressing fixed fitted targets keeps the heatmaps peaked and lets every frame be
fitted for many steps once instead of one step per visit.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fileio import write_json_atomic
from geometry import Crop, invert_transform, transform_points
from hand import HandModel
from shards.derive import derive_split, link_split
from shards.format import ShardsError, check_crop, read_manifest
from train.checkpoint import CheckpointError, load_network, resolve_checkpoint
from train.losses import FITTED_ENTRY, LossConfig, Losses, RealInputs, TermConfig, build_losses, fuse_views
from train.schema import ConfigError, load_yaml
from train.scores import joint_errors

SUMMARY_NAME = "pseudo_labels.json"
FITTING_TERMS = ("projection", "collision", "bone_length")


@dataclass
class PseudoLabelConfig:
    """How each frame's fused joints are fitted to its depth (``configs/pseudo-labels.yaml``)."""

    steps: int = 50  # Adam steps per frame (0: the fused views alone)
    fuse: bool = True  # fuse the views before fitting (False: each view's prediction is fitted on its own)
    lr_mm: float = 0.5  # Adam step size, mm per step
    projection: float = 1.0  # weight of the mutual projection term (the fused hand against each view's depth)
    # Collision and bone length weigh 10x their training defaults (loss.collision, loss.bone_length: 1.0):
    # a fit moves free sphere centres, with nothing else to keep the hand a hand (per-frame fits: 37.6 -> 36.2
    # mm at 10x, BENCHMARKS.md "Training by fitting").
    collision: float = 10.0  # weight of the collision term
    bone_length: float = 10.0  # weight of the bone-length term (template lengths)
    batch_frames: int = 32  # frames fitted together

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_frames < 1 or not self.lr_mm > 0:
            raise ValueError(f"bad pseudo-label settings {asdict(self)}: steps >= 0, batch_frames >= 1, lr_mm > 0")
        for name in FITTING_TERMS:
            if getattr(self, name) < 0:
                raise ValueError(f"pseudo-label setting {name!r} is a weight >= 0 (0: off), got {getattr(self, name)}")

    def losses(self, hand: HandModel, crop: Crop) -> Losses:
        """The fitting terms with this config's weights (each weight 0 turns its term off)."""
        off = {name: TermConfig(0.0, enabled=False) for name in LossConfig().terms() if name not in FITTING_TERMS}
        on = {name: TermConfig(getattr(self, name), enabled=getattr(self, name) > 0) for name in FITTING_TERMS}
        # One fused hand seen in every view: each view's own pair is enough (the cross pairs repeat them).
        return build_losses(LossConfig(**off, **on, projection_pairs="same_view"), hand, crop=crop)


def fit_frames(net: torch.nn.Module, losses: Losses, depth: torch.Tensor, cams: torch.Tensor,
               cfg: PseudoLabelConfig) -> dict[str, torch.Tensor]:
    """depth (B, V, S, S) mm, cams (B, V, 4, 4) -> per-view joints (B, V, J, 3) of the network (``network``),
    of the fit's start (``fused``: the fused views, or the network's with ``fuse`` off) and of the fit
    (``fitted``), and the fitting cost per step (``cost``)."""
    frames, views, size = depth.shape[0], depth.shape[1], depth.shape[-1]
    with torch.no_grad():
        network = net(depth.reshape(-1, 1, size, size)).joints.reshape(frames, views, -1, 3).float()
    to_views = invert_transform(cams)

    def per_view(common: torch.Tensor) -> torch.Tensor:  # (B, 1 or V, J, 3) in view 1's frame -> (B, V, J, 3)
        return transform_points(to_views, common.expand(-1, views, -1, -1))

    def cost_of(joints: torch.Tensor) -> torch.Tensor:
        return losses.real_cost(RealInputs([per_view(joints)], [], depth, cams, None, None, consistency_phase=True))

    common, fused = fuse_views(network, cams)  # (B, V, J, 3) and (B, 1, J, 3), view 1's frame
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
            "cost": torch.stack(costs)}


@dataclass
class PseudoLabelSummary:
    """What ``OUT/train/pseudo_labels.json`` records."""

    checkpoint: str
    source: str
    frames: int
    settings: dict
    cost_fused: float  # mean fitting cost at the fused views
    cost_fitted: float  # mean fitting cost after the fit
    label_error_mm: dict | None  # view-1 mean error of network / fused / fitted on the 14 NYU joints, if labelled


class FrameFitter:
    """The ``add`` step of :func:`shards.derive.derive_split`: fits chunks of decoded samples and keeps the
    costs and (where the samples carry labels) the errors for the summary."""

    def __init__(self, net: torch.nn.Module, losses: Losses, cfg: PseudoLabelConfig, device: str) -> None:
        self.net, self.losses, self.cfg, self.device = net, losses, cfg, device
        self.costs: list[torch.Tensor] = []
        self.errors: dict[str, list[np.ndarray]] = {"network": [], "fused": [], "fitted": []}
        self.labelled = True

    def __call__(self, samples: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        result = fit_frames(self.net, self.losses, self._stacked(samples, "depth"), self._stacked(samples, "cams"),
                            self.cfg)
        self.costs.append(result["cost"][[0, -1]].cpu())
        self.labelled &= all("joints" in sample for sample in samples)
        if self.labelled:
            labels = np.stack([sample["joints"][0] for sample in samples])
            for name, errors in self.errors.items():
                errors.append(joint_errors(result[name][:, 0].cpu().numpy(), labels).mean(-1))
        return [{FITTED_ENTRY: joints} for joints in result["fitted"].cpu().numpy().astype(np.float32)]

    def _stacked(self, samples: list[dict[str, Any]], field: str) -> torch.Tensor:
        return torch.tensor(np.stack([sample[field] for sample in samples]), dtype=torch.float32, device=self.device)

    def label_errors(self) -> dict[str, float] | None:
        if not self.labelled or not self.errors["network"]:
            return None
        return {name: float(np.concatenate(errors).mean()) for name, errors in self.errors.items()}


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
    fitter = FrameFitter(net, cfg.losses(HandModel(), crop).to(device), cfg, device)
    manifest = derive_split(source, target, fitter, chunk=cfg.batch_frames, desc="fitting frames")
    cost = torch.stack(fitter.costs).mean(0).tolist() if fitter.costs else [float("nan")] * 2
    summary = PseudoLabelSummary(str(checkpoint), str(source), int(manifest["samples"]), asdict(cfg), cost[0], cost[1],
                                 fitter.label_errors())
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
