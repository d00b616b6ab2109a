"""Train the hand pose network from a YAML config and dotted.key=value overrides.

Launch commands (CPU ranks use gloo, GPU ranks NCCL; every rank renders its own synthetic batches):

    # one process
    python -m train --config configs/ci.yaml data.synthetic=synth run.dir=runs/ci
    # two processes on one machine (CPU or two GPUs)
    torchrun --standalone --nproc_per_node=2 -m train --config configs/ci.yaml \\
        data.real=nyu data.synthetic=synth run.dir=runs/ci
    # survive a crashed rank: restarts resume from the newest checkpoint in run.dir
    torchrun --standalone --nproc_per_node=2 --max-restarts=3 -m train --config configs/synthetic.yaml ...
    # many nodes: one torchrun per node with a c10d rendezvous on the first node (HEAD)
    torchrun --nnodes=N --nproc_per_node=8 --node_rank=$NODE_RANK --rdzv_backend=c10d \\
        --rdzv_endpoint=$HEAD:29500 --rdzv_id=my-run -m train --config configs/selfsup.yaml run.dir=/shared/run

Re-running the same command resumes from RUN/checkpoints. SIGTERM/SIGUSR1 make every rank stop at the
next step, checkpoint and exit 0. A bad config key or value exits with status 2 and says which; so does
an unusable checkpoint (init or resume: missing, unreadable, or of another model config), a rasterizer
kernel that cannot run on the rank's CUDA device (unless synthesis.backend=torch), more ranks on a node
than GPUs, a run.dir another live training holds (RUN/run.lock names it), and a corrupt shard (every rank stops at the same step with one line naming the shard;
``data.on_corrupt=skip`` drops corrupt samples instead). A non-finite loss or gradient norm never updates
the weights and no checkpoint with non-finite weights is written; ``optim.on_nonfinite=stop`` (the default)
then exits with status 3 naming the step and the terms, ``skip`` goes on without that update.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from shards.format import ShardsError
from train.checkpoint import CheckpointError, CheckpointWriteError
from train.config import ConfigError, check_device, dump_config, load_config, validate
from train.distributed import agree_on_error, barrier, get_dist_env, select_device, setup_distributed, teardown_distributed
from train.loop import Trainer
from train.optim import DivergenceError
from train.prior import PriorFileError
from train.run import RunDirLocked, RunLock, setup_run


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML run config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value",
                        help="config overrides, e.g. run.steps=100 loss.projection.weight=0.5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--check-config", action="store_true",
                        help="check the config (every value, the data, run.dir, the device) and exit: 0 when a run "
                             "would start, else 2 and the error; writes nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        validate(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        return 0

    try:  # before the rendezvous: a rank that cannot start must not leave its peers waiting in it
        env = get_dist_env()
        device = select_device(cfg.run.device, env)
        check_device(cfg, device)
    except (RuntimeError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_distributed(env, device)
    trainer = None
    failed = False
    group_usable = False  # every rank got here alive and in step (a clean end, or an error all agreed on)
    lock = None
    try:  # rank 0 holds the run dir's lock; every rank learns whether it got it
        lock = agree_on_error(lambda: RunLock(Path(cfg.run.dir)).acquire() if env.is_main else None, RunDirLocked)
        run_dir = setup_run(cfg.run, env)
        trainer = Trainer(cfg, env, device, run_dir)
        finished = trainer.train()
        barrier()  # no rank tears the process group down while another still logs or evaluates
        logging.getLogger("train").info("%s at step %d", "finished" if finished else "stopped", trainer.step)
        group_usable = True
        return 0
    except (CheckpointError, ShardsError, DivergenceError, RunDirLocked, PriorFileError) as exc:  # alike on every rank
        # Agreed errors (every rank raised it at the same point of a collective): the group is in step, and
        # rank 0 alone says it; other errors every rank says (the ranks share torchrun's stderr: one write each).
        group_usable = isinstance(exc, (RunDirLocked, CheckpointWriteError)) or (
            isinstance(exc, (ShardsError, DivergenceError)) and trainer is not None)
        if env.is_main or not group_usable:
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
        failed = True
        return 3 if isinstance(exc, DivergenceError) else 2
    except OSError as exc:  # a run dir file rank 0 writes (log, metrics): disk full, read-only, permissions
        sys.stderr.write(f"error: cannot write {exc.filename or cfg.run.dir}: {exc.strerror or exc}\n")
        failed = True
        return 2
    finally:
        if trainer is not None:
            trainer.close()
        if lock is not None:
            lock.release()
        if failed:  # torchrun SIGTERMs the ranks still exiting once one has exited: let them end with status 2
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (SIG_IGN outlasts interpreter shutdown; a handler not)
        if group_usable:  # after a failure a peer may be gone: destroying the group could block
            teardown_distributed()


if __name__ == "__main__":
    sys.exit(main())
