"""``python -m train.export``: a checkpoint's network as one self-contained file, TorchScript or ONNX.

    python -m train.export --checkpoint runs/x --format torchscript --out hand.pt
    python -m train.export --checkpoint runs/x --format onnx --out hand.onnx

The file holds the network with its input scaling and joint decoding: in, ``depth`` (B, 1, S, S) float32,
the crop's depth in mm (crop frame: z minus the crop centre's z; background and missing depth at the cube's
far face, +cube/2); out, ``joints`` (B, 41, 3) float32, the 41 sphere centres in the crop frame, mm (x right,
y down, z away from the camera; NYU's 36 joints first). B is free. S and the cube are in the model card.
Running it needs no part of this package:

    joints = torch.jit.load("hand.pt")(depth)                                         # torch only
    joints = onnxruntime.InferenceSession("hand.onnx").run(None, {"depth": depth})[0]  # onnxruntime + numpy

Also writes the model card (``train.model_card``) next to the checkpoint and next to the exported file.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fileio import write_atomic
from train.checkpoint import CheckpointError, load_network, resolve_checkpoint
from train.model_card import write_model_card

ExportFormat = Literal["torchscript", "onnx"]
EXAMPLE_BATCH = 2  # traced at 2 so no size-1 dimension gets specialised; the batch stays free
ONNX_OPSET = 18


class CropToJoints(nn.Module):
    """A network's crop depth (B, 1, S, S) mm -> joints (B, J, 3) crop-frame mm: what a user calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return self.net(depth).joints


def export_network(net: nn.Module, size: int, fmt: ExportFormat, out: Path) -> Path:
    """``net`` (eval mode, CPU) as a TorchScript or ONNX file at ``out`` with a free batch dimension; the file
    takes and gives the dtype of ``net``'s parameters (float32 from a checkpoint)."""
    model = CropToJoints(net).eval()
    example = torch.zeros(EXAMPLE_BATCH, 1, size, size, dtype=next(net.parameters()).dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracers warn about the input shape check they fold away
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # not about torchvision ops this network lacks
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example)
            return write_atomic(out, lambda handle: torch.jit.save(traced, handle))
        program = torch.onnx.export(model, (example,), input_names=["depth"], output_names=["joints"],
                                    dynamic_shapes={"depth": {0: torch.export.Dim("batch")}},
                                    opset_version=ONNX_OPSET, dynamo=True, verbose=False)
        return write_atomic(out, lambda handle: handle.write(program.model_proto.SerializeToString()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt), or a run dir: its newest")
    parser.add_argument("--format", choices=("torchscript", "onnx"), required=True, help="file format")
    parser.add_argument("--out", required=True, type=Path, help="the file to write")
    args = parser.parse_args(argv)
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        net, crop, _ = load_network(checkpoint, "cpu")
    except (OSError, CheckpointError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = export_network(net, crop.size, args.format, args.out)
        cards = [write_model_card(checkpoint, checkpoint.parent / "MODEL_CARD.md"),
                 write_model_card(checkpoint, args.out.with_name(f"{args.out.stem}.MODEL_CARD.md"))]
    except OSError as error:
        parser.exit(2, f"error: cannot write {args.out}: {error}\n")
    print(f"wrote {written} ({args.format}; depth (B, 1, {crop.size}, {crop.size}) mm -> joints (B, 41, 3) mm)")
    print(f"wrote {cards[0]} and {cards[1]}")


if __name__ == "__main__":
    main()
