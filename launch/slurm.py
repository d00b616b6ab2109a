"""``python -m launch slurm``: an sbatch script with one torchrun per node, preemption and requeue.

    python -m launch slurm --nodes 2 --gpus-per-node 8 --config configs/selfsup.yaml --time 24:00:00 \\
        --max-requeues 5 run.dir=/shared/runs/selfsup data.real=/shared/nyu data.synthetic=/shared/synth

The config is loaded and validated as the trainer will (:func:`launch.config.load_run`) and frozen into
``RUN/slurm/job-<time>.config.yaml``; the script (``RUN/slurm/job-<time>.sbatch``, filled in from the
template ``launch/slurm_job.sh``) trains from that snapshot, so editing the YAML while the job waits or
between requeues changes nothing. The script runs ``srun --ntasks-per-node=1`` of a torchrun per node
with a c10d rendezvous on the first node of the allocation: its address comes from Slurm (``scontrol show
hostnames``, then the node's ``NodeAddr``), never from ``hostname --ip-address`` (127.0.1.1 on many
clusters); the port is derived from the job id. Preemption: ``--signal=B:USR2@SECS`` reaches only the
batch shell, which waits on a background srun (bash runs a trap only between commands), sends SIGTERM
to the job's steps (torchrun forwards SIGTERM to the ranks, which agree, checkpoint and exit 0; USR2
rather than USR1 because NCCL may install its own SIGUSR1 handler), then ``scontrol requeue``s the job
from the batch shell (never from inside a container). Timeouts and preemptions are told apart and
recorded in ``RUN/slurm/requeues.log``; ``--max-requeues`` caps the timeouts and the preemptions that
made no progress (see the template). Every user value in the script is shell-quoted (``#SBATCH`` values
too: sbatch reads those lines with shell-like quoting); option names are checked against Slurm's syntax.
"""

from __future__ import annotations

import datetime
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from launch.config import LaunchError, SweepAxis, check_runs, load_run
from train.config import TrainConfig, dump_config

Signal = Literal["USR2", "USR1", "TERM", "INT", "HUP", "QUIT"]
SBATCH_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # partition, account, job name
SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+")
SLURM_OPTION = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")  # a long sbatch option name: qos, mem-per-gpu
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TEMPLATE = Path(__file__).with_name("slurm_job.sh")
# sbatch options the launcher writes itself, and the launcher option that sets each (None: not settable).
OWN_SBATCH = {"job-name": "--job-name", "nodes": "--nodes", "ntasks-per-node": "--nproc-per-node",
              "ntasks": "--nodes", "signal": "--signal/--signal-secs", "requeue": None, "no-requeue": None,
              "open-mode": None, "array": "--sweep/--array-parallelism", "output": None, "error": None,
              "cpus-per-task": "--cpus-per-node", "gpus-per-node": "--gpus-per-node", "time": "--time",
              "partition": "--partition", "account": "--account", "parsable": None, "wrap": None}
MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")


@dataclass
class SlurmOptions:
    """Options of ``launch slurm``; see ``python -m launch slurm --help``."""

    config: Path  # YAML run config
    nodes: int = 1  # nodes of the allocation, one torchrun each
    gpus_per_node: int = 0  # GPUs per node; 0: CPU-only nodes with gloo (run.device=cpu)
    nproc_per_node: int | None = None  # ranks per node; default: gpus_per_node, or 1 on CPU nodes
    cpus_per_node: int | None = None  # --cpus-per-task of the one task per node; default: cpus_needed()
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # time limit, HH:MM:SS or D-HH:MM:SS
    job_name: str = "sphere-hand"
    sbatch: list[str] = field(default_factory=list)  # more sbatch options, KEY=VALUE or KEY (a flag)
    setup: list[str] = field(default_factory=list)  # shell lines run in the batch shell before srun
    env: list[str] = field(default_factory=list)  # KEY=VALUE exported to the batch shell and the ranks
    container: str | None = None  # pyxis image (docker://..., squashfs) or an apptainer .sif
    container_mounts: list[str] = field(default_factory=list)  # extra SRC[:DST] mounts
    max_requeues: int = 3  # cap on counted requeues: timeouts and preemptions without progress
    max_restarts: int = 0  # torchrun restarts of crashed ranks within one job
    signal: Signal = "USR2"  # sent by Slurm to the batch shell before the time limit
    signal_secs: int = 120  # how long before the time limit
    sweep: list[SweepAxis] = field(default_factory=list)  # job array over combinations
    array_parallelism: int | None = None  # at most this many array tasks at once (--array=...%N)
    python: str | None = None  # interpreter on the nodes; default: this one, or `python` in a container
    dry_run: bool = False
    overrides: list[str] = field(default_factory=list)  # dotted.key=value config overrides

    @property
    def ranks_per_node(self) -> int:
        return self.nproc_per_node or (self.gpus_per_node or 1)


