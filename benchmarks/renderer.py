"""Renderer throughput: depth images per second of hand meshes at the training crop size.

    python benchmarks/renderer.py [--batch 64] [--size 64] [--repeats 5] [--json]

Renders the hand meshes of ``--batch`` random poses (``hand.sample_poses``) in a 300 mm crop at
``--size`` x ``--size`` pixels with
- the compiled CPU kernel (``backend="cpu"``),
- the pure-torch reference (``backend="torch"``, timed on ``--torch-batch`` images: it is slow),
- the prototype's method on the same CPU kernel: render at ``--prototype-size`` (640) and resize
  bilinearly to the crop size with ``torch.nn.functional.interpolate``,
- the CPU kernel with 2x2 supersampling, and, on a GPU, the CUDA kernel.
Prints a table; with ``--json`` also one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer_cuda import rasterize  # noqa: E402
from renderer_cuda.shapes import random_blobs  # noqa: E402
from geometry import Crop  # noqa: E402
from machine import describe_machine  # noqa: E402

CUBE_MM = 300.0


def hand_meshes(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Vertices (batch, V, 3) in crop pixels and faces of random hand poses; blobs if ``hand`` is missing."""
    generator = torch.Generator().manual_seed(seed)
    try:
        import hand
    except ImportError as error:
        vertices, faces = random_blobs(batch, 16, size, generator=generator)
        return vertices, faces, f"procedural blobs (hand unavailable: {error})"
    with torch.no_grad():
        vertices, faces = hand.HandModel().mesh(hand.sample_poses(batch, generator=generator))
    pixels = Crop(size, CUBE_MM).to_pixels(vertices.float()).contiguous()
    return pixels, faces, "hand.HandModel().mesh(hand.sample_poses(n))"


def seconds_per_call(fn: Callable[[], torch.Tensor], repeats: int, cuda: bool = False) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prototype_method(vertices: torch.Tensor, faces: torch.Tensor, size: int, big: int, background: float,
                     backend: str) -> torch.Tensor:
    """The prototype's way: render big, then resize bilinearly to the target size."""
    scale = torch.tensor([big / size, big / size, 1.0], device=vertices.device)
    large = rasterize(vertices * scale, faces, big, big, background=background, backend=backend)
    return F.interpolate(large[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def run(args: argparse.Namespace) -> dict:
    vertices, faces, source = hand_meshes(args.batch, args.size, args.seed)
    background = Crop(args.size, CUBE_MM).background_depth
    size, batch = args.size, args.batch
    draw = lambda v, backend, **kw: rasterize(v, faces.to(v.device), size, size,  # noqa: E731
                                              background=background, backend=backend, **kw)
    rows = []

    def record(name: str, images: int, seconds: float) -> float:
        rows.append((name, images, seconds, images / seconds))
        return images / seconds

    result = {"source": source, "batch": batch, "size": size, "triangles": int(faces.shape[0]),
              "threads": torch.get_num_threads(), "machine": describe_machine()}
    result["cpu_images_per_s"] = record("cpu kernel", batch, seconds_per_call(lambda: draw(vertices, "cpu"),
                                                                              args.repeats))
    result["cpu_ss2_images_per_s"] = record("cpu kernel, supersample 2", batch, seconds_per_call(
        lambda: draw(vertices, "cpu", supersample=2), args.repeats))
    few = vertices[:args.torch_batch]
    result["torch_images_per_s"] = record("torch reference", few.shape[0],
                                          seconds_per_call(lambda: draw(few, "torch"), 1))
    result["prototype_images_per_s"] = record(
        f"prototype: cpu kernel {args.prototype_size}^2 + bilinear resize", batch,
        seconds_per_call(lambda: prototype_method(vertices, faces, size, args.prototype_size, background, "cpu"),
                         args.repeats))
    if torch.cuda.is_available():
        on_gpu = vertices.cuda()
        result["cuda_images_per_s"] = record("cuda kernel", batch, seconds_per_call(
            lambda: draw(on_gpu, "cuda"), args.repeats, cuda=True))
        result["cuda_prototype_images_per_s"] = record(
            f"prototype on cuda kernel ({args.prototype_size}^2 + resize)", batch, seconds_per_call(
                lambda: prototype_method(on_gpu, faces.cuda(), size, args.prototype_size, background, "cuda"),
                args.repeats, cuda=True))
    result["cpu_vs_torch"] = result["cpu_images_per_s"] / result["torch_images_per_s"]
    result["cpu_vs_prototype"] = result["cpu_images_per_s"] / result["prototype_images_per_s"]
    print_table(rows, result)
    return result


def print_table(rows: list[tuple[str, int, float, float]], result: dict) -> None:
    print(f"meshes: {result['source']}, {result['triangles']} triangles, {result['batch']} poses, "
          f"{result['size']}x{result['size']} crops, torch threads {result['threads']}")
    print("| method | images | s per call | images/s |\n| --- | ---: | ---: | ---: |")
    for name, images, seconds, rate in rows:
        print(f"| {name} | {images} | {seconds:.4f} | {rate:,.0f} |" if rate >= 100 else
              f"| {name} | {images} | {seconds:.4f} | {rate:.2f} |")
    print(f"cpu kernel vs torch reference: {result['cpu_vs_torch']:.0f}x; "
          f"vs prototype method: {result['cpu_vs_prototype']:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="poses (images) per call")
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels")
    parser.add_argument("--prototype-size", type=int, default=640, help="render size of the prototype's method")
    parser.add_argument("--torch-batch", type=int, default=4, help="images timed with the slow torch reference")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
