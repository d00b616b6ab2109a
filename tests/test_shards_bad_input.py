"""Bad raw input stops ``shards nyu`` with the file named (no traceback), or is skipped and listed."""

from __future__ import annotations

import json
import shutil

import pytest
import scipy.io

from conftest import run_shards


@pytest.fixture
def small_nyu(fake_nyu_dir, tmp_path):
    """A private copy of the 16-frame test split, to damage."""
    root = tmp_path / "nyu"
    shutil.copytree(fake_nyu_dir / "test", root / "test", ignore=shutil.ignore_patterns("rgb_*"))
    return root


def build(root, out, *extra):
    return run_shards("nyu", "--nyu-root", root, "--out", out, "--splits", "test", "--samples-per-shard", 8,
                      *extra, check=False)


def assert_fails_naming(result, name):
    assert result.returncode != 0
    assert name in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def truncate_png(root, name):
    path = root / "test" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def drop_last_frames(root, count):
    path = root / "test" / "joint_data.mat"
    mat = scipy.io.loadmat(str(path))
    scipy.io.savemat(str(path), {"joint_names": mat["joint_names"], "joint_xyz": mat["joint_xyz"][:, :-count],
                                 "joint_uvd": mat["joint_uvd"][:, :-count]})


def push_joint_outside(root, frame):
    path = root / "test" / "joint_data.mat"
    mat = scipy.io.loadmat(str(path))
    mat["joint_uvd"][1, frame - 1, 4, 0] = 700.0
    scipy.io.savemat(str(path), {k: mat[k] for k in ("joint_names", "joint_xyz", "joint_uvd")})


def test_truncated_png_names_the_file(small_nyu, tmp_path):
    truncate_png(small_nyu, "depth_1_0000005.png")
    assert_fails_naming(build(small_nyu, tmp_path / "out"), "depth_1_0000005.png")


def test_missing_view_names_the_file(small_nyu, tmp_path):
    (small_nyu / "test" / "depth_2_0000003.png").unlink()
    assert_fails_naming(build(small_nyu, tmp_path / "out"), "depth_2_0000003.png")


def test_mat_with_fewer_frames_than_files_names_the_mat(small_nyu, tmp_path):
    drop_last_frames(small_nyu, 2)
    result = build(small_nyu, tmp_path / "out")
    assert_fails_naming(result, "joint_data.mat")
    assert "14 frames" in result.stderr


def test_joint_outside_image_names_the_mat_and_frame(small_nyu, tmp_path):
    push_joint_outside(small_nyu, 7)
    result = build(small_nyu, tmp_path / "out")
    assert_fails_naming(result, "joint_data.mat")
    assert "frame 7" in result.stderr


def test_skip_bad_builds_the_rest_and_lists_what_it_skipped(small_nyu, tmp_path):
    truncate_png(small_nyu, "depth_1_0000005.png")
    (small_nyu / "test" / "depth_2_0000003.png").unlink()
    push_joint_outside(small_nyu, 7)
    drop_last_frames(small_nyu, 2)
    out = tmp_path / "out"
    result = build(small_nyu, out, "--skip-bad")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "test" / "manifest.json").read_text())
    skipped = {item["frame"]: item for item in manifest["skipped"]}
    assert sorted(skipped) == [3, 5, 7, 15, 16]
    assert skipped[5]["path"].endswith("depth_1_0000005.png")
    assert skipped[3]["path"].endswith("depth_2_0000003.png")
    assert manifest["samples"] == 11 == sum(s["samples"] for s in manifest["shards"])
    assert manifest["problems"] and "joint_data.mat" in manifest["problems"][0]["path"]
    assert run_shards("inspect", out).returncode == 0
