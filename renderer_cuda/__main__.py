"""Command line of the renderer: ``python -m renderer_cuda build [--kind all|cpu|cuda] [--verbose]``.

``build`` compiles the kernels into the cache now (e.g. while building a container image, or once per
node before a multi-rank job) instead of on first use.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import extension


def build(kinds: list[str], verbose: bool) -> int:
    """Builds (or loads from the cache) each kind; returns the process exit status."""
    print(f"renderer cache: {extension.cache_root()} (set ${extension.CACHE_ENV} to move it)")
    status = 0
    for kind in kinds:
        if kind == "cuda" and not extension.is_cuda_buildable():
            message = "skipped: this torch has no usable CUDA (CPU-only wheel, no GPU, or no CUDA toolkit)"
            print(f"  cuda: {message}")
            status = status if len(kinds) > 1 else 1
            continue
        start = time.perf_counter()
        try:
            extension.load(kind, verbose=verbose)
        except extension.ExtensionUnavailable as error:
            print(f"  {kind}: FAILED: {error}")
            status = 1
            continue
        print(f"  {kind}: ready in {time.perf_counter() - start:.1f} s at {extension.build_directory(kind)}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m renderer_cuda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser(
        "build", help="compile the rasterizer kernels into the cache",
        description="Compile the CPU kernel (always) and the CUDA kernel (where torch has CUDA) with ninja "
                    "into the cache, keyed by a hash of the sources; an up-to-date cache is just loaded. "
                    "Exit status 1 if a requested kernel cannot be built.")
    build_parser.add_argument("--kind", choices=("all", "cpu", "cuda"), default="all",
                              help="which kernel(s) to build (default: all; cuda is skipped without CUDA)")
    build_parser.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    args = parser.parse_args(argv)
    kinds = ["cpu", "cuda"] if args.kind == "all" else [args.kind]
    return build(kinds, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
