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

The field's own format (``shards.nyu_results``: one line per NYU test frame, the 14 joints as view-1
``u v d``), to put our model beside published methods and to check our numbers with the field's tools:

    python -m train.evaluate --checkpoint runs/x --data shards/nyu/test --export-results ours.txt
    python -m train.evaluate --results ours.txt v2v.txt --labels shards/nyu/test --out compare [--names a b]

The second form scores results files against labels in the same format (or an NYU shard split dir) the
community's way (uvd -> xyz with fy = -587.07) and writes ``DIR/metrics.json`` ({name: {"mean_error_mm",
"frames", "per_joint_mm", "success_curve", ...}}), ``DIR/success_curve.png`` (every method on one plot)
and ``DIR/per_joint_error.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from geometry import Intrinsics
from train.checkpoint import CheckpointError, load_model_weights, read_checkpoint, resolve_checkpoint
from train.network import HourglassNet, NetworkConfig, build_network
from train.schema import ConfigError, from_dict

if TYPE_CHECKING:
    from shards.nyu_results import SplitLines

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


@dataclass
class FramePredictions:
    """The network's view-1 predictions over a data set, with the truth and each sample's meta."""

    predicted: np.ndarray  # (N, 41, 3) mm, view-1 crop frame
    truth: np.ndarray  # (N, 36, 3) mm, view-1 crop frame
    metas: list[dict]  # (N,) each sample's meta.json ({} where the batch had none)

    def errors(self) -> FrameErrors:
        """Per-frame errors on ``hand.NYU_EVAL_JOINTS``."""
        from hand import NYU_EVAL_JOINTS

        return FrameErrors(joint_errors(self.predicted, self.truth, list(NYU_EVAL_JOINTS)),
                           np.asarray([int(m.get("frame", -1)) for m in self.metas], dtype=np.int64),
                           [str(m.get("split", "")) for m in self.metas])


@torch.no_grad()
def collect_predictions(net: nn.Module, loader: Iterable[dict], *, device: str | torch.device | None = None,
                        max_batches: int | None = None) -> FramePredictions:
    """Run the network on view 1 of every batch; the network's train/eval mode is restored."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    predicted, truth, metas = [], [], []
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            depth = batch["depth"][:, 0:1].to(device, torch.float32, non_blocking=True)
            predicted.append(net(depth).joints.float().cpu().numpy())
            truth.append(batch["joints"][:, 0].float().numpy())
            metas += batch.get("meta") or [{}] * len(depth)
    finally:
        net.train(was_training)
    if not predicted:
        return FramePredictions(np.zeros((0, 41, 3)), np.zeros((0, 36, 3)), [])
    return FramePredictions(np.concatenate(predicted), np.concatenate(truth), metas)


def collect_errors(net: nn.Module, loader: Iterable[dict], *, device: str | torch.device | None = None,
                   max_batches: int | None = None) -> FrameErrors:
    """Run the network on view 1 of every batch and return per-frame errors on NYU_EVAL_JOINTS."""
    return collect_predictions(net, loader, device=device, max_batches=max_batches).errors()


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = success_curve(errors)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "success_curve.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CURVE_COLUMNS)
        writer.writerows([f"{t:g}", f"{f:.6f}"] for t, f in zip(CURVE_THRESHOLDS_MM, curve))
    plot_success_curves({"": errors}, out / "success_curve.png", title=f"mean error {metrics['mean_error_mm']:.2f} mm")
    return [out / "metrics.json", out / "success_curve.csv", out / "success_curve.png"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot_success_curves(errors: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Max-error success curves of several methods (name -> (N, K) errors) on one plot, as papers show them.

    A method named "" gets no legend entry; the others are labelled with their mean error.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 4.2))
    for name, value in errors.items():
        label = f"{name} ({value.mean():.2f} mm)" if name else None
        axes.plot(CURVE_THRESHOLDS_MM, success_curve(value) * 100, label=label)
    axes.set(xlabel=CURVE_X_LABEL, ylabel=CURVE_Y_LABEL, xlim=(0, 80), ylim=(0, 100), title=title)
    axes.grid(True, alpha=0.3)
    if any(errors):
        axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def plot_per_joint(per_joint: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Grouped bars: each method's (name -> {joint: mm}) mean error per joint, and the mean over joints."""
    plt = _pyplot()
    names = list(per_joint)
    joints = list(next(iter(per_joint.values()))) + ["mean"]
    width = 0.8 / max(len(names), 1)
    figure, axes = plt.subplots(figsize=(max(7.0, 0.5 * len(joints) * max(len(names), 1) ** 0.5), 4.2))
    for index, name in enumerate(names):
        values = list(per_joint[name].values())
        axes.bar(np.arange(len(joints)) + (index - (len(names) - 1) / 2) * width, values + [float(np.mean(values))],
                 width, label=name)
    axes.set_xticks(np.arange(len(joints)), joints, rotation=60, ha="right", fontsize="small")
    axes.set(ylabel="mean error (mm)", title="mean error per joint")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def export_results(predictions: FramePredictions, split_dir: str | Path, path: str | Path) -> SplitLines:
    """Write view-1 predictions as an NYU results file: crop frame + the sample's view-1 crop centre
    (``meta.json`` ``centers``) -> camera frame -> ``u v d`` with the sample's intrinsics; one line per
    frame of the split in frame order, ``nan`` lines for frames the shard build skipped.

    Returns the ``shards.nyu_results.SplitLines`` written (``missing`` lists the skipped frames).
    """
    from hand import NYU_EVAL_JOINTS
    from shards.format import ShardsError
    from shards.nyu import NYU_INTRINSICS
    from shards.nyu_results import camera_to_uvd, frame_lines, view1_centers, write_results

    camera = predictions.predicted[:, NYU_EVAL_JOINTS] + view1_centers(predictions.metas, split_dir)[:, None]
    try:
        intrinsics = [Intrinsics(**m["intrinsics"]) if "intrinsics" in m else NYU_INTRINSICS
                      for m in predictions.metas]
    except TypeError as error:
        raise ShardsError(f"{split_dir}: meta.json 'intrinsics' unreadable ({error})") from None
    uvd = np.stack([camera_to_uvd(points, k) for points, k in zip(camera, intrinsics)]) if len(camera) else camera
    frames = np.asarray([int(m.get("frame", -1)) for m in predictions.metas], dtype=np.int64)
    lines = frame_lines(split_dir, frames, uvd)
    write_results(path, lines.values)
    return lines


