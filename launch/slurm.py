"""``python -m launch slurm``: an sbatch script with one torchrun per node, preemption and requeue.

    python -m launch slurm --nodes 2 --gpus-per-node 8 --config configs/selfsup.yaml --time 24:00:00 \\
        --max-requeues 5 run.dir=/shared/runs/selfsup data.real=/shared/nyu data.synthetic=/shared/synth

The script (written to ``RUN/slurm/``) runs ``srun --ntasks-per-node=1`` of a torchrun per node with a
c10d rendezvous on the first node of the allocation: its address comes from Slurm (``scontrol show
hostnames``, then the node's ``NodeAddr``), never from ``hostname --ip-address`` (127.0.1.1 on many
clusters); the port is derived from the job id. Preemption: ``--signal=B:USR2@SECS`` reaches only the
batch shell, which waits on a background srun (bash runs a trap only between commands), sends SIGTERM
to the job's steps (torchrun forwards SIGTERM to the ranks, which agree, checkpoint and exit 0; USR2
rather than USR1 because NCCL may install its own SIGUSR1 handler), then ``scontrol requeue``s the job
from the batch shell (never from inside a container) while ``SLURM_RESTART_COUNT`` < ``--max-requeues``.
The requeued job resumes from the newest complete checkpoint. Every user value in the script is
shell-quoted; values that go into ``#SBATCH`` lines are checked against Slurm's syntax instead.
"""

from __future__ import annotations

import datetime
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from launch.config import LaunchError, SweepAxis, check_runs, load_run

Signal = Literal["USR2", "USR1", "TERM", "INT", "HUP", "QUIT"]
SBATCH_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # partition, account, job name
SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+")


@dataclass
class SlurmOptions:
    """Options of ``launch slurm``; see ``python -m launch slurm --help``."""

    config: Path  # YAML run config
    nodes: int = 1  # nodes of the allocation, one torchrun each
    gpus_per_node: int = 0  # GPUs per node; 0: CPU-only nodes with gloo (run.device=cpu)
    nproc_per_node: int | None = None  # ranks per node; default: gpus_per_node, or 1 on CPU nodes
    cpus_per_node: int | None = None  # --cpus-per-task of the one task per node
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # time limit, HH:MM:SS or D-HH:MM:SS
    job_name: str = "sphere-hand"
    container: str | None = None  # pyxis image (docker://..., squashfs) or an apptainer .sif
    container_mounts: list[str] = field(default_factory=list)  # extra SRC[:DST] mounts
    max_requeues: int = 3  # requeues after preemption, counted with SLURM_RESTART_COUNT
    max_restarts: int = 0  # torchrun restarts of crashed ranks within one job
    signal: Signal = "USR2"  # sent by Slurm to the batch shell before the time limit
    signal_secs: int = 120  # how long before the time limit
    sweep: list[SweepAxis] = field(default_factory=list)  # job array over combinations
    python: str | None = None  # interpreter on the nodes; default: this one, or `python` in a container
    dry_run: bool = False
    overrides: list[str] = field(default_factory=list)  # dotted.key=value config overrides


def check_options(opts: SlurmOptions) -> None:
    for name in ("nodes", "signal_secs"):
        if getattr(opts, name) < 1:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    for name in ("gpus_per_node", "max_requeues", "max_restarts"):
        if getattr(opts, name) < 0:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(opts, name)}")
    for name in ("nproc_per_node", "cpus_per_node"):
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


