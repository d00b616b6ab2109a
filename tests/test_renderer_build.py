"""Building the renderer kernels: nvcc compiles of the CUDA sources, the architecture list, the JIT cache
(shared, read-only, fallback root, build log), the CPU fallback, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import include_paths

from renderer_cuda import extension

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "renderer_cuda" / "csrc"
NVCC = shutil.which("nvcc")

# Loads the CPU kernel through the package (building it if needed) and renders one triangle; prints what
# happened as JSON.
_LOAD_AND_RENDER = """
import json, time, warnings
start = time.perf_counter()
import torch
from renderer_cuda import extension, rasterize
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    kernel = extension.load("cpu")
seconds = time.perf_counter() - start
v = torch.tensor([[[0.0, 0.0, 3.0], [8.0, 0.0, 3.0], [0.0, 8.0, 3.0]]])
depth = rasterize(v, torch.tensor([[0, 1, 2]]), 8, 8, background=9.0, backend="cpu")
print(json.dumps({"seconds": seconds, "file": kernel.__file__, "covered": int((depth == 3.0).sum()),
                  "warnings": [str(w.message) for w in caught]}))
"""


def _caches(tmp_path: Path, first: Path | None) -> dict[str, str]:
    """Environment with every cache root under tmp_path: $SPHERE_HAND_CACHE (if given), user, tmp."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "user"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env | ({extension.CACHE_ENV: str(first)} if first else {})


def _read_only(path: Path) -> list[str]:
    """A command prefix under which ``path`` is read-only: a read-only bind mount in a new mount namespace
    as root (what an Apptainer image is), no write permission otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("running as root without mount namespaces: cannot make a read-only directory")
    return ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(path)]


def _python(code: str, env: dict[str, str], prefix: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"subprocess failed:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


# ---- the CUDA sources compile without a GPU ---------------------------------------------------------------

@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_cuda_kernel_compiles_for_sm80_and_sm90(tmp_path):
    flags = extension.CUDA_CFLAGS + extension.gencode_flags(extension.parse_arch_list("8.0;9.0"))
    command = [NVCC, "-c", "-std=c++20", *flags, "-Werror", "all-warnings", str(CSRC / "raster_cuda.cu"),
               "-o", str(tmp_path / "raster_cuda.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_cuda_binding_compiles_against_the_torch_headers(tmp_path):
    # The torch op of the CUDA kernel compiles with a compiler-only toolkit (no cuBLAS/cuSPARSE headers)
    # against this CPU wheel's headers. The CPU wheel lacks one generated header, c10/cuda's
    # cuda_cmake_macros.h (its only macro matters on Windows); the define skips it as HIP builds do.
    command = [NVCC, "-c", "-std=c++20", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DSPHERE_HAND_CUDA",
               *[f"-I{path}" for path in include_paths()], f"-I{CSRC}", str(CSRC / "torch_rasterize_cuda.cpp"),
               "-o", str(tmp_path / "torch_rasterize_cuda.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_shared_header_is_plain_cpp(tmp_path):
    # The header and the CPU kernel compile without torch or CUDA headers, warning-free.
    result = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", str(CSRC / "raster_cpu.cpp"),
                             "-o", str(tmp_path / "raster_cpu.o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---- what the CUDA kernel is built for -------------------------------------------------------------------

def test_arch_list_parsing_flags_and_coverage():
    assert extension.parse_arch_list("9.0 8.0;8.0;9.0+PTX") == ("8.0", "9.0", "9.0+PTX")
    with pytest.raises(ValueError, match="Ampere"):
        extension.parse_arch_list("8.0;Ampere")
    assert extension.gencode_flags(("8.0", "9.0+PTX")) == (
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90")
    covers = extension.arch_list_covers
    assert covers(("8.0", "9.0"), (8, 0)) and covers(("8.0",), (8, 6)) and covers(("9.0",), (9, 0))
    assert not covers(("9.0",), (8, 0)), "an sm_90-only library must not load on an A100"
    assert not covers(("8.6",), (8, 0)) and not covers(("8.0",), (9, 0)) and not covers(("9.0a",), (10, 0))
    assert covers(("8.0+PTX",), (9, 0)), "PTX is compiled by the driver for later devices"


def test_arch_list_is_part_of_the_cuda_cache_key(monkeypatch):
    keys = {}
    for arch_list in ("8.0;9.0", "9.0", "9.0;8.0"):
        monkeypatch.setenv(extension.ARCH_ENV, arch_list)
        keys[arch_list] = extension.source_hash(extension.build_spec("cuda"))
    assert keys["8.0;9.0"] == keys["9.0;8.0"] != keys["9.0"]
    assert extension.build_spec("cuda").arch_list == ("8.0", "9.0")


def test_without_a_gpu_the_arch_list_must_be_given(monkeypatch):
    monkeypatch.delenv(extension.ARCH_ENV, raising=False)
    if torch.cuda.device_count():
        pytest.skip("a GPU is visible: its capability is the default")
    with pytest.raises(extension.ExtensionUnavailable, match=f"no GPU is visible and {extension.ARCH_ENV}"):
        extension.cuda_arch_list()
    monkeypatch.setenv(extension.ARCH_ENV, "8.0;sm_90")
    with pytest.raises(extension.ExtensionUnavailable, match="sm_90"):
        extension.cuda_arch_list()


# ---- the cache ----------------------------------------------------------------------------------------------

def test_concurrent_builds_share_the_fallback_cache_when_the_cache_is_read_only(tmp_path):
    # Two processes start at once on an empty cache whose $SPHERE_HAND_CACHE is read-only (as inside an
    # Apptainer image): both fall back to the per-user cache and say so; one builds there under the lock,
    # the other waits and loads.
    image_cache = tmp_path / "image-cache"
    image_cache.mkdir()
    env = _caches(tmp_path, image_cache)
    first, second = (_python(_LOAD_AND_RENDER, env, _read_only(image_cache)) for _ in range(2))
    results = [_result(first), _result(second)]
    assert all(r["covered"] == 36 for r in results)  # centres with x + y <= 8 inside the triangle: 8*9/2
    assert results[0]["file"] == results[1]["file"]
    library = Path(results[0]["file"])
    assert library.is_relative_to(tmp_path / "user" / "sphere_hand" / "renderer")
    assert "built in" in (library.parent / extension.LOG_NAME).read_text()
    for result in results:
        assert len(result["warnings"]) == 1 and "is not writable; building in" in result["warnings"][0]
    assert not any(image_cache.iterdir())
    built = library.stat().st_mtime_ns

    again = _result(_python(_LOAD_AND_RENDER, env, _read_only(image_cache)))
    assert again["file"] == results[0]["file"] and not again["warnings"]
    assert library.stat().st_mtime_ns == built, "the cached library is reused, not rebuilt"
    assert again["seconds"] < 0.5 * max(r["seconds"] for r in results)


def test_a_read_only_cache_that_holds_the_kernel_is_used_as_is(tmp_path):
    # A prebuilt image cache, read-only at run time: loaded in place, nothing written anywhere.
    entry = Path(extension.load("cpu").__file__).parent
    image_cache = tmp_path / "image-cache"
    shutil.copytree(entry, image_cache / "renderer" / entry.name, ignore=shutil.ignore_patterns("*.o", ".ninja*"))
    env = _caches(tmp_path, image_cache)
    result = _result(_python(_LOAD_AND_RENDER, env, _read_only(image_cache)))
    assert Path(result["file"]).is_relative_to(image_cache) and result["covered"] == 36
    assert not result["warnings"]
    assert not (tmp_path / "user").exists() and not any((tmp_path / "tmp").iterdir())


def test_unbuildable_kernel_falls_back_to_torch_on_the_cpu_with_one_warning_naming_the_log(tmp_path):
    code = """
