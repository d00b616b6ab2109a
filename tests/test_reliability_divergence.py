"""The divergence guard (issue 20): a non-finite loss never reaches the weights or a checkpoint; stop exits 3
within 2 steps naming the step and the terms; skip drops the update, counts it and completes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_reliability_config import CI, ROOT, TINY, train
from train.checkpoint import CheckpointError, list_checkpoints, load_network, read_checkpoint
from train.config import load_config, validate
from train.distributed import DistEnv
from train.loop import Trainer
from train.run import setup_run


def test_nan_run_stops_within_two_steps_and_keeps_the_last_finite_checkpoint(synthetic_shards, tmp_path):
    run_dir = tmp_path / "nan"
    result = train(run_dir, synthetic_shards, "optim.lr=1e9", "run.steps=20")
    assert result.returncode == 3, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    match = re.fullmatch(r"error: training diverged at step (\d+): non-finite (.+) \(optim.on_nonfinite=stop\).*", error[0])
    assert match and "synthetic_heatmap" in match[2], error
    assert "Traceback" not in result.stderr
    first_nonfinite = int(match[1])
    saved = list_checkpoints(run_dir / "checkpoints")
    newest_step, newest = saved[-1]
    assert first_nonfinite - 2 <= newest_step <= first_nonfinite  # stopped at once, the good one kept
    assert all(torch.isfinite(v).all() for v in read_checkpoint(newest)["model"].values())
    load_network(run_dir)  # loadable: evaluate, report and init take it


def test_a_checkpoint_with_nonfinite_weights_is_refused_by_init_and_evaluate(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, synthetic_shards, "run.steps=1").returncode == 0
    path = list_checkpoints(run_dir / "checkpoints")[-1][1]
    payload = torch.load(path, weights_only=True)
    first = next(iter(payload["model"]))
    payload["model"][first] = payload["model"][first] * float("nan")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"holds non-finite weights \\({first}\\)"):
        load_network(path)
    refused = train(tmp_path / "other", synthetic_shards, f"init={path}")
    assert refused.returncode == 2 and "non-finite weights" in refused.stderr and "Traceback" not in refused.stderr


def test_skip_drops_one_injected_nonfinite_step_and_completes(synthetic_shards, tmp_path, monkeypatch):
    cfg = validate(load_config(CI, [f"data.synthetic={synthetic_shards}", f"run.dir={tmp_path / 'skip'}", *TINY,
                                    "run.steps=4", "optim.on_nonfinite=skip", "metrics.log_every=1",
                                    "checkpoint.keep=4"]))
    env = DistEnv(rank=0, world_size=1, local_rank=0)
    trainer = Trainer(cfg, env, torch.device("cpu"), setup_run(cfg.run, env))
    synthetic_losses = trainer.losses.synthetic
    calls = []

    def nan_at_step_three(*args, **kwargs):
        calls.append(1)
        terms = synthetic_losses(*args, **kwargs)
        if len(calls) == 3:
            terms["synthetic_depth"] = terms["synthetic_depth"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.losses, "synthetic", nan_at_step_three)
    try:
        assert trainer.train()
    finally:
        trainer.close()
    weights = {step: read_checkpoint(path)["model"] for step, path in list_checkpoints(Path(cfg.run.dir) / "checkpoints")}
    assert sorted(weights) == [1, 2, 3, 4]
    assert all(torch.equal(weights[2][key], weights[3][key]) for key in weights[2])  # step 3 did not update
    assert not all(torch.equal(weights[3][key], weights[4][key]) for key in weights[3])  # step 4 did
    records = [json.loads(line) for line in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()]
    counts = {r["step"]: r["train/nonfinite_steps"] for r in records if "train/nonfinite_steps" in r}
    assert counts == {1: 0, 2: 0, 3: 0, 4: 1}  # counted at the next step's agreement
    assert trainer.step == 4


def test_under_torchrun_every_rank_stops_at_the_same_step_and_rank_0_says_it(synthetic_shards, tmp_path):
    run_dir = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "train", "--config", CI, f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
                             *TINY, "optim.lr=1e9", "run.steps=20"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and re.match(r"error: training diverged at rank \d: step \d+: non-finite ", errors[0]), \
        result.stderr[-3000:]
    assert len(re.findall(r"exitcode\s+: 3 \(pid", result.stderr)) == 2, result.stderr[-3000:]  # both ranks exit 3
    assert "File \"" + str(ROOT / "train") not in result.stderr
    load_network(run_dir)