def read_labels(labels: str | Path) -> tuple[np.ndarray, str]:
    """(M, 14, 3) uvd labels, ``nan`` rows for frames without a label, from a labels file in the results
    format or an NYU shard split dir; and a note when rows are missing (else "")."""
    from shards.nyu_results import missing_note, read_results, split_labels

    if Path(labels).is_dir():
        lines = split_labels(labels)
        return lines.values, "" if lines.complete else missing_note(lines.missing, len(lines.values))
    values = read_results(labels)
    missing = [i + 1 for i in np.flatnonzero(np.isnan(values).all(axis=(1, 2)))]
    return values, missing_note(missing, len(values)) if missing else ""


def score_results(path: str | Path, labels: np.ndarray, labels_name: str | Path) -> FrameErrors:
    """Per-frame errors of a results file against (M, 14, 3) uvd labels, the community's way: both
    converted to xyz with fy = -587.07 (``shards.nyu_results.uvd_to_xyz``). Lines whose labels are ``nan``
    are left out; the line count must match and a ``nan`` prediction needs a ``nan`` label."""
    from shards.format import BadInputError
    from shards.nyu_results import read_results, uvd_to_xyz

    results = read_results(path)
    if len(results) != len(labels):
        first = min(len(results), len(labels)) + 1
        raise BadInputError(path, f"{len(results)} lines, but the labels {labels_name} have {len(labels)} "
                                  f"(one line per NYU test frame; line {first} has no counterpart)")
    labelled = ~np.isnan(labels).any(axis=(1, 2))
    unpredicted = np.flatnonzero(np.isnan(results).any(axis=(1, 2)) & labelled)
    if len(unpredicted):
        raise BadInputError(path, f"line {unpredicted[0] + 1}: nan, but that frame has a label in {labels_name} "
                                  f"({len(unpredicted)} such lines)")
    errors = np.linalg.norm(uvd_to_xyz(results[labelled]) - uvd_to_xyz(labels[labelled]), axis=-1)
    return FrameErrors(errors, np.flatnonzero(labelled) + 1, ["test"] * int(labelled.sum()))


