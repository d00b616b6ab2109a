"""The field's NYU results format: export from a checkpoint, labels of a split, scoring the community's way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from conftest import REPO, run_shards
from fileio import sha256_file
from shards.format import ShardRecord, encode_sample, shard_name, write_manifest, write_tar
from shards.nyu import nyu_xyz_to_camera
from shards.nyu_protocol import NYU_EVAL_JOINTS, NYU_INTRINSICS, camera_to_uvd, read_results, uvd_to_xyz, write_results
from tests.test_evaluate import CROP, CUBE, SIZE, TINY, save_checkpoint
from train.evaluate import main
from train.network import build_network

pytestmark = pytest.mark.usefixtures("single_thread")


def community_xyz(uvd: np.ndarray) -> np.ndarray:
    """The community's conversion, written out: fx 588.03, fy -587.07 (y up), cx 320, cy 240."""
    u, v, d = uvd[..., 0], uvd[..., 1], uvd[..., 2]
    return np.stack([(u - 320.0) * d / 588.03, (v - 240.0) * d / -587.07, d], axis=-1)


def community_mean_error(results: Path, labels: Path) -> float:
    """Score a results file as the field's scripts do: loadtxt, uvd -> xyz, mean Euclidean error."""
    predicted = np.loadtxt(results).reshape(-1, 14, 3)
    truth = np.loadtxt(labels).reshape(-1, 14, 3)
    return float(np.linalg.norm(community_xyz(predicted) - community_xyz(truth), axis=-1).mean())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("ckpt") / "step-7.pt"
    save_checkpoint(path, build_network(TINY, crop=CROP), TINY)
    return path


def evaluate_cli(*args: str) -> None:
    main([*map(str, args), "--batch-size", "5", "--num-workers", "0", "--device", "cpu"])


def test_export_then_score_gives_the_checkpoint_evaluation(nyu_shards_gt: Path, checkpoint: Path,
                                                           tmp_path: Path, capsys) -> None:
    test = nyu_shards_gt / "test"
    exported = tmp_path / "ours.txt"
    evaluate_cli("--checkpoint", checkpoint, "--data", test, "--out", tmp_path / "eval", "--export-results", exported)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "incomplete" not in capsys.readouterr().err
    lines = exported.read_text().splitlines()
    assert len(lines) == evaluated["frames"] == 16 and all(len(line.split()) == 42 for line in lines)

    evaluate_cli("--results", exported, "--labels", test, "--out", tmp_path / "scored")  # labels from the shards
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())["ours"]
    assert scored["mean_error_mm"] == pytest.approx(evaluated["mean_error_mm"], abs=0.01)
    assert scored["frames"] == 16
    assert list(scored["per_joint_mm"].values()) == pytest.approx(list(evaluated["per_joint_mm"].values()), abs=0.01)

    labels = tmp_path / "labels.txt"
    run_shards("labels", test, "--out", labels)
    assert community_mean_error(exported, labels) == pytest.approx(evaluated["mean_error_mm"], abs=0.01)
    evaluate_cli("--results", exported, "--labels", labels, "--out", tmp_path / "scored-file")
    from_file = json.loads((tmp_path / "scored-file" / "metrics.json").read_text())["ours"]
    assert from_file["mean_error_mm"] == pytest.approx(evaluated["mean_error_mm"], abs=0.01)


def test_labels_are_nyu_joint_uvd_of_view_1(nyu_shards_gt: Path, fake_nyu_dir: Path, tmp_path: Path) -> None:
    """``shards labels`` reproduces the ``joint_uvd`` NYU ships (view 1, the 14 joints, frame order)."""
    labels = tmp_path / "labels.txt"
    run_shards("labels", nyu_shards_gt / "test", "--out", labels)
    shipped = scipy.io.loadmat(str(fake_nyu_dir / "test" / "joint_data.mat"))["joint_uvd"][0][:, NYU_EVAL_JOINTS]
    np.testing.assert_allclose(read_results(labels), shipped, atol=2e-3)
    shipped_xyz = scipy.io.loadmat(str(fake_nyu_dir / "test" / "joint_data.mat"))["joint_xyz"][0][:, NYU_EVAL_JOINTS]
    np.testing.assert_allclose(uvd_to_xyz(read_results(labels)), shipped_xyz, atol=2e-3)  # y up, as NYU's xyz


