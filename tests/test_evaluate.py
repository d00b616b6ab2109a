"""Evaluation: metrics against a direct numpy computation, checkpoint loading, the CLI's outputs."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry import Crop
from hand import NYU_JOINT_NAMES
from shards.format import encode_sample, shard_name, write_tar
from shards.reader import make_loader
from shards.nyu_protocol import NYU_EVAL_JOINTS
from train.checkpoint import load_network, resolve_checkpoint
from train.evaluate import main
from train.predictions import collect_errors
from train.scores import CURVE_THRESHOLDS_MM, FrameErrors, compute_metrics, joint_errors, success_curve
from train.monitor import Evaluator
from train.network import NetworkConfig, build_network

CROP = Crop(64, 300.0)
SIZE, CUBE = CROP.size, CROP.cube_mm
TINY = NetworkConfig(stacks=1, width=16)
NAMES = [NYU_JOINT_NAMES[i] for i in NYU_EVAL_JOINTS]


pytestmark = pytest.mark.usefixtures("single_thread")


def test_metrics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 50, (5, 36, 3))
    predicted = np.concatenate([truth + rng.normal(0, 8, truth.shape), rng.normal(0, 50, (5, 5, 3))], axis=1)
    errors = joint_errors(predicted, truth, NYU_EVAL_JOINTS)
    frames = np.array([1, 2440, 2441, 8252, 17])
    metrics = compute_metrics(FrameErrors(errors, frames, ["test", "test", "test", "test", "train"]), NAMES)

    direct = np.array([[np.sqrt(((predicted[n, j] - truth[n, j]) ** 2).sum()) for j in NYU_EVAL_JOINTS]
                       for n in range(5)])
    assert metrics["mean_error_mm"] == pytest.approx(direct.mean())
    assert list(metrics["per_joint_mm"].values()) == pytest.approx(list(direct.mean(axis=0)))
    assert metrics["frames"] == 5
    assert metrics["per_subject"]["1"] == {"mean_error_mm": pytest.approx(direct[:2].mean()), "frames": 2}
    assert metrics["per_subject"]["2"] == {"mean_error_mm": pytest.approx(direct[2:4].mean()), "frames": 2}
    assert set(metrics["per_subject"]) == {"1", "2"}  # the train-split frame belongs to no test subject
    json.dumps(metrics)  # plain values only


def test_success_curve_is_monotone_fraction_of_worst_joint() -> None:
    rng = np.random.default_rng(1)
    errors = rng.gamma(2.0, 8.0, (200, 14))
    curve = success_curve(errors)
    assert curve.shape == CURVE_THRESHOLDS_MM.shape and curve[0] == 0.0
    assert np.all(np.diff(curve) >= 0) and 0 <= curve.min() and curve.max() <= 1
    assert curve[40] == pytest.approx(np.mean(errors.max(axis=1) < 40))


def nyu_batches(frames: list[int], batch_size: int, seed: int = 0) -> list[dict]:
    """Hand-made NYU-format batches (the reader's layout) with random depth and joints."""
    rng = np.random.default_rng(seed)
    batches = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        batches.append({
            "depth": torch.from_numpy(rng.uniform(-50, 150, (len(chunk), 3, SIZE, SIZE)).astype(np.float32)),
            "joints": torch.from_numpy(rng.normal(0, 40, (len(chunk), 3, 36, 3)).astype(np.float32)),
            "cams": torch.eye(4).repeat(len(chunk), 3, 1, 1),
            "meta": [{"frame": f, "split": "test"} for f in chunk],
        })
    return batches


def test_evaluate_runs_view_1_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    net = build_network(TINY, crop=CROP).train()
    batches = nyu_batches([1, 2, 3, 2500, 2501], batch_size=2)
    metrics = compute_metrics(collect_errors(net, batches, device="cpu"))
    assert net.training
    net.eval()
    with torch.no_grad():
        expected = np.concatenate([
            joint_errors(net(b["depth"][:, :1]).joints.numpy(), b["joints"][:, 0].numpy(), NYU_EVAL_JOINTS)
            for b in batches])
    assert metrics["frames"] == 5
    assert metrics["mean_error_mm"] == pytest.approx(expected.mean(), rel=1e-5)
    assert metrics["per_subject"]["2"]["frames"] == 2
    assert collect_errors(net, batches, max_batches=1).errors.shape == (2, 14)
    with pytest.raises(ValueError, match="no frames"):
        compute_metrics(collect_errors(net, []))


def save_checkpoint(path: Path, net: torch.nn.Module, cfg: NetworkConfig, crop: Crop = CROP) -> None:
    """A checkpoint in the contract's format (only what evaluation reads, plus a step)."""
    torch.save({"step": 7, "model": net.state_dict(), "config": {"model": asdict(cfg), "crop": asdict(crop)}}, path)


def test_load_network_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build_network(TINY, crop=CROP).eval()
    path = tmp_path / "step-7.pt"
    save_checkpoint(path, net, TINY)
    loaded, crop, config = load_network(path)
    assert crop == CROP and config["crop"]["size"] == SIZE and not loaded.training
    x = torch.rand(2, 1, SIZE, SIZE) * 100
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).joints, net(x).joints)

    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_network(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_network(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(ValueError, match="other.pt.*not a training checkpoint"):
        load_network(other)
    wrapped = tmp_path / "wrapped.pt"  # a DDP- and torch.compile-wrapped state_dict loads the same
    # A checkpoint made before the crop section existed names its crop as data.size / data.cube.
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()},
                "config": {"model": asdict(TINY), "data": {"size": SIZE, "cube": CUBE}}}, wrapped)
    with torch.no_grad():
        torch.testing.assert_close(load_network(wrapped)[0](x).joints, net(x).joints)
    assert load_network(wrapped)[1] == CROP
    wider = tmp_path / "wider.pt"
    save_checkpoint(wider, net, NetworkConfig(stacks=1, width=32))
    with pytest.raises(ValueError, match="wider.pt.*do not fit"):
        load_network(wider)
    unknown = tmp_path / "unknown.pt"
    torch.save({"model": {}, "config": {"model": {"stacks": 1, "colour": 3}, "data": {"size": 64, "cube": 300}}},
               unknown)
    with pytest.raises(ValueError, match="colour"):
        load_network(unknown)


