"""Launch training: ``python -m launch local`` (torchrun here) or ``python -m launch slurm`` (sbatch).

    # 2 ranks on this machine (GPUs, or CPU processes with gloo); log in RUN/launch/, Ctrl-C checkpoints
    python -m launch local --nproc 2 --config configs/ci.yaml data.synthetic=synth run.dir=runs/ci
    # 2 nodes x 8 GPUs, preempted/time-limited jobs requeue up to 5 times and resume
    python -m launch slurm --nodes 2 --gpus-per-node 8 --config configs/selfsup.yaml --time 24:00:00 \\
        --max-requeues 5 run.dir=/shared/runs/selfsup data.real=/shared/nyu data.synthetic=/shared/synth
    # print the batch script and the sbatch command only
    python -m launch slurm --nodes 2 --gpus-per-node 0 --config configs/ci.yaml --dry-run run.dir=runs/x ...
    # a job array: one run dir per combination, RUN/run.seed-0, RUN/run.seed-1, ..., at most 2 at once
    python -m launch slurm --nodes 1 --gpus-per-node 1 --config configs/ci.yaml --sweep run.seed=0,1,2 \
        --array-parallelism 2 ...
    # site options, setup lines before srun, environment for the ranks
    python -m launch slurm ... --sbatch qos=high --sbatch constraint=a100 --sbatch mem=0 \
        --setup 'module load cuda/12.4' --setup 'source /shared/venv/bin/activate' --env NCCL_DEBUG=WARN

A bad option, config key or data path exits with status 2 and names the value; nothing is submitted.
Options and dotted.key=value overrides may come in any order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from launch.config import LaunchError, SweepAxis
from launch.local import LocalOptions, run_local
from launch.slurm import Signal, SlurmOptions, run_slurm


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its subcommands' parsers."""
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="torchrun on this machine",
                           description="Run python -m train under torchrun on this machine, on a free port. "
                           "Each start logs to RUN/launch/local-<time>-<pid>.log; SIGINT/SIGTERM/SIGUSR1/SIGUSR2 "
                           "make the ranks checkpoint and exit; re-running resumes.")
    local.add_argument("--config", type=Path, required=True, help="YAML run config (configs/*.yaml)")
    local.add_argument("--nproc", type=int, default=1, help="ranks on this machine (default 1)")
    local.add_argument("--max-restarts", type=int, default=0,
                       help="torchrun restarts after a crashed rank; each resumes from the newest checkpoint")
    local.add_argument("--python", default=sys.executable, help="interpreter for torchrun (default: this one)")
    local.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides")

    slurm = sub.add_parser("slurm", help="write and submit an sbatch script",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Write RUN/slurm/job-<time>.sbatch (one torchrun per node, c10d rendezvous "
                           "on the first node, preemption signal trapped, requeue) and submit it with sbatch.")
    slurm.add_argument("--config", type=Path, required=True, help="YAML run config (configs/*.yaml)")
    slurm.add_argument("--nodes", type=int, required=True, help="nodes; one torchrun per node")
    slurm.add_argument("--gpus-per-node", type=int, required=True,
                       help="GPUs per node; 0 runs CPU-only nodes with gloo (adds run.device=cpu)")
    slurm.add_argument("--nproc-per-node", type=int, help="ranks per node (default: the GPUs, or 1 on CPU nodes)")
    slurm.add_argument("--cpus-per-node", type=int,
                       help="CPUs of the one task per node (--cpus-per-task; default: per rank, 1 plus "
                       "data.num_workers per data source)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--account", help="Slurm account")
    slurm.add_argument("--time", help="time limit, HH:MM:SS or D-HH:MM:SS")
    slurm.add_argument("--job-name", default="sphere-hand", help="job name (default sphere-hand)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. qos=high, constraint=a100, mem=0, exclusive "
                       "(repeatable; the value is quoted)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line the batch shell runs before srun, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                       help="an environment variable for the batch shell and every rank (repeatable)")
    slurm.add_argument("--container", help="pyxis image (srun --container-image) or an apptainer .sif file; "
                       "the run dir, the config's dir and the data dirs are mounted at their own paths")
    slurm.add_argument("--container-mount", action="append", default=[], dest="container_mounts",
                       metavar="SRC[:DST]", help="another mount into the container (repeatable)")
    slurm.add_argument("--max-requeues", type=int, default=3,
                       help="requeues after timeouts and after preemptions that saved no new checkpoint "
                       "(default 3); preemptions after progress requeue without counting; see RUN/slurm/requeues.log")
    slurm.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts of crashed ranks per job")
    slurm.add_argument("--signal", default="USR2", choices=get_args(Signal),
                       help="signal Slurm sends the batch shell before the time limit (default USR2; "
                       "NCCL may own USR1)")
    slurm.add_argument("--signal-secs", type=int, default=120,
                       help="seconds before the time limit to send it (default 120)")
    slurm.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                       help="job array over values of a config key, one run dir each (repeatable: all combinations)")
    slurm.add_argument("--array-parallelism", type=int, metavar="N",
                       help="run at most N tasks of the --sweep array at once (--array=...%%N)")
    slurm.add_argument("--python", help="interpreter on the nodes (default: this one; `python` in a container)")
    slurm.add_argument("--dry-run", action="store_true", help="check everything as a submission does, print "
                       "the script and the sbatch command; write and submit nothing")
    slurm.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides")
    return parser, {"local": local, "slurm": slurm}


def parse(argv: list[str]) -> argparse.Namespace:
    """Options and overrides in any order: a subcommand's parser reads intermixed arguments (argparse cannot
    do that through subparsers)."""
    parser, commands = build_parser()
    if not argv or argv[0] not in commands:
        return parser.parse_args(argv)
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    try:
        if args.command == "local":
            return run_local(LocalOptions(config=args.config, nproc=args.nproc, max_restarts=args.max_restarts,
                                          python=args.python, overrides=args.overrides))
        options = {k: v for k, v in vars(args).items() if k not in ("command", "sweep")}
        opts = SlurmOptions(sweep=[SweepAxis.parse(s) for s in args.sweep], **options)
        return run_slurm(opts, ["python", "-m", "launch", *argv])
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
