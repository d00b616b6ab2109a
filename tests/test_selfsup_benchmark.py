"""The comparison of benchmarks/selfsup.py at its reduced size (``--quick``, one seed): every stage runs as
users run it (fake NYU -> shards -> torchrun pretraining -> fitted pseudo-labels -> three torchrun
fine-tunings -> evaluation), and the figures that make the method's case come out right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_comparison(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "selfsup.py"), "--quick", "--seeds", "1", "--json",
         "--work", str(tmp_path / "work"), "--notes", str(tmp_path / "selfsup.md"),
         "--results", str(tmp_path / "selfsup.json")],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])["seeds"][0]
    fits = row["pseudo_labels"]
    # Fusing the views and fitting them to the depth bring the pretrained network's guesses closer to
    # the (unread) labels: the pseudo-labels carry information that the network alone does not.
    assert fits["fused"] < fits["network"] and fits["fitted"] < fits["network"], fits
    # Labels are the upper bound; training on the pseudo-labels beats continued synthetic-only training on
    # the validation split of train frames (where the settings were chosen).
    assert row["supervised"]["val"] < row["synthetic_only"]["val"], row
    assert row["self_supervised"]["val"] < row["synthetic_only"]["val"], row
    assert "| mean ± sd |" in (tmp_path / "selfsup.md").read_text()
    recorded = json.loads((tmp_path / "selfsup.json").read_text())
    assert recorded["seeds"][0] == row and recorded["gap_share"] == recorded["summary"]["gap_share"]


def load_benchmark(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import selfsup
    return selfsup


def test_pretraining_keeps_and_evaluates_every_curve_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    commands = []
    monkeypatch.setattr(selfsup, "python", lambda *args, log=None: commands.append(args))
    selfsup.train("configs/synthetic-cpu.yaml", tmp_path / "curve", 1000, ["run.seed=0"], 300)
    selfsup.train("configs/synthetic-cpu.yaml", tmp_path / "plain", 1500, ["run.seed=0"])
    # Checkpoints at 300, 600, 900 and the last step, all kept and evaluated; without a curve, only the last.
    assert {"checkpoint.every=300", "checkpoint.keep=4", "eval.every=300"} <= set(commands[0]), commands[0]
    assert {"checkpoint.every=1500", "checkpoint.keep=1", "eval.every=1500"} <= set(commands[1]), commands[1]


def test_pretraining_curve_reads_each_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    run = tmp_path / "synthetic"
    (run / "checkpoints").mkdir(parents=True)
    records = []
    for step, val, synthetic in ((500, 40.0, 30.0), (1000, 35.0, 25.0)):
        (run / "checkpoints" / f"step-{step:09d}.pt").touch()
        (run / f"eval-val-step-{step}").mkdir()
        (run / f"eval-val-step-{step}" / "metrics.json").write_text(json.dumps({"mean_error_mm": val}))
        records.append(json.dumps({"step": step, "eval/synthetic/mean_error_mm": synthetic}))
    (run / "metrics.jsonl").write_text("\n".join([json.dumps({"step": 50, "loss": 1.0}), *records]) + "\n")
    assert selfsup.pretraining_curve(run, tmp_path / "val") == [
        {"step": 500, "val": 40.0, "synthetic": 30.0}, {"step": 1000, "val": 35.0, "synthetic": 25.0}]
    assert selfsup.synthetic_error(run) == 25.0


@pytest.mark.parametrize("option", [["--pretrain-steps", "0"], ["--curve-every", "-1"]])
def test_bad_lengths_are_refused(option: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "selfsup.py"), *option, "--work",
                             str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"error: {' '.join(option)}" in result.stderr, result.stderr
    assert not (tmp_path / "work").exists()


def test_audit_splits_each_joint_by_visibility(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import numpy as np

    selfsup = load_benchmark(monkeypatch)
    (tmp_path / "fitted" / "train").mkdir(parents=True)
    (tmp_path / "raw").mkdir()
    frames, joints = np.array([2, 1]), 14
    fitted = np.tile([[10.0], [30.0]], (1, joints))  # frame 2: 10 mm everywhere, frame 1: 30 mm
    kept = np.array([[True] * joints, [False] * joints])
    np.savez(tmp_path / "fitted" / "train" / "label_errors.npz", frame=frames, network=fitted + 5, fused=fitted + 1,
             fitted=fitted, kept=kept)
    visible = np.zeros((3, 2, 36), bool)
    visible[0, 1] = True  # frame 2 (index 1) sees every joint in view 1; frame 1 none
    np.savez(tmp_path / "raw" / "fake_nyu.npz", train_visible=visible)
    rows = selfsup.audit_pseudo_labels(tmp_path / "fitted", tmp_path / "raw")
    first = next(iter(rows.values()))
    assert len(rows) == joints
    assert first["visible"] == {"frames": 1, "network": 15.0, "fused": 11.0, "fitted": 10.0, "kept": 1.0}
    assert first["occluded"] == {"frames": 1, "network": 35.0, "fused": 31.0, "fitted": 30.0, "kept": 0.0}
