"""Side-by-side evaluation of trained runs on one NYU test split, with the constant-predictor yardstick.

    python -m train.report --data demo/nyu --run synthetic_only=demo/synthetic \
        --run self_supervised=demo/selfsup --out demo

Each ``--run NAME=RUN`` is a run dir (its newest checkpoint) or a checkpoint file, evaluated on
``DATA/test`` (view 1, NYU's 14 joints) as ``python -m train.evaluate`` does; its report goes to
``OUT/eval-NAME/``. The ``mean_pose`` row predicts every test frame as the mean view-1 crop-frame joints of
the labelled train split (``DATA/train``): what a network that ignores its input scores. Writes
``OUT/results.json`` (``{name: {"mean_error_mm", "success_at_20mm", "success_at_40mm", "frames"}}``),
``OUT/report.md`` (the table) and ``OUT/success_curves.png`` (one curve per row), and prints the table. Each
run's checkpoint gets its model card beside it, ``MODEL_CARD.md`` (``train.model_card``), with these figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shards.format import ShardsError, check_crop
from shards.reader import make_loader
from train.checkpoint import CheckpointError, load_network, resolve_checkpoint
from train.model_card import CARD_NAME, write_model_card
from train.plots import plot_success_curves, write_report
from train.predictions import collect_errors
from train.scores import FrameErrors, compute_metrics, joint_errors

MEAN_POSE = "mean_pose"


def _loader(split_dir: Path):
    return make_loader(split_dir, batch_size=64, batches_per_epoch=None, num_workers=0, resampled=False)


def mean_pose_errors(data_root: Path) -> FrameErrors:
    """Errors of predicting the train split's mean view-1 joints for every test frame."""
    def labelled(split: str) -> tuple[np.ndarray, list[int]]:
        joints, frames = [], []
        for batch in _loader(data_root / split):
            joints.append(batch["joints"][:, 0].double().numpy())
            frames += [int(meta.get("frame", -1)) for meta in batch.get("meta") or [{}] * len(batch["joints"])]
        if not joints:
            raise ValueError(f"{data_root / split} holds no frames")
        return np.concatenate(joints), frames

    train, _ = labelled("train")
    test, frames = labelled("test")
    errors = joint_errors(np.broadcast_to(train.mean(axis=0), test.shape), test)
    return FrameErrors(errors, np.asarray(frames), ["test"] * len(frames))


def summary(metrics: dict) -> dict:
    """The report's columns of one row."""
    success = metrics["success_at_mm"]
    return {"mean_error_mm": float(metrics["mean_error_mm"]), "success_at_20mm": float(success["20"]),
            "success_at_40mm": float(success["40"]), "frames": int(metrics["frames"])}


def table(results: dict[str, dict]) -> str:
    lines = ["| model | mean error (mm) | frames with max error < 20 mm | < 40 mm | test frames |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['mean_error_mm']:.1f} | {100 * row['success_at_20mm']:.0f}% | "
                     f"{100 * row['success_at_40mm']:.0f}% | {row['frames']} |")
    return "\n".join(lines)


def build_report(data_root: Path, runs: dict[str, Path], out: Path) -> dict[str, dict]:
    """Evaluate every run, write results.json, report.md and success_curves.png; returns the rows by name."""
    collected = {MEAN_POSE: mean_pose_errors(data_root)}
    checkpoints = {name: resolve_checkpoint(run) for name, run in runs.items()}
    for name, checkpoint in checkpoints.items():
        net, crop, _ = load_network(checkpoint)
        check_crop(data_root / "test", crop, f"the network of run {name} ({runs[name]})")
        collected[name] = collect_errors(net, _loader(data_root / "test"))
    results = {}
    for name, frames in collected.items():
        metrics = compute_metrics(frames)
        write_report(metrics, frames.errors, out / f"eval-{name}")
        results[name] = summary(metrics)
        if name in checkpoints:
            write_model_card(checkpoints[name], checkpoints[name].parent / CARD_NAME,
                             {**metrics, "data": str(data_root / "test")})
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_success_curves({name: frames.errors for name, frames in collected.items()}, out / "success_curves.png",
                        title=f"{data_root / 'test'}")
    (out / "report.md").write_text(
        f"# Results on {data_root / 'test'}\n\n{table(results)}\n\n"
        f"`{MEAN_POSE}`: every test frame predicted as the mean view-1 joints of the labelled train split.\n\n"
        "![success curves](success_curves.png)\n")
    return results


def _run_argument(text: str) -> tuple[str, Path]:
    name, sep, run = text.partition("=")
    if not sep or not name or not run:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected NAME=RUN_DIR_OR_CHECKPOINT")
    return name, Path(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True, type=Path, help="NYU shards root with train/ and test/")
    parser.add_argument("--run", action="append", default=[], type=_run_argument, metavar="NAME=RUN",
                        help="a run dir or checkpoint under a row name (repeatable, in table order)")
    parser.add_argument("--out", required=True, type=Path, help="where results.json, report.md and the plot go")
    args = parser.parse_args(argv)
    try:
        results = build_report(args.data, dict(args.run), args.out)
    except (OSError, ValueError, KeyError, ShardsError, CheckpointError) as error:
        parser.exit(2, f"error: {error}\n")
    print(table(results))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'}, {args.out / 'success_curves.png'}")


if __name__ == "__main__":
    main()
