"""Build and check the training data: NYU crops and synthetic pose shards (webdataset tars).

Commands: fake-nyu writes a small NYU-format data set rendered from the hand model (no download); nyu
crops NYU (or fake-nyu) frames into 3-view shards; synthetic samples poses from the joint-angle pose
sampler into shards that training renders on the fly; inspect verifies shards against their manifests
and draws samples; labels writes a split's ground truth as an NYU results file (the field's format);
fit-poses fits the hand model to labelled joints (a pose bank for synthetic --poses).

  python -m shards fake-nyu --out data/fake-nyu --train 48 --test 16
  python -m shards nyu --nyu-root data/fake-nyu --out data/nyu-shards --workers 2
  python -m shards synthetic --out data/synth --num-samples 10000
  python -m shards fit-poses --labels data/nyu-shards/train --out fits/train
  python -m shards synthetic --out data/synth-bank --num-samples 10000 --poses fits/train/poses.npz
  python -m shards inspect data/nyu-shards --show 4 --out grid.png
  python -m shards labels data/nyu-shards/test --out labels.txt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geometry import Crop
from hand.fit import PoseFitConfig
from shards.fake_nyu import FakeNyuConfig, generate
from shards.format import ShardsError
from shards.inspect import draw_samples, format_reports, inspect
from shards.nyu_protocol import split_labels, write_results
from shards.nyu_shards import NyuBuildConfig, build_nyu
from shards.pose_fit import fit_labels
from shards.synthetic import SyntheticConfig, build_synthetic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fake = commands.add_parser("fake-nyu", help="render a small NYU-format data set from the hand model",
                               description="Writes DIR/train and DIR/test exactly in NYU's layout (depth PNGs of "
                               "3 fixed cameras, joint_data.mat, rgb_* distractors) rendered from the hand model "
                               "with a forearm, a person behind it (torso, head, upper arm), a wall and Kinect-like "
                               "noise, plus DIR/fake_nyu.npz with what the "
                               "generator knows (camera poses, poses, visibility).")
    fake.add_argument("--out", type=Path, required=True, help="output directory")
    fake.add_argument("--train", type=int, default=48, help="train frames (default 48)")
    fake.add_argument("--test", type=int, default=16, help="test frames (default 16)")
    fake.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fake.add_argument("--label-noise", type=float, default=0.5, help="annotation noise std, mm (default 0.5)")
    fake.add_argument("--label-outliers", type=float, default=0.0,
                      help="fraction of frames whose side-view labels are off by 25..50 mm (default 0)")
    fake.add_argument("--clean", action="store_true", help="no sensor noise (mm quantisation only)")
    fake.add_argument("--body", action=argparse.BooleanOptionalAction, default=True,
                      help="a person behind the hand: torso 150-350 mm behind the palm, head above or beside the "
                      "hand, upper arm to the shoulder (default on; --no-body: hand, forearm and wall only)")

    nyu = commands.add_parser("nyu", help="crop NYU (or fake-nyu) frames into 3-view shards",
                              description="Reads each frame's 3 depth PNGs and joint_data.mat labels, crops every "
                              "view orthographically around a centre and writes OUT/<split>/shard-NNNNNN.tar + "
                              "manifest.json. Re-running skips complete shards; the result is byte-identical.")
    nyu.add_argument("--nyu-root", type=Path, required=True, help="directory holding train/ and test/")
    nyu.add_argument("--out", type=Path, required=True, help="output directory")
    nyu.add_argument("--splits", default="train,test", help="comma-separated splits (default train,test)")
    nyu.add_argument("--size", type=int, default=Crop().size, help=f"crop side, pixels (default {Crop().size})")
    nyu.add_argument("--cube", type=float, default=Crop().cube_mm, help=f"crop cube side, mm (default {Crop().cube_mm:g})")
    nyu.add_argument("--center", default="gt", choices=("gt", "com"),
                     help="crop centre: gt = labelled palm joint 32; com = from depth alone (default gt)")
    nyu.add_argument("--cameras", default="per-frame", choices=("per-frame", "fixed"),
                     help="view transforms: per-frame Kabsch on labels, or one robust fit per split")
    nyu.add_argument("--samples-per-shard", type=int, default=1000, help="frames per shard (default 1000)")
    nyu.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    nyu.add_argument("--skip-bad", action="store_true",
                     help="skip unusable frames (listed in the manifest) instead of stopping")

    synth = commands.add_parser("synthetic", help="write pose/shape/noise parameters for synthetic training",
                                description="Samples hand poses, shapes and sensor-noise parameters into "
                                "OUT/shard-NNNNNN.tar + manifest.json; identical for a seed at any --workers.")
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--num-samples", type=int, required=True, help="number of samples")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--samples-per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    synth.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    synth.add_argument("--poses", type=Path, default=None, metavar="FILE",
                       help="pose bank (.npz with 'poses' (M, 26), e.g. the poses.npz of fit-poses): "
                       "draw its finger articulations instead of the pose sampler's. Fitted to a data set's "
                       "labels, it uses those labels: never NYU's test labels")

    check = commands.add_parser("inspect", help="verify shards against their manifests; draw samples",
                                description="Counts samples per split and shard, checks every sha256, that each "
                                "tar reads to the end and every sample has all keys; exits 1 on any fault.")
    check.add_argument("directory", type=Path, help="a shard directory or a directory of splits")
    check.add_argument("--show", type=int, default=0, metavar="N", help="draw N samples into --out")
    check.add_argument("--out", type=Path, default=Path("shards-grid.png"), help="image for --show")

    labels = commands.add_parser("labels", help="write a split's ground truth in the field's results format",
                                 description="One line per frame of the NYU shard split, in frame order: the 14 "
                                 "evaluation joints of view 1 as 'u v d' (image pixels, depth mm); a frame the "
                                 "shard build skipped gets a line of nan. Score results files against it with "
                                 "python -m train.evaluate --results, or with the field's own tools.")
    labels.add_argument("directory", type=Path, help="an NYU shard split dir, e.g. data/nyu-shards/test")
    labels.add_argument("--out", type=Path, required=True, help="labels file to write")

    poses = commands.add_parser("fit-poses", help="fit the hand model to labelled joints (a pose bank)",
                                description="Fits the hand model's pose and shape to each labelled frame (the 14 "
                                "NYU evaluation joints of view 1) and writes OUT/poses.npz (a pose bank for "
                                "synthetic --poses) and OUT/pose_fit.json (residuals per joint, angles at their "
                                "limits). Fitting a data set's labels uses them: never NYU's test labels for "
                                "training.")
    poses.add_argument("--labels", type=Path, required=True,
                       help="labels in the field's results format, or an NYU shard split dir")
    poses.add_argument("--out", type=Path, required=True, help="output directory")
    poses.add_argument("--frames", type=int, default=None,
                       help="fit this many frames spread evenly over the labels (default: every labelled frame)")
    fit_defaults = PoseFitConfig()
    poses.add_argument("--starts", type=int, default=fit_defaults.starts,
                       help=f"starts per frame (default {fit_defaults.starts})")
    poses.add_argument("--steps", type=int, default=fit_defaults.steps,
                       help=f"Adam steps (default {fit_defaults.steps})")
    poses.add_argument("--batch-frames", type=int, default=fit_defaults.batch_frames,
                       help=f"frames fitted together (default {fit_defaults.batch_frames})")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Argument values that argparse's types cannot refuse, before any work: counts, and an --out that
    can be written. Raises ShardsError naming the option."""
    minimums = {"train": 0, "test": 0, "show": 0, "num_samples": 1, "samples_per_shard": 1, "workers": 1, "frames": 1}
    for option, minimum in minimums.items():
        value = getattr(args, option, None)
        if value is not None and value < minimum:
            raise ShardsError(f"--{option.replace('_', '-')} {value}: must be >= {minimum}")
    if args.command != "inspect" and getattr(args, "out", None) is not None:
        check_writable(args.out)


