"""Every config value checked at load (issue 20): each field of each config section with one bad value gives
one `error: config key ...` line and exit 2, before anything is written; a refused resume leaves the run's
record (config.yaml, env.log) as it was."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch

from tests.test_train_data import write_nyu_split
from train.__main__ import main
from train.config import TrainConfig
from train.schema import Range

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.yaml")


def leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, annotated type) of every leaf field of a config tree."""
    found = []
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        bare = tp.__origin__ if typing.get_origin(tp) is Annotated else tp
        if dataclasses.is_dataclass(bare):
            found += leaves(bare, f"{prefix}{name}.")
        else:
            found.append((f"{prefix}{name}", tp))
    return found


def out_of_range(bounds: Range) -> float:
    if bounds.gt is not None:
        return bounds.gt
    if bounds.ge is not None:
        return bounds.ge - 1
    return bounds.lt if bounds.lt is not None else bounds.le + 1


def bad_value(tp: Any, paths: dict[str, str], key: str) -> str:
    """One value the field must refuse: outside its declared Range, else of the wrong kind, else a bad path."""
    if key in paths:
        return paths[key]
    if typing.get_origin(tp) is Annotated:
        bounds = next(meta for meta in tp.__metadata__ if isinstance(meta, Range))
        value = out_of_range(bounds)
        return f"[{value}]" if typing.get_origin(tp.__origin__) is list else str(value)
    if typing.get_origin(tp) is typing.Literal:
        return "bogus"
    if tp is bool:
        return "maybe"
    return {float: "nan", int: "many"}[tp]


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_shards) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("config-data")
    for split in ("train", "test"):
        write_nyu_split(root / "nyu" / split, size=64, cube=300.0)
    (root / "a-file").write_text("not a directory")
    return {"real": root / "nyu", "synthetic": synthetic_shards, "root": root}


def check(capsys, *overrides: str) -> tuple[int, str]:
    code = main(["--config", CI, "--check-config", *overrides])
    return code, capsys.readouterr().err


def test_every_config_field_refuses_a_bad_value(data, capsys):
    base = [f"data.real={data['real']}", f"data.synthetic={data['synthetic']}", f"run.dir={data['root'] / 'run'}"]
    assert check(capsys, *base) == (0, "")
    missing = str(data["root"] / "missing")
    paths = {"data.real": missing, "data.synthetic": missing, "init": missing, "loss.prior_path": missing,
             "run.dir": str(data["root"] / "a-file")}
    extra = {"loss.prior_path": ["loss.prior.enabled=true"]}
    walked = leaves(TrainConfig)
    assert len(walked) > 60  # every section's fields, loss terms included
    for key, tp in walked:
        override = f"{key}={bad_value(tp, paths, key)}"
        code, err = check(capsys, *base, *extra.get(key, []), override)
        section = key.split(".")[0]
        assert code == 2, f"{override} accepted"
        assert err.startswith("error: ") and err.count("\n") == 1, (override, err)
        assert f"'{key}'" in err or f"section '{section}'" in err, (override, err)
    assert not (data["root"] / "run").exists()


@pytest.mark.parametrize("override, named", [
    ("optim.grad_clip=-1", "config key 'optim.grad_clip': -1.0 must be > 0 (null: no clipping)"),
    ("data.real_batch=-3", "config key 'data.real_batch': -3 must be >= 0"),
    ("data.synthetic_batch=-1", "config key 'data.synthetic_batch': -1 must be >= 0"),
    ("checkpoint.every=-5", "config key 'checkpoint.every': -5 must be >= 0"),
    ("checkpoint.keep=-1", "config key 'checkpoint.keep': -1 must be >= 1"),
    ("run.stop_at=-1", "config key 'run.stop_at': -1 must be >= 0"),
    ("optim.lr=-1", "config key 'optim.lr': -1.0 must be > 0"),
    ("optim.lr=nan", "config key 'optim.lr' (command line): expected a finite number, got nan"),
    ("data.num_workers=-1", "config key 'data.num_workers': -1 must be >= 0"),
    ("crop.size=0", "config section 'crop': crop size must be an integer >= 8 pixels, got 0"),
    ("crop.size=66", "config key 'crop.size': crop size 66 must be a multiple of 4"),
])
def test_the_issue_values_are_refused_naming_key_and_value(data, capsys, override, named):
    code, err = check(capsys, f"data.synthetic={data['synthetic']}", override)
    assert code == 2 and named in err, err


def test_run_dir_a_file_or_under_a_file_and_cuda_without_cuda(data, capsys):
    base = f"data.synthetic={data['synthetic']}"
    code, err = check(capsys, base, f"run.dir={data['root'] / 'a-file' / 'run'}")
    assert code == 2 and "'run.dir'" in err and "is a file" in err
    if not torch.cuda.is_available():
        code, err = check(capsys, base, "run.device=cuda")
        assert code == 2 and "config key 'run.device': cuda, but CUDA is not available" in err


def test_cli_bad_value_one_line_exit_2_nothing_written(data, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "train", "--config", CI, f"data.synthetic={data['synthetic']}",
                             f"run.dir={run_dir}", "optim.grad_clip=-1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: config key 'optim.grad_clip': -1.0 must be > 0 (null: no clipping)\n"
    assert not run_dir.exists()


TINY = ["run.steps=2", "eval.every=0", "eval.at_start=false", "checkpoint.every=1", "metrics.image_every=0",
        "metrics.tensorboard=false", "data.num_workers=0", "data.synthetic_batch=2", "model.width=8"]


def train(run_dir: Path, synthetic: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m train`` with the CI config at its smallest: one process, synthetic data, a few steps."""
    return subprocess.run([sys.executable, "-m", "train", "--config", CI, f"data.synthetic={synthetic}",
                           f"run.dir={run_dir}", *TINY, *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_a_refused_resume_leaves_config_and_env_log_as_they_were(data, tmp_path):
    run_dir = tmp_path / "run"
    first = train(run_dir, data["synthetic"])
    assert first.returncode == 0, first.stderr[-2000:]
    record = {name: (run_dir / name).read_text() for name in ("config.yaml", "env.log")}
    refused = train(run_dir, data["synthetic"], "model.width=16", "run.steps=4")
    assert refused.returncode == 2 and "another model config" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert {name: (run_dir / name).read_text() for name in record} == record
