"""``python -m train.evaluate``: a checkpoint on NYU shards, or results files side by side, in the NYU protocol.

The protocol (view 1, NYU's 14 joints, mean error in mm, the max-error success curve, the test split's two
subjects) is :mod:`shards.nyu_protocol` and :mod:`train.scores`; the predictions :mod:`train.predictions`;
the files and plots :mod:`train.plots`.

    python -m train.evaluate --checkpoint runs/x/checkpoints/step-000010000.pt --data shards/nyu/test \
        [--out DIR] [--batch-size 64] [--device cuda]
    python -m train.evaluate --checkpoint runs/x --data shards/nyu/test    # newest checkpoint of a run

writes ``DIR/metrics.json`` ({"mean_error_mm", "per_joint_mm", "per_subject", "frames", ...}),
``DIR/success_curve.csv`` (columns ``threshold_mm,fraction_below``: the fraction of frames whose maximum
joint error is < threshold_mm) and ``DIR/success_curve.png``.

The field's own format (``shards.nyu_protocol``: one line per NYU test frame, the 14 joints as view-1
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
import json
import sys
from pathlib import Path

import numpy as np
import torch

from shards.format import BadInputError, ShardsError, check_crop, check_shard_files
from shards.nyu_protocol import read_labels, read_results, uvd_to_xyz
from shards.reader import make_loader
from train.checkpoint import load_network, resolve_checkpoint
from train.plots import plot_per_joint, plot_success_curves, write_report
from train.predictions import collect_predictions, export_results
from train.scores import CURVE_COLUMNS, CURVE_THRESHOLDS_MM, FrameErrors, compute_metrics, success_curve


def score_results(path: str | Path, labels: np.ndarray, labels_name: str | Path) -> FrameErrors:
    """Per-frame errors of a results file against (M, 14, 3) uvd labels, the community's way: both
    converted to xyz with fy = -587.07 (``shards.nyu_protocol.uvd_to_xyz``). Lines whose labels are ``nan``
    are left out; the line count must match and a ``nan`` prediction needs a ``nan`` label."""
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
    try:
        names = method_names(args.results, args.names)
        labels = read_labels(args.labels)
        note = labels.missing_note()
        scored = {name: score_results(path, labels.values, args.labels) for name, path in zip(names, args.results)}
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
    try:  # the user's inputs: a checkpoint (file or run dir) and a shard dir cut at the network's crop
        checkpoint = resolve_checkpoint(args.checkpoint)
        net, crop, _ = load_network(checkpoint, args.device)
        kind = (check_shard_files(args.data) or {}).get("kind", "nyu")
        if kind != "nyu":  # synthetic shards hold poses, not depth frames with labels
            raise ShardsError(f"--data {args.data} holds {kind} shards; evaluation needs an NYU split "
                              "(python -m shards nyu: OUT/test)")
        check_crop(args.data, crop, f"the network of {checkpoint}")
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
    unusable = int((~np.isfinite(collected.errors)).any(axis=-1).sum())
    if unusable:  # a diverged network: its mean error would read "nan mm"
        parser.exit(2, f"error: the network of {checkpoint} predicts non-finite joints for {unusable} of "
                       f"{len(collected.errors)} frames of {args.data}\n")
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
        print(f"warning: {args.export_results}: {lines.missing_note()}", file=sys.stderr)
    print(f"mean error {metrics['mean_error_mm']:.2f} mm over {metrics['frames']} frames")


if __name__ == "__main__":
    main()
