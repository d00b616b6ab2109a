"""Tests of the hand fit (``hand.fit`` on arrays, ``python -m shards fit-poses`` on a data set's labels) and of NYU's
wrist sides in the fake-NYU labels and the evaluation labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import hand
from hand import fit
from shards.fake_nyu import RECORD_NAME
from shards.nyu import load_labels
from shards.nyu_protocol import NYU_EVAL_JOINTS, camera_to_uvd, split_labels, write_results

REPO = Path(__file__).resolve().parents[1]
EVAL = NYU_EVAL_JOINTS


def run_fit(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", "fit-poses", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def thumb_nearer_palm_2(joints: np.ndarray, thumb: int, little: int, palm_1: int, palm_2: int) -> np.ndarray:
    """(N,) bool per frame: PALM_2 lies nearer the thumb joint and PALM_1 nearer the little-finger joint."""
    def distance(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(joints[:, a] - joints[:, b], axis=-1)

    return ((distance(palm_2, thumb) < distance(palm_1, thumb)) & (distance(palm_1, little) < distance(palm_2, little)))


def test_fit_recovers_fake_nyu_poses(fake_nyu_dir, tmp_path, single_thread):
    labels = write_results(tmp_path / "labels.txt", camera_to_uvd(load_labels(fake_nyu_dir / "test").joints[0][:, EVAL]))
    result = run_fit("--labels", labels, "--out", tmp_path / "fit")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "fit" / "pose_fit.json").read_text())
    assert summary["frames"] == 16 and summary["mean_residual_mm"] < 3.0
    assert list(summary["per_joint_mm"]) == [hand.SPHERE_NAMES[i] for i in EVAL]
    fitted = np.load(tmp_path / "fit" / "poses.npz")
    assert fitted["poses"].shape == (16, 26) and fitted["shapes"].shape == (16, 17)
    assert fitted["residual_mm"].shape == (16, 14) and list(fitted["frames"]) == list(range(1, 17))
    # The joints no label constrains come out right too: all 36 fitted joints against the generator's truth.
    true = np.load(fake_nyu_dir / RECORD_NAME)["test_joints_true"][0]
    joints = hand.HandModel().keypoints(torch.from_numpy(fitted["poses"]), torch.from_numpy(fitted["shapes"]))
    assert np.linalg.norm(joints[:, :36].detach().numpy() - true, axis=-1).mean() < 4.0


def test_fit_is_robust_to_the_global_rotation(single_thread):
    """Hands turned every way (palm away from the camera too), far from the camera: each fits from the palm alignment."""
    model = hand.HandModel()
    generator = torch.Generator().manual_seed(3)
    poses = hand.sample_poses(24, generator)
    poses[:, :3] = torch.from_numpy(Rotation.random(24, random_state=3).as_rotvec()).float()
    poses[:, 3:6] = torch.tensor([30.0, -20.0, 850.0])
    shapes = hand.sample_shapes(24, generator)
    target = model.keypoints(poses, shapes)[:, EVAL].detach().numpy()
    result = fit.fit_joints(target, EVAL, fit.PoseFitConfig(steps=200), progress=False)
    assert result.residual_mm.mean() < 2.0 and np.median(result.residual_mm.max(1)) < 4.0


def test_fit_takes_any_labelled_spheres_with_the_palm_triangle(single_thread):
    """hand.fit knows no data set: a label set other than NYU's 14 joints fits as well; one without the palm
    triangle (the alignment's anchor) is refused."""
    model = hand.HandModel()
    poses = hand.sample_poses(4, torch.Generator().manual_seed(5))
    poses[:, 3:6] = torch.tensor([0.0, 0.0, 700.0])
    spheres = [30, 31, 32, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 35]  # the palm triangle, fingertips' neighbours
    target = model.keypoints(poses)[:, spheres].detach().numpy()
    result = fit.fit_joints(target, spheres, fit.PoseFitConfig(steps=200), progress=False)
    assert result.residual_mm.shape == (4, len(spheres)) and result.residual_mm.mean() < 2.0
    without_palm_3 = [30, 31] + spheres[3:]
    with pytest.raises(ValueError, match="palm triangle.*PALM_3"):
        fit.fit_joints(model.keypoints(poses)[:, without_palm_3].detach().numpy(), without_palm_3, progress=False)


def test_fit_names_the_bad_line_and_exits_2(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(" ".join(["1.0"] * 42) + "\n" + " ".join(["1.0"] * 41) + "\n")
    result = run_fit("--labels", labels, "--out", tmp_path / "fit")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{labels}: line 2: 41 values, expected 42" in result.stderr


def test_wrist_sides_of_the_fake_nyu_and_evaluation_labels(fake_nyu_dir, nyu_shards_gt):
    """NYU: PALM_1 on the little-finger side, PALM_2 on the thumb side, in the raw labels and the scored ones."""
    names = hand.NYU_JOINT_NAMES
    raw = load_labels(fake_nyu_dir / "test").joints[0]
    assert thumb_nearer_palm_2(raw, names.index("TH_KNU1_B"), names.index("F1_KNU1_B"),
                               names.index("PALM_1"), names.index("PALM_2")).all()
    scored = split_labels(nyu_shards_gt / "test").values  # the evaluation's 14 joints, results-file order
    position = {name: EVAL.index(names.index(name)) for name in ("TH_KNU2_B", "F1_KNU2_B", "PALM_1", "PALM_2")}
    assert thumb_nearer_palm_2(scored, *position.values()).all()
