"""Where does a network's held-out synthetic error come from? Axes, joints, fit to its training data, decoding.

    python benchmarks/synthetic_error.py --checkpoint RUN --synthetic SHARDS [--samples 200] [--json]

For the checkpoint (a file, or a run directory's newest) and the held-out synthetic set its run evaluates on
(``eval.synthetic_seed``, clean: no jitter, noise or holes): the mean error on NYU's 14 evaluation joints (mm),
split into image-plane x-y and depth z, and per joint. Then the same network on the first ``--samples`` poses of
its training shards (``--synthetic``), rendered clean and with their recorded augmentation: an error there as
high as on the held-out set means the network underfits (more training or capacity helps), far lower means it
overfits (more data helps). Last, the decoding floor: the error of the soft-argmax of perfect heatmap targets
(the run's ``loss.heatmap_sigma_cells`` and ``model.softmax_temperature``) with the true depth, which no
training can go below.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages
from hand.model import HandModel  # noqa: E402
from shards.reader import make_loader  # noqa: E402
from train.checkpoint import load_network  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.losses import HeatmapTargetLoss  # noqa: E402
from train.network import HourglassNet, decode_joints, spatial_softmax  # noqa: E402
from train.schema import from_dict  # noqa: E402
from train.scores import NYU_EVAL_JOINTS, eval_joint_names  # noqa: E402
from train.synthesis import Synthesizer, held_out_batch  # noqa: E402


def axis_errors(predicted: torch.Tensor, truth: torch.Tensor, joints: list[int] = NYU_EVAL_JOINTS) -> dict[str, float]:
    """Mean 3D, x-y and |z| error (mm) over ``joints`` of (N, J, 3) crop-frame joints."""
    difference = (predicted - truth)[:, joints].double()
    return {"3d": float(difference.norm(dim=-1).mean()), "xy": float(difference[..., :2].norm(dim=-1).mean()),
            "z": float(difference[..., 2].abs().mean())}


def per_joint(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, dict[str, float]]:
    """:func:`axis_errors` of each evaluation joint, by NYU name."""
    return {name: axis_errors(predicted, truth, [joint]) for name, joint in zip(eval_joint_names(), NYU_EVAL_JOINTS)}


def decoding_floor(net: HourglassNet, keypoints: torch.Tensor, sigma_cells: float) -> dict[str, float]:
    """:func:`axis_errors` of decoding perfect targets: the Gaussian heatmaps the loss trains towards, through
    the network's softmax temperature and soft-argmax, with depth maps holding the true depth."""
    cells = net.cell_centres_px.numel()
    target = HeatmapTargetLoss(net.crop, sigma_cells).targets(keypoints, cells, cells)
    heatmap = spatial_softmax(target, net.cfg.softmax_temperature)
    depthmap = keypoints[..., 2, None, None].expand_as(heatmap)
    return axis_errors(decode_joints(heatmap, depthmap, net.cell_centres_px, net.crop), keypoints)


def training_batch(source: str, samples: int) -> dict[str, torch.Tensor]:
    """The first ``samples`` poses, shapes and augmentations of the synthetic shards ``source``."""
    loader = make_loader(source, batch_size=samples, batches_per_epoch=None, num_workers=0, resampled=False)
    batch = next(iter(loader))
    return {key: batch[key].float() for key in ("pose", "shape", "augment")}


@torch.no_grad()
def diagnose(net: HourglassNet, cfg: TrainConfig, training: dict[str, torch.Tensor], held_out: int) -> dict:
    """Every figure of the module docstring for ``net`` trained with ``cfg``."""
    hand = HandModel()
    synthesize = Synthesizer(hand, crop=net.crop, cfg=cfg.synthesis)
    depth, keypoints = synthesize(held_out_batch(hand, held_out, cfg.eval.synthetic_seed))[:2]
    predicted = net(depth).joints
    clean = training | {"augment": torch.zeros_like(training["augment"])}
    on_training = {}
    for name, batch in (("clean", clean), ("augmented", training)):
        train_depth, train_keypoints = synthesize(batch)[:2]
        on_training[name] = axis_errors(net(train_depth).joints, train_keypoints)
    return {"held_out": axis_errors(predicted, keypoints), "training": on_training,
            "decoding_floor": decoding_floor(net, keypoints, cfg.loss.heatmap_sigma_cells),
            "joints": per_joint(predicted, keypoints)}


def report(result: dict) -> str:
    def row(name: str, errors: dict[str, float]) -> str:
        return f"| {name} | {errors['3d']:.1f} | {errors['xy']:.1f} | {errors['z']:.1f} |"

    lines = [f"Machine: {result['machine']}; checkpoint {result['checkpoint']}", "",
             "| error (mm, NYU's 14 joints) | 3D | x-y | abs z |", "| --- | ---: | ---: | ---: |",
             row(f"held-out synthetic ({result['held_out_samples']})", result["held_out"]),
             *(row(f"training poses, {name} ({result['training_samples']})", errors)
               for name, errors in result["training"].items()),
             row("decoding floor (perfect heatmaps, true depth)", result["decoding_floor"]), "",
             "| joint (held-out) | 3D | x-y | abs z |", "| --- | ---: | ---: | ---: |"]
    lines += [row(name, errors) for name, errors in result["joints"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or a run directory (its newest)")
    parser.add_argument("--synthetic", required=True, help="the synthetic shards the run trained on")
    parser.add_argument("--samples", type=int, default=200, help="training poses and held-out samples (default 200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if args.samples < 1:
        parser.error(f"--samples {args.samples}: must be at least 1")
    net, _, config = load_network(args.checkpoint)
    cfg = from_dict(TrainConfig, config)
    training = training_batch(args.synthetic, args.samples)  # fewer when the shards hold fewer
    result = {"machine": describe_machine(), "checkpoint": str(args.checkpoint), "held_out_samples": args.samples,
              "training_samples": len(training["pose"])} | diagnose(net, cfg, training, args.samples)
    print(report(result))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
