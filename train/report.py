"""Side-by-side report of evaluated runs on one NYU test split, with the constant-predictor yardstick.

    python -m train.report --data demo/nyu --run synthetic_only=demo/eval-synthetic \
        --run self_supervised=demo/eval-selfsup --out demo

Each ``--run NAME=DIR`` names the output dir of ``python -m train.evaluate`` (its ``metrics.json`` and
``success_curve.csv``). The ``mean_pose`` row predicts every test frame as the mean view-1 crop-frame joints
of the labelled train split (``DATA/train``): what a network that ignores its input can score. Writes
``OUT/results.json`` (``{name: {"mean_error_mm", "success_at_20mm", "success_at_40mm", "frames"}}``),
``OUT/report.md`` (the table) and ``OUT/success_curves.png`` (one curve per row), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from train.evaluate import (CURVE_THRESHOLDS_MM, CURVE_X_LABEL, CURVE_Y_LABEL, FrameErrors, compute_metrics,
                            joint_errors, success_curve)

MEAN_POSE = "mean_pose"


def _labelled_frames(split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """View-1 joints (N, 36, 3) and frame numbers (N,) of every frame of an NYU shard split."""
    from shards.reader import make_loader

    joints, frames = [], []
    for batch in make_loader(split_dir, batch_size=64, batches_per_epoch=None, num_workers=0, resampled=False):
        joints.append(batch["joints"][:, 0].double().numpy())
        frames += [int(meta.get("frame", -1)) for meta in batch.get("meta") or [{}] * len(batch["joints"])]
    if not joints:
        raise ValueError(f"{split_dir} holds no frames")
    return np.concatenate(joints), np.asarray(frames)


def mean_pose_metrics(data_root: Path) -> tuple[dict, np.ndarray]:
    """Metrics and success curve of predicting the train split's mean view-1 joints for every test frame."""
    from hand import NYU_EVAL_JOINTS

    train, _ = _labelled_frames(data_root / "train")
    test, frames = _labelled_frames(data_root / "test")
    constant = np.broadcast_to(train.mean(axis=0), test.shape)
    errors = joint_errors(constant, test, list(NYU_EVAL_JOINTS))
    metrics = compute_metrics(FrameErrors(errors, frames, ["test"] * len(frames)))
    return metrics, success_curve(errors)


def read_evaluation(directory: Path) -> tuple[dict, np.ndarray]:
    """``metrics.json`` and the success curve (fraction below each threshold) of an evaluation dir."""
    metrics_path, curve_path = directory / "metrics.json", directory / "success_curve.csv"
    for path in (metrics_path, curve_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `python -m train.evaluate --out {directory}` first")
    metrics = json.loads(metrics_path.read_text())
    with open(curve_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return metrics, np.array([float(row["fraction_below"]) for row in rows])


def summary(metrics: dict) -> dict:
    """The report's columns of one row."""
    success = metrics.get("success_at_mm", {})
    return {"mean_error_mm": float(metrics["mean_error_mm"]), "success_at_20mm": float(success.get("20", 0.0)),
            "success_at_40mm": float(success.get("40", 0.0)), "frames": int(metrics["frames"])}


def table(results: dict[str, dict]) -> str:
    lines = ["| model | mean error (mm) | frames with max error < 20 mm | < 40 mm | test frames |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['mean_error_mm']:.1f} | {100 * row['success_at_20mm']:.0f}% | "
                     f"{100 * row['success_at_40mm']:.0f}% | {row['frames']} |")
    return "\n".join(lines)


def plot_curves(curves: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        axes.plot(CURVE_THRESHOLDS_MM, curve * 100, label=name)
    axes.set(xlabel=CURVE_X_LABEL, ylabel=CURVE_Y_LABEL, xlim=(0, 80), ylim=(0, 100))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def build_report(data_root: Path, runs: dict[str, Path], out: Path) -> dict[str, dict]:
    """Write results.json, report.md and success_curves.png under ``out``; returns the rows by name."""
    metrics, curve = mean_pose_metrics(data_root)
    results, curves = {MEAN_POSE: summary(metrics)}, {MEAN_POSE: curve}
    for name, directory in runs.items():
        metrics, curves[name] = read_evaluation(directory)
        results[name] = summary(metrics)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_curves(curves, out / "success_curves.png")
    (out / "report.md").write_text(
        f"# Results on {data_root / 'test'}\n\n{table(results)}\n\n"
        f"`{MEAN_POSE}`: every test frame predicted as the mean view-1 joints of the labelled train split.\n\n"
        "![success curves](success_curves.png)\n")
    return results


def _run_argument(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected NAME=EVAL_DIR")
    return name, Path(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True, type=Path, help="NYU shards root with train/ and test/")
    parser.add_argument("--run", action="append", default=[], type=_run_argument, metavar="NAME=EVAL_DIR",
                        help="an evaluation output dir under a row name (repeatable, in table order)")
    parser.add_argument("--out", required=True, type=Path, help="where results.json, report.md and the plot go")
    args = parser.parse_args(argv)
    from shards.format import ShardsError

    try:
        results = build_report(args.data, dict(args.run), args.out)
    except (OSError, ValueError, KeyError, ShardsError) as error:
        parser.exit(2, f"error: {error}\n")
    print(table(results))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'}, {args.out / 'success_curves.png'}")


if __name__ == "__main__":
    main()
