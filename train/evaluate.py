"""Evaluation on NYU view 1: mean 3D joint error and the max-error success curve.

Protocol of the literature: view 1 of the test split, the 14 joints ``hand.NYU_EVAL_JOINTS``, mean
Euclidean error in mm; the success curve is the fraction of frames whose *worst* (maximum) joint error
is strictly below a threshold, 0..80 mm. The NYU test set holds two subjects: frames <= 2440 are subject 1, later frames
subject 2 (a smaller hand).

    python -m train.evaluate --checkpoint runs/x/checkpoints/step-000010000.pt --data shards/nyu/test \
        [--out DIR] [--batch-size 64] [--device cuda]
    python -m train.evaluate --checkpoint runs/x --data shards/nyu/test    # newest checkpoint of a run

writes ``DIR/metrics.json`` ({"mean_error_mm", "per_joint_mm", "per_subject", "frames", ...}),
``DIR/success_curve.csv`` (columns ``threshold_mm,fraction_below``: the fraction of frames whose maximum
joint error is < threshold_mm) and ``DIR/success_curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.checkpoint import CheckpointError, list_checkpoints, load_model_weights, read_checkpoint
from train.network import HourglassNet, NetworkConfig, build_network
from train.schema import ConfigError, from_dict

# Copies of hand.NYU_EVAL_JOINTS / NYU test facts would drift; they are read from `hand` at use.
SUBJECT_2_FIRST_FRAME = 2441  # NYU test: frames 1..2440 show subject 1, the rest subject 2
CURVE_THRESHOLDS_MM = np.arange(0, 81, dtype=np.float64)
CURVE_COLUMNS = ("threshold_mm", "fraction_below")  # fraction of frames with max joint error < threshold_mm
CURVE_X_LABEL = "threshold on the maximum joint error (mm)"
CURVE_Y_LABEL = "frames with max joint error < threshold (%)"


@dataclass
class FrameErrors:
    """Per-frame joint errors collected over a data set."""

    errors: np.ndarray  # (N, K) mm, Euclidean error of each evaluated joint
    frames: np.ndarray  # (N,) int, 1-based NYU frame number (-1 where the batch had no meta)
    splits: list[str]  # (N,) split name of each frame ("" where unknown)

    @staticmethod
    def concatenate(parts: list[FrameErrors]) -> FrameErrors:
        """The frames of several parts (e.g. every rank's share) in order."""
        return FrameErrors(np.concatenate([p.errors for p in parts]), np.concatenate([p.frames for p in parts]),
                           [split for p in parts for split in p.splits])


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the newest complete checkpoint of a run dir or its checkpoints/ dir."""
    path = Path(path)
    if not path.is_dir():
        return path
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = list_checkpoints(directory)
    if not found:
        raise FileNotFoundError(f"no checkpoint (step-*.pt) in {directory}")
    return found[-1][1]


def load_network(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[HourglassNet, dict]:
    """The network of a training checkpoint (eval mode) and the checkpoint's resolved config dict.

    ``checkpoint`` is a checkpoint file, or a run directory whose newest checkpoint is taken.
    """
    path = resolve_checkpoint(checkpoint)
    payload = read_checkpoint(path)
    config = payload["config"]
    model_cfg = _network_config(config.get("model", {}), path)
    data = config.get("data", {})
    try:
        size, cube = int(data["size"]), float(data["cube"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: config.data needs numeric 'size' and 'cube' ({error})") from error
    net = build_network(model_cfg, size=size, cube_mm=cube)
    load_model_weights(net, payload, path)
    return net.to(device).eval(), config


def _network_config(section: dict, path: Path) -> NetworkConfig:
    try:
        return from_dict(NetworkConfig, section, prefix="model.", where=f" in checkpoint {path}")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None


def joint_errors(predicted: np.ndarray, truth: np.ndarray, joints: list[int]) -> np.ndarray:
    """(N, J, 3) predicted and true joints in mm -> (N, len(joints)) Euclidean errors of ``joints``.

    The one error function of the project (evaluation and the training monitor). Predictions are the
    network's 41 spheres, truth NYU's 36 joints or synthetic keypoints; both must cover ``joints``.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    return np.linalg.norm(predicted[:, joints] - truth[:, joints], axis=-1)


def eval_joint_names() -> list[str]:
    """NYU names of the evaluated joints, in ``hand.NYU_EVAL_JOINTS`` order."""
    from hand import NYU_EVAL_JOINTS, NYU_JOINT_NAMES

    return [NYU_JOINT_NAMES[i] for i in NYU_EVAL_JOINTS]


def subject_of(frame: int, split: str) -> int | None:
    """NYU test subject (1 or 2) of a frame, None outside the test split."""
    if split != "test" or frame < 1:
        return None
    return 1 if frame < SUBJECT_2_FIRST_FRAME else 2


def success_curve(errors: np.ndarray, thresholds_mm: np.ndarray = CURVE_THRESHOLDS_MM) -> np.ndarray:
    """Fraction of frames whose maximum joint error is strictly below each threshold (non-decreasing)."""
    worst = errors.max(axis=1)
    return (worst[None, :] < thresholds_mm[:, None]).mean(axis=1)


def compute_metrics(collected: FrameErrors, joint_names: list[str] | None = None) -> dict:
    """Mean error, per-joint and per-subject errors of collected frame errors (default names: NYU's)."""
    joint_names = eval_joint_names() if joint_names is None else joint_names
    errors = collected.errors
    if len(errors) == 0:
        raise ValueError("no frames were evaluated (empty data set)")
    curve = success_curve(errors)
    metrics = {
        "mean_error_mm": float(errors.mean()),
        "per_joint_mm": {name: float(value) for name, value in zip(_unique(joint_names), errors.mean(axis=0))},
        "frames": int(len(errors)),
        "max_error_mean_mm": float(errors.max(axis=1).mean()),
        "success_at_mm": {str(t): float(curve[t]) for t in (10, 20, 30, 40, 50, 80)},
    }
    subjects = np.array([subject_of(int(f), s) or 0 for f, s in zip(collected.frames, collected.splits)])
    metrics["per_subject"] = {
        str(subject): {"mean_error_mm": float(errors[subjects == subject].mean()),
                       "frames": int((subjects == subject).sum())}
        for subject in sorted(set(subjects.tolist()) - {0})}
    return metrics


def _unique(names: list[str]) -> list[str]:
    return names if len(set(names)) == len(names) else [f"{i}_{name}" for i, name in enumerate(names)]


@torch.no_grad()
def collect_errors(net: nn.Module, loader: Iterable[dict], *, device: str | torch.device | None = None,
                   max_batches: int | None = None) -> FrameErrors:
    """Run the network on view 1 of every batch and return per-frame errors on NYU_EVAL_JOINTS."""
    from hand import NYU_EVAL_JOINTS

    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    errors, frames, splits = [], [], []
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            depth = batch["depth"][:, 0:1].to(device, torch.float32, non_blocking=True)
            predicted = net(depth).joints.float().cpu().numpy()
            errors.append(joint_errors(predicted, batch["joints"][:, 0].float().numpy(), list(NYU_EVAL_JOINTS)))
            metas = batch.get("meta") or [{}] * len(depth)
            frames += [int(m.get("frame", -1)) for m in metas]
            splits += [str(m.get("split", "")) for m in metas]
    finally:
        net.train(was_training)
    stacked = np.concatenate(errors) if errors else np.zeros((0, len(NYU_EVAL_JOINTS)))
    return FrameErrors(stacked, np.asarray(frames, dtype=np.int64), splits)


def evaluate(net: nn.Module, loader: Iterable[dict], *, device: str | torch.device | None = None,
             max_batches: int | None = None) -> dict:
    """Metrics of ``net`` on NYU-format batches (view 1); the network's train/eval mode is restored."""
    return compute_metrics(collect_errors(net, loader, device=device, max_batches=max_batches))


def metric_scalars(metrics: dict) -> dict[str, float]:
    """The scalar entries of :func:`compute_metrics`'s result, flat: ``mean_error_mm``, ``frames``,
    ``max_error_mean_mm``, ``success_at_{t}mm``, ``subject{s}/mean_error_mm``."""
    values = {key: float(metrics[key]) for key in ("mean_error_mm", "frames", "max_error_mean_mm")}
    values.update({f"success_at_{t}mm": float(v) for t, v in metrics.get("success_at_mm", {}).items()})
    values.update({f"subject{s}/mean_error_mm": float(entry["mean_error_mm"])
                   for s, entry in metrics.get("per_subject", {}).items()})
    return values


def write_report(metrics: dict, errors: np.ndarray, out_dir: str | Path) -> list[Path]:
    """metrics.json, success_curve.csv and success_curve.png under ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = success_curve(errors)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "success_curve.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CURVE_COLUMNS)
        writer.writerows([f"{t:g}", f"{f:.6f}"] for t, f in zip(CURVE_THRESHOLDS_MM, curve))
    figure, axes = plt.subplots(figsize=(5, 4))
    axes.plot(CURVE_THRESHOLDS_MM, curve * 100)
    axes.set(xlabel=CURVE_X_LABEL, ylabel=CURVE_Y_LABEL,
             xlim=(0, 80), ylim=(0, 100), title=f"mean error {metrics['mean_error_mm']:.2f} mm")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "success_curve.png", dpi=100)
    plt.close(figure)
    return [out / "metrics.json", out / "success_curve.csv", out / "success_curve.png"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint (.pt), or a run dir: its newest checkpoint")
    parser.add_argument("--data", required=True, help="NYU split shard dir, e.g. shards/nyu/test")
    parser.add_argument("--out", default=None, help="output dir (default: <checkpoint dir>/eval-<name>)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per batch")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = parser.parse_args(argv)

    from shards.format import ShardsError
    from shards.reader import make_loader

    try:  # the user's inputs: a checkpoint (file or run dir) and a shard dir
        checkpoint = resolve_checkpoint(args.checkpoint)
        net, _ = load_network(checkpoint, args.device)
        loader = make_loader(args.data, batch_size=args.batch_size, batches_per_epoch=None,
                             num_workers=args.num_workers, resampled=False)
    except (OSError, ValueError, ShardsError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        collected = collect_errors(net, loader, device=args.device)
    except ShardsError as error:  # a damaged shard found while reading
        parser.exit(2, f"error: {error}\n")
    if len(collected.errors) == 0:
        parser.exit(2, f"error: {args.data} holds no frames to evaluate\n")
    metrics = compute_metrics(collected)
    metrics["checkpoint"] = str(checkpoint)
    metrics["data"] = str(args.data)
    out = Path(args.out) if args.out else checkpoint.parent / f"eval-{checkpoint.stem}"
    try:
        written = write_report(metrics, collected.errors, out)
    except OSError as error:
        parser.exit(2, f"error: cannot write the report to {out}: {error}\n")
    for path in written:
        print(f"wrote {path}")
    print(f"mean error {metrics['mean_error_mm']:.2f} mm over {metrics['frames']} frames")


if __name__ == "__main__":
    main()
