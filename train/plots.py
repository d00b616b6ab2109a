"""The evaluation's files for people: ``metrics.json``, the success curve as CSV and plots, per-joint bars.

Figures are drawn with matplotlib's Agg backend (no display needed), as the papers of the field show them:
the max-error success curve (0..80 mm) of one or several methods on one plot, and each method's mean
error per joint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import numpy as np

from train.scores import CURVE_COLUMNS, CURVE_THRESHOLDS_MM, success_curve

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

CURVE_X_LABEL = "threshold on the maximum joint error (mm)"
CURVE_Y_LABEL = "frames with max joint error < threshold (%)"


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


def plot_success_curves(errors: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Max-error success curves of several methods (name -> (N, K) errors) on one plot, as papers show them.

    A method named "" gets no legend entry; the others are labelled with their mean error.
    """
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
