"""``python -m train.report``: runs side by side on a test split, with the mean-pose yardstick."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from geometry import Crop
from shards.nyu_protocol import NYU_EVAL_JOINTS
from shards.reader import make_loader
from train.network import NetworkConfig, build_network

REPO = Path(__file__).resolve().parents[1]
TINY = NetworkConfig(stacks=1, width=16)


def view1_joints(split: Path) -> np.ndarray:
    batches = make_loader(split, batch_size=64, batches_per_epoch=None, num_workers=0, resampled=False)
    return np.concatenate([b["joints"][:, 0].double().numpy() for b in batches])


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def save_run(run: Path, crop: Crop = Crop(64, 300.0)) -> None:
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"step": 5, "model": build_network(TINY, crop=crop).state_dict(),
                "config": {"model": asdict(TINY), "crop": asdict(crop)}}, run / "checkpoints" / "step-000000005.pt")


def test_report_rows_files_and_the_mean_pose(nyu_shards_gt: Path, tmp_path: Path) -> None:
    save_run(tmp_path / "run")
    result = report("--data", str(nyu_shards_gt), "--run", f"untrained={tmp_path / 'run'}", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["mean_pose", "untrained"]
    assert set(results["untrained"]) == {"mean_error_mm", "success_at_20mm", "success_at_40mm", "frames"}
    # The yardstick, recomputed: the train split's mean view-1 joints predicted for every test frame.
    train, test = view1_joints(nyu_shards_gt / "train"), view1_joints(nyu_shards_gt / "test")
    expected = np.linalg.norm(train.mean(axis=0)[NYU_EVAL_JOINTS] - test[:, NYU_EVAL_JOINTS], axis=-1).mean()
    assert abs(results["mean_pose"]["mean_error_mm"] - expected) < 1e-6
    assert results["mean_pose"]["frames"] == len(test)
    assert results["untrained"]["mean_error_mm"] > results["mean_pose"]["mean_error_mm"]  # it sees nothing yet
    for name in ("report.md", "success_curves.png", "eval-untrained/metrics.json", "eval-mean_pose/success_curve.csv"):
        assert (tmp_path / name).is_file(), name
    assert "| untrained |" in (tmp_path / "report.md").read_text() and "| untrained |" in result.stdout
    card = (tmp_path / "run" / "checkpoints" / "MODEL_CARD.md").read_text()  # beside the run's final checkpoint
    assert f"{results['untrained']['mean_error_mm']:.2f} mm** over {len(test)} frames" in card


def test_report_refuses_bad_runs(nyu_shards_gt: Path, tmp_path: Path) -> None:
    missing = report("--data", str(nyu_shards_gt), "--run", f"x={tmp_path / 'nothing'}", "--out", str(tmp_path))
    assert missing.returncode == 2 and "nothing" in missing.stderr and "Traceback" not in missing.stderr
    malformed = report("--data", str(nyu_shards_gt), "--run", "no-equals-sign", "--out", str(tmp_path))
    assert malformed.returncode == 2 and "NAME=" in malformed.stderr
    save_run(tmp_path / "other-crop", Crop(64, 250.0))
    other = report("--data", str(nyu_shards_gt), "--run", f"x={tmp_path / 'other-crop'}", "--out", str(tmp_path))
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "cut at 64 px / 300 mm" in other.stderr and "uses 64 px / 250 mm" in other.stderr