def check_writable(out: Path) -> None:
    """``out`` (a directory or a file to create) or its nearest existing parent can be written."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != out and not existing.is_dir():
        raise ShardsError(f"--out {out}: {existing} is a file, not a directory")
    directory = existing if existing.is_dir() else existing.parent
    if os.statvfs(directory).f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK | os.X_OK):
        raise ShardsError(f"--out {out}: {directory} cannot be written (read-only or no permission)")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.command == "fake-nyu":
        generate(args.out, FakeNyuConfig(train=args.train, test=args.test, seed=args.seed,
                                         label_noise_mm=args.label_noise, label_outliers=args.label_outliers,
                                         sensor_noise=not args.clean, body=args.body))
        print(f"wrote {args.out}/train ({args.train} frames) and {args.out}/test ({args.test} frames)")
    elif args.command == "nyu":
        try:
            crop = Crop(args.size, args.cube)
        except ValueError as error:
            raise ShardsError(f"--size {args.size} --cube {args.cube:g}: {error}") from None
        config = NyuBuildConfig(nyu_root=args.nyu_root, out=args.out, splits=tuple(args.splits.split(",")),
                                crop=crop, center=args.center, cameras=args.cameras,
                                samples_per_shard=args.samples_per_shard, workers=args.workers,
                                skip_bad=args.skip_bad)
        for split, manifest in build_nyu(config).items():
            print(f"{args.out}/{split}: {manifest['samples']} samples in {len(manifest['shards'])} shards, "
                  f"{len(manifest['skipped'])} frames skipped")
    elif args.command == "synthetic":
        manifest = build_synthetic(SyntheticConfig(out=args.out, num_samples=args.num_samples, seed=args.seed,
                                                   samples_per_shard=args.samples_per_shard, workers=args.workers,
                                                   poses=args.poses))
        print(f"{args.out}: {manifest['samples']} samples in {len(manifest['shards'])} shards")
    elif args.command == "inspect":
        reports = inspect(args.directory)
        print(format_reports(reports))
        if args.show:
            print(f"drew {args.show} samples into {draw_samples(args.directory, args.show, args.out)}")
        return 1 if any(r.faults for r in reports) else 0
    elif args.command == "labels":
        lines = split_labels(args.directory)
        write_results(args.out, lines.values)
        print(f"wrote {args.out}: {len(lines.values)} frames")
        if not lines.complete:
            print(f"warning: {lines.missing_note()}", file=sys.stderr)
    elif args.command == "fit-poses":
        try:
            config = PoseFitConfig(steps=args.steps, starts=args.starts, batch_frames=args.batch_frames)
        except ValueError as error:
            raise ShardsError(str(error)) from None
        summary = fit_labels(args.labels, args.out, args.frames, config)
        print(f"{summary['frames']} frames: mean residual {summary['mean_residual_mm']:.2f} mm, "
              f"{100 * summary['at_limit_fraction']:.0f}% of finger angles at a joint limit; wrote "
              f"{args.out}/poses.npz and {args.out}/pose_fit.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ShardsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, read-only or no permission while writing
        print(f"error: {error.filename or args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
