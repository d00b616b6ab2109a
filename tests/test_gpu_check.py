"""``benchmarks/gpu_check.py``, the one-GPU acceptance script: its CPU dry run (the same steps with the CPU
kernel, gloo and tiny sizes) runs every step and writes the summary; without a GPU the real check refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_dry_run_runs_every_step_and_writes_the_summary(tmp_path, nyu_shards_gt, synthetic_shards):
    data = tmp_path / "data"  # the session's shards stand in for the ones the script would build
    data.mkdir()
    (data / "nyu").symlink_to(nyu_shards_gt)
    (data / "synth").symlink_to(synthetic_shards)
    result = gpu_check("--dry-run", "--out", tmp_path / "out", "--data", data)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = summary["steps"]
    assert list(steps) == ["build", "exact", "speed", "stage1", "stage2"]
    assert all(step["status"] == "ok" for step in steps.values()), steps
    assert steps["exact"]["result"]["rows"] == [{"batch": 1, "supersample": 1, "identical": True, "differing_pixels": 0}]
    assert steps["speed"]["result"]["rasterize_images_per_s_ss1"] > 0
    stage1 = steps["stage1"]["result"]
    assert stage1["process_group"] == "gloo" and stage1["stopped_at"] == 1 and stage1["steps"] == 2
    assert stage1["samples_per_s"] > 0 and 0 < stage1["render_fraction"] < 1 and 0 <= stage1["data_wait_fraction"] < 1
    for config in ("selfsup", "selfsup-direct"):
        run = steps["stage2"]["result"][config]
        assert run["amp"] == "bf16" and run["first_loss"] > 0 and run["eval_mean_error_mm"] > 0, (config, run)
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "dry run (CPU)" in table and "| stage2 | ok |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_without_a_gpu_the_check_refuses_with_one_line(tmp_path):
    result = gpu_check("--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no CUDA device visible (torch.cuda.is_available() is False); --dry-run checks the script on the CPU"]
    assert not (tmp_path / "out").exists()
