"""A build killed midway (SIGKILL) and re-run gives the same bytes as an uninterrupted build."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import REPO, run_shards
from fileio import sha256_file


def shard_digests(directory):
    return {p.name: sha256_file(p) for p in sorted(directory.glob("shard-*.tar"))}


def test_killed_build_resumes_to_identical_shards(fake_nyu_dir, tmp_path):
    args = ["nyu", "--nyu-root", str(fake_nyu_dir), "--splits", "train", "--samples-per-shard", "2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_shards(*args, "--out", whole)

    process = subprocess.Popen([sys.executable, "-m", "shards", *args, "--out", str(killed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "train" / "shard-000000.tar"
    # A shard counts as complete once .progress.json records it (it is renamed into place just before):
    # kill after that, so the first shard must be kept by the re-run.
    progress = killed / "train" / ".progress.json"
    deadline = time.monotonic() + 120
    while not progress.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert first.exists() and not (killed / "train" / "manifest.json").exists()
    landed = shard_digests(killed / "train")
    assert 0 < len(landed) < 24
    kept_mtime = first.stat().st_mtime_ns

    run_shards(*args, "--out", killed, "--workers", "2")
    assert shard_digests(killed / "train") == shard_digests(whole / "train")
    assert len(shard_digests(whole / "train")) == 24
    assert first.stat().st_mtime_ns == kept_mtime, "a complete shard should be kept, not rebuilt"
    assert not list((killed / "train").glob(".*tmp*")), "temporary files should not survive"
    assert run_shards("inspect", killed).returncode == 0


def test_rerun_with_other_arguments_is_refused(fake_nyu_dir, tmp_path):
    args = ["nyu", "--nyu-root", str(fake_nyu_dir), "--splits", "test", "--out", str(tmp_path)]
    run_shards(*args)
    result = run_shards(*args, "--size", "32", check=False)
    assert result.returncode != 0 and "different build" in result.stderr
