"""``python -m train.predict``: the field's results reproduce the checkpoint evaluation, every depth format reads
the same, per-frame outputs, refinement, bad input and frames without a hand."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geometry import Crop, project
from shards.nyu import PALM_JOINT, read_depth
from shards.nyu_protocol import NYU_EVAL_JOINTS, NYU_INTRINSICS
from train.checkpoint import load_network
from train.network import NetworkConfig, build_network
from train.predict import predict_frame

REPO = Path(__file__).resolve().parents[1]
TINY = NetworkConfig(stacks=1, width=16)
CROP = Crop(64, 300.0)

pytestmark = pytest.mark.usefixtures("single_thread")


def run_module(module: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def save_run(run: Path) -> Path:
    """A tiny network's checkpoint, as training writes it."""
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"step": 5, "model": build_network(TINY, crop=CROP).state_dict(),
                "config": {"model": asdict(TINY), "crop": asdict(CROP)}}, run / "checkpoints" / "step-000000005.pt")
    return run


def test_results_reproduce_the_checkpoint_evaluation(fake_nyu_dir: Path, nyu_shards_gt: Path, tmp_path: Path) -> None:
    run = save_run(tmp_path / "run")
    predicted = run_module("train.predict", "--checkpoint", run, "--depth", fake_nyu_dir / "test", "--centers",
                           nyu_shards_gt / "test", "--format", "results", "--out", tmp_path / "pred")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    evaluated = run_module("train.evaluate", "--checkpoint", run, "--data", nyu_shards_gt / "test",
                           "--out", tmp_path / "eval", "--num-workers", 0)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scored = run_module("train.evaluate", "--results", tmp_path / "pred" / "results.txt", "--labels",
                        nyu_shards_gt / "test", "--out", tmp_path / "scored")
    assert scored.returncode == 0, scored.stderr[-2000:]
    checkpoint = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    results = json.loads((tmp_path / "scored" / "metrics.json").read_text())["results"]
    assert results["frames"] == checkpoint["frames"] == 16
    assert abs(results["mean_error_mm"] - checkpoint["mean_error_mm"]) < 0.5
    for joint, error in checkpoint["per_joint_mm"].items():
        assert abs(results["per_joint_mm"][joint] - error) < 0.5, joint


def write_formats(depth: np.ndarray, directory: Path) -> list[Path]:
    """One frame as a 16-bit single-channel PNG and as .npy (mm)."""
    directory.mkdir()
    Image.fromarray(np.rint(depth).astype(np.uint16)).save(directory / "sixteen.png")
    np.save(directory / "array.npy", depth)
    return [directory / "sixteen.png", directory / "array.npy"]


def test_json_outputs_formats_and_overlay(fake_nyu_dir: Path, tmp_path: Path) -> None:
    run = save_run(tmp_path / "run")
    frame = fake_nyu_dir / "test" / "depth_1_0000003.png"
    others = write_formats(read_depth(frame), tmp_path / "formats")
    records = []
    for path in (frame, *others):
        result = run_module("train.predict", "--checkpoint", run, "--depth", path, "--out", tmp_path / "out")
        assert result.returncode == 0, result.stderr[-2000:]
        records.append(json.loads((tmp_path / "out" / f"{path.stem}.json").read_text()))
        with Image.open(tmp_path / "out" / f"{path.stem}.png") as overlay:
            assert overlay.size == (640 + 4 + 7 * 64, 480)  # the frame beside the crop scaled 7x
    first = records[0]
    for other in records[1:]:  # the same depth in every format: the same prediction
        assert np.allclose(other["spheres_mm"], first["spheres_mm"], atol=1e-4)
    spheres = np.asarray(first["spheres_mm"])
    assert spheres.shape == (41, 3) and np.asarray(first["joints_mm"]).shape == (36, 3)
    assert np.allclose(first["joints_mm"], spheres[:36])
    assert first["eval_joints"] == NYU_EVAL_JOINTS
    assert np.allclose(first["eval_uvd"], project(spheres[NYU_EVAL_JOINTS], NYU_INTRINSICS), atol=1e-6)
    assert first["hand_found"] and first["centers_mm"] == [first["center_mm"]] and first["refine"] == 0


def test_refinement_recrops_at_the_predicted_palm(fake_nyu_dir: Path, tmp_path: Path) -> None:
    net, crop, _ = load_network(save_run(tmp_path / "run"))
    depth = read_depth(fake_nyu_dir / "test" / "depth_1_0000001.png")
    start = np.array([10.0, -20.0, 780.0])
    once = predict_frame(net, crop, depth, start, NYU_INTRINSICS)
    twice = predict_frame(net, crop, depth, start, NYU_INTRINSICS, refine=2)
    assert len(twice.centers) == 3 and np.allclose(twice.centers[0], start)
    assert np.allclose(twice.centers[1], once.spheres[PALM_JOINT])  # the second crop sits on the first palm
    again = predict_frame(net, crop, depth, twice.centers[2], NYU_INTRINSICS)
    assert np.allclose(twice.spheres, again.spheres) and np.allclose(twice.center, twice.centers[2])


def test_bad_input_names_the_file(fake_nyu_dir: Path, tmp_path: Path) -> None:
    run = save_run(tmp_path / "run")
    Image.new("RGB", (320, 240)).save(tmp_path / "small.png")
    Image.new("L", (640, 480), 90).save(tmp_path / "grey.png")
    np.save(tmp_path / "metres.npy", np.full((480, 640), 0.8))  # depth in metres: nothing in range
    cases = {"small.png": "320x240", "grey.png": "mode L", "metres.npy": "no depth in 100..10000 mm"}
    for name, reason in cases.items():
        result = run_module("train.predict", "--checkpoint", run, "--depth", tmp_path / name, "--out", tmp_path / "o")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.startswith("error: ") and str(tmp_path / name) in result.stderr and reason in result.stderr
    unknown = run_module("train.predict", "--checkpoint", run, "--depth", fake_nyu_dir / "test", "--centers",
                         tmp_path / "none.json", "--out", tmp_path / "o")
    assert unknown.returncode == 2 and "none.json" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_frame_without_a_hand_is_reported_not_guessed(fake_nyu_dir: Path, tmp_path: Path) -> None:
    run = save_run(tmp_path / "run")
    frames = tmp_path / "frames"
    frames.mkdir()
    np.save(frames / "a_hand.npy", read_depth(fake_nyu_dir / "test" / "depth_1_0000002.png"))
    speck = np.zeros((480, 640))
    speck[200:204, 300:304] = 700.0  # a few pixels: nothing to centre a crop on
    np.save(frames / "b_empty.npy", speck)
    result = run_module("train.predict", "--checkpoint", run, "--depth", frames, "--out", tmp_path / "json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "b_empty.npy: no hand found" in result.stderr and "a_hand.npy" not in result.stderr
    assert json.loads((tmp_path / "json" / "b_empty.json").read_text()) == {"file": str(frames / "b_empty.npy"),
                                                                          "hand_found": False}
    assert not (tmp_path / "json" / "b_empty.png").exists() and (tmp_path / "json" / "a_hand.png").exists()
    result = run_module("train.predict", "--checkpoint", run, "--depth", frames, "--format", "results",
                        "--out", tmp_path / "res")
    lines = (tmp_path / "res" / "results.txt").read_text().splitlines()
    assert len(lines) == 2 and "nan" not in lines[0] and lines[1].split() == ["nan"] * 42
