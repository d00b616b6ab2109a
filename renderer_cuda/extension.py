"""JIT build of the compiled kernels with ninja, cached per machine by a hash of what they are built from.

Two extensions: ``cpu`` and ``cuda``. Each builds into ``<root>/renderer/<kind>-<hash>/``. The hash covers
the sources, the flags (for ``cuda`` the ``-gencode`` flags of the architecture list) and the
torch/CUDA/Python versions, so a changed source, another architecture list or an upgraded torch builds
afresh, and the module name includes the hash so that versions never collide. A file lock around the
build lets the ranks of a node start at once: one builds, the others wait and load. Each entry keeps
``build.log``; a failure message names it.

Cache roots, in order: ``$SPHERE_HAND_CACHE`` if set; the per-user cache (``$XDG_CACHE_HOME/sphere_hand``,
else ``~/.cache/sphere_hand``); ``<tmp>/sphere_hand-<uid>``. They are tried in order up to the first
writable one: a complete entry loads from a read-only root (e.g. the cache prebuilt into a container
image, read-only under Apptainer); a missing one is built in the first writable root, with a warning when
that is not the first root.

The CUDA kernel builds wherever torch has CUDA, a CUDA toolkit (``nvcc``) is found and the architectures
are known: ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``), else the compute capabilities of the visible
GPUs. No GPU is needed to build. Before a CUDA library is used, every visible GPU's compute capability
must be covered by its list, so a shared cache never hands an sm_90-only library to an A100.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, Sequence

import torch
from filelock import FileLock

Kind = Literal["cpu", "cuda"]
KINDS: tuple[Kind, ...] = ("cpu", "cuda")
CACHE_ENV = "SPHERE_HAND_CACHE"
ARCH_ENV = "TORCH_CUDA_ARCH_LIST"
CSRC = Path(__file__).resolve().parent / "csrc"
LOG_NAME = "build.log"
_HEADERS = ("raster_math.h", "raster_cpu.h", "raster_cuda.h", "torch_common.h")
_COMPLETE = "complete"  # marker written after a successful build
_ARCH = re.compile(r"(\d+)\.(\d+)(a?)(\+PTX)?")


class ExtensionUnavailable(RuntimeError):
    """A compiled kernel cannot be built or loaded here; the message (one line) says why."""


@dataclass(frozen=True)
class ExtensionSpec:
    """How to build one extension."""

    kind: Kind
    sources: tuple[str, ...]  # file names under csrc/
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    arch_list: tuple[str, ...] = ()  # cuda: the compute capabilities the library is built for


# -ffp-contract=off / --fmad=false and the *_rn intrinsics keep FMAs out, so the CPU and CUDA kernels
# round every operation alike.
_CPU_SPEC = ExtensionSpec(
    kind="cpu",
    sources=("torch_bindings.cpp", "torch_rasterize.cpp", "raster_cpu.cpp"),
    cflags=("-O3", "-ffp-contract=off", "-fopenmp"),
    ldflags=("-fopenmp",),
)
_CUDA_SOURCES = ("torch_bindings.cpp", "torch_rasterize_cuda.cpp", "raster_cuda.cu")
CUDA_CFLAGS = ("-O3", "--fmad=false", "-DSPHERE_HAND_CUDA")

_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}
_fallback_warned = False


# ---- cache roots -------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """The first cache root: ``$SPHERE_HAND_CACHE``, else the per-user cache (see the module docstring)."""
    return cache_roots()[0]


def cache_roots() -> list[Path]:
    """Every cache root, in the order they are tried."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    roots = [(Path(xdg) if xdg else Path.home() / ".cache") / "sphere_hand",
             Path(tempfile.gettempdir()) / f"sphere_hand-{os.getuid()}"]
    if os.environ.get(CACHE_ENV):
        roots.insert(0, Path(os.environ[CACHE_ENV]).expanduser())
    return list(dict.fromkeys(roots))


def writable_cache_root() -> Path:
    """The first cache root where files can be created (created if missing)."""
    reasons = []
    for root in cache_roots():
        problem = _write_problem(root)
        if problem is None:
            return root
        reasons.append(f"{root} ({problem})")
    raise ExtensionUnavailable("no writable kernel cache: " + "; ".join(reasons))


