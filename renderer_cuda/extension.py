"""JIT build of the compiled kernels with ninja, cached per machine by a hash of the sources.

Two extensions: ``cpu`` (always built) and ``cuda`` (only where torch has CUDA). Each builds into
``<cache>/renderer/<kind>-<hash>/`` where ``<cache>`` is ``$SPHERE_HAND_CACHE`` if set, else
``$XDG_CACHE_HOME/sphere_hand``, else ``~/.cache/sphere_hand``. The hash covers the sources, the flags,
and the torch/CUDA/Python versions, so a changed source or an upgraded torch builds afresh, and a module
name that includes the hash keeps different versions from colliding. A file lock around the build lets
several processes (e.g. the ranks of one node) start at once: one builds, the others wait and load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from filelock import FileLock

CACHE_ENV = "SPHERE_HAND_CACHE"
CSRC = Path(__file__).resolve().parent / "csrc"
_HEADERS = ("raster_math.h", "raster_cpu.h", "raster_cuda.h", "torch_common.h")
_COMPLETE = "complete"  # marker written after a successful build


class ExtensionUnavailable(RuntimeError):
    """A compiled kernel cannot be built or loaded here; the message says why."""


@dataclass(frozen=True)
class ExtensionSpec:
    """How to build one extension."""

    kind: str  # "cpu" or "cuda"
    sources: tuple[str, ...]  # file names under csrc/
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()


# -ffp-contract=off / the *_rn intrinsics keep FMAs out, so CPU, CUDA and torch agree bit for bit.
SPECS = {
    "cpu": ExtensionSpec(
        kind="cpu",
        sources=("torch_bindings.cpp", "torch_rasterize.cpp", "raster_cpu.cpp"),
        cflags=("-O3", "-ffp-contract=off", "-fopenmp"),
        ldflags=("-fopenmp",),
    ),
    "cuda": ExtensionSpec(
        kind="cuda",
        sources=("torch_bindings.cpp", "torch_rasterize_cuda.cpp", "raster_cuda.cu"),
        cflags=("-O3", "-ffp-contract=off", "-DSPHERE_HAND_CUDA"),
        cuda_cflags=("-O3", "--fmad=false", "-DSPHERE_HAND_CUDA"),
    ),
}

_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}


def cache_root() -> Path:
    """Root of the build cache (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sphere_hand"


def source_hash(spec: ExtensionSpec) -> str:
    """Hash of everything that changes the built library."""
    digest = hashlib.sha256()
    for name in sorted(set(spec.sources) | set(_HEADERS)):
        digest.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    for item in (spec.cflags, spec.cuda_cflags, spec.ldflags):
        digest.update(repr(item).encode())
    digest.update(f"{torch.__version__} {torch.version.cuda} {sys.version_info[:2]} {platform.machine()}".encode())
    return digest.hexdigest()[:16]


def build_directory(kind: str) -> Path:
    """Where ``kind``'s extension is (or will be) built."""
    return cache_root() / "renderer" / f"{kind}-{source_hash(SPECS[kind])}"


def module_name(kind: str) -> str:
    return f"sphere_hand_raster_{kind}_{source_hash(SPECS[kind])}"


def is_cuda_buildable() -> bool:
    """True when torch has CUDA and a CUDA toolkit (CUDA_HOME) to compile with."""
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and torch.version.cuda is not None and CUDA_HOME is not None


def load(kind: str, *, verbose: bool = False) -> ModuleType:
    """The compiled extension ``kind`` ("cpu" or "cuda"), building it on first use.

    Raises ExtensionUnavailable (with the gist of the build error) when it cannot be built; a failure is
    remembered for the process so later calls do not rebuild.
    """
    if kind not in SPECS:
        raise ValueError(f"extension kind must be one of {sorted(SPECS)}, got {kind!r}")
    if kind in _loaded:
        return _loaded[kind]
    if kind in _failed:
        raise ExtensionUnavailable(_failed[kind])
    if kind == "cuda" and not is_cuda_buildable():
        _failed[kind] = (f"torch {torch.__version__} has no usable CUDA (cuda available: "
                         f"{torch.cuda.is_available()}, torch.version.cuda: {torch.version.cuda})")
        raise ExtensionUnavailable(_failed[kind])
    try:
        module = _build_or_import(SPECS[kind], verbose)
    except Exception as error:  # noqa: BLE001 - any build failure degrades to a message
        _failed[kind] = f"building the {kind} renderer kernel failed: {error_gist(error)}"
        raise ExtensionUnavailable(_failed[kind]) from error
    _loaded[kind] = module
    return module


def error_gist(error: BaseException, lines: int = 6) -> str:
    """The informative lines of a (long) compiler error message."""
    text = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in text if "error" in line.lower()]
    picked = (errors or text)[:lines]
    return f"{type(error).__name__}: " + " | ".join(picked)


def _build_or_import(spec: ExtensionSpec, verbose: bool) -> ModuleType:
    directory = build_directory(spec.kind)
    name = module_name(spec.kind)
    module = _import_cached(name, directory)
    if module is not None:
        return module
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        module = _import_cached(name, directory)  # another process may have built it while we waited
        if module is not None:
            return module
        # cpp_extension's own baton file survives a killed build and would block forever; holding our
        # lock we know no build is running, so a leftover baton is stale.
        (directory / "lock").unlink(missing_ok=True)
        module = _compile(spec, name, directory, verbose)
        (directory / _COMPLETE).write_text(f"{name}\n")
        return module


def _import_cached(name: str, directory: Path) -> ModuleType | None:
    """The built module if the cache entry is complete and loads; None otherwise (a damaged entry is
    then rebuilt in place)."""
    if not (directory / _COMPLETE).exists():
        return None
    try:
        return _import_library(name, directory / f"{name}.so")
    except (ImportError, OSError):
        return None


def _compile(spec: ExtensionSpec, name: str, directory: Path, verbose: bool) -> ModuleType:
    from torch.utils.cpp_extension import load as cpp_load

    return cpp_load(
        name=name,
        sources=[str(CSRC / source) for source in spec.sources],
        build_directory=str(directory),
        extra_cflags=list(spec.cflags),
        extra_cuda_cflags=list(spec.cuda_cflags),
        extra_ldflags=list(spec.ldflags),
        extra_include_paths=[str(CSRC)],
        verbose=verbose,
    )


def _import_library(name: str, library: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the built renderer kernel {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
