"""The run-directory lock (issue 20): a second training into a live run dir exits 2 naming the holder; a stale
lock (process gone; another host's without heartbeat) is taken over with a warning."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.test_reliability_config import CI, ROOT, TINY, train
from train.run import RunDirLocked, RunLock


def test_second_training_into_a_live_run_dir_exits_2_and_the_first_completes(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "train", "--config", CI, f"data.synthetic={synthetic_shards}",
                              f"run.dir={run_dir}", *TINY, "run.steps=12"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "run.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        second = train(run_dir, synthetic_shards, "run.steps=12")
        assert time.monotonic() - started < 30
        assert first.poll() is None, "the first training ended before the second started"
        host, pid = socket.gethostname(), first.pid
        assert second.returncode == 2
        assert second.stderr.startswith(f"error: run.dir {str(run_dir)!r} is in use by another training (host {host}, "
                                        f"pid {pid}, started "), second.stderr
        assert "Traceback" not in second.stderr
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    assert "finished at step 12" in err
    assert (run_dir / "env.log").read_text().count("=== start") == 1  # the refused one recorded nothing
    assert not (run_dir / "run.lock").exists()


def write_lock(run_dir, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.lock").write_text(json.dumps({"started": "then", **holder}))


def test_stale_locks_are_taken_over_with_a_warning_and_live_ones_refused(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path / "a", host=socket.gethostname(), pid=int(gone.stdout))
    with caplog.at_level(logging.WARNING):
        RunLock(tmp_path / "a").acquire().release()
    assert f"pid {int(gone.stdout)}" in caplog.text and "its process is gone" in caplog.text

    write_lock(tmp_path / "b", host="another-node", pid=os.getpid())  # another host: its heartbeat decides
    with pytest.raises(RunDirLocked, match="host another-node"):
        RunLock(tmp_path / "b", stale_after_s=60).acquire()
    old = time.time() - 120
    os.utime(tmp_path / "b" / "run.lock", (old, old))
    RunLock(tmp_path / "b", stale_after_s=60).acquire().release()
    assert "no heartbeat for 12" in caplog.text

    holder = RunLock(tmp_path / "c", heartbeat_s=0.05).acquire()  # alive on this host, heartbeat touching it
    try:
        touched = (tmp_path / "c" / "run.lock").stat().st_mtime
        time.sleep(0.3)
        assert (tmp_path / "c" / "run.lock").stat().st_mtime > touched
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "c").acquire()
    finally:
        holder.release()
    assert not (tmp_path / "c" / "run.lock").exists()


def test_under_torchrun_rank_0_checks_the_lock_and_every_rank_exits_2(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    holder = RunLock(run_dir).acquire()  # a live training of this host: this test's process
    try:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "train", "--config", CI, f"data.synthetic={synthetic_shards}",
                                 f"run.dir={run_dir}", *TINY], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.release()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"is in use by another training (host {socket.gethostname()}, pid {os.getpid()}" \
        in errors[0], result.stderr[-3000:]
    assert len(re.findall(r"exitcode\s+: 2 \(pid", result.stderr)) == 2, result.stderr[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written: no log, no config, no lock left
