"""I/O faults (issue 20): a full disk while saving is one error line naming the checkpoint, the previous one
intact; a read-only run dir is refused before the run; temporaries of a killed save or build are removed on
the next start. The filesystems are real: small tmpfs mounts (skipped where mounting is not permitted)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_shards
from tests.test_reliability_config import train
from train.checkpoint import list_checkpoints, load_network


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_disk_full_while_saving_is_one_line_and_the_previous_checkpoint_stays(synthetic_shards, small_disk):
    run_dir = small_disk / "run"
    first = train(run_dir, synthetic_shards, "run.steps=1")
    assert first.returncode == 0, first.stderr[-2000:]
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 96 * 1024))  # room for logs, not for a checkpoint
    resumed = train(run_dir, synthetic_shards, "run.steps=3")
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error")]
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: cannot write checkpoint {run_dir / 'checkpoints' / 'step-000000002.pt'} (the training state at "
        "step 2): "), errors
    assert f"the previous checkpoint {run_dir / 'checkpoints' / 'step-000000001.pt'} is intact" in errors[0]
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [1]
    assert not list((run_dir / "checkpoints").glob(".*tmp-*"))
    load_network(run_dir)


def test_read_only_run_dir_is_refused_before_the_run(synthetic_shards, small_disk):
    run_dir = small_disk / "run"
    assert train(run_dir, synthetic_shards, "run.steps=1").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    refused = train(run_dir, synthetic_shards, "run.steps=2")
    assert refused.returncode == 2
    assert refused.stderr == f"error: config key 'run.dir': {str(run_dir)!r} cannot be written ({str(run_dir)!r} is " \
                             "on a read-only filesystem)\n"


def test_temporaries_of_a_killed_save_or_build_are_removed_on_the_next_start(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    half_saved = run_dir / "checkpoints" / ".step-000000001.pt.tmp-4242"
    half_saved.write_bytes(b"\0" * 1000)
    result = train(run_dir, synthetic_shards, "run.steps=1")
    assert result.returncode == 0 and not half_saved.exists()
    assert f"removed {half_saved}, left by an interrupted save" in result.stderr

    shards = tmp_path / "synth"
    shutil.copytree(synthetic_shards, shards)
    half_written = shards / ".manifest.json.tmp-4242"
    half_written.write_text("{")
    run_shards("synthetic", "--out", shards, "--num-samples", 40, "--samples-per-shard", 10, "--seed", 5)
    assert not half_written.exists()
