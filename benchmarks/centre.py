"""The label-free crop centre (``shards.center.find_center``, ``--center com``) against the labelled palm.

  python benchmarks/centre.py [--frames 200] [--seed 0] [--json]

Renders one fake-NYU test split twice from the same seed (``python -m shards fake-nyu``): with a person
behind the hand (the default) and without (``--no-body``: hand, forearm and wall); the hands, labels and
sensor noise are the same in both. For every view of every frame it finds the centre from depth alone and
reports, per camera (view 1 frontal, views 2-3 from the sides) and over all views:

- **distance to the palm**: from the centre to the labelled palm joint (32), median and 95th percentile (mm);
- **within 40 mm**: the fraction of views whose centre lies within 40 mm of the palm;
- **whole hand in the crop**: the fraction whose 36 labelled joints all lie inside the default crop cube
  (``geometry.Crop``, 300 mm) around the centre;
- **no hand found**: views where :class:`shards.center.HandNotFound` was raised; they count as misses in
  the two fractions and are left out of the distances.

``--json`` prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geometry import Crop  # noqa: E402 (after the sys.path line above)
from shards.center import HandNotFound, find_center  # noqa: E402
from shards.nyu import PALM_JOINT, VIEWS, depth_path, load_labels, read_depth  # noqa: E402
from machine import describe_machine  # noqa: E402

NEAR_MM = 40.0
CAMERAS = {"view 1 (frontal)": (0,), "views 2-3 (sides)": (1, 2), "all views": (0, 1, 2)}


def render(out: Path, frames: int, seed: int, body: bool) -> None:
    """``python -m shards fake-nyu`` as a user runs it; its progress goes to stderr."""
    subprocess.run([sys.executable, "-m", "shards", "fake-nyu", "--out", str(out), "--train", "0", "--test",
                    str(frames), "--seed", str(seed), "--body" if body else "--no-body"],
                   cwd=REPO, check=True, stdout=sys.stderr)


def measure(root: Path) -> dict:
    """Per view and frame: distance to the palm (nan: no hand found) and whether the crop holds every joint."""
    split = root / "test"
    labels = load_labels(split)
    crop = Crop()
    distance = np.full((VIEWS, labels.num_frames), np.nan)
    whole = np.zeros((VIEWS, labels.num_frames), bool)
    seconds = 0.0
    for frame in range(labels.num_frames):
        for view in range(VIEWS):
            depth = read_depth(depth_path(split, view + 1, frame + 1))
            start = time.perf_counter()
            try:
                center = find_center(depth)
            except HandNotFound:
                continue
            finally:
                seconds += time.perf_counter() - start
            joints = labels.joints[view, frame]
            distance[view, frame] = np.linalg.norm(center - joints[PALM_JOINT])
            whole[view, frame] = crop.inside(joints - center).all()
    figures = {}
    for name, views in CAMERAS.items():
        found = distance[list(views)].reshape(-1)
        hit = found[np.isfinite(found)]
        figures[name] = {"views": int(found.size), "no_hand_found": int(np.sum(np.isnan(found))),
                         "median_mm": float(np.median(hit)) if hit.size else None,
                         "p95_mm": float(np.percentile(hit, 95)) if hit.size else None,
                         "within_40mm": float(np.mean(np.nan_to_num(found, nan=np.inf) < NEAR_MM)),
                         "whole_hand": float(np.mean(whole[list(views)]))}
    return {"cameras": figures, "ms_per_view": 1000 * seconds / distance.size}


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; {result['date']}; fake-NYU test split, {result['frames']} frames, "
             f"seed {result['seed']}", "",
             "| scene | camera | views | no hand found | median to palm (mm) | 95th percentile (mm) "
             "| within 40 mm | whole hand in crop |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for scene, figures in result["scenes"].items():
        for camera, row in figures["cameras"].items():
            lines.append(f"| {scene} | {camera} | {row['views']} | {row['no_hand_found']} | {row['median_mm']:.1f} | "
                         f"{row['p95_mm']:.1f} | {100 * row['within_40mm']:.1f}% | {100 * row['whole_hand']:.1f}% |")
    times = ", ".join(f"{scene} {figures['ms_per_view']:.0f} ms" for scene, figures in result["scenes"].items())
    lines += ["", f"Time per view (640x480): {times}."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="fake-NYU test frames to render (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="fake-NYU seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    result = {"machine": describe_machine(), "date": datetime.date.today().isoformat(), "frames": args.frames,
              "seed": args.seed, "scenes": {}}
    with tempfile.TemporaryDirectory() as work:
        for scene, body in (("person behind the hand", True), ("hand, forearm, wall (--no-body)", False)):
            root = Path(work) / ("body" if body else "no-body")
            render(root, args.frames, args.seed, body)
            result["scenes"][scene] = measure(root)
    print("\n".join([markdown(result)] + ([json.dumps(result)] if args.json else [])))  # the JSON line last
    return 0


if __name__ == "__main__":
    sys.exit(main())
