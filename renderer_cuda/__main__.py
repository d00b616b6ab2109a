"""Command line of the renderer: ``python -m renderer_cuda build [--kind all|cpu|cuda] [--verbose]``.

``build`` compiles the rasterizer kernels into the cache now (while building a container image, or once
per node before a multi-rank job) instead of on first use, and says where they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import extension

_BUILD_HELP = f"""\
Compile the rasterizer kernels with ninja into the kernel cache, keyed by a hash of the sources, flags,
torch version and (CUDA) target architectures; an entry that is already complete is just loaded.

  cpu   the C++ kernel; builds on every machine with a C++ compiler.
  cuda  the CUDA kernel; needs a CUDA build of torch and a CUDA toolkit (nvcc), not a GPU: it is built for
        ${extension.ARCH_ENV} (e.g. "8.0;9.0" for A100 and H100), else for the visible GPUs.
  all   cpu, and cuda where it can be built here (otherwise "cuda: skipped" with the reason).

Cache roots, first match wins: ${extension.CACHE_ENV}, then ~/.cache/sphere_hand (or
$XDG_CACHE_HOME/sphere_hand), then <tmp>/sphere_hand-<uid>. A build goes to the first writable one (a
read-only image cache is still read). Each entry holds build.log.

Exit status 0 when every requested kernel is ready; 1 (with the reason and the log's path) when one
cannot be built."""


def build(kinds: list[extension.Kind], verbose: bool, required: bool) -> int:
    """Builds (or loads from the cache) each kind; returns the process exit status. ``required``: a kind
    that cannot be built is a failure; otherwise cuda is skipped where it cannot be built."""
    print(f"renderer cache: {extension.cache_root()} (set ${extension.CACHE_ENV} to move it)")
    status = 0
    for kind in kinds:
        problem = extension.cuda_problem() if kind == "cuda" else None
        if problem is not None and not required:
            print(f"  cuda: skipped: {problem}")
            continue
        start = time.perf_counter()
        try:
            module = extension.load(kind, verbose=verbose)
        except extension.ExtensionUnavailable as error:
            print(f"  {kind}: FAILED: {error}")
            status = 1
            continue
        targets = f" for {';'.join(extension.build_spec(kind).arch_list)}" if kind == "cuda" else ""
        print(f"  {kind}: ready{targets} in {time.perf_counter() - start:.1f} s at {Path(module.__file__).parent}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m renderer_cuda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="compile the rasterizer kernels into the cache",
                                       description=_BUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    build_parser.add_argument("--kind", choices=("all", *extension.KINDS), default="all",
                              help="which kernel(s) to build (default: all)")
    build_parser.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    args = parser.parse_args(argv)
    if args.kind == "all":
        return build(list(extension.KINDS), args.verbose, required=False)
    return build([args.kind], args.verbose, required=True)


if __name__ == "__main__":
    sys.exit(main())