def _write_problem(root: Path) -> str | None:
    """Why files cannot be created under ``root`` (created if missing), or None."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


# ---- CUDA architectures ------------------------------------------------------------------------------------

def parse_arch_list(text: str) -> tuple[str, ...]:
    """``"8.0;9.0+PTX"`` (``;`` or spaces between entries) -> ``("8.0", "9.0+PTX")``: sorted, no repeats."""
    entries = [entry for entry in re.split(r"[;\s]+", text.strip()) if entry]
    bad = [entry for entry in entries if not _ARCH.fullmatch(entry)]
    if bad or not entries:
        raise ValueError(f"{ARCH_ENV}={text!r}: expected compute capabilities such as '8.0;9.0' (each optionally "
                         f"with +PTX), got {', '.join(bad) or 'nothing'}")
    return tuple(sorted(set(entries), key=lambda entry: ([int(n) for n in _ARCH.fullmatch(entry).groups()[:2]], entry)))


def gencode_flags(arch_list: Sequence[str]) -> tuple[str, ...]:
    """nvcc flags for ``arch_list``: machine code for each entry, plus PTX for entries marked +PTX."""
    flags = []
    for entry in arch_list:
        major, minor, specific, ptx = _ARCH.fullmatch(entry).groups()
        number = f"{major}{minor}{specific}"
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return tuple(flags)


def arch_list_covers(arch_list: Sequence[str], capability: tuple[int, int]) -> bool:
    """Whether a library built for ``arch_list`` runs on a device of compute ``capability``: machine code
    for X.Y runs on X.Y' with Y' >= Y ("9.0a" only on 9.0); +PTX is compiled by the driver for any later device."""
    for entry in arch_list:
        major, minor, specific, ptx = _ARCH.fullmatch(entry).groups()
        built = (int(major), int(minor))
        if built == capability or (not specific and built[0] == capability[0] and built[1] <= capability[1]):
            return True
        if ptx and built <= capability:
            return True
    return False


def _visible_capabilities() -> list[tuple[int, int]]:
    return [torch.cuda.get_device_capability(index) for index in range(torch.cuda.device_count())]


def cuda_arch_list() -> tuple[str, ...]:
    """The architectures to build the CUDA kernel for: ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs'.

    Raises ExtensionUnavailable when neither says (no GPU visible and the variable unset).
    """
    text = os.environ.get(ARCH_ENV, "")
    if text and text != "native":
        try:
            return parse_arch_list(text)
        except ValueError as error:
            raise ExtensionUnavailable(str(error)) from None
    capabilities = sorted(set(_visible_capabilities()))
    if not capabilities:
        raise ExtensionUnavailable(f"no GPU is visible and {ARCH_ENV} is not set: set it to the compute "
                                   f"capabilities to build for, e.g. {ARCH_ENV}='8.0;9.0' (A100, H100)")
    return tuple(f"{major}.{minor}" for major, minor in capabilities)


def cuda_problem() -> str | None:
    """Why the CUDA kernel cannot be built or used here, or None when it can (this does not build it)."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"
    if CUDA_HOME is None:
        return "no CUDA toolkit found to compile with (nvcc is not on PATH and CUDA_HOME is not set)"
    try:
        arch_list = cuda_arch_list()
    except ExtensionUnavailable as error:
        return str(error)
    for index, capability in enumerate(_visible_capabilities()):
        if not arch_list_covers(arch_list, capability):
            return (f"the kernel is built for {';'.join(arch_list)} ({ARCH_ENV}), which does not cover GPU {index} "
                    f"({torch.cuda.get_device_name(index)}, compute capability {capability[0]}.{capability[1]}): "
                    f"add {capability[0]}.{capability[1]} to {ARCH_ENV}")
    return None


# ---- building and loading --------------------------------------------------------------------------------

def build_spec(kind: Kind) -> ExtensionSpec:
    """How ``kind`` is built here (for ``cuda``, for :func:`cuda_arch_list`)."""
    if kind == "cpu":
        return _CPU_SPEC
    arch_list = cuda_arch_list()
    return ExtensionSpec(kind="cuda", sources=_CUDA_SOURCES, cflags=("-O3", "-ffp-contract=off", "-DSPHERE_HAND_CUDA"),
                         cuda_cflags=CUDA_CFLAGS + gencode_flags(arch_list), arch_list=arch_list)


def source_hash(spec: ExtensionSpec) -> str:
    """Hash of everything that changes the built library."""
    digest = hashlib.sha256()
    for name in sorted(set(spec.sources) | set(_HEADERS)):
        digest.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    for item in (spec.cflags, spec.cuda_cflags, spec.ldflags):
        digest.update(repr(item).encode())
    digest.update(f"{torch.__version__} {torch.version.cuda} {sys.version_info[:2]} {platform.machine()}".encode())
    return digest.hexdigest()[:16]


