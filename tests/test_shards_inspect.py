"""``shards inspect`` verifies counts, checksums and completeness, and draws samples for a person."""

from __future__ import annotations

import shutil

from conftest import run_shards


def copy_split(nyu_shards_gt, tmp_path):
    target = tmp_path / "shards" / "test"
    shutil.copytree(nyu_shards_gt / "test", target)
    return target


def test_intact_shards_pass_and_draw(nyu_shards_gt, tmp_path):
    result = run_shards("inspect", nyu_shards_gt, "--show", 3, "--out", tmp_path / "grid.png")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and "train" in result.stdout and "test" in result.stdout
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def test_truncated_tar_is_caught(nyu_shards_gt, tmp_path):
    split = copy_split(nyu_shards_gt, tmp_path)
    shard = split / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 2 // 3])
    result = run_shards("inspect", split.parent, check=False)
    assert result.returncode == 1
    assert "shard-000000.tar: sha256 differs" in result.stdout
    assert "shard-000000.tar: unreadable" in result.stdout or "samples" in result.stdout


def test_flipped_byte_is_caught(nyu_shards_gt, tmp_path):
    split = copy_split(nyu_shards_gt, tmp_path)
    shard = split / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    result = run_shards("inspect", split, check=False)
    assert result.returncode == 1
    assert "shard-000000.tar: sha256 differs" in result.stdout


def test_missing_shard_is_caught(nyu_shards_gt, tmp_path):
    split = copy_split(nyu_shards_gt, tmp_path)
    (split / "shard-000000.tar").unlink()
    result = run_shards("inspect", split, check=False)
    assert result.returncode == 1 and "shard-000000.tar: missing" in result.stdout