@dataclass(frozen=True)
class Submission:
    """What one ``launch slurm`` writes and runs; nothing is written until :func:`write`."""

    script: str
    script_path: Path
    snapshot: str  # the resolved config every array task and every requeue trains from
    snapshot_path: Path
    command: list[str]  # the sbatch command line
    runs: list[tuple[Path, list[str]]]  # (run dir, overrides on top of the snapshot) per array task


def check_options(opts: SlurmOptions) -> None:
    for name in ("nodes", "signal_secs"):
        if getattr(opts, name) < 1:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    for name in ("gpus_per_node", "max_requeues", "max_restarts"):
        if getattr(opts, name) < 0:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(opts, name)}")
    for name in ("nproc_per_node", "cpus_per_node", "array_parallelism"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("partition", "account", "job_name"):
        value = getattr(opts, name)
        if value is not None and not SBATCH_WORD.fullmatch(value):
            raise LaunchError(f"--{name.replace('_', '-')} {value!r}: use letters, digits, '.', '_' and '-' only")
    if opts.time is not None and not SLURM_TIME.fullmatch(opts.time):
        raise LaunchError(f"--time {opts.time!r}: expected MM, HH:MM:SS or D-HH:MM:SS")
    if opts.signal not in get_args(Signal):
        raise LaunchError(f"--signal {opts.signal!r}: choose one of {', '.join(get_args(Signal))}")
    if opts.array_parallelism is not None and not opts.sweep:
        raise LaunchError("--array-parallelism needs --sweep (it throttles the tasks of a job array)")
    for line in opts.setup:
        if "\n" in line or "\r" in line:
            raise LaunchError(f"--setup {line!r}: one line per --setup (repeat the option)")
    sbatch_options(opts)
    env_exports(opts)


def sbatch_options(opts: SlurmOptions) -> list[tuple[str, str | None]]:
    """``--sbatch KEY=VALUE`` / ``--sbatch KEY`` as (key, value or None), each checked."""
    out = []
    for text in opts.sbatch:
        key, sep, value = text.removeprefix("--").partition("=")
        if not SLURM_OPTION.fullmatch(key):
            raise LaunchError(f"--sbatch {text!r}: {key!r} is not a Slurm option name (e.g. qos=high, "
                              "constraint=a100, exclusive)")
        if key in OWN_SBATCH:
            use = f"use {OWN_SBATCH[key]}" if OWN_SBATCH[key] else "the launcher sets it"
            raise LaunchError(f"--sbatch {text!r}: --{key} is written by the launcher ({use})")
        if any(c in value for c in "\n\r\0"):
            raise LaunchError(f"--sbatch {text!r}: a value cannot hold a line break")
        out.append((key, value if sep else None))
    keys = [k for k, _ in out]
    for key in keys:
        if keys.count(key) > 1:
            raise LaunchError(f"--sbatch {key}=... given {keys.count(key)} times")
    return out


def env_exports(opts: SlurmOptions) -> list[tuple[str, str]]:
    """``--env KEY=VALUE`` as (key, value); names the script uses itself are refused."""
    own = {name for pair in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)|\b([A-Z_][A-Z0-9_]*)=", TEMPLATE.read_text())
           for name in pair if name}  # what it reads or assigns
    out = []
    for text in opts.env:
        key, sep, value = text.partition("=")
        if not sep or not ENV_NAME.fullmatch(key):
            raise LaunchError(f"--env {text!r}: expected NAME=VALUE with a shell variable name")
        if key in own or key.startswith("SLURM_"):
            raise LaunchError(f"--env {text!r}: {key} is set by the batch script or by Slurm")
        out.append((key, value))
    return out


