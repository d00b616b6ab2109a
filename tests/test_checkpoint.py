"""Checkpoints: atomic keep-last-N files readable with weights_only, exact resume after a stop or SIGTERM."""

from __future__ import annotations

import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from train.config import load_config
from train.checkpoint import (CheckpointConfig, CheckpointError, Checkpointer, CheckpointMissing, CheckpointWriteError,
                              list_checkpoints, read_checkpoint)

ROOT = Path(__file__).resolve().parents[1]


def make_state(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s // 2))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return net, optimizer, scheduler, scaler


def make_checkpointer(directory: Path, states, every: int = 2, keep: int = 2, *, width: int = 4,
                      batches_per_epoch: int = 10, synthetic_batch: int = 8, world_size: int = 1,
                      cube_mm: float = 300.0) -> Checkpointer:
    net, optimizer, scheduler, scaler = states
    return Checkpointer(CheckpointConfig(every=every, keep=keep), directory,
                        states={"model": net, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler},
                        config={"model": {"width": width}, "crop": {"size": 64, "cube_mm": cube_mm},
                                "data": {"synthetic_batch": synthetic_batch}},
                        rank=0, world_size=world_size, seed=0, batches_per_epoch=batches_per_epoch)


def step(states) -> None:
    net, optimizer, scheduler, _ = states
    optimizer.zero_grad()
    net(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()


def test_interval_and_keep_last(tmp_path):
    states = make_state()
    checkpointer = make_checkpointer(tmp_path, states, every=2, keep=2)
    for s in range(1, 8):
        step(states)
        checkpointer.save(s, last=s == 7)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000006.pt", "step-000000007.pt"]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    states = make_state()
    checkpointer = make_checkpointer(tmp_path, states, every=2, keep=1)
    step(states)
    checkpointer.save(2)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):  # a full disk or a kill halfway through the write
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        handle.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        handle.flush()
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    step(states)
    with pytest.raises(CheckpointWriteError, match="step-000000004.pt .*No space left on device.*step-000000002.pt is intact"):
        checkpointer.save(4)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000002.pt"]  # no partial file, no temporary
    assert read_checkpoint(tmp_path / "step-000000002.pt")["step"] == 2
    assert make_checkpointer(tmp_path, make_state()).load() == 2


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


def test_read_checkpoint_names_the_file_and_strips_wrapper_prefixes(tmp_path):
    with pytest.raises(CheckpointMissing, match="absent.pt") as missing:
        read_checkpoint(tmp_path / "absent.pt")
    assert isinstance(missing.value, FileNotFoundError)
    (tmp_path / "corrupt.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="corrupt.pt.*weights_only"):
        read_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a training checkpoint.*'weights'"):
        read_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt is not a training checkpoint"):
        read_checkpoint(tmp_path / "list.pt")
    weight = torch.ones(2)
    torch.save({"model": {"module._orig_mod.weight": weight, "_orig_mod.bias": weight}, "config": {}},
               tmp_path / "wrapped.pt")
    assert sorted(read_checkpoint(tmp_path / "wrapped.pt")["model"]) == ["bias", "weight"]


def test_resume_refuses_checkpoints_of_another_model_config(tmp_path):
    run_dir = tmp_path / "run"
    states = make_state()
    make_checkpointer(run_dir / "checkpoints", states, width=4).save(1, last=True)
    with pytest.raises(CheckpointError) as refused:
        make_checkpointer(run_dir / "checkpoints", make_state(), width=8).load()
    message = str(refused.value)
    assert f"run.dir {run_dir} " in message and "step-000000001.pt" in message
    assert "model.width: saved 4, now 8" in message and "\n" not in message


def test_resume_refuses_checkpoints_of_another_crop_naming_both(tmp_path):
    """The same weights at another cube decode joints in the wrong millimetres, without a shape error."""
    run_dir = tmp_path / "run"
    make_checkpointer(run_dir / "checkpoints", make_state(), cube_mm=250.0).save(1, last=True)
    with pytest.raises(CheckpointError) as refused:
        make_checkpointer(run_dir / "checkpoints", make_state(), cube_mm=300.0).load()
    message = str(refused.value)
    assert "trained at crop 64 px / 250 mm, this run uses 64 px / 300 mm" in message and "\n" not in message
    assert f"run.dir {run_dir} " in message


def test_resume_with_changed_data_settings_warns_with_both_values(tmp_path, caplog):
    make_checkpointer(tmp_path, make_state()).save(1, last=True)
    with caplog.at_level(logging.WARNING, logger="train.checkpoint"):
        assert make_checkpointer(tmp_path, make_state()).load() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # unchanged: silent
    with caplog.at_level(logging.WARNING, logger="train.checkpoint"):
        assert make_checkpointer(tmp_path, make_state(), batches_per_epoch=12, synthetic_batch=4,
                                 world_size=2).load() == 1
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "data.batches_per_epoch saved 10, now 12" in warning
    assert "data.synthetic_batch saved 8, now 4" in warning and "world size saved 1, now 2" in warning


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


def test_unusable_init_checkpoint_exits_2_with_one_line(synthetic_shards, tmp_path):
    """``init`` through the real command line: a corrupt file and another model's weights, no traceback."""
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"step": 3, "model": {}, "config": {"model": {"width": 8}}}, other)
    other_crop = tmp_path / "other-crop.pt"
    model = asdict(load_config(ROOT / "configs/ci.yaml", ["model.width=16"]).model)
    torch.save({"step": 3, "model": {}, "config": {"model": model, "crop": {"size": 64, "cube_mm": 250.0}}}, other_crop)
    for init, named in ((corrupt, "corrupt.pt"), (other, "model.width: saved 8, now 16"),
                        (other_crop, "trained at crop 64 px / 250 mm, this run uses 64 px / 300 mm")):
        cmd = [sys.executable, "-m", "train", "--config", "configs/ci.yaml", f"data.synthetic={synthetic_shards}",
               f"run.dir={tmp_path / 'run'}", "model.width=16", f"init={init}", "eval.at_start=false"]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and named in last and str(init) in last, result.stderr[-3000:]