def write_nyu_shards(directory: Path, frames: list[int]) -> None:
    """A tiny NYU split dir in the shard format (two shards)."""
    directory.mkdir(parents=True)
    batch = nyu_batches(frames, batch_size=len(frames), seed=3)[0]
    half = len(frames) // 2
    for index, part in enumerate([range(0, half), range(half, len(frames))]):
        samples = [(f"{frames[i]:07d}", encode_sample({
            "depth.npy": batch["depth"][i].numpy(), "joints.npy": batch["joints"][i].numpy(),
            "cams.npy": batch["cams"][i].numpy(),
            "meta.json": {"frame": frames[i], "split": "test", "size": SIZE, "cube": CUBE}})) for i in part]
        write_tar(directory / shard_name(index), samples)


def test_cli_writes_metrics_and_success_curve(tmp_path: Path) -> None:
    net = build_network(TINY, crop=CROP)
    checkpoint = tmp_path / "step-7.pt"
    save_checkpoint(checkpoint, net, TINY)
    write_nyu_shards(tmp_path / "test", [5, 6, 7, 3000, 3001])
    out = tmp_path / "eval"
    main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "test"), "--out", str(out),
          "--batch-size", "2", "--num-workers", "0", "--device", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 5 and set(metrics["per_subject"]) == {"1", "2"}
    assert len(metrics["per_joint_mm"]) == 14 and metrics["mean_error_mm"] > 0
    with open(out / "success_curve.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["threshold_mm", "fraction_below"] and len(rows) == 82
    fractions = [float(r[1]) for r in rows[1:]]
    assert fractions == sorted(fractions)
    worst = np.array(sorted(metrics_worst(checkpoint, tmp_path / "test")))
    for threshold, fraction in ((float(r[0]), float(r[1])) for r in rows[1:]):  # strictly below
        assert fraction == pytest.approx(np.mean(worst < threshold), abs=1e-6)
    assert (out / "success_curve.png").read_bytes()[:4] == b"\x89PNG"


def metrics_worst(checkpoint: Path, data: Path) -> list[float]:
    """Each frame's maximum joint error, computed here from the network and the shards."""
    net, _, _ = load_network(checkpoint)
    loader = make_loader(data, batch_size=5, batches_per_epoch=None, num_workers=0, resampled=False)
    return collect_errors(net, loader).errors.max(axis=1).tolist()


def test_monitor_logs_evaluate_metrics_under_its_tags(tmp_path: Path) -> None:
    """The training monitor reports what ``evaluate`` computes, under eval/real/... and eval/synthetic/..."""
    torch.manual_seed(2)
    net = build_network(TINY, crop=CROP)
    write_nyu_shards(tmp_path / "nyu" / "test", [5, 6, 7, 3000, 3001])
    depth = torch.rand(3, 1, SIZE, SIZE) * 100
    keypoints = torch.randn(3, 41, 3) * 30
    evaluator = Evaluator(real_root=str(tmp_path / "nyu"), synthetic=(depth, keypoints), batch_size=2,
                          real_batches=None, num_workers=0, device=torch.device("cpu"), rank=0, world_size=1)
    values = evaluator(net)
    loader = make_loader(tmp_path / "nyu" / "test", batch_size=2, batches_per_epoch=None, num_workers=0,
                         resampled=False)
    expected = compute_metrics(collect_errors(net, loader))
    assert values["eval/real/mean_error_mm"] == pytest.approx(expected["mean_error_mm"])
    assert values["eval/mean_error_mm"] == values["eval/real/mean_error_mm"]
    assert values["eval/real/frames"] == 5 and values["eval/real/subject2/mean_error_mm"] > 0
    assert values["eval/real/success_at_80mm"] == pytest.approx(expected["success_at_mm"]["80"])
    assert values["eval/real/max_error_mean_mm"] == pytest.approx(expected["max_error_mean_mm"])
    with torch.no_grad():
        predicted = net.eval()(depth).joints
    direct = (predicted[:, NYU_EVAL_JOINTS] - keypoints[:, NYU_EVAL_JOINTS]).norm(dim=-1).mean()
    assert values["eval/synthetic/mean_error_mm"] == pytest.approx(float(direct), rel=1e-5)


def test_run_dir_resolves_to_its_newest_checkpoint(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for step in (3, 12):
        save_checkpoint(checkpoints / f"step-{step:09d}.pt", build_network(TINY, crop=CROP), TINY)
    (checkpoints / ".step-000000020.pt.tmp.1").write_bytes(b"partial")  # an unfinished write is no checkpoint
    assert resolve_checkpoint(tmp_path / "run") == checkpoints / "step-000000012.pt"
    assert resolve_checkpoint(checkpoints) == checkpoints / "step-000000012.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)


def test_cli_bad_inputs_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = tmp_path / "step-7.pt"
    save_checkpoint(checkpoint, build_network(TINY, crop=CROP), TINY)
    for argv, named in ((["--checkpoint", str(tmp_path / "absent.pt"), "--data", str(tmp_path)], "absent.pt"),
                        (["--checkpoint", str(checkpoint), "--data", str(tmp_path / "nodata")], "nodata")):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--num-workers", "0", "--device", "cpu"])
        assert exited.value.code == 2
        assert named in capsys.readouterr().err


def test_a_checkpoint_of_another_crop_is_refused_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Weights trained at one cube decode joints in another cube's millimetres without any shape error."""
    checkpoint = tmp_path / "step-7.pt"
    save_checkpoint(checkpoint, build_network(TINY, crop=Crop(64, 250.0)), TINY, crop=Crop(64, 250.0))
    write_nyu_shards(tmp_path / "test", [5, 6])
    with pytest.raises(SystemExit) as exited:
        main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "test"), "--num-workers", "0",
              "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cut at 64 px / 300 mm" in error and "uses 64 px / 250 mm" in error
    assert not (tmp_path / "eval").exists()