def cpus_needed(opts: SlurmOptions, cfg: TrainConfig) -> int:
    """CPUs of a node's task: per rank, one for the rank and one per loader worker of each data source."""
    sources = int(cfg.data.has_synthetic) + int(cfg.data.has_real)
    return opts.ranks_per_node * (1 + cfg.data.num_workers * sources)


def q(value: object) -> str:
    return shlex.quote(str(value))


def comment(text: str) -> str:
    """A value safe inside a ``#`` comment line (no line break can end the comment)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


# Runs on every node inside srun (and inside the container): this node's address and rendezvous role.
NODE_SH = ('addrs=($LAUNCH_NODE_ADDRS); py=$1; shift; '
           'if [ "$SLURM_NODEID" = 0 ]; then host=1; else host=0; fi; '
           'exec "$py" -m torch.distributed.run --node_rank="$SLURM_NODEID" '
           '--local_addr="${addrs[$SLURM_NODEID]}" --rdzv_conf=is_host="$host" "$@"')


def fill(template: str, values: dict[str, str]) -> str:
    """``@NAME@`` -> value; a ``# @NAME@`` line becomes the value's lines (none when it is empty)."""
    lines = []
    for line in template.splitlines():
        block = re.fullmatch(r"\s*# @([A-Z_]+)@", line)
        if block:
            lines.extend(values[block.group(1)].splitlines())
        else:
            lines.append(re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], line))
    return "\n".join(lines) + "\n"


def render_script(opts: SlurmOptions, cfg: TrainConfig, runs: list[tuple[Path, list[str]]], snapshot: Path,
                  mounts: list[str], argv: list[str]) -> str:
    python = opts.python or ("python" if opts.container else sys.executable)
    sb = [f"--job-name={opts.job_name}", f"--nodes={opts.nodes}", "--ntasks-per-node=1",
          f"--signal=B:{opts.signal}@{opts.signal_secs}", "--requeue", "--open-mode=append",
          f"--cpus-per-task={opts.cpus_per_node or cpus_needed(opts, cfg)}"]
    if opts.gpus_per_node:
        sb.append(f"--gpus-per-node={opts.gpus_per_node}")
    for name in ("time", "partition", "account"):
        if getattr(opts, name):
            sb.append(f"--{name}={getattr(opts, name)}")
    if len(runs) > 1:
        throttle = f"%{opts.array_parallelism}" if opts.array_parallelism else ""
        sb.append(f"--array=0-{len(runs) - 1}{throttle}")
    sb += [f"--{key}" if value is None else f"--{key}={q(value)}" for key, value in sbatch_options(opts)]
    torchrun = [f"--nnodes={opts.nodes}", f"--nproc_per_node={opts.ranks_per_node}",
                f"--max-restarts={opts.max_restarts}", "--rdzv_backend=c10d"]
    container, step_opts = "", ""
    if opts.container and opts.container.endswith(".sif"):
        container = f"apptainer exec {'--nv ' if opts.gpus_per_node else ''}--bind {q(','.join(mounts))} {q(opts.container)} "
    elif opts.container:
        step_opts = f" --container-image={q(opts.container)} --container-mounts={q(','.join(mounts))}"
    return fill(TEMPLATE.read_text(), {
        "COMMAND": comment(shlex.join(argv)),
        "SBATCH": "\n".join(f"#SBATCH {s}" for s in sb),
        "CONFIG": q(snapshot),
        "CASES": "\n".join(f"    {i}) RUN_DIR={q(d)}; ARGS=({' '.join(map(q, o))}) ;;" for i, (d, o) in enumerate(runs)),
        "MAX_REQUEUES": str(opts.max_requeues),
        "SIGNAL_SECS": str(opts.signal_secs),
        "ENV": "\n".join(f"export {key}={q(value)}" for key, value in env_exports(opts)),
        "SETUP": "\n".join(opts.setup),
        "SIGNAL": opts.signal,
        "TORCHRUN": " ".join(map(q, torchrun)),
        "STEP_OPTS": step_opts,
        "CONTAINER": container,
        "NODE_SH": q(NODE_SH),
        "PYTHON": q(python),
    })


