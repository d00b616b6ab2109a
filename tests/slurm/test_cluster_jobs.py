"""``python -m launch slurm`` against a real 2-node Slurm cluster on this machine (``make test-slurm``).

2 nodes x 1 CPU rank with gloo, the tiny CI network on synthetic shards only, a few dozen steps.
The preemption test signals the batch shell exactly as Slurm does before a time limit
(``scancel --batch --signal=USR2``, what ``--signal=B:USR2@SECS`` sends).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.cluster import Cluster, missing_tools

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
TINY = ["eval.every=0", "eval.at_start=false", "metrics.log_every=5", "metrics.image_every=0", "model.width=16",
        "data.synthetic_batch=4", "checkpoint.keep=3"]

# The job left running at teardown; an odd duration, so that no other process on the machine matches it
# (a plain "sleep 300" of another user once made this test fail).
JOB_SLEEP = "sleep 4317"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request) -> Cluster:
    """The 2-node cluster, stopped by pid at the end, also when a test or the start itself fails.
    (Here, not in a conftest.py: a second conftest module would shadow tests/conftest.py's imports.)"""
    missing = missing_tools()
    if missing:
        pytest.fail(f"Slurm tools missing: {missing}; `make test-slurm` installs them (apt-get)")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(c.stop)
    return c.start()


def launch_slurm(cluster: Cluster, *args: str, config: Path = ROOT / "configs" / "ci.yaml"
                 ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch", "slurm", "--config", str(config), *args]
    return subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=120)


def submit(cluster: Cluster, *args: str, config: Path = ROOT / "configs" / "ci.yaml") -> tuple[str, str]:
    result = launch_slurm(cluster, *args, config=config)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    job = re.search(r"submitted job (\d+)", result.stdout)
    assert job, result.stdout
    return job.group(1), result.stdout


def job_field(cluster: Cluster, job: str, name: str) -> str:
    out = cluster.run("scontrol", "show", "job", job, check=False).stdout
    found = re.search(rf"\b{name}=(\S+)", out)
    return found.group(1) if found else ""


def wait_done(cluster: Cluster, job: str, run_dirs: list[Path], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = set(re.findall(r"JobState=(\S+)", cluster.run("scontrol", "show", "job", job, check=False).stdout))
        if states and states <= {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            return ",".join(sorted(states))
        time.sleep(1)
    raise AssertionError(f"job {job} not done in {timeout} s\n{logs(run_dirs)}\n{cluster.logs()}")


def wait_step(run_dir: Path, step: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = logged_steps(run_dir)
        if steps and steps[-1] >= step:
            return steps[-1]
        time.sleep(0.5)
    raise AssertionError(f"{run_dir} never logged step {step}\n{logs([run_dir])}")


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))


def logs(run_dirs: list[Path]) -> str:
    out = []
    for run_dir in run_dirs:
        for path in sorted((run_dir / "slurm").glob("*.out")) + sorted((run_dir / "slurm").glob("*.log")):
            out.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
        if (run_dir / "train.log").exists():
            out.append(f"--- train.log\n{(run_dir / 'train.log').read_text()[-2000:]}")
    return "\n".join(out)


def test_two_node_job_trains_with_world_size_2(cluster, synthetic_shards, tmp_path):
    run_dir = tmp_path / "run two nodes"  # a space in the run dir
    job, out = submit(cluster, "--nodes", "2", "--gpus-per-node", "0", f"data.synthetic={synthetic_shards}",
                      f"run.dir={run_dir}", "run.steps=20", "checkpoint.every=10", *TINY)
    assert "tensorboard --logdir" in out and str(run_dir) in out
    assert wait_done(cluster, job, [run_dir]) == "COMPLETED", logs([run_dir])
    assert "world: rank 0 of 2" in (run_dir / "env.log").read_text()
    assert logged_steps(run_dir)[-1] == 20 and checkpoints(run_dir) == [10, 20]
    assert list(run_dir.glob("events.out.tfevents.*"))
    batch = (run_dir / "slurm" / f"batch-{job}.out").read_text()
    assert "on n1 n2 (127.0.0.2 127.0.0.3), rendezvous 127.0.0.2:" in batch  # the address from Slurm
    for node in ("n1", "n2"):
        assert (run_dir / "slurm" / f"train-{job}-restart0-{node}.log").is_file()


def preempted_job(cluster: Cluster, synthetic_shards: Path, run_dir: Path, *, nodes: int, max_requeues: int,
                  steps: int, at_step: int, options: tuple[str, ...] = ()) -> str:
    """Submit a CPU job that would not checkpoint by itself, and signal it as Slurm would at ``at_step``."""
    job, _ = submit(cluster, "--nodes", str(nodes), "--gpus-per-node", "0", "--max-requeues", str(max_requeues),
                    *options, f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}", f"run.steps={steps}",
                    f"checkpoint.every={5 * steps}", *TINY)
    wait_step(run_dir, at_step)
    cluster.run("scancel", "--batch", "--signal=USR2", job)  # what --signal=B:USR2@SECS delivers
    return job


def test_preempted_job_checkpoints_requeues_resumes_and_finishes(cluster, synthetic_shards, tmp_path):
    """A preemption (the signal long before the time limit) after progress requeues without counting
    toward --max-requeues: 0 here."""
    run_dir = tmp_path / "preempt"
    job = preempted_job(cluster, synthetic_shards, run_dir, nodes=2, max_requeues=0, steps=40, at_step=10)
    assert wait_done(cluster, job, [run_dir]) == "COMPLETED", logs([run_dir])
    assert job_field(cluster, job, "Restarts") == "1"
    saved = checkpoints(run_dir)
    assert len(saved) == 2 and 10 <= saved[0] < 40 and saved[1] == 40, saved  # the preemption checkpoint, the last
    train_log = (run_dir / "train.log").read_text()
    assert f"step-{saved[0]:09d}.pt" in train_log and "resumed from" in train_log, train_log[-2000:]
    steps = logged_steps(run_dir)
    assert steps[-1] == 40 and steps.count(40) == 1
    batch = (run_dir / "slurm" / f"batch-{job}.out").read_text()
    assert "requeueing job" in batch and "restart 1 on" in batch
    assert (run_dir / "slurm" / f"train-{job}-restart1-n2.log").is_file()
    record = (run_dir / "slurm" / "requeues.log").read_text()
    assert f"job={job} restart=0 kind=preemption checkpoint=step-{saved[0]:09d} counted=0" in record, record


def test_job_at_max_requeues_is_not_requeued(cluster, synthetic_shards, tmp_path):
    """A timeout (the signal within --signal-secs of the time limit) counts: at --max-requeues 0 no requeue."""
    run_dir = tmp_path / "capped"
    # Slurm's own signal: due 90 s before the 2-minute limit, and sent up to 60 s early (its timer's resolution),
    # so anywhere in the job's first 30 s, possibly before its first step: a signal sent by the test after some
    # steps raced it (and lost: the job stopped before the step awaited).
    steps = 100_000  # more than the job can train before the signal
    job, _ = submit(cluster, "--nodes", "1", "--gpus-per-node", "0", "--max-requeues", "0", "--time", "2",
                    "--signal-secs", "90", f"data.synthetic={synthetic_shards}", f"run.dir={run_dir}",
                    f"run.steps={steps}", f"checkpoint.every={5 * steps}", *TINY)
    assert wait_done(cluster, job, [run_dir]) == "FAILED", logs([run_dir])
    assert job_field(cluster, job, "Restarts") == "0" and job_field(cluster, job, "ExitCode") == "3:0"
    assert "--max-requeues 0 reached" in (run_dir / "slurm" / f"batch-{job}.out").read_text()
    assert f"job={job} restart=0 kind=timeout" in (run_dir / "slurm" / "requeues.log").read_text()
    saved = checkpoints(run_dir)
    assert len(saved) <= 1 and all(step < steps for step in saved), saved  # a checkpoint where it stopped, if it ran


def test_passthrough_reaches_the_job_which_trains_its_frozen_config(cluster, synthetic_shards, tmp_path):
    """--sbatch, --setup and --env as the job sees them; the YAML edited right after submission changes
    nothing the job trains (it reads the snapshot in RUN/slurm/)."""
    config = tmp_path / "cfg" / "mine.yaml"
    config.parent.mkdir()
    shutil.copy(ROOT / "configs" / "ci.yaml", config)
    run_dir = tmp_path / "passthrough"
    marker = tmp_path / "setup ran"
    job, _ = submit(cluster, "--nodes", "2", "--gpus-per-node", "0", f"data.synthetic={synthetic_shards}",
                    "--sbatch", "comment=it's a #test", "--setup", f"echo \"$SLURM_JOB_ID\" > {shlex.quote(str(marker))}",
                    "--env", "OMP_NUM_THREADS=2", f"run.dir={run_dir}", "run.steps=10", "checkpoint.every=10", *TINY,
                    config=config)
    config.write_text(config.read_text().replace("steps: 100", "steps: 3").replace("width: 32", "width: 8"))
    assert wait_done(cluster, job, [run_dir]) == "COMPLETED", logs([run_dir])
    assert job_field(cluster, job, "Comment") == "it's"  # scontrol prints the comment up to its first space
    assert "Comment=it's a #test" in cluster.run("scontrol", "show", "job", job).stdout
    assert marker.read_text().strip() == job
    assert "env OMP_NUM_THREADS=2" in (run_dir / "env.log").read_text()  # through srun and torchrun to rank 0
    assert logged_steps(run_dir)[-1] == 10 and checkpoints(run_dir) == [10]
    assert "width: 16" in (run_dir / "config.yaml").read_text()  # TINY's model.width, not the edited file's


def test_bad_data_path_is_refused_at_submission_without_a_job(cluster, tmp_path):
    before = cluster.run("scontrol", "-o", "show", "job").stdout  # every job, finished ones too
    result = launch_slurm(cluster, "--nodes", "1", "--gpus-per-node", "0", "data.synthetic=/nonexistent/synth",
                          f"run.dir={tmp_path / 'bad'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: config key 'data.synthetic': '/nonexistent/synth' does not exist\n"
    assert cluster.run("scontrol", "-o", "show", "job").stdout == before and not (tmp_path / "bad").exists()


def test_sweep_runs_an_array_task_per_value(cluster, synthetic_shards, tmp_path):
    base = tmp_path / "sweep"
    job, out = submit(cluster, "--nodes", "1", "--gpus-per-node", "0", "--sweep", "run.seed=3,4",
                      f"data.synthetic={synthetic_shards}", f"run.dir={base}", "run.steps=10",
                      "checkpoint.every=10", *TINY)
    run_dirs = [base / "run.seed-3", base / "run.seed-4"]
    assert wait_done(cluster, job, run_dirs) == "COMPLETED", logs(run_dirs)
    for seed, run_dir in zip((3, 4), run_dirs):
        assert f"seed: {seed}" in (run_dir / "config.yaml").read_text()
        assert checkpoints(run_dir) == [10]
    assert len(list((base / "slurm").glob(f"batch-{job}_*.out"))) == 2


def test_teardown_leaves_no_daemon_or_job(tmp_path):
    """A second cluster with a job still running: stop() ends every daemon and job process by pid."""
    c = Cluster(tmp_path / "c")
    try:
        c.start()
        c.run("sbatch", "--wrap", JOB_SLEEP, "-o", str(tmp_path / "sleep.out"))
        deadline = time.monotonic() + 30
        while "RUNNING" not in c.run("squeue", "-h", "-o", "%T").stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        pids = {name: p.pid for name, p in c.procs.items()}
    finally:
        c.stop()
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], name
    left = subprocess.run(["pgrep", "-af", str(c.conf)], capture_output=True, text=True).stdout
    assert not left, left
    sleeping = subprocess.run(["pgrep", "-af", JOB_SLEEP], capture_output=True, text=True).stdout
    assert not sleeping, sleeping