def load(kind: Kind, *, verbose: bool = False) -> ModuleType:
    """The compiled extension ``kind`` ("cpu" or "cuda"), loaded from the cache or built now.

    Raises ExtensionUnavailable with a one-line reason (and the build log's path when a build failed). A
    failure is remembered for the process, so later calls do not rebuild.
    """
    if kind not in KINDS:
        raise ValueError(f"extension kind must be one of {KINDS}, got {kind!r}")
    if kind in _loaded:
        return _loaded[kind]
    if kind in _failed:
        raise ExtensionUnavailable(_failed[kind])
    problem = cuda_problem() if kind == "cuda" else None
    if problem is not None:
        _failed[kind] = f"the CUDA rasterizer kernel cannot be built or used here: {problem}"
        raise ExtensionUnavailable(_failed[kind])
    try:
        module = _build_or_import(build_spec(kind), verbose)
    except ExtensionUnavailable as error:
        _failed[kind] = str(error)
        raise
    _loaded[kind] = module
    return module


def _build_or_import(spec: ExtensionSpec, verbose: bool) -> ModuleType:
    """Loads the entry from the first root that has it complete, looking no further than the first
    writable root, where it is built if missing."""
    entry = f"{spec.kind}-{source_hash(spec)}"
    name = f"sphere_hand_raster_{spec.kind}_{source_hash(spec)}"  # unique per entry: versions never collide
    reasons = []
    for root in cache_roots():
        module = _import_cached(name, root / "renderer" / entry)
        if module is not None:
            return module
        problem = _write_problem(root)
        if problem is None:
            if reasons:
                _warn_fallback_root(cache_root(), root)
            return _build(spec, name, root / "renderer" / entry, verbose)
        reasons.append(f"{root} ({problem})")
    raise ExtensionUnavailable(f"no writable kernel cache to build the {spec.kind} kernel in: " + "; ".join(reasons))


def _build(spec: ExtensionSpec, name: str, directory: Path, verbose: bool) -> ModuleType:
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        module = _import_cached(name, directory)  # another process may have built it while we waited
        if module is not None:
            return module
        # cpp_extension's own baton file survives a killed build and would block forever; holding our
        # lock we know no build is running, so a leftover baton is stale.
        (directory / "lock").unlink(missing_ok=True)
        log = directory / LOG_NAME
        start = time.perf_counter()
        log.write_text(_describe_build(spec, directory))
        try:
            module = _compile(spec, name, directory, verbose)
        except Exception as error:  # noqa: BLE001 - any build failure becomes a message naming the log
            with log.open("a") as file:
                file.write(f"\nFAILED after {time.perf_counter() - start:.1f} s:\n{error}\n")
            raise ExtensionUnavailable(f"building the {spec.kind} rasterizer kernel failed: {error_gist(error)} "
                                       f"(full log: {log})") from error
        with log.open("a") as file:
            file.write(f"\nbuilt in {time.perf_counter() - start:.1f} s\n")
        (directory / _COMPLETE).write_text(f"{name}\n")
        return module


def _describe_build(spec: ExtensionSpec, directory: Path) -> str:
    from torch.utils.cpp_extension import CUDA_HOME

    lines = [f"renderer_cuda {spec.kind} kernel in {directory}",
             f"torch {torch.__version__}, torch CUDA {torch.version.cuda}, CUDA_HOME {CUDA_HOME}, "
             f"Python {platform.python_version()}, {platform.machine()}",
             f"sources: {' '.join(spec.sources)}", f"cflags: {' '.join(spec.cflags)}",
             f"cuda_cflags: {' '.join(spec.cuda_cflags)}", f"ldflags: {' '.join(spec.ldflags)}"]
    if spec.kind == "cuda":
        lines.append(f"architectures: {';'.join(spec.arch_list)}")
    return "\n".join(lines) + "\n"


def error_gist(error: BaseException, lines: int = 3, width: int = 200) -> str:
    """The informative lines of a (long) compiler error message, on one line: the compiler's "error:"
    lines, else the first lines, each cut to ``width`` characters."""
    text = list(dict.fromkeys(line.strip() for line in str(error).splitlines() if line.strip()))
    errors = [line for line in text if re.search(r"error:|not found|no such file", line, re.IGNORECASE)]
    picked = [line if len(line) <= width else line[:width] + "..." for line in (errors or text)[:lines]]
    return f"{type(error).__name__}: " + " | ".join(picked)


def _warn_fallback_root(wanted: Path, used: Path) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"renderer_cuda: the kernel cache {wanted} is not writable; building in {used} instead",
                      RuntimeWarning, stacklevel=4)


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
        extra_cuda_cflags=list(spec.cuda_cflags),  # its -gencode flags stop torch choosing architectures itself
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