def container_mounts(opts: SlurmOptions, base_dir: Path, cfg: TrainConfig) -> list[str]:
    """The run dir (snapshot and logs) and the local data dirs at their own paths, then --container-mount."""
    data = [Path(p).absolute() for p in (cfg.data.real, cfg.data.synthetic) if p and "://" not in p
            and not p.startswith("pipe:")]
    out = [f"{p}:{p}" for p in dict.fromkeys([base_dir, *data])] + list(opts.container_mounts)
    for m in out:
        if "," in m:
            raise LaunchError(f"container mount {m!r}: a path with ',' cannot be mounted")
    return out


def free_stem(directory: Path) -> str:
    """``job-<time>``, with a suffix when an earlier submission of the same second took it."""
    stem = "job-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        name = stem if n == 1 else f"{stem}-{n}"
        if not (directory / f"{name}.sbatch").exists() and not (directory / f"{name}.config.yaml").exists():
            return name
    raise LaunchError(f"{directory}: too many submissions in one second")


def prepare(opts: SlurmOptions, argv: list[str]) -> Submission:
    """The script, the snapshot, the sbatch command and the runs, every option and config value checked
    (the trainer's validation included); nothing written or submitted."""
    check_options(opts)
    overrides = list(opts.overrides)
    if opts.gpus_per_node == 0:
        overrides.insert(0, "run.device=cpu")
    cfg = load_run(opts.config, overrides)
    base_dir = Path(cfg.run.dir).absolute()
    runs = check_runs(opts.config, overrides, opts.sweep)
    if opts.gpus_per_node and not any(key in MEMORY_OPTIONS for key, _ in sbatch_options(opts)):
        print(f"warning: {opts.gpus_per_node} GPU(s) per node but no memory request: the site's default may be "
              "small (add e.g. --sbatch mem=0 for a whole node's memory, or --sbatch mem-per-gpu=64G)",
              file=sys.stderr)
    slurm_dir = base_dir / "slurm"
    stem = free_stem(slurm_dir)
    snapshot_path = slurm_dir / f"{stem}.config.yaml"
    snapshot = (f"# Frozen by python -m launch slurm at submission; every requeue of the job trains from it.\n"
                f"# Source: {comment(str(Path(opts.config).absolute()))}\n"
                f"# Overrides: {comment(shlex.join(overrides))}\n" + dump_config(cfg))
    mounts = container_mounts(opts, base_dir, cfg) if opts.container else []
    script = render_script(opts, cfg, runs, snapshot_path, mounts, argv)
    pattern = "batch-%A_%a.out" if len(runs) > 1 else "batch-%j.out"
    script_path = slurm_dir / f"{stem}.sbatch"
    cmd = ["sbatch", "--parsable", f"--output={slurm_dir / pattern}", str(script_path)]
    return Submission(script, script_path, snapshot, snapshot_path, cmd, runs)


def run_slurm(opts: SlurmOptions, argv: list[str]) -> int:
    job = prepare(opts, argv)
    if opts.dry_run:
        print(job.script, end="")
        print(f"# nothing written; a submission writes this script to {job.script_path},")
        print(f"# the resolved config to {job.snapshot_path}, and runs:")
        print(shlex.join(job.command))
        return 0
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found on PATH (run on a Slurm login node; --dry-run prints the script)")
    job.script_path.parent.mkdir(parents=True, exist_ok=True)
    job.snapshot_path.write_text(job.snapshot)
    job.script_path.write_text(job.script)
    job.script_path.chmod(0o755)
    result = subprocess.run(job.command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"error: {shlex.join(job.command)} failed ({result.returncode}): {result.stderr.strip()}",
              file=sys.stderr)
        return 1
    job_id = result.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}: {job.script_path}")
    print(f"config snapshot: {job.snapshot_path}")
    print(f"batch log: {job.command[2].split('=', 1)[1].replace('%j', job_id).replace('%A', job_id)}")
    for run_dir, _ in job.runs:
        print(f"run dir: {run_dir}  (training logs: {run_dir / 'slurm'}/train-<job>-restart<N>-<node>.log)")
    print(f"watch with: tensorboard --logdir {job.script_path.parent.parent}")
    return 0
