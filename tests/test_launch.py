"""``python -m launch``: the generated sbatch script (dry run), option errors, and a local torchrun run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def script_of(stdout: str) -> str:
    return stdout[:stdout.index("\n# written to ")]


@pytest.fixture
def hostile(tmp_path, synthetic_shards):
    """A config path with a space and ``$(...)``, a run dir and an override with a quote and a semicolon."""
    cfg_dir = tmp_path / "my cfg $(touch PWNED)"
    cfg_dir.mkdir()
    shutil.copy(ROOT / "configs" / "ci.yaml", cfg_dir / "c.yaml")
    run_dir = tmp_path / "run x'y;z"
    return cfg_dir / "c.yaml", run_dir, [f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
                                         "loss.prior_path=it's; touch PWNED2"]


def test_dry_run_script_parses_and_keeps_every_value_literal(hostile, tmp_path):
    config, run_dir, overrides = hostile
    result = launch("slurm", "--nodes", "2", "--gpus-per-node", "0", "--config", str(config), "--dry-run",
                    *overrides)
    assert result.returncode == 0, result.stderr
    script = script_of(result.stdout)
    assert "#SBATCH --nodes=2" in script and "#SBATCH --signal=B:USR2@120" in script and "--requeue" in script
    assert "sbatch --parsable" in result.stdout
    path = next((run_dir / "slurm").glob("job-*.sbatch"))
    assert path.read_text().rstrip("\n") == script.rstrip("\n")
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", "--severity=warning", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    # run the script's value-setting part: what bash makes of the quoted values, and nothing executed
    case = next(line for line in script.splitlines() if line.strip().startswith("0) RUN_DIR="))
    probe = (f"{case.strip()[3:].removesuffix(';;')}\nTRAIN=(" + script.split("TRAIN=(", 1)[1].split("\n")[0]
             + '\nprintf "%s\\n" "$RUN_DIR" "${TRAIN[@]}"')
    out = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    values = out.stdout.splitlines()
    assert values[0] == str(run_dir)
    assert values[1:4] == ["-m", "train", "--config"] and values[4] == str(config.absolute())
    assert "loss.prior_path=it's; touch PWNED2" in values and f"run.dir={run_dir}" in values
    assert "run.device=cpu" in values  # --gpus-per-node 0: CPU nodes with gloo
    assert not list(tmp_path.rglob("PWNED*")) and not (ROOT / "PWNED").exists()


def test_sweep_writes_a_job_array_with_a_run_dir_per_value(tmp_path, synthetic_shards):
    result = launch("slurm", "--nodes", "1", "--gpus-per-node", "8", "--config", "configs/ci.yaml", "--dry-run",
                    "--sweep", "run.seed=0,1", "--sweep", "model.width=16,32", "--partition", "gpu",
                    "--time", "1-00:00:00", "--account", "proj", f"data.synthetic={synthetic_shards}",
                    f"run.dir={tmp_path / 'sw'}")
    assert result.returncode == 0, result.stderr
    script = script_of(result.stdout)
    for line in ("#SBATCH --array=0-3", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1-00:00:00", "#SBATCH --account=proj"):
        assert line in script
    assert "--nproc_per_node=8" in script and "run.device=cpu" not in script
    assert f"3) RUN_DIR={tmp_path / 'sw' / 'run.seed-1_model.width-32'}" in script
    assert "batch-%A_%a.out" in result.stdout


def test_container_options(tmp_path, synthetic_shards):
    common = ["slurm", "--nodes", "2", "--gpus-per-node", "4", "--config", "configs/ci.yaml", "--dry-run",
              f"data.synthetic={synthetic_shards}", f"run.dir={tmp_path / 'c'}"]
    pyxis = script_of(launch(*common, "--container", "nvcr.io#me/sphere-hand:1").stdout)
    assert "--container-image='nvcr.io#me/sphere-hand:1'" in pyxis  # '#' quoted: no comment
    assert f"{tmp_path / 'c'}:{tmp_path / 'c'}" in pyxis and f"{synthetic_shards}:{synthetic_shards}" in pyxis
    assert "\n        bash -c " in pyxis and " python " in pyxis  # the image's python
    sif = script_of(launch(*common, "--container", str(tmp_path / "img.sif")).stdout)
    assert "apptainer exec --nv --bind " in sif and "img.sif" in sif
    # scontrol requeue runs in the batch shell, outside the container
    assert sif.index("scontrol requeue") > sif.index("apptainer exec")


@pytest.mark.parametrize("args, message", [
    (["--partition", "a;b"], "--partition 'a;b'"),
    (["--time", "soon"], "--time 'soon'"),
    (["--nodes", "0"], "--nodes must be >= 1, got 0"),
    (["--sweep", "run.seed"], "--sweep 'run.seed'"),
    (["data.synthtic=x"], "unknown config key 'data.synthtic'"),
])
def test_bad_options_name_the_value(args, message, tmp_path):
    base = ["slurm", "--gpus-per-node", "0", "--config", "configs/ci.yaml", "--dry-run", f"run.dir={tmp_path}"]
    if "--nodes" not in args:
        base[1:1] = ["--nodes", "1"]
    result = launch(*base, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_help_explains():
    out = launch("slurm", "--help").stdout
    for option in ("--max-requeues", "--sweep", "--container", "--dry-run", "--signal", "--gpus-per-node"):
        assert option in out
    assert "--nproc" in launch("local", "--help").stdout


@pytest.mark.slow
def test_local_run_logs_and_a_signal_checkpoints(tmp_path, synthetic_shards):
    run_dir = tmp_path / "local run"
    proc = subprocess.Popen([sys.executable, "-m", "launch", "local", "--nproc", "2", "--config", "configs/ci.yaml",
                             f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}", "run.steps=400",
                             "checkpoint.every=1000", "eval.every=0", "eval.at_start=false", "metrics.log_every=2",
                             "metrics.image_every=0", "model.width=16", "data.synthetic_batch=4"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 2):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the ranks checkpoint and exit 0
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "tensorboard --logdir" in out and "--master_port=" in out
    saved = list((run_dir / "checkpoints").glob("step-*.pt"))
    assert len(saved) == 1 and int(saved[0].stem.split("-")[1]) < 400
    logs = list((run_dir / "launch").glob("local-*.log"))
    assert len(logs) == 1 and "stopped at step" in logs[0].read_text()


def test_bare_srun_without_torchrun_is_refused_naming_the_launcher(synthetic_shards, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0")
    result = subprocess.run([sys.executable, "-m", "train", "--config", "configs/ci.yaml",
                             f"data.synthetic={synthetic_shards}", f"run.dir={tmp_path}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "python -m launch slurm" in result.stderr, result.stderr
