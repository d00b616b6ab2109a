"""``python -m launch local``: torchrun on this machine, a log file per start, signals forwarded.

    python -m launch local --nproc 2 --config configs/ci.yaml data.synthetic=synth run.dir=runs/ci

torchrun runs in its own session so a Ctrl-C reaches only the launcher, which turns SIGINT, SIGTERM,
SIGUSR1, SIGUSR2 and SIGHUP into one SIGTERM for torchrun: torchrun forwards SIGTERM to the ranks (it
forwards only ``TORCHELASTIC_SIGNALS_TO_HANDLE``, SIGTERM/SIGINT/SIGHUP/SIGQUIT by default), and the
ranks checkpoint and exit 0. A second signal kills torchrun's session.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from launch.config import LaunchError, check_config

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


@dataclass
class LocalOptions:
    """Options of ``launch local``."""

    config: Path  # YAML run config
    nproc: int = 1  # processes (ranks) on this machine: one per GPU, or CPU slots
    max_restarts: int = 0  # torchrun restarts after a crashed rank (each resumes from the newest checkpoint)
    python: str = sys.executable  # interpreter that runs torchrun and the trainer
    overrides: list[str] = field(default_factory=list)  # dotted.key=value config overrides


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def build_command(opts: LocalOptions, port: int) -> list[str]:
    return [opts.python, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={opts.nproc}",
            f"--max-restarts={opts.max_restarts}", "--master_addr=127.0.0.1", f"--master_port={port}",
            "-m", "train", "--config", str(opts.config), *opts.overrides]


def run_local(opts: LocalOptions) -> int:
    if opts.nproc < 1:
        raise LaunchError(f"--nproc must be >= 1, got {opts.nproc}")
    if opts.max_restarts < 0:
        raise LaunchError(f"--max-restarts must be >= 0, got {opts.max_restarts}")
    run_dir = check_config(opts.config, opts.overrides)
    log_dir = run_dir / "launch"
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = log_dir / f"local-{stamp}-{os.getpid()}.log"
    cmd = build_command(opts, free_port())
    print(f"launch: {subprocess.list2cmdline(cmd)}", flush=True)
    print(f"launch: log {log_path}", flush=True)
    print(f"launch: watch with: tensorboard --logdir {run_dir}", flush=True)
    with open(log_path, "ab") as log:
        log.write(f"=== {stamp} {subprocess.list2cmdline(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        received: list[int] = []

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            if len(received) == 1:
                print(f"launch: got {signal.Signals(signum).name}; asking the ranks to checkpoint and stop",
                      file=sys.stderr, flush=True)
                proc.send_signal(signal.SIGTERM)
            else:
                print("launch: second signal; killing torchrun", file=sys.stderr, flush=True)
                os.killpg(proc.pid, signal.SIGKILL)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        seen: set[str] = set()
        tee = threading.Thread(target=_tee, args=(proc.stdout, log, seen), daemon=True)
        tee.start()
        try:
            status = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        tee.join(timeout=10)
    if received and status != 0 and "SignalException" in seen and "ChildFailedError" not in seen:
        # torchrun re-raises the signal it forwarded (exit 1) although every rank saved and exited 0
        print(f"launch: stopped on {signal.Signals(received[0]).name}; re-run the same command to resume; "
              f"log {log_path}", flush=True)
        return 0
    print(f"launch: torchrun exited with {status}; log {log_path}", flush=True)
    return status


def _tee(stream, log, seen: set[str]) -> None:
    for line in iter(stream.readline, b""):
        for marker in ("SignalException", "ChildFailedError"):
            if marker.encode() in line:
                seen.add(marker)
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        log.write(line)
        log.flush()
