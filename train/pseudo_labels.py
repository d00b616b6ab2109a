"""Fitted pseudo-labels: training by fitting, amortised. A frozen network's predictions on unlabelled
multi-view frames, fused over the views and fitted to the observed depth, become the targets of the next
training stage (``loss.fitted``).

    python -m train.pseudo_labels --checkpoint runs/synthetic --data shards/nyu --out shards/nyu-fitted

Per frame of ``DATA/train``: the network predicts every view (3 images); the views' joints are mapped into
view 1's frame and fused by their per-coordinate median (the multi-view consistency estimate); then the
fused sphere centres are refined by Adam on the fitting terms of :mod:`train.losses` (projection into all
views, collision, bone length) for ``--steps`` steps. ``OUT/train`` gets every sample unchanged plus
``fitted.npy`` ((3, J, 3) mm, the fit in each view's crop frame); ``OUT/test`` links to ``DATA/test`` so
that ``data.real=OUT`` trains on the fits and evaluates on the real test split. No label is read to make a
fit; where the shards carry labels, ``OUT/train/fit.json`` reports how far the network, the fusion and the
fit are from them (a diagnosis, read after the fact).

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
from tqdm import tqdm

from geometry import invert_transform, transform_points
from hand import NYU_EVAL_JOINTS, HandModel
from shards.format import (CHECKSUM_ENTRY, CorruptShardError, ShardRecord, ShardsError, check_shard_files,
                           crop_geometry, npy_bytes, read_tar_samples, with_checksums, write_json_atomic,
                           write_manifest, write_tar)
from shards.reader import decode_sample
from train.checkpoint import CheckpointError
from train.evaluate import load_network
from train.losses import FITTED_KEY, LossConfig, Losses, RealInputs, TermConfig, build_losses, fuse_views

FITTED_ENTRY = f"{FITTED_KEY}.npy"
FITTING_TERMS = ("projection", "collision", "bone_length")


@dataclass
class FitConfig:
    """How each frame's fused joints are fitted to its depth."""

    steps: int = 50  # Adam steps per frame (0: the fused views alone)
    fuse: bool = True  # fuse the views before fitting (False: each view's prediction is fitted on its own)
    lr_mm: float = 0.5  # Adam step size, mm per step
    projection: float = 1.0  # weight of the mutual projection term (the fused hand against each view's depth)
    collision: float = 10.0  # weight of the collision term
    bone_length: float = 10.0  # weight of the bone-length term (template lengths)
    batch_frames: int = 32  # frames fitted together

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_frames < 1 or self.lr_mm <= 0:
            raise ValueError(f"bad fit settings {asdict(self)}: steps >= 0, batch_frames >= 1, lr_mm > 0")

    def losses(self, hand: HandModel, size: int, cube_mm: float) -> Losses:
        """The fitting terms with this config's weights (each weight 0 turns its term off)."""
        off = {name: TermConfig(0.0, enabled=False) for name in LossConfig().terms() if name not in FITTING_TERMS}
        on = {name: TermConfig(getattr(self, name), enabled=getattr(self, name) > 0) for name in FITTING_TERMS}
        # One fused hand seen in every view: each view's own pair is enough (the cross pairs repeat them).
        return build_losses(LossConfig(**off, **on, projection_pairs="same_view"), hand, size=size, cube_mm=cube_mm)


