"""Tests of the hand viewer: pose files and the real ``python -m hand.viewer`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hand
from hand import viewer

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hand.viewer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_pose_file_list_and_object(tmp_path):
    model = hand.HandModel()
    values = [0.1] * 26
    (tmp_path / "list.json").write_text(json.dumps(values))
    assert torch.allclose(viewer.load_pose_file(tmp_path / "list.json", model), torch.full((26,), 0.1))
    (tmp_path / "object.json").write_text(json.dumps({"index_flex_pip": 1.2, "trans_z": -20}))
    pose = viewer.load_pose_file(tmp_path / "object.json", model)
    assert pose[hand.PARAM_NAMES.index("index_flex_pip")] == pytest.approx(1.2) and pose[5] == -20
    assert pose.count_nonzero() == 2


@pytest.mark.parametrize("content, fault", [
    ("[1, 2]", "26 numbers"),
    ('{"index_bend": 0.1}', "index_bend"),
    ('{"ring_flex_pip": "a lot"}', "ring_flex_pip"),
    ('{"ring_flex_pip": 5.0}', "ring_flex_pip = 5.0"),
    ("{not json", "JSON"),
    ('"zero"', "expected a list"),
])
def test_bad_pose_files_name_the_fault(tmp_path, content, fault):
    path = tmp_path / "pose.json"
    path.write_text(content)
    with pytest.raises(viewer.PoseFileError, match=fault) as error:
        viewer.load_pose_file(path, hand.HandModel())
    assert str(path) in str(error.value)


def test_cli_saves_figures_that_depend_on_the_pose(tmp_path):
    zero, sampled = tmp_path / "zero.png", tmp_path / "sub" / "random.png"
    first = _run("--save", str(zero), "--pose", "zero", "--size", "64")
    assert first.returncode == 0, first.stderr
    second = _run("--save", str(sampled), "--pose", "random", "--seed", "3", "--size", "64")
    assert second.returncode == 0, second.stderr
    a, b = np.asarray(Image.open(zero)), np.asarray(Image.open(sampled))
    assert a.shape == b.shape and a.shape[0] > 300 and a.shape[1] > 500
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 1000
    assert len(np.unique(a.reshape(-1, a.shape[-1]), axis=0)) > 20, "a figure, not a blank image"


def test_cli_rejects_a_bad_pose_file(tmp_path):
    bad = tmp_path / "bad_pose.json"
    bad.write_text(json.dumps({"thumb_flex_ip": 0.2, "wrist_twist": 1.0}))
    out = tmp_path / "never.png"
    result = _run("--save", str(out), "--pose", str(bad))
    assert result.returncode != 0
    assert str(bad) in result.stderr and "wrist_twist" in result.stderr
    assert not out.exists()
    missing = _run("--save", str(out), "--pose", str(tmp_path / "missing.json"))
    assert missing.returncode != 0 and "missing.json" in missing.stderr


def test_cli_help_lists_the_options():
    result = _run("--help")
    assert result.returncode == 0
    for option in ("--save", "--pose", "--seed", "--size", "index_flex_mcp"):
        assert option in result.stdout