import json, warnings, torch
from renderer_cuda import rasterize
from renderer_cuda.reference import rasterize_reference
v = torch.tensor([[[0.0, 0.0, 3.0], [8.0, 0.0, 3.0], [0.0, 8.0, 3.0]]])
f = torch.tensor([[0, 1, 2]])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    images = [rasterize(v, f, 8, 8, background=9.0) for _ in range(3)]
expected = rasterize_reference(v, f.int(), 8, 8, 9.0)
print(json.dumps({"messages": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
                  "same": all(torch.equal(image, expected) for image in images)}))
"""
    # No C++ compiler: a real build failure.
    env = _caches(tmp_path, tmp_path / "cache") | {"CXX": str(tmp_path / "no-such-compiler")}
    result = _result(_python(code, env))
    assert result["same"]
    assert len(result["messages"]) == 1
    message = result["messages"][0]
    assert "unavailable" in message and "no-such-compiler: not found" in message
    log = Path(message.split("full log: ")[1].split(")")[0])
    assert log.is_relative_to(tmp_path / "cache") and "FAILED" in log.read_text()


# ---- the command line ---------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderer_cuda", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_build_command_help_and_prebuild():
    help_text = _cli("build", "--help")
    assert help_text.returncode == 0
    for topic in ("--kind", extension.ARCH_ENV, extension.CACHE_ENV, "read-only", "build.log", "Exit status"):
        assert topic in help_text.stdout, topic
    built = _cli("build", "--kind", "cpu")  # the default cache, shared with the other tests
    assert built.returncode == 0, built.stdout + built.stderr
    assert "cpu: ready" in built.stdout and extension.CACHE_ENV in built.stdout


@pytest.mark.skipif(extension.cuda_problem() is None, reason="the CUDA kernel can be built here")
def test_build_cuda_fails_loudly_where_it_cannot_build():
    cuda = _cli("build", "--kind", "cuda")
    assert cuda.returncode == 1 and "cuda: FAILED: " in cuda.stdout and extension.cuda_problem() in cuda.stdout
    everything = _cli("build")  # "all" builds what can be built here and says why cuda is skipped
    assert everything.returncode == 0 and f"cuda: skipped: {extension.cuda_problem()}" in everything.stdout