def fit_frames(net: torch.nn.Module, losses: Losses, depth: torch.Tensor, cams: torch.Tensor,
               cfg: FitConfig) -> dict[str, torch.Tensor]:
    """depth (B, V, S, S) mm, cams (B, V, 4, 4) -> per-view joints (B, V, J, 3) of the network (``network``),
    of the fit's start (``fused``: the fused views, or the network's with ``fuse`` off) and of the fit
    (``fitted``), and the fitting cost per step (``cost``)."""
    frames, views, size = depth.shape[0], depth.shape[1], depth.shape[-1]
    with torch.no_grad():
        network = net(depth.reshape(-1, 1, size, size)).joints.reshape(frames, views, -1, 3).float()
    to_views = invert_transform(cams)

    def per_view(common: torch.Tensor) -> torch.Tensor:  # (B, 1 or V, J, 3) in view 1's frame -> (B, V, J, 3)
        return transform_points(to_views, common.expand(-1, views, -1, -1))

    common, fused = fuse_views(network, cams)  # (B, V, J, 3) and (B, 1, J, 3), view 1's frame
    start = fused if cfg.fuse else common
    joints = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([joints], lr=cfg.lr_mm)

    def cost_of(joints: torch.Tensor) -> torch.Tensor:
        inputs = RealInputs([per_view(joints)], [], depth, cams, None, None, consistency_phase=True)
        return torch.stack([losses.weights[name] * losses.terms[name].real(inputs) for name in losses.terms]).sum()

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
class FitSummary:
    """What ``OUT/train/fit.json`` records."""

    checkpoint: str
    source: str
    frames: int
    settings: dict
    cost_fused: float  # mean fitting cost at the fused views
    cost_fitted: float  # mean fitting cost after the fit
    label_error_mm: dict | None  # view-1 mean error of network / fused / fitted on the 14 NYU joints, if labelled


def pseudo_label(checkpoint: str | Path, data: str | Path, out: str | Path, cfg: FitConfig,
                 device: str = "cpu") -> FitSummary:
    """Writes ``OUT/train`` (the samples of ``DATA/train`` plus ``fitted.npy``, and ``fit.json``: the settings
    and what the fit did) and links ``OUT/test``."""
    source, target = Path(data) / "train", Path(out) / "train"
    manifest = check_shard_files(source)
    if manifest is None:
        raise ShardsError(f"{source}: no manifest.json (build NYU shards with `python -m shards nyu`)")
    if manifest.get("kind") != "nyu":
        raise ShardsError(f"{source}: kind {manifest.get('kind')!r}, pseudo-labels need NYU shards (kind 'nyu')")
    if target.resolve() == source.resolve():
        raise ShardsError(f"{target}: --out must differ from --data (the source shards are kept as they are)")
    net, config = load_network(checkpoint, device)
    size, cube = crop_geometry(source)
    if (size, cube) != (int(config["data"]["size"]), float(config["data"]["cube"])):
        raise ShardsError(f"{source}: crops are {size} px / {cube} mm, the checkpoint's network takes "
                          f"{config['data']['size']} px / {config['data']['cube']} mm")
    losses = cfg.losses(HandModel(), size, cube).to(device)
    target.mkdir(parents=True, exist_ok=True)
    records, costs, errors = [], [], {"network": [], "fused": [], "fitted": []}
    with tqdm(total=int(manifest["samples"]), desc="fitting frames", unit="frame") as progress:
        for listed in manifest["shards"]:
            samples = _read_shard(source / listed["name"], int(listed["samples"]),
                                  checksums=manifest.get("format_version", 1) >= 2)
            written = []
            for start in range(0, len(samples), cfg.batch_frames):
                chunk = samples[start:start + cfg.batch_frames]
                decoded = [sample for _, _, sample in chunk]
                result = fit_frames(net, losses, _stacked(decoded, "depth", device), _stacked(decoded, "cams", device),
                                    cfg)
                costs.append(result["cost"][[0, -1]].cpu())
                if all("joints" in sample for sample in decoded):
                    labels = _stacked(decoded, "joints", "cpu")
                    for name in errors:
                        errors[name].append(_view1_error(result[name].cpu(), labels))
                written += _with_fits(chunk, result["fitted"])
                progress.update(len(chunk))
            records.append(ShardRecord(listed["name"], len(written), write_tar(target / listed["name"], written), []))
    cost = torch.stack(costs).mean(0).tolist()
    labelled = all(errors.values())
    summary = FitSummary(str(checkpoint), str(source), int(manifest["samples"]), asdict(cfg), cost[0], cost[1],
                         {name: float(torch.cat(v).mean()) for name, v in errors.items()} if labelled else None)
    write_manifest(target, kind="nyu", keys=(*[k for k in manifest["keys"] if k != CHECKSUM_ENTRY], FITTED_ENTRY),
                   records=records, args=manifest.get("args", {}))
    write_json_atomic(target / "fit.json", asdict(summary))
    _link_test_split(Path(data), Path(out))
    return summary


