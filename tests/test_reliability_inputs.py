"""Bad input refused with one `error:` line and exit 2 (issue 20's small rows): grayscale depth PNGs, an
unfinished shard build, synthetic shards given to train.evaluate, a pickled prior, negative counts, an --out
that cannot be written, a run whose only checkpoint is truncated."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.__main__ import check_writable
from shards.format import BadInputError, ShardsError
from shards.nyu import read_depth
from tests.conftest import run_shards
from tests.test_reliability_config import CI, ROOT, train
from tests.test_train_data import write_nyu_split
from train.__main__ import main as train_main
from train.checkpoint import list_checkpoints


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]  # besides logs, progress bars
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_grayscale_depth_pngs_are_refused_naming_file_and_mode(fake_nyu_dir, tmp_path, mode):
    root = tmp_path / "nyu-raw"
    shutil.copytree(fake_nyu_dir, root)
    depth = next(iter(sorted((root / "train").glob("depth_1_*.png"))))
    gray = np.asarray(Image.open(depth))[..., 2]  # the low byte: what a gray export keeps
    Image.fromarray(gray.astype(np.uint8) if mode == "L" else gray.astype(np.uint16) * 257).save(depth)
    with pytest.raises(BadInputError, match=f"is a {mode} image"):
        read_depth(depth)
    if mode == "L":  # the command, once
        line = one_error_line(run_shards("nyu", "--nyu-root", root, "--out", tmp_path / "out", "--splits", "train",
                                         check=False))
        assert str(depth) in line and "is a L image" in line and "3-channel 8-bit RGB" in line


def test_an_unfinished_shard_build_is_refused_naming_the_command(synthetic_shards, tmp_path, capsys):
    unfinished = tmp_path / "synth"
    shutil.copytree(synthetic_shards, unfinished)
    (unfinished / "manifest.json").unlink()
    assert train_main(["--config", CI, "--check-config", f"data.synthetic={unfinished}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config key 'data.synthetic': {unfinished} has shards but no manifest.json")
    assert f"python -m shards synthetic --out {unfinished}" in err


@pytest.fixture(scope="module")
def checkpoint(synthetic_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("inputs") / "run"
    result = train(run_dir, synthetic_shards, "run.steps=1")
    assert result.returncode == 0, result.stderr[-2000:]
    return list_checkpoints(run_dir / "checkpoints")[-1][1]


def test_evaluate_on_synthetic_shards_is_one_error_line(checkpoint, synthetic_shards, tmp_path):
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--checkpoint", str(checkpoint), "--data",
                             str(synthetic_shards), "--out", str(tmp_path / "eval"), "--num-workers", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "holds synthetic shards; evaluation needs an NYU split" in one_error_line(result)


def test_a_pickled_prior_is_one_error_line(synthetic_shards, tmp_path):
    for split in ("train", "test"):
        write_nyu_split(tmp_path / "nyu" / split, size=64, cube=300.0)
    prior = tmp_path / "prior.pt"
    prior.write_bytes(pickle.dumps({"format": "anything"}))
    result = train(tmp_path / "run", synthetic_shards, f"data.real={tmp_path / 'nyu'}", "loss.prior.enabled=true",
                   f"loss.prior_path={prior}", "data.real_batch=1")
    assert f"pose prior file {prior} could not be read with weights_only=True" in one_error_line(result)


def test_negative_counts_and_unwritable_out_are_refused_before_any_work(tmp_path, monkeypatch):
    line = one_error_line(run_shards("fake-nyu", "--out", tmp_path / "f", "--train", -1, check=False))
    assert line == "error: --train -1: must be >= 0" and not (tmp_path / "f").exists()
    (tmp_path / "a-file").write_text("")
    line = one_error_line(run_shards("nyu", "--nyu-root", tmp_path, "--out", tmp_path / "a-file" / "out", check=False))
    assert line == f"error: --out {tmp_path / 'a-file' / 'out'}: {tmp_path / 'a-file'} is a file, not a directory"
    monkeypatch.setattr("os.access", lambda path, mode: False)  # tests run as root: permissions never refuse
    with pytest.raises(ShardsError, match=f"--out {tmp_path / 'new'}: {tmp_path} cannot be written"):
        check_writable(tmp_path / "new")


def test_a_run_whose_only_checkpoint_is_truncated_refuses_to_start_over(checkpoint, synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpoint.parent.parent / "checkpoints", run_dir / "checkpoints")
    only = list_checkpoints(run_dir / "checkpoints")[-1][1]
    only.write_bytes(only.read_bytes()[:1000])
    line = one_error_line(train(run_dir, synthetic_shards, "run.steps=2"))
    assert line.startswith(f"error: no usable checkpoint in {run_dir / 'checkpoints'} (1 found")
    assert only.stat().st_size == 1000