def write_comparison(scored: dict[str, FrameErrors], files: dict[str, str], labels: str | Path,
                     out_dir: str | Path) -> tuple[dict, list[Path]]:
    """``metrics.json`` ({name: metrics + success curve}), ``success_curve.png`` (every method) and
    ``per_joint_error.png`` under ``out_dir``; returns the metrics and the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for name, collected in scored.items():
        metrics[name] = {"file": str(files[name]), "labels": str(labels), **compute_metrics(collected),
                         "success_curve": {CURVE_COLUMNS[0]: CURVE_THRESHOLDS_MM.tolist(),
                                           CURVE_COLUMNS[1]: success_curve(collected.errors).tolist()}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    curves = plot_success_curves({name: c.errors for name, c in scored.items()}, out / "success_curve.png",
                                 title="NYU, 14 joints")
    bars = plot_per_joint({name: m["per_joint_mm"] for name, m in metrics.items()}, out / "per_joint_error.png")
    return metrics, [out / "metrics.json", curves, bars]


def method_names(files: list[str], names: list[str] | None) -> list[str]:
    """``names`` as given, else each file's name without extension; must be as many and distinct."""
    chosen = names if names is not None else [Path(f).stem for f in files]
    if len(chosen) != len(files):
        raise ValueError(f"--names gives {len(chosen)} names for {len(files)} results files")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"method names repeat ({', '.join(chosen)}); give distinct ones with --names")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="training checkpoint (.pt), or a run dir: its newest checkpoint")
    parser.add_argument("--data", help="NYU split shard dir, e.g. shards/nyu/test")
    parser.add_argument("--out", default=None, help="output dir (default: <checkpoint dir>/eval-<name>; "
                        "required with --results)")
    parser.add_argument("--export-results", metavar="FILE", default=None,
                        help="also write the predictions as an NYU results file (one line per test frame, "
                        "14 joints as view-1 'u v d')")
    parser.add_argument("--results", nargs="+", metavar="FILE", default=None,
                        help="score NYU results files instead of a checkpoint (needs --labels and --out)")
    parser.add_argument("--labels", default=None,
                        help="with --results: labels file in the same format, or an NYU test shard dir")
    parser.add_argument("--names", nargs="+", default=None, help="with --results: one name per results file "
                        "(default: each file's name without extension)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per batch")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = parser.parse_args(argv)
    if args.results is not None:
        if not args.labels or not args.out or args.checkpoint or args.data or args.export_results:
            parser.error("--results needs --labels and --out, and takes no --checkpoint/--data/--export-results")
        compare_results(args, parser)
    elif not args.checkpoint or not args.data or args.labels or args.names:
        parser.error("give --checkpoint and --data (evaluate a network), or --results with --labels and --out")
    else:
        evaluate_checkpoint(args, parser)


def compare_results(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--results``: score results files against labels and write the side-by-side report."""
    from shards.format import ShardsError

    try:
        names = method_names(args.results, args.names)
        labels, note = read_labels(args.labels)
        scored = {name: score_results(path, labels, args.labels) for name, path in zip(names, args.results)}
        if not all(len(collected.errors) for collected in scored.values()):
            raise ValueError(f"{args.labels} holds no labelled frame")
    except (OSError, ValueError, ShardsError) as error:
        parser.exit(2, f"error: {error}\n")
    if note:
        print(f"warning: labels {args.labels}: {note}; scored on the {len(next(iter(scored.values())).errors)} "
              f"labelled frames", file=sys.stderr)
    try:
        metrics, written = write_comparison(scored, dict(zip(names, args.results)), args.labels, args.out)
    except OSError as error:
        parser.exit(2, f"error: cannot write the report to {args.out}: {error}\n")
    for path in written:
        print(f"wrote {path}")
    for name, entry in metrics.items():
        print(f"{name}: mean error {entry['mean_error_mm']:.2f} mm over {entry['frames']} frames")


def evaluate_checkpoint(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``: evaluate a network on a shard split, optionally exporting an NYU results file."""
    from shards.format import ShardsError
    from shards.nyu_results import missing_note
    from shards.reader import make_loader

    try:  # the user's inputs: a checkpoint (file or run dir) and a shard dir
        checkpoint = resolve_checkpoint(args.checkpoint)
        net, _ = load_network(checkpoint, args.device)
        loader = make_loader(args.data, batch_size=args.batch_size, batches_per_epoch=None,
                             num_workers=args.num_workers, resampled=False)
    except (OSError, ValueError, ShardsError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        predictions = collect_predictions(net, loader, device=args.device)
    except ShardsError as error:  # a damaged shard found while reading
        parser.exit(2, f"error: {error}\n")
    collected = predictions.errors()
    if len(collected.errors) == 0:
        parser.exit(2, f"error: {args.data} holds no frames to evaluate\n")
    metrics = compute_metrics(collected)
    metrics["checkpoint"] = str(checkpoint)
    metrics["data"] = str(args.data)
    out = Path(args.out) if args.out else checkpoint.parent / f"eval-{checkpoint.stem}"
    try:
        written = write_report(metrics, collected.errors, out)
        if args.export_results:
            lines = export_results(predictions, args.data, args.export_results)
            written.append(Path(args.export_results))
    except ShardsError as error:
        parser.exit(2, f"error: cannot export results: {error}\n")
    except OSError as error:
        parser.exit(2, f"error: cannot write the report to {out}: {error}\n")
    for path in written:
        print(f"wrote {path}")
    if args.export_results and not lines.complete:
        print(f"warning: {args.export_results}: {missing_note(lines.missing, len(lines.values))}", file=sys.stderr)
    print(f"mean error {metrics['mean_error_mm']:.2f} mm over {metrics['frames']} frames")


if __name__ == "__main__":
    main()