Entries = dict[str, bytes]


def _read_shard(shard: Path, expected: int, *, checksums: bool) -> list[tuple[str, Entries, dict[str, Any]]]:
    """A shard's samples as (key, raw entries, decoded sample), every byte read and, for format 2, every
    checksum verified (``shards.reader.decode_sample``); a shard shorter than its manifest says is refused."""
    samples = list(read_tar_samples(shard))
    if len(samples) != expected:
        raise CorruptShardError(f"{shard}: {len(samples)} samples, the manifest lists {expected}: "
                                f"the shard is cut short or corrupted")
    return [(key, entries, decode_sample({"__key__": key, "__url__": str(shard), **entries}, checksums=checksums))
            for key, entries in samples]


def _stacked(samples: list[dict[str, Any]], field: str, device: str) -> torch.Tensor:
    return torch.tensor(np.stack([sample[field] for sample in samples]), dtype=torch.float32, device=device)


def _with_fits(chunk: list[tuple[str, Entries, dict[str, Any]]], fitted: torch.Tensor) -> list[tuple[str, Entries]]:
    """The chunk's samples with their fits added as fitted.npy and the checksums renewed."""
    fits = fitted.cpu().numpy().astype(np.float32)
    return [(key, with_checksums({**{n: v for n, v in entries.items() if n != CHECKSUM_ENTRY},
                                  FITTED_ENTRY: npy_bytes(joints)})) for (key, entries, _), joints in zip(chunk, fits)]


def _view1_error(joints: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, V, J, 3) predictions, (B, V, 36, 3) labels -> (B,) mean view-1 error over NYU's 14 joints."""
    return (joints[:, 0, NYU_EVAL_JOINTS] - labels[:, 0, NYU_EVAL_JOINTS]).norm(dim=-1).mean(-1)


def _link_test_split(data: Path, out: Path) -> None:
    test, link = data / "test", out / "test"
    if not test.exists() or link.exists() or link.is_symlink():
        return
    link.symlink_to(test.resolve(), target_is_directory=True)


def main(argv: list[str] | None = None) -> int:
    defaults = FitConfig()
    parser = argparse.ArgumentParser(
        prog="python -m train.pseudo_labels",
        description="Fit a frozen network's fused multi-view predictions to the depth of unlabelled NYU train "
                    "frames and write shards that carry the fits (fitted.npy) for `loss.fitted`.",
        epilog="Then: torchrun ... -m train --config configs/selfsup-cpu.yaml init=CHECKPOINT data.real=OUT "
               "(or any config with loss.fitted.enabled=true). "
               "No label is read to make the fits; OUT/test links to DATA/test for the evaluation.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (its newest)")
    parser.add_argument("--data", required=True, help="NYU shards root holding train/ (and test/)")
    parser.add_argument("--out", required=True, help="output root: OUT/train gets the shards with fits")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="fitting steps per frame (0: fused views)")
    parser.add_argument("--lr-mm", type=float, default=defaults.lr_mm, help="Adam step size, mm")
    for name in FITTING_TERMS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name),
                            help=f"weight of the {name} term (0: off; default {getattr(defaults, name)})")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false",
                        help="fit each view's prediction on its own instead of their fusion (an ablation)")
    parser.add_argument("--batch-frames", type=int, default=defaults.batch_frames, help="frames fitted together")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    try:
        cfg = FitConfig(args.steps, args.fuse, args.lr_mm, args.projection, args.collision, args.bone_length,
                        args.batch_frames)
        summary = pseudo_label(args.checkpoint, args.data, args.out, cfg, args.device)
    except (ShardsError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
