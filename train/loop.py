"""The training loop: components built once, then train / maybe save / maybe evaluate / log per step.

:class:`Trainer` owns the pieces (hand model, synthesizer, network in DDP, losses, Adam with the step
schedule, checkpointer, metrics sink, evaluator, preemption flag); :func:`train_step` is the one
optimisation step on already prepared tensors (the DDP test drives it directly).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from train.checkpoint import (CheckpointError, Checkpointer, load_model_weights, model_differences,
                              read_checkpoint, seed_everything)
from train.config import EvalConfig, OptimConfig, TrainConfig, dump_config, to_plain
from train.data import build_streams
from train.distributed import DistEnv, PreemptionFlag, all_gather_floats, is_distributed
from train.losses import REAL_TERMS, SYNTHETIC_TERMS, LossConfig, Losses, build_losses
from train.metrics import build_metrics_sink
from train.monitor import Evaluator, ImageMaker, step_images
from train.network import NetworkOutput, build_network
from train.synthesis import Synthesizer, held_out_batch

log = logging.getLogger(__name__)

ENV_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_",
                "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST", "SLURM_RESTART_COUNT",
                "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "NCCL_", "HOSTNAME")


# ---------------------------------------------------------------------------------------------------
# Run directory and optimisation pieces.


def setup_run_dir(cfg: TrainConfig, env: DistEnv) -> Path:
    """Create RUN, log the environment and command line, write the resolved config.yaml (rank 0)."""
    run_dir = Path(cfg.run.dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        with open(run_dir / "env.log", "a") as f:
            f.write(describe_environment(env) + "\n")
    return run_dir


def _launcher_command() -> str:
    # torchrun is the parent process of every rank; its command line is what the user typed.
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    except OSError:
        return "?"


def describe_environment(env: DistEnv) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    variables = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    lines = [
        f"=== start {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"command: {' '.join([sys.executable] + sys.argv)}",
        f"launcher: {_launcher_command() if 'TORCHELASTIC_RUN_ID' in os.environ else 'none'}",
        f"cwd: {os.getcwd()}",
        f"host: {socket.gethostname()}  platform: {platform.platform()}",
        f"python: {sys.version.split()[0]}  torch: {torch.__version__}  cuda: {torch.version.cuda}  "
        f"gpus: {torch.cuda.device_count() if torch.cuda.is_available() else 0}  git: {commit}",
        f"world: rank {env.rank} of {env.world_size}",
        *(f"env {k}={v}" for k, v in variables.items()),
    ]
    return "\n".join(lines)


def lr_factor(step: int, steps: int, cfg: OptimConfig) -> float:
    """The step schedule: ``decay_factor`` once for each milestone (a fraction of the run) passed."""
    passed = sum(step >= int(fraction * steps) for fraction in cfg.decay_at)
    return cfg.decay_factor ** passed


def build_optimizer(cfg: OptimConfig, net: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, cfg))
    return optimizer, scheduler


def active_losses(cfg: TrainConfig) -> LossConfig:
    """The loss config with the terms of absent data sources switched off (no real data: no prior needed)."""
    loss = copy.deepcopy(cfg.loss)
    has_real = bool(cfg.data.real) and cfg.data.real_batch > 0
    has_synthetic = bool(cfg.data.synthetic) and cfg.data.synthetic_batch > 0
    for names, present in ((REAL_TERMS, has_real), (SYNTHETIC_TERMS, has_synthetic)):
        for name in names:
            if not present:
                getattr(loss, name).enabled = False
    return loss


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"optim.amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    return torch.autocast(device.type, dtype=dtypes[amp])


@dataclass
class StepResult:
    loss: torch.Tensor  # detached total loss
    terms: dict[str, torch.Tensor]  # detached weighted terms
    output: NetworkOutput


def train_step(model: nn.Module, losses: Losses, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: torch.amp.GradScaler, *, synthetic: tuple[torch.Tensor, torch.Tensor] | None,
               real: dict[str, Any] | None, step: int, amp: str = "none",
               grad_clip: float | None = None) -> StepResult:
    """One update on synthetic (depth (B,1,S,S), keypoints) and/or a real NYU batch, in one forward.

    One forward over the concatenated images keeps DDP to one gradient reduction per step. Every loss
    term is a batch mean, so DDP's gradient average over ranks equals one rank on the union batch.
    """
    device = next(model.parameters()).device
    parts = []
    if synthetic is not None:
        parts.append(synthetic[0].to(device, non_blocking=True))
    if real is not None:
        depth = real["depth"]
        parts.append(depth.reshape(-1, 1, *depth.shape[-2:]).to(device, torch.float32, non_blocking=True))
    images = torch.cat(parts) if len(parts) > 1 else parts[0]
    with autocast(device, amp):
        output: NetworkOutput = model(images)
        terms: dict[str, torch.Tensor] = {}
        n_synthetic = synthetic[0].shape[0] if synthetic is not None else 0
        if synthetic is not None:
            terms.update(losses.synthetic(output.narrow(0, n_synthetic), synthetic[1]))
        if real is not None:
            terms.update(losses.real(output.narrow(n_synthetic, images.shape[0] - n_synthetic), real, step))
    if not terms:
        raise ValueError("every loss term for the configured data is disabled: nothing to train")
    loss = torch.stack([t.float() for t in terms.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return StepResult(loss.detach(), {k: v.detach() for k, v in terms.items()}, output)


# ---------------------------------------------------------------------------------------------------


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0
    render: float = 0.0
    loss: torch.Tensor | float = 0.0
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, result: StepResult, samples: int, seconds: float, data_wait: float, render: float) -> None:
        self.steps += 1
        self.samples += samples
        self.seconds += seconds
        self.data_wait += data_wait
        self.render += render
        self.loss = self.loss + result.loss
        for name, value in result.terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value


class Trainer:
    """Builds every component from the config; :meth:`train` runs the loop."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, device: torch.device, run_dir: Path) -> None:
        from hand import HandModel

        self.cfg, self.env, self.device, self.run_dir = cfg, env, device, run_dir
        # Before anything slow: a SIGTERM during setup must set the flag, not kill the rank.
        self.preemption = PreemptionFlag().install()
        seed_everything(cfg.run.seed + env.rank)
        size, cube = cfg.data.size, cfg.data.cube
        self.hand = HandModel().to(device)
        self.synthesizer = Synthesizer(self.hand, size=size, cube_mm=cube, cfg=cfg.synthesis)
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        self.net = build_network(cfg.model, num_spheres=self.hand.num_spheres, size=size, cube_mm=cube).to(device)
        seed_everything(cfg.run.seed + env.rank)
        self.losses = build_losses(active_losses(cfg), self.hand, size=size, cube_mm=cube).to(device)
        self.optimizer, self.scheduler = build_optimizer(cfg.optim, self.net, cfg.run.steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.optim.amp == "fp16")
        self.checkpointer = Checkpointer(
            cfg.checkpoint, run_dir / "checkpoints", config=to_plain(cfg), rank=env.rank,
            world_size=env.world_size, seed=cfg.run.seed, batches_per_epoch=cfg.data.batches_per_epoch,
            states={"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler,
                    "scaler": self.scaler})
        self.step = self.checkpointer.load()
        if self.step == 0 and cfg.init:
            self._load_init(cfg.init)
        self.model: nn.Module = self.net
        if is_distributed():
            self.model = DistributedDataParallel(self.net, device_ids=[device] if device.type == "cuda" else None)
        self.synthetic_stream, self.real_stream = build_streams(cfg.data, seed=cfg.run.seed)
        for stream in (self.synthetic_stream, self.real_stream):
            if stream is not None:
                stream.start(self.step)
        self.metrics = build_metrics_sink(cfg.metrics, run_dir, is_main=env.is_main, total_steps=cfg.run.steps)
        self.evaluator = self._build_evaluator(cfg.eval)
        self.images = ImageMaker(self.hand.radii, size, cube)
        self.window = Window()

    def _load_init(self, path: str) -> None:
        """The ``init`` key: model weights only (a fresh optimizer and schedule); CheckpointError if unusable."""
        state = read_checkpoint(path)
        differences = model_differences(state["config"].get("model") or {}, to_plain(self.cfg.model))
        if differences:
            raise CheckpointError(f"init checkpoint {path} was trained with another model config "
                                  f"({'; '.join(differences)}); make the model section match")
        load_model_weights(self.net, state, path)
        log.info("initialised the network from %s (step %s)", path, state.get("step"))

    def _build_evaluator(self, cfg: EvalConfig) -> Evaluator | None:
        if cfg.every <= 0 and not cfg.at_start:
            return None
        synthetic = None
        if self.cfg.data.synthetic and self.env.is_main:
            synthetic = self.synthesizer(held_out_batch(self.hand, cfg.synthetic_samples, cfg.synthetic_seed))
        return Evaluator(real_root=self.cfg.data.real, synthetic=synthetic, batch_size=cfg.batch_size,
                         real_batches=cfg.real_batches, num_workers=min(self.cfg.data.num_workers, 1),
                         device=self.device, rank=self.env.rank, world_size=self.env.world_size)

    # -- the loop ---------------------------------------------------------------------------------

    def train(self) -> bool:
        """Run to ``run.steps``; False when stopped early (preemption or ``run.stop_at``), after a checkpoint."""
        cfg = self.cfg
        if self.step == 0 and cfg.eval.at_start:
            self.evaluate()
        while self.step < cfg.run.steps:
            if self.step == cfg.run.stop_at or self.preemption.should_stop():
                log.info("stopping at step %d (%s)", self.step,
                         "preempted" if self.preemption.received else "run.stop_at")
                self.checkpointer.save(self.step, last=True)
                return False
            view = self.one_step()
            self.step += 1
            self.checkpointer.save(self.step, last=self.step == cfg.run.steps)
            if cfg.eval.every > 0 and (self.step % cfg.eval.every == 0 or self.step == cfg.run.steps):
                self.evaluate()
            if self.step % cfg.metrics.log_every == 0 or self.step == cfg.run.steps:
                self.log_scalars()
            if cfg.metrics.image_every > 0 and self.step % cfg.metrics.image_every == 0 and self.env.is_main:
                for tag, image in step_images(self.images, view).items():
                    self.metrics.image(self.step, tag, image)
        return True

    def one_step(self) -> dict[str, Any]:
        """Fetch, render and update once; returns what the image panels need."""
        start = time.perf_counter()
        synthetic_batch = self.synthetic_stream.next() if self.synthetic_stream else None
        real = self.real_stream.next() if self.real_stream else None
        fetched = time.perf_counter()
        synthetic = self.synthesizer(synthetic_batch) if synthetic_batch is not None else None
        self._sync()
        rendered = time.perf_counter()
        result = train_step(self.model, self.losses, self.optimizer, self.scheduler, self.scaler,
                            synthetic=synthetic, real=real, step=self.step, amp=self.cfg.optim.amp,
                            grad_clip=self.cfg.optim.grad_clip)
        self._sync()
        samples = (synthetic[0].shape[0] if synthetic else 0) + (real["depth"].shape[0] * real["depth"].shape[1]
                                                                if real else 0)
        self.window.add(result, samples, time.perf_counter() - start, fetched - start, rendered - fetched)
        n_synthetic = synthetic[0].shape[0] if synthetic else 0
        return {"synthetic_depth": synthetic[0] if synthetic else None,
                "synthetic_target": synthetic[1] if synthetic else None,
                "synthetic_joints": result.output.joints[:n_synthetic] if synthetic else None,
                "real_depth": real["depth"] if real else None,
                "real_joints": result.output.joints[n_synthetic:] if real else None}

    def _sync(self) -> None:
        # Timings of data wait and rendering are only meaningful once the GPU has caught up.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluate(self) -> None:
        """Collective: every rank evaluates its share; rank 0 logs."""
        if self.evaluator is not None:
            values = self.evaluator(self.net)  # its loader workers ignore a job-wide SIGTERM (shards.reader)
            if values:
                self.metrics.scalars(self.step, values)

    def log_scalars(self) -> None:
        """Gather every rank's window (collective), then rank 0 writes the scalars."""
        w = self.window
        if w.steps == 0:
            return
        names = sorted(w.terms)
        local = [float(w.loss) / w.steps, w.samples / max(w.seconds, 1e-9), w.data_wait / max(w.seconds, 1e-9),
                 w.render / max(w.seconds, 1e-9)] + [float(w.terms[n]) / w.steps for n in names]
        ranks = all_gather_floats(local)
        world = len(ranks)
        values = {"train/loss": sum(r[0] for r in ranks) / world, "train/lr": self.optimizer.param_groups[0]["lr"],
                  "train/samples_per_s": sum(r[1] for r in ranks),
                  "train/data_wait_fraction": sum(r[2] for r in ranks) / world,
                  "train/render_fraction": sum(r[3] for r in ranks) / world}
        values.update({f"train/samples_per_s/rank{k}": r[1] for k, r in enumerate(ranks)})
        values.update({f"train/loss/{n}": sum(r[4 + i] for r in ranks) / world for i, n in enumerate(names)})
        self.metrics.scalars(self.step, values)
        self.window = Window()

    def close(self) -> None:
        self.preemption.uninstall()
        self.metrics.close()
