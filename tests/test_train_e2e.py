"""End to end: ``torchrun --nproc_per_node=2 -m train --config configs/ci.yaml`` on CPU, as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geometry import Crop
from tests.conftest import run_shards
from train.checkpoint import load_network

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: str, nproc: int = 2, timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "train", "--config", "configs/ci.yaml", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def series(records: list[dict], tag: str) -> list[tuple[int, float]]:
    return [(r["step"], r[tag]) for r in records if tag in r]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, nyu_shards_gt, synthetic_shards) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "ci"
    torchrun(f"data.real={nyu_shards_gt}", f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
             "run.steps=60", "eval.every=30", "checkpoint.every=30", "metrics.image_every=30")
    return run_dir


def test_run_directory_explains_itself(mixed_run):
    for name in ("config.yaml", "env.log", "train.log", "metrics.jsonl"):
        assert (mixed_run / name).is_file(), name
    env_log = (mixed_run / "env.log").read_text()
    assert "data.real=" in env_log and "torch.distributed.run" in env_log and "world: rank 0 of 2" in env_log
    from train.config import load_config

    resolved = load_config(mixed_run / "config.yaml")
    assert resolved.run.steps == 60 and resolved.data.real and resolved.data.synthetic


def test_both_ranks_train_and_the_loss_falls(mixed_run):
    records = read_metrics(mixed_run)
    losses = series(records, "train/loss")
    assert [s for s, _ in losses] == [10, 20, 30, 40, 50, 60]
    assert losses[-1][1] < 0.8 * losses[0][1], losses
    last = [r for r in records if "train/loss" in r][-1]
    for tag in ("train/loss/projection", "train/loss/synthetic_heatmap", "train/loss/collision", "train/lr",
                "train/data_wait_fraction", "train/render_fraction"):
        assert tag in last, tag
    assert last["train/samples_per_s/rank0"] > 0 and last["train/samples_per_s/rank1"] > 0
    assert last["train/samples_per_s"] == pytest.approx(
        last["train/samples_per_s/rank0"] + last["train/samples_per_s/rank1"])
    assert last["train/render_fraction"] > 0  # every rank renders its own synthetic batches
    # ci.yaml: lr 3e-3, x0.1 after 60% and again after 90% of the run
    assert dict(series(records, "train/lr")) == pytest.approx({10: 3e-3, 20: 3e-3, 30: 3e-3, 40: 3e-4, 50: 3e-4,
                                                                60: 3e-5})
    errors = series(records, "eval/mean_error_mm")
    assert [s for s, _ in errors] == [0, 30, 60] and all(e > 0 for _, e in errors)
    frames = series(records, "eval/real/frames")
    assert frames[-1][1] == 16, "evaluation combines both ranks' shares of data.real/test"


def test_tensorboard_holds_scalars_and_images(mixed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(mixed_run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/loss/projection", "train/lr", "train/samples_per_s",
                "train/samples_per_s/rank1", "train/data_wait_fraction", "eval/mean_error_mm"):
        assert tag in tags["scalars"], tag
    assert len(events.Scalars("train/loss")) == 6
    for tag in ("images/real/joints", "images/real/spheres_vs_depth", "images/synthetic/render_vs_target"):
        assert tag in tags["images"], tag
        assert [e.step for e in events.Images(tag)] == [30, 60]


def test_checkpoints_load_with_weights_only(mixed_run):
    paths = sorted((mixed_run / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in paths] == ["step-000000030.pt", "step-000000060.pt"]
    state = torch.load(paths[-1], map_location="cpu", weights_only=True)
    assert state["step"] == 60
    assert state["config"]["model"]["width"] == 32 and state["config"]["crop"] == {"size": 64, "cube_mm": 300.0}
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "data"):
        assert key in state, key
    assert not any(k.startswith("module.") for k in state["model"])
    assert len(state["rng"]) == 2 and isinstance(state["rng"][1]["torch"], torch.Tensor)
    net, crop, config = load_network(paths[-1])
    assert config["model"]["stacks"] == 1 and crop == Crop(64, 300.0)
    assert torch.equal(net.state_dict()["heads.0.weight"], state["model"]["heads.0.weight"])


@pytest.fixture(scope="module")
def learning_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic-learn")
    run_shards("synthetic", "--out", out, "--num-samples", 2000, "--samples-per-shard", 250, "--seed", 0)
    return out


def test_synthetic_training_halves_the_held_out_error(learning_shards, tmp_path):
    run_dir = tmp_path / "learn"
    torchrun(f"data.synthetic={learning_shards}", f"run.dir={run_dir}", "run.steps=200", "eval.every=100",
             "metrics.image_every=0", "checkpoint.every=0", "metrics.log_every=50")
    errors = series(read_metrics(run_dir), "eval/synthetic/mean_error_mm")
    assert [s for s, _ in errors] == [0, 100, 200]
    untrained, trained = errors[0][1], errors[-1][1]
    assert trained < 0.5 * untrained, errors
