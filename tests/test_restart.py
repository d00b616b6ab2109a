"""A crashed rank under ``torchrun --max-restarts`` and loader workers under job-wide signals, as users meet them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def rank_of(pid: int) -> int | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_sigkilled_rank_restarts_and_resumes_from_the_checkpoint(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "train", "--config", "configs/ci.yaml", f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
           f"run.steps={STEPS}", "model.width=16", "data.synthetic_batch=8", "data.batches_per_epoch=7",
           "eval.every=0", "eval.at_start=false", "checkpoint.every=5", "checkpoint.keep=2",
           "metrics.image_every=0", "metrics.log_every=5"]
    # A hang in process-group setup must become an error well inside this test's time.
    env = dict(os.environ, TRAIN_DIST_SETUP_TIMEOUT="60")
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run_dir / "checkpoints"):
            assert agent.poll() is None and time.monotonic() < deadline, agent.communicate()[0][-4000:]
            time.sleep(0.05)
        ranks = {rank_of(pid): pid for pid in children(agent.pid)}
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed_after = list_checkpoints(run_dir / "checkpoints")[-1][0]
        output = agent.communicate(timeout=120)[0]
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, output[-5000:]
    assert killed_after < STEPS
    final = list_checkpoints(run_dir / "checkpoints")[-1]
    assert final[0] == STEPS and torch.load(final[1], weights_only=True)["step"] == STEPS
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and f"finished at step {STEPS}" in log, log[-3000:]
    env_log = (run_dir / "env.log").read_text()
    assert env_log.count("=== start") == 2 and "TORCHELASTIC_RESTART_COUNT=1" in env_log


WORKER_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    from shards.reader import make_loader
    from train.distributed import PREEMPTION_SIGNALS

    # As training makes its loaders: the workers take the preemption signals from this process only.
    loader = iter(make_loader(sys.argv[1], batch_size=4, batches_per_epoch=50, num_workers=1, seed=0,
                              protect_signals=PREEMPTION_SIGNALS))
    next(loader)
    (worker,) = [int(p) for t in Path("/proc/self/task").iterdir() for p in (t / "children").read_text().split()]
    # A scheduler's SIGTERM comes from another process: the worker must not die of it.
    subprocess.run(["kill", "-TERM", str(worker)], check=True)
    subprocess.run(["kill", "-USR1", str(worker)], check=True)
    time.sleep(0.5)
    for _ in range(10):
        next(loader)
    print("worker alive after SIGTERM:", Path(f"/proc/{worker}").exists(), flush=True)
    # Fail with the loader still open, as a rank does whose peer crashed: exit must not wait on the worker.
    raise RuntimeError("peer gone")
""")


def test_loader_worker_survives_foreign_sigterm_and_never_blocks_exit(synthetic_shards):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(synthetic_shards)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "worker alive after SIGTERM: True" in result.stdout, result.stderr[-3000:]
    assert result.returncode == 1 and "RuntimeError: peer gone" in result.stderr, result.stderr[-3000:]
    assert time.monotonic() - start < 30, "the failed process waited on its loader worker at exit"


def test_generation_store_skips_a_dead_generation_and_keeps_the_full_timeout(monkeypatch):
    """Rank 1 must ignore the entry a dead generation left in the agent's store and join rank 0's live
    store, which must carry the process group's timeout, not the short probe timeout."""
    import datetime
    import socket
    import threading

    import torch.distributed as dist

    from train.distributed import DistEnv, _generation_store

    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "gen-test")
    with socket.socket() as probe:  # a port nobody serves any more
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    agent.set("train/gen-test/generation_store", f"{dead_port}:stale")
    timeout = datetime.timedelta(seconds=77)
    joined: dict[int, dist.Store] = {}

    def rank_one() -> None:
        joined[1] = _generation_store(DistEnv(1, 2, 1), time.monotonic() + 30, timeout)

    thread = threading.Thread(target=rank_one)
    thread.start()
    time.sleep(1.0)  # rank 1 is now probing the dead entry
    assert 1 not in joined
    joined[0] = _generation_store(DistEnv(0, 2, 0), time.monotonic() + 30, timeout)
    thread.join(timeout=30)
    assert 1 in joined, "rank 1 never joined the live store"
    joined[0].set("hello", "from rank 0")
    assert joined[1].get("hello") == b"from rank 0"
    assert joined[0].timeout == timeout and joined[1].timeout == timeout
