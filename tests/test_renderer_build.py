"""Building the renderer kernels: nvcc compile of the CUDA kernel, the JIT cache, the fallback, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from renderer_cuda import extension

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "renderer_cuda" / "csrc"

# Loads the CPU kernel through the package (building into $SPHERE_HAND_CACHE if needed) and renders one
# triangle; prints what happened as JSON.
_LOAD_AND_RENDER = """
import json, time
start = time.perf_counter()
import torch
from renderer_cuda import extension, rasterize
kernel = extension.load("cpu")
seconds = time.perf_counter() - start
v = torch.tensor([[[0.0, 0.0, 3.0], [8.0, 0.0, 3.0], [0.0, 8.0, 3.0]]])
depth = rasterize(v, torch.tensor([[0, 1, 2]]), 8, 8, background=9.0, backend="cpu")
print(json.dumps({"seconds": seconds, "file": kernel.__file__, "covered": int((depth == 3.0).sum())}))
"""


def _python(code: str, cache: Path | str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, **{extension.CACHE_ENV: str(cache)})
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"subprocess failed:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_kernel_compiles_for_sm80_and_sm90(tmp_path):
    command = ["nvcc", "-c", "-std=c++17", "-O3", "--fmad=false", "-Werror", "all-warnings",
               "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
               str(CSRC / "raster_cuda.cu"), "-o", str(tmp_path / "raster_cuda.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "raster_cuda.o").stat().st_size > 0


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_shared_header_is_plain_cpp(tmp_path):
    # The header and the CPU kernel compile without torch or CUDA headers, warning-free.
    result = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", str(CSRC / "raster_cpu.cpp"),
                             "-o", str(tmp_path / "raster_cpu.o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_concurrent_builds_share_one_cache(tmp_path):
    # Two processes start on an empty cache at once: one builds under the lock, the other waits and loads.
    first, second = _python(_LOAD_AND_RENDER, tmp_path), _python(_LOAD_AND_RENDER, tmp_path)
    results = [_result(first), _result(second)]
    assert all(r["covered"] == 36 for r in results)  # centres with x + y <= 8 inside the triangle: 8*9/2
    assert results[0]["file"] == results[1]["file"]
    library = Path(results[0]["file"])
    assert library.is_relative_to(tmp_path / "renderer")
    built = library.stat().st_mtime_ns

    again = _result(_python(_LOAD_AND_RENDER, tmp_path))
    assert again["file"] == results[0]["file"]
    assert library.stat().st_mtime_ns == built, "the cached library is reused, not rebuilt"
    assert again["seconds"] < 0.5 * max(r["seconds"] for r in results)


def test_unbuildable_kernel_falls_back_to_torch_with_one_warning():
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
    # A cache "directory" below a regular file cannot be created: a real, if contrived, build failure.
    result = _result(_python(code, "/dev/null/sphere_hand_cache"))
    assert result["same"]
    assert len(result["messages"]) == 1
    assert "unavailable" in result["messages"][0] and "NotADirectoryError" in result["messages"][0]


def test_build_command_help_and_prebuild():
    run = lambda *args: subprocess.run([sys.executable, "-m", "renderer_cuda", *args], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    help_text = run("build", "--help")
    assert help_text.returncode == 0 and "cache" in help_text.stdout and "--kind" in help_text.stdout
    built = run("build", "--kind", "cpu")  # the default cache, shared with the other tests
    assert built.returncode == 0, built.stdout + built.stderr
    assert "cpu: ready" in built.stdout and extension.CACHE_ENV in built.stdout
    if not extension.is_cuda_buildable():
        cuda = run("build", "--kind", "cuda")
        assert cuda.returncode == 1 and "cuda: skipped" in cuda.stdout
