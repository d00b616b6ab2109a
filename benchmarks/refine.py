"""What does ``train.predict --refine N`` gain on label-free crops? Fake-NYU test frames, view 1.

    python benchmarks/refine.py [--work DIR] [--checkpoint RUN] [--refine 0 1 2 3] [--json]

Each test frame is cropped at its label-free centre (``--center com``: ``shards.center.find_center``), then
re-cropped N times at the palm centre the network predicted (``train.predict.predict_frame``); for each N:
the mean error on NYU's 14 joints (mm), and how far the final crop centre lies from the labelled palm (joint
32; median and 95th percentile, mm). The row ``labelled palm`` crops at joint 32 itself: what refinement
can at best reach. Labels are read only to score.

Without ``--checkpoint`` it makes its own network in ``--work``: ``shards fake-nyu`` (256 train, 100 test
frames, seed 0), ``shards nyu`` (label-centred crops), then 1,500 steps of supervised training on the
train split's labels (``configs/selfsup-cpu.yaml`` with the real frames' labels as the only term, one
process): a network trained on crops centred at the palm, as every trained network here is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages
from shards.nyu import PALM_JOINT, depth_path, load_labels, read_depth  # noqa: E402
from shards.nyu_protocol import NYU_EVAL_JOINTS, NYU_INTRINSICS  # noqa: E402
from train.checkpoint import load_network  # noqa: E402
from train.predict import hand_center, predict_frame  # noqa: E402

TRAIN_OVERRIDES = ["data.synthetic=null", "data.synthetic_batch=0", "data.real_batch=4", "loss.fitted.enabled=false",
                   "loss.supervised.enabled=true", "loss.supervised.weight=1.0", "optim.lr=1e-3", "run.steps=1500",
                   "eval.every=500", "checkpoint.every=500"]


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def make_network(work: Path) -> Path:
    """The fake-NYU data and a supervised network in ``work`` (steps already done are kept)."""
    if not (work / "raw" / "test").is_dir():
        run("-m", "shards", "fake-nyu", "--out", str(work / "raw"), "--train", "256", "--test", "100", "--seed", "0")
    if not (work / "nyu" / "test" / "manifest.json").is_file():
        run("-m", "shards", "nyu", "--nyu-root", str(work / "raw"), "--out", str(work / "nyu"), "--samples-per-shard", "32")
    if not (work / "supervised" / "checkpoints" / "step-000001500.pt").is_file():
        run("-m", "train", "--config", "configs/selfsup-cpu.yaml", f"data.real={work / 'nyu'}",
            f"run.dir={work / 'supervised'}", *TRAIN_OVERRIDES)
    return work / "supervised"


def measure(checkpoint: Path, split_dir: Path, refines: list[int]) -> dict[str, dict[str, float]]:
    """Per row: mean error on the 14 joints, the final crop centre's distance to the labelled palm."""
    net, crop, _ = load_network(checkpoint)
    labels = load_labels(split_dir)
    rows: dict[str, dict[str, list[float]]] = {}
    for index in range(labels.num_frames):
        depth = read_depth(depth_path(split_dir, 1, index + 1))
        truth = labels.joints[0, index]
        starts = {"labelled palm": truth[PALM_JOINT]}
        found = hand_center(depth, NYU_INTRINSICS)
        if found is not None:
            starts.update({f"com, refine {n}": found for n in refines})
        for name, start in starts.items():
            refine = int(name.rsplit(" ", 1)[1]) if name.startswith("com") else 0
            prediction = predict_frame(net, crop, depth, start, NYU_INTRINSICS, refine)
            row = rows.setdefault(name, {"error": [], "offset": []})
            row["error"].append(float(np.linalg.norm(prediction.spheres[NYU_EVAL_JOINTS] - truth[NYU_EVAL_JOINTS],
                                                     axis=-1).mean()))
            row["offset"].append(float(np.linalg.norm(prediction.center - truth[PALM_JOINT])))
    return {name: {"mean_error_mm": float(np.mean(r["error"])), "centre_median_mm": float(np.median(r["offset"])),
                   "centre_p95_mm": float(np.percentile(r["offset"], 95)), "frames": len(r["error"])}
            for name, r in rows.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| crop centre | mean error, 14 joints (mm) | centre to labelled palm: median (mm) | 95th pct (mm) | frames |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['mean_error_mm']:.1f} | {r['centre_median_mm']:.1f} | {r['centre_p95_mm']:.1f} | "
              f"{r['frames']} |" for name, r in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-refine"), help="data and network dir")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a run dir or checkpoint (default: train one)")
    parser.add_argument("--data", type=Path, default=None, help="fake-NYU root (default: WORK/raw)")
    parser.add_argument("--refine", type=int, nargs="+", default=[0, 1, 2, 3], help="refinement counts to measure")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    checkpoint = args.checkpoint or make_network(args.work)
    results = measure(checkpoint, (args.data or args.work / "raw") / "test", args.refine)
    print(f"Machine: {describe_machine()}; checkpoint {checkpoint}")
    print(table(results))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