def test_coordinate_conventions_with_known_xyz(tmp_path: Path) -> None:
    """Known NYU xyz (y up): the file's u v d by hand, the community's xyz back, errors in mm."""
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-120, -90, 600], [120, 90, 900], (6, 14, 3))  # NYU's joint_xyz convention, y up
    xyz[0, 0] = [0.0, 100.0, 800.0]  # straight above the optical axis: v must be above the image centre
    uvd = camera_to_uvd(nyu_xyz_to_camera(xyz))  # our path: flip to y down, project with NYU's intrinsics
    by_hand = np.stack([588.03 * xyz[..., 0] / xyz[..., 2] + 320, 240 - 587.07 * xyz[..., 1] / xyz[..., 2],
                        xyz[..., 2]], axis=-1)
    np.testing.assert_allclose(uvd, by_hand, atol=1e-9)
    assert uvd[0, 0, 0] == pytest.approx(320) and uvd[0, 0, 1] == pytest.approx(240 - 587.07 * 100 / 800)
    np.testing.assert_allclose(uvd_to_xyz(uvd), xyz, atol=1e-9)
    np.testing.assert_allclose(community_xyz(uvd), xyz, atol=1e-9)

    labels, results = tmp_path / "labels.txt", tmp_path / "shifted.txt"
    write_results(labels, uvd)
    shift = np.array([6.0, -8.0, 0.0])  # 10 mm in the image plane
    write_results(results, camera_to_uvd(nyu_xyz_to_camera(xyz) + shift))
    np.testing.assert_allclose(read_results(labels), uvd, atol=1e-4)
    main(["--results", str(results), "--labels", str(labels), "--out", str(tmp_path / "out")])
    scored = json.loads((tmp_path / "out" / "metrics.json").read_text())["shifted"]
    assert scored["mean_error_mm"] == pytest.approx(10.0, abs=1e-3) and scored["frames"] == 6
    assert community_mean_error(results, labels) == pytest.approx(10.0, abs=1e-3)


