"""Data-path benchmark: reading shards vs reading raw NYU files and cropping; shard build rate.

  python benchmarks/data.py [--nyu-root DIR] [--frames 48] [--json]

Without --nyu-root it renders a fake-NYU train split of --frames frames first. Measures, on the same
frames: samples/s of the training reader over shards (one process, no workers) and of the prototype's
path (decode 3 PNGs + crop 3 views per sample); and build frames/s of ``shards nyu`` with 1 and 2
workers. ``--json`` prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geometry import Crop  # noqa: E402
from shards.fake_nyu import FakeNyuConfig, generate  # noqa: E402
from shards.nyu import PALM_JOINT, VIEWS, crop_depth, depth_path, load_labels, read_depth  # noqa: E402
from shards.nyu_shards import NyuBuildConfig, build_split  # noqa: E402
from shards.reader import make_loader  # noqa: E402
from machine import describe_machine  # noqa: E402


def raw_rate(split_dir: Path, repeats: int) -> float:
    """Samples/s of decode 3 PNGs + crop around the labelled palm, per sample."""
    labels = load_labels(split_dir)
    start = time.perf_counter()
    for _ in range(repeats):
        for index in range(labels.num_frames):
            for view in range(VIEWS):
                depth = read_depth(depth_path(split_dir, view + 1, index + 1))
                crop_depth(depth, labels.joints[view, index, PALM_JOINT], Crop())
    return repeats * labels.num_frames / (time.perf_counter() - start)


def shard_rate(directory: Path, repeats: int) -> float:
    """Samples/s of the training reader (decode + collate to tensors) in this process."""
    loader = make_loader(directory, batch_size=16, batches_per_epoch=None, num_workers=0, resampled=False)
    count = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in loader:
            count += len(batch["depth"])
    return count / (time.perf_counter() - start)


def build_rate(root: Path, out: Path, workers: int, frames: int) -> float:
    config = NyuBuildConfig(nyu_root=root, out=out, splits=("train",), samples_per_shard=16, workers=workers)
    start = time.perf_counter()
    build_split(config, "train")
    return frames / (time.perf_counter() - start)




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nyu-root", type=Path, help="NYU-layout root with train/ (default: render fake-NYU)")
    parser.add_argument("--frames", type=int, default=48, help="fake-NYU frames to render (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the frames per reading test")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.nyu_root or Path(scratch) / "fake-nyu"
        if args.nyu_root is None:
            generate(root, FakeNyuConfig(train=args.frames, test=0), progress=False)
        frames = load_labels(root / "train").num_frames
        results = {
            "frames": frames,
            "build_frames_per_s_1_worker": build_rate(root, Path(scratch) / "w1", 1, frames),
            "build_frames_per_s_2_workers": build_rate(root, Path(scratch) / "w2", 2, frames),
            "raw_samples_per_s": raw_rate(root / "train", args.repeats),
            "shard_samples_per_s": shard_rate(Path(scratch) / "w1" / "train", args.repeats * 4),
            "machine": describe_machine(),
        }
    results["shard_over_raw"] = results["shard_samples_per_s"] / results["raw_samples_per_s"]
    print(f"machine: {results['machine']}")
    print("| measure | value |\n| --- | --- |")
    for key in ("frames", "raw_samples_per_s", "shard_samples_per_s", "shard_over_raw",
                "build_frames_per_s_1_worker", "build_frames_per_s_2_workers"):
        value = results[key]
        print(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
