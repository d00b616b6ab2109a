"""``python -m train.export``: the exported file, loaded without this package, gives the network's joints for any
batch size; the model card beside the checkpoint says what the run read."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry import Crop
from train.checkpoint import load_network
from train.network import NetworkConfig, build_network

REPO = Path(__file__).resolve().parents[1]
TINY = NetworkConfig(stacks=2, width=16)  # two stacks: the fed-back features are part of the graph
CROP = Crop(64, 300.0)
# TorchScript runs PyTorch's own kernels: the same numbers. onnxruntime's float32 kernels sum in another
# order; PyTorch itself moves by ~1e-3 mm between batch sizes or thread counts, so 1e-4 mm is out of reach.
TORCHSCRIPT_TOLERANCE_MM = 1e-4
ONNX_TOLERANCE_MM = 1e-2

pytestmark = pytest.mark.usefixtures("single_thread")


def export(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.export", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory, nyu_shards_gt: Path) -> Path:
    """A checkpoint of a run that read label-centred NYU shards with the supervised term on, and its evaluation."""
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    torch.manual_seed(0)
    config = {"model": asdict(TINY), "crop": asdict(CROP), "init": None,
              "data": {"real": str(nyu_shards_gt), "real_batch": 2, "synthetic": None, "synthetic_batch": 0},
              "loss": {"supervised": {"weight": 0.1, "enabled": True}}}
    torch.save({"step": 7, "model": build_network(TINY, crop=CROP).state_dict(), "config": config},
               run / "checkpoints" / "step-000000007.pt")
    metrics = {"mean_error_mm": 42.5, "frames": 16, "data": "somewhere/test", "success_at_mm": {"20": 0.1, "40": 0.5}}
    (run / "checkpoints" / "eval-step-000000007").mkdir()
    (run / "checkpoints" / "eval-step-000000007" / "metrics.json").write_text(json.dumps(metrics))
    return run


def reference(run: Path, depth: np.ndarray) -> np.ndarray:
    net, _, _ = load_network(run)
    with torch.no_grad():
        return net(torch.from_numpy(depth)).joints.numpy()


def crops(batch: int, seed: int) -> np.ndarray:
    """Crop-like depth: a blob in front of the background, mm."""
    rng = np.random.default_rng(seed)
    depth = np.full((batch, 1, 64, 64), CROP.background_depth, np.float32)
    depth[:, :, 16:48, 20:44] = rng.uniform(-60, 40, (batch, 1, 32, 24))
    return depth


def test_torchscript_round_trip(run: Path, tmp_path: Path) -> None:
    result = export("--checkpoint", run, "--format", "torchscript", "--out", tmp_path / "hand.pt")
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = torch.jit.load(str(tmp_path / "hand.pt"))
    for batch in (1, 3):
        depth = crops(batch, batch)
        with torch.no_grad():
            joints = loaded(torch.from_numpy(depth)).numpy()
        assert joints.shape == (batch, 41, 3)
        assert np.abs(joints - reference(run, depth)).max() < TORCHSCRIPT_TOLERANCE_MM


def test_onnx_round_trip(run: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    result = export("--checkpoint", run, "--format", "onnx", "--out", tmp_path / "hand.onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    session = onnxruntime.InferenceSession(str(tmp_path / "hand.onnx"))
    assert [i.name for i in session.get_inputs()] == ["depth"] and [o.name for o in session.get_outputs()] == ["joints"]
    for batch in (1, 3):
        depth = crops(batch, 10 + batch)
        joints = session.run(None, {"depth": depth})[0]
        assert joints.shape == (batch, 41, 3)
        assert np.abs(joints - reference(run, depth)).max() < ONNX_TOLERANCE_MM


def test_model_card_beside_checkpoint_and_export(run: Path, nyu_shards_gt: Path, tmp_path: Path) -> None:
    result = export("--checkpoint", run, "--format", "torchscript", "--out", tmp_path / "ship" / "hand.pt")
    assert result.returncode == 0, result.stderr[-2000:]
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    assert (tmp_path / "ship" / "hand.MODEL_CARD.md").read_text() == card
    for split in ("train", "test"):
        digest = hashlib.sha256((nyu_shards_gt / split / "manifest.json").read_bytes()).hexdigest()
        assert digest in card, split
    assert "training steps: 7" in card and "42.50 mm" in card and "center=gt" in card
    assert "its **labels** (palm joint 32)" in card and "fitted per frame to the train split's **labels**" in card
    assert "Supervised term (real train **labels** as targets): **on**" in card
    for section in ("## Intended use", "## Known limits", "## Config"):
        assert section in card


def test_bad_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = export("--checkpoint", tmp_path / "junk.pt", "--format", "onnx", "--out", tmp_path / "x.onnx")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "junk.pt" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.onnx").exists()
