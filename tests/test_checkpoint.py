"""Checkpoints: atomic keep-last-N files readable with weights_only, exact resume after a stop or SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import CheckpointConfig, Checkpointer, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def make_state(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s // 2))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return net, optimizer, scheduler, scaler


def make_checkpointer(directory: Path, states, every: int = 2, keep: int = 2) -> Checkpointer:
    net, optimizer, scheduler, scaler = states
    return Checkpointer(CheckpointConfig(every=every, keep=keep), directory,
                        states={"model": net, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler},
                        config={"model": {"width": 4}, "data": {"size": 64, "cube": 300.0}}, rank=0, world_size=1,
                        seed=0, batches_per_epoch=10)


def step(states) -> None:
    net, optimizer, scheduler, _ = states
    optimizer.zero_grad()
    net(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()


def test_interval_keep_last_and_atomic_files(tmp_path):
    states = make_state()
    checkpointer = make_checkpointer(tmp_path, states, every=2, keep=2)
    for s in range(1, 8):
        step(states)
        checkpointer.save(s, last=s == 7)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000006.pt", "step-000000007.pt"]


def test_resume_restores_everything_and_loads_weights_only(tmp_path):
    states = make_state()
    for _ in range(3):
        step(states)
    make_checkpointer(tmp_path, states).save(3, last=True)
    draws = (torch.rand(3).tolist(), np.random.rand(), random.random())
    torch.manual_seed(123)
    step(states)  # the uninterrupted continuation

    fresh = make_state(seed=1)
    assert make_checkpointer(tmp_path, fresh).load() == 3
    assert (torch.rand(3).tolist(), np.random.rand(), random.random()) == draws  # RNG streams continue
    torch.manual_seed(123)
    step(fresh)  # the same update: weights, Adam moments and the lr schedule all came back
    for a, b in zip(fresh[0].parameters(), states[0].parameters()):
        assert torch.equal(a, b)
    assert fresh[2].last_epoch == 4 and fresh[1].param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    state = torch.load(tmp_path / "step-000000003.pt", weights_only=True)
    assert state["step"] == 3 and set(state) >= {"model", "config", "optimizer", "scheduler", "scaler", "rng"}


def test_unreadable_newest_checkpoint_falls_back(tmp_path):
    states = make_state()
    checkpointer = make_checkpointer(tmp_path, states, every=1, keep=3)
    for s in (1, 2):
        step(states)
        checkpointer.save(s)
    (tmp_path / "step-000000002.pt").write_bytes(b"truncated")
    assert make_checkpointer(tmp_path, make_state()).load() == 1


def test_fresh_directory_starts_at_zero(tmp_path):
    assert make_checkpointer(tmp_path / "none", make_state()).load() == 0


# ---------------------------------------------------------------------------------------------------
# Resume through the real command line: 2 torchrun ranks, synthetic-only, small network.

STEPS = 24


def command(run_dir: Path, synthetic: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train",
            "--config", "configs/ci.yaml", f"data.synthetic={synthetic}", f"run.dir={run_dir}",
            f"run.steps={STEPS}", "model.width=16", "data.synthetic_batch=8", "data.batches_per_epoch=7",
            "eval.every=0", "eval.at_start=false", "checkpoint.every=0", "metrics.image_every=0",
            "metrics.log_every=1", *extra]


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / f"step-{STEPS:09d}.pt", weights_only=True)
    assert state["step"] == STEPS
    return state["model"]


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_shards) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(command(run_dir, synthetic_shards))
    return final_model(run_dir)


def test_stop_and_resume_matches_uninterrupted(uninterrupted, synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    run(command(run_dir, synthetic_shards, "run.stop_at=10"))
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [10]
    run(command(run_dir, synthetic_shards))  # the same command without the stop resumes from step 10
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert_same_model(final_model(run_dir), uninterrupted)


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(uninterrupted, synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(command(run_dir, synthetic_shards), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-4000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # the whole job, as a scheduler's preemption does
    output = process.communicate(timeout=120)[0]
    log = (run_dir / "train.log").read_text()
    assert "(preempted)" in log, output[-4000:]
    stopped = [s for s, _ in list_checkpoints(run_dir / "checkpoints")]
    assert len(stopped) == 1 and 0 < stopped[0] < STEPS, (stopped, output[-4000:])
    run(command(run_dir, synthetic_shards))
    assert_same_model(final_model(run_dir), uninterrupted)