def write_split(directory: Path, frames: list[int], skipped: list[int], seed: int = 0) -> None:
    """An NYU shard split by hand: view-1 joints near a known centre, a manifest listing skipped frames."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    samples = []
    for frame in frames:
        center = [rng.uniform(-50, 50), rng.uniform(-50, 50), rng.uniform(650, 850)]
        samples.append((f"{frame:07d}", encode_sample({
            "depth.npy": rng.uniform(-50, 150, (3, SIZE, SIZE)).astype(np.float32),
            "joints.npy": rng.normal(0, 40, (3, 36, 3)).astype(np.float32),
            "cams.npy": np.tile(np.eye(4, dtype=np.float32), (3, 1, 1)),
            "meta.json": {"frame": frame, "split": "test", "centers": [center] * 3,
                          "intrinsics": NYU_INTRINSICS.to_dict(), "size": SIZE, "cube": CUBE}})))
    path = directory / shard_name(0)
    write_tar(path, samples)
    skipped_items = [{"frame": f, "path": f"depth_1_{f:07d}.png", "reason": "missing"} for f in skipped]
    write_manifest(directory, kind="nyu", keys=("depth.npy", "joints.npy", "cams.npy", "meta.json"),
                   records=[ShardRecord(name=path.name, samples=len(frames), sha256=sha256_file(path),
                                        skipped=skipped_items)],
                   args={"size": SIZE, "cube": CUBE})


def test_skipped_frames_get_nan_lines_and_a_warning(checkpoint: Path, tmp_path: Path, capsys) -> None:
    split = tmp_path / "test"
    write_split(split, frames=[1, 2, 4, 5], skipped=[3, 6])
    exported = tmp_path / "ours.txt"
    evaluate_cli("--checkpoint", checkpoint, "--data", split, "--out", tmp_path / "eval", "--export-results", exported)
    err = capsys.readouterr().err
    assert "incomplete" in err and "2 of 6 frames" in err and "3, 6" in err
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    lines = exported.read_text().splitlines()
    assert len(lines) == 6 and lines[2].split() == ["nan"] * 42 and lines[5].split() == ["nan"] * 42
    assert "nan" not in lines[0] + lines[3]

    labels = tmp_path / "labels.txt"
    result = run_shards("labels", split, "--out", labels)
    assert "incomplete" in result.stderr
    assert np.isnan(read_results(labels)[[2, 5]]).all() and not np.isnan(read_results(labels)[[0, 1, 3, 4]]).any()
    for source in (split, labels):
        evaluate_cli("--results", exported, "--labels", source, "--out", tmp_path / "scored")
        scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())["ours"]
        assert scored["frames"] == 4
        assert scored["mean_error_mm"] == pytest.approx(evaluated["mean_error_mm"], abs=0.01)
        assert "scored on the 4 labelled frames" in capsys.readouterr().err


def test_overlay_plot_holds_every_method(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(2)
    xyz = rng.uniform([-120, -90, 600], [120, 90, 900], (30, 14, 3))
    labels = tmp_path / "labels.txt"
    write_results(labels, camera_to_uvd(xyz))
    files = []
    for index, noise in enumerate((4.0, 12.0)):
        files.append(tmp_path / f"method{index}.txt")
        write_results(files[-1], camera_to_uvd(xyz + rng.normal(0, noise, xyz.shape)))
    drawn: dict[str, list] = {}
    save = Figure.savefig

    def record(figure, path, **kwargs):
        axes = figure.axes[0]
        drawn[Path(path).name] = [text.get_text() for text in axes.get_legend().get_texts()]
        return save(figure, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    main(["--results", *map(str, files), "--labels", str(labels), "--out", str(tmp_path / "cmp"),
          "--names", "DeepPrior++", "V2V-PoseNet"])
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert list(metrics) == ["DeepPrior++", "V2V-PoseNet"]
    assert metrics["DeepPrior++"]["mean_error_mm"] < metrics["V2V-PoseNet"]["mean_error_mm"]
    for name in metrics:
        direct = community_mean_error(files[list(metrics).index(name)], labels)
        assert metrics[name]["mean_error_mm"] == pytest.approx(direct, abs=1e-3)
        curve = metrics[name]["success_curve"]
        assert len(curve["threshold_mm"]) == len(curve["fraction_below"]) == 81 and len(metrics[name]["per_joint_mm"]) == 14
    for name in ("success_curve.png", "per_joint_error.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:4] == b"\x89PNG"
        assert [label.split(" (")[0] for label in drawn[name]] == ["DeepPrior++", "V2V-PoseNet"]


def bad_file(tmp_path: Path, name: str, edit) -> Path:
    lines = [" ".join(["1.5"] * 42)] * 5
    lines = edit(lines)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name, edit, message", [
    ("columns.txt", lambda ls: ls[:2] + [" ".join(["1.5"] * 41)] + ls[3:], "columns.txt: line 3: 41 values, expected 42"),
    ("joints.txt", lambda ls: ls[:3] + [" ".join(["1.5"] * 48)] + ls[4:], "joints.txt: line 4: 48 values, expected 42"),
    ("nan.txt", lambda ls: ls[:1] + [" ".join(["1.5"] * 7 + ["nan"] + ["1.5"] * 34)] + ls[2:], "nan.txt: line 2: nan at joint 3"),
    ("word.txt", lambda ls: ls[:4] + [" ".join(["1.5"] * 41 + ["x1"])], "word.txt: line 5: 'x1' is not a number"),
    ("short.txt", lambda ls: ls[:4], "short.txt: 4 lines, but the labels"),
    ("long.txt", lambda ls: ls + ls[:1], "long.txt: 6 lines"),
    ("missing.txt", lambda ls: ls[:1] + [" ".join(["nan"] * 42)] + ls[2:], "missing.txt: line 2: nan, but that frame"),
])
def test_bad_results_files_exit_2_naming_file_and_line(tmp_path: Path, capsys, name, edit, message) -> None:
    labels = bad_file(tmp_path, "labels.txt", lambda ls: ls)
    results = bad_file(tmp_path, name, edit)
    with pytest.raises(SystemExit) as exited:
        main(["--results", str(results), "--labels", str(labels), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_labels_and_arguments_exit_2_without_traceback(tmp_path: Path) -> None:
    results = bad_file(tmp_path, "ours.txt", lambda ls: ls)
    labels = bad_file(tmp_path, "labels.txt", lambda ls: ls[:2] + [" ".join(["1.5"] * 40)] + ls[3:])
    run = subprocess.run([sys.executable, "-m", "train.evaluate", "--results", str(results), "--labels", str(labels),
                          "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "labels.txt: line 3: 40 values" in run.stderr
    for argv in (["--results", str(results), "--out", str(tmp_path)],  # no labels
                 ["--results", str(results), results, "--labels", str(results), "--out", str(tmp_path)],
                 ["--results", str(results), "--labels", str(results), "--out", str(tmp_path), "--names", "a", "b"]):
        with pytest.raises(SystemExit) as exited:
            main(list(map(str, argv)))
        assert exited.value.code == 2


PUBLISHED = {"ICCVW17_NYU_DeepPrior++.txt": 12.24, "CVPR18_NYU_V2V_PoseNet.txt": 8.42}


@pytest.mark.skipif(not os.environ.get("NYU_PUBLISHED_RESULTS"),
                    reason="NYU_PUBLISHED_RESULTS names no checkout of awesome-hand-pose-estimation/evaluation")
def test_published_files_score_to_the_community_figures(tmp_path: Path) -> None:
    """With the field's evaluation collection at hand: its files score to the figures papers quote."""
    root = Path(os.environ["NYU_PUBLISHED_RESULTS"])
    main(["--results", *(str(root / "results" / "nyu" / name) for name in PUBLISHED),
          "--labels", str(root / "groundtruth" / "nyu" / "nyu_test_groundtruth_label.txt"), "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name, figure in PUBLISHED.items():
        assert metrics[Path(name).stem]["frames"] == 8252
        assert metrics[Path(name).stem]["mean_error_mm"] == pytest.approx(figure, abs=0.005)