def render_script(opts: SlurmOptions, runs: list[tuple[Path, list[str]]], base_dir: Path, mounts: list[str],
                  argv: list[str]) -> str:
    nproc = opts.nproc_per_node or (opts.gpus_per_node or 1)
    python = opts.python or ("python" if opts.container else sys.executable)
    config = Path(opts.config).absolute()
    sb = [f"--job-name={opts.job_name}", f"--nodes={opts.nodes}", "--ntasks-per-node=1",
          f"--signal=B:{opts.signal}@{opts.signal_secs}", "--requeue", "--open-mode=append"]
    if opts.cpus_per_node:
        sb.append(f"--cpus-per-task={opts.cpus_per_node}")
    if opts.gpus_per_node:
        sb.append(f"--gpus-per-node={opts.gpus_per_node}")
    for name in ("time", "partition", "account"):
        if getattr(opts, name):
            sb.append(f"--{name}={getattr(opts, name)}")
    if len(runs) > 1:
        sb.append(f"--array=0-{len(runs) - 1}")
    cases = "\n".join(f"    {i}) RUN_DIR={q(d)}; ARGS=({' '.join(map(q, o))}) ;;" for i, (d, o) in enumerate(runs))
    torchrun = [f"--nnodes={opts.nodes}", f"--nproc_per_node={nproc}", f"--max-restarts={opts.max_restarts}",
                "--rdzv_backend=c10d"]
    container = ""
    if opts.container and opts.container.endswith(".sif"):
        binds = ",".join(mounts)
        container = f"apptainer exec {'--nv ' if opts.gpus_per_node else ''}--bind {q(binds)} {q(opts.container)} "
        step_opts = ""
    elif opts.container:
        step_opts = f" --container-image={q(opts.container)} --container-mounts={q(','.join(mounts))}"
    else:
        step_opts = ""
    lines = [
        "#!/bin/bash",
        "# Generated by python -m launch slurm (sphere-hand). Command line:",
        f"#   {comment(shlex.join(argv))}",
        *(f"#SBATCH {s}" for s in sb),
        "set -u",
        "",
        'case "${SLURM_ARRAY_TASK_ID:-0}" in',
        cases,
        '    *) echo "launch: no run for array task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        'LOG_DIR="$RUN_DIR/slurm"',
        'mkdir -p "$LOG_DIR"',
        'RESTART="${SLURM_RESTART_COUNT:-0}"',
        f"MAX_REQUEUES={opts.max_requeues}",
        "PREEMPTED=0",
        "SRUN_PID=",
        "",
        "# Slurm sends --signal=B:SIG to this shell only; the ranks get SIGTERM (torchrun forwards it), save and exit 0.",
        "on_preempt() {",
        f'    echo "launch: $(date +%FT%T) SIG{opts.signal}: stopping the ranks (requeue $RESTART of at most $MAX_REQUEUES done)"',
        "    PREEMPTED=1",
        '    if [ -n "$SRUN_PID" ]; then scancel --signal=TERM "$SLURM_JOB_ID"; fi',
        "}",
        f"trap on_preempt {opts.signal}",
        "",
        "# The rendezvous host: the first node of the allocation, at the address Slurm knows it by.",
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "ADDRS=()",
        'for node in "${NODES[@]}"; do',
        '    addr=$(scontrol show node "$node" | sed -n "s/^.* NodeAddr=\\([^ ]*\\).*$/\\1/p" | head -n 1)',
        '    ADDRS+=("${addr:-$node}")',
        "done",
        'export LAUNCH_NODE_ADDRS="${ADDRS[*]}"',
        "PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))",
        f'echo "launch: job $SLURM_JOB_ID restart $RESTART on ${{NODES[*]}} (${{ADDRS[*]}}), rendezvous ${{ADDRS[0]}}:$PORT, run dir $RUN_DIR"',
        "",
        f"TORCHRUN=({' '.join(map(q, torchrun))} \"--rdzv_endpoint=${{ADDRS[0]}}:$PORT\" \"--rdzv_id=$SLURM_JOB_ID\")",
        f"TRAIN=(-m train --config {q(config)} \"${{ARGS[@]}}\")",
        'if [ "$PREEMPTED" = 0 ]; then  # a signal right at the start: do not launch, fall through to requeue',
        f'    srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1{step_opts} \\',
        '        --output="$LOG_DIR/train-%j-restart$RESTART-%N.log" \\',
        f"        {container}bash -c {q(NODE_SH)} launch-node {q(python)} \"${{TORCHRUN[@]}}\" \"${{TRAIN[@]}}\" &",
        "    SRUN_PID=$!",
        "fi",
        "STATUS=0",
        'if [ -n "$SRUN_PID" ]; then',
        '    while :; do  # a trap interrupts wait; wait again until srun has ended',
        '        wait "$SRUN_PID"; STATUS=$?',
        '        kill -0 "$SRUN_PID" 2>/dev/null || break',
        "    done",
        '    wait "$SRUN_PID" 2>/dev/null; last=$?; [ "$last" = 127 ] || STATUS=$last',
        "fi",
        'echo "launch: $(date +%FT%T) srun exited with $STATUS"',
        'if [ "$PREEMPTED" = 1 ]; then',
        '    if [ "$RESTART" -lt "$MAX_REQUEUES" ]; then',
        '        echo "launch: requeueing job $SLURM_JOB_ID (requeue $((RESTART + 1)) of $MAX_REQUEUES)"',
        '        scontrol requeue "$SLURM_JOB_ID"',
        "        exit 0",
        "    fi",
        '    echo "launch: not requeueing: --max-requeues $MAX_REQUEUES reached; resubmit to continue from the newest checkpoint"',
        "    exit 3",
        "fi",
        'exit "$STATUS"',
        "",
    ]
    return "\n".join(lines)


def container_mounts(opts: SlurmOptions, base_dir: Path, data: list[Path]) -> list[str]:
    paths = [base_dir, Path(opts.config).absolute().parent, *data]
    out = [f"{p}:{p}" for p in dict.fromkeys(paths)] + list(opts.container_mounts)
    for m in out:
        if "," in m:
            raise LaunchError(f"container mount {m!r}: a path with ',' cannot be mounted")
    return out


def prepare(opts: SlurmOptions, argv: list[str]) -> tuple[str, Path, list[str], list[tuple[Path, list[str]]]]:
    """The script text, its path, the sbatch command and the runs (nothing written or submitted)."""
    check_options(opts)
    overrides = list(opts.overrides)
    if opts.gpus_per_node == 0:
        overrides.insert(0, "run.device=cpu")
    base_dir, data = load_run(opts.config, overrides)
    runs = check_runs(opts.config, overrides, opts.sweep)
    mounts = container_mounts(opts, base_dir, data) if opts.container else []
    script = render_script(opts, runs, base_dir, mounts, argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base_dir / "slurm" / f"job-{stamp}.sbatch"
    pattern = "batch-%A_%a.out" if len(runs) > 1 else "batch-%j.out"
    cmd = ["sbatch", "--parsable", f"--output={base_dir / 'slurm' / pattern}", str(path)]
    return script, path, cmd, runs


def run_slurm(opts: SlurmOptions, argv: list[str]) -> int:
    script, path, cmd, runs = prepare(opts, argv)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    if opts.dry_run:
        print(script)
        print(f"# written to {path}; submit with:")
        print(shlex.join(cmd))
        return 0
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"error: {shlex.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = result.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}: {path}")
    print(f"batch log: {cmd[2].split('=', 1)[1].replace('%j', job_id).replace('%A', job_id)}")
    for run_dir, _ in runs:
        print(f"run dir: {run_dir}  (training logs: {run_dir / 'slurm'}/train-<job>-restart<N>-<node>.log)")
    print(f"watch with: tensorboard --logdir {path.parent.parent}")
    return 0
