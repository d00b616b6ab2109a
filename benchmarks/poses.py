"""The hand model against labelled hands: fit residual and pose-sampler coverage.

  python benchmarks/poses.py [--fake-frames 300] [--samples 20000] [--labels FILE --frames 300] [--json]

Offline by default: renders a fake-NYU test split (``python -m shards fake-nyu``, poses from
``shards.fake_nyu.articulation``, a generator of its own), writes its view-1 labels in the field's results
format and fits them with ``python -m shards fit-poses``. Reports:

- **fit residual**: mean distance of the fitted model's 14 evaluation joints to the labels, and the error of
  all 36 fitted joints against the generator's true (noise-free) joints.
- **coverage**: with global rotation and translation removed (zero) and the average shape, the rms over the
  14 evaluation joints from each pose of a reference set to the nearest of ``--samples`` poses of
  ``hand.sample_poses``; the median over the set. The yardstick beside it: the nearest other pose of the
  same set. The reference set is the fake-NYU test poses, which the sampler is not built from.

``--labels FILE`` (e.g. the public NYU test labels) adds the same two figures for ``--frames`` frames of
that file: the fit, and the coverage of the poses fitted to it. That *measures* the sampler against real
hands; nothing here feeds those labels into the sampler or into training data. ``--json`` prints one
JSON object on the last line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hand  # noqa: E402
from shards.fake_nyu import RECORD_NAME  # noqa: E402
from shards.nyu import load_labels  # noqa: E402
from shards.nyu_protocol import NYU_EVAL_JOINTS, camera_to_uvd, write_results  # noqa: E402
from shards.pose_fit import POSES_NAME, SUMMARY_NAME  # noqa: E402
from machine import describe_machine  # noqa: E402


def run_module(*args: object) -> None:
    """``python -m ARGS`` from the repository root, as a user runs it; its progress goes to stderr."""
    subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, check=True, stdout=sys.stderr)


def fit(labels: Path, out: Path, frames: int | None) -> tuple[dict, dict[str, np.ndarray]]:
    run_module("shards", "fit-poses", "--labels", labels, "--out", out, *(["--frames", frames] if frames else []))
    return json.loads((out / SUMMARY_NAME).read_text()), dict(np.load(out / POSES_NAME))


def articulation_joints(poses: np.ndarray, model: hand.HandModel) -> torch.Tensor:
    """(N, 14, 3) evaluation joints of poses with global rotation and translation zeroed, average shape."""
    local = torch.as_tensor(poses, dtype=torch.float32).clone()
    local[:, :6] = 0
    with torch.no_grad():
        return model.keypoints(local)[:, NYU_EVAL_JOINTS]


def nearest_rms(reference: torch.Tensor, candidates: torch.Tensor, exclude_self: bool = False) -> np.ndarray:
    """(N,) rms over joints from each reference pose (N, J, 3) to its nearest candidate (M, J, 3), mm."""
    flat_ref, flat_cand = reference.flatten(1).double(), candidates.flatten(1).double()
    distances = torch.cdist(flat_ref, flat_cand) / reference.shape[1] ** 0.5  # sqrt(sum of squares / J): rms
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    return distances.min(1).values.numpy()


def coverage(reference_poses: np.ndarray, samples: torch.Tensor, model: hand.HandModel) -> dict[str, float]:
    reference = articulation_joints(reference_poses, model)
    sampled = articulation_joints(samples.numpy(), model)
    return {"poses": len(reference),
            "median_nearest_sample_mm": float(np.median(nearest_rms(reference, sampled))),
            "median_nearest_other_pose_mm": float(np.median(nearest_rms(reference, reference, exclude_self=True)))}


def write_view1_labels(split_dir: Path, out: Path) -> Path:
    """An NYU-layout split's view-1 labels (joint_data.mat) as a results file."""
    labels = load_labels(split_dir)
    return write_results(out, camera_to_uvd(labels.joints[0][:, NYU_EVAL_JOINTS]))


def fake_nyu_figures(work: Path, frames: int, samples: torch.Tensor, model: hand.HandModel) -> dict:
    root = work / "fake-nyu"
    run_module("shards", "fake-nyu", "--out", root, "--train", 0, "--test", frames, "--seed", 0)
    summary, fitted = fit(write_view1_labels(root / "test", work / "fake-labels.txt"), work / "fake-fit", None)
    record = np.load(root / RECORD_NAME)
    with torch.no_grad():
        joints = model.keypoints(torch.as_tensor(fitted["poses"]), torch.as_tensor(fitted["shapes"]))[:, :36]
    true = torch.as_tensor(record["test_joints_true"][0], dtype=torch.float32)
    return {"fit": {key: summary[key] for key in ("frames", "mean_residual_mm", "per_joint_mm", "at_limit_fraction")}
            | {"all_36_joints_error_mm": float((joints - true).norm(dim=-1).mean())},
            "coverage": coverage(record["test_poses"], samples, model)}


def labels_figures(work: Path, labels: Path, frames: int, samples: torch.Tensor, model: hand.HandModel) -> dict:
    summary, fitted = fit(labels, work / "labels-fit", frames)
    return {"fit": {key: summary[key] for key in ("frames", "mean_residual_mm", "per_joint_mm", "at_limit_fraction",
                                                   "at_limit_by_param")},
            "coverage": coverage(fitted["poses"], samples, model)}


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; {result['date']}; {result['samples']} sampler poses (seed 0)", "",
             "| pose set | frames | fit residual, 14 joints (mm) | fitted 36 joints vs truth (mm) | angles at a limit "
             "| coverage: median nearest sample (mm) | yardstick: median nearest other pose (mm) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, figures in result["sets"].items():
        fitted, covered = figures["fit"], figures["coverage"]
        truth = fitted.get("all_36_joints_error_mm")
        lines.append(f"| {name} | {fitted['frames']} | {fitted['mean_residual_mm']:.2f} | "
                     f"{'-' if truth is None else f'{truth:.2f}'} | {100 * fitted['at_limit_fraction']:.1f}% | "
                     f"{covered['median_nearest_sample_mm']:.1f} | {covered['median_nearest_other_pose_mm']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake-frames", type=int, default=300, help="fake-NYU test frames to render and fit")
    parser.add_argument("--samples", type=int, default=20000, help="hand.sample_poses poses for coverage")
    parser.add_argument("--labels", type=Path, help="a results-format labels file to measure against too")
    parser.add_argument("--frames", type=int, default=300, help="frames of --labels to fit (spread evenly)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = hand.HandModel()
    samples = hand.sample_poses(args.samples, torch.Generator().manual_seed(0))
    result = {"machine": describe_machine(), "date": datetime.date.today().isoformat(), "samples": args.samples,
              "sets": {}}
    with tempfile.TemporaryDirectory() as work:
        result["sets"]["fake-NYU test (articulation)"] = fake_nyu_figures(Path(work), args.fake_frames, samples, model)
        if args.labels:
            result["sets"][f"{args.labels.name}"] = labels_figures(Path(work), args.labels, args.frames, samples, model)
    print(markdown(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
