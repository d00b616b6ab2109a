"""The training loop: components built once, then train / maybe save / maybe evaluate / log per step.

:class:`Trainer` owns the pieces (hand model, synthesizer, network in DDP, losses, optimizer and
schedule of :mod:`train.optim`, checkpointer, metrics sink, evaluator, preemption flag) and
:meth:`Trainer.train` is the loop; :func:`train_step` is the one optimisation step on already prepared
tensors (the DDP test drives it directly).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hand import HandModel
from shards.format import ShardsError
from train.checkpoint import Checkpointer
from train.config import TrainConfig, active_losses, dump_config
from train.data import build_streams
from train.distributed import (DistEnv, PreemptionFlag, agree, agree_on_error, all_gather_floats, describe_process_group,
                               is_distributed)
from train.losses import Losses, build_losses
from train.metrics import build_metrics_sink
from train.monitor import ImageMaker, build_evaluator, step_images
from train.network import NetworkOutput, build_network
from train.optim import DivergenceError, autocast, build_optimizer
from train.run import record_start
from train.schema import to_plain
from train.synthesis import Synthesizer, held_out_batch
from train.timing import SectionTimer, wait_for_device

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    loss: torch.Tensor  # detached total loss
    terms: dict[str, torch.Tensor]  # detached weighted terms
    output: NetworkOutput
    nonfinite: list[str] = field(default_factory=list)  # this rank's non-finite terms ("gradient norm"): [] if finite


def gradient_norm(model: nn.Module, grad_clip: float | None) -> torch.Tensor:
    """The global gradient norm (after DDP's reduction: the same on every rank), clipped to ``grad_clip``."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        return nn.utils.clip_grad_norm_(parameters, grad_clip)
    return nn.utils.get_total_norm([p.grad for p in parameters])


def train_step(model: nn.Module, losses: Losses, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: torch.amp.GradScaler, *, synthetic: tuple[torch.Tensor, torch.Tensor] | None,
               real: dict[str, Any] | None, step: int, amp: str = "none",
               grad_clip: float | None = None) -> StepResult:
    """One update on synthetic (depth (B,1,S,S), keypoints) and/or a real NYU batch, in one forward.

    One forward over the concatenated images keeps DDP to one gradient reduction per step. Every loss
    term is a batch mean, so DDP's gradient average over ranks equals one rank on the union batch.

    A non-finite gradient norm drops the update (the norm is the reduced one, so every rank drops it; under
    fp16 the grad scaler does that itself); ``nonfinite`` names what was not finite on this rank. Reading the
    two numbers waits for the device once per step: the price of never stepping on non-finite gradients.
    """
    device = next(model.parameters()).device
    parts = []
    if synthetic is not None:
        parts.append(synthetic[0].to(device, non_blocking=True))
    if real is not None:
        depth = real["depth"]
        parts.append(depth.reshape(-1, 1, *depth.shape[-2:]).to(device, torch.float32, non_blocking=True))
    images = torch.cat(parts) if len(parts) > 1 else parts[0]
    with autocast(device, amp):  # the network's forward only; its outputs are fp32 (train.network)
        output: NetworkOutput = model(images)
    # Every loss, the sphere renderer inside the fitting terms included, runs in fp32 outside autocast: the
    # data-to-model distance |p|^2 + |c|^2 - 2 p.c loses millimetres in bf16.
    terms: dict[str, torch.Tensor] = {}
    n_synthetic = synthetic[0].shape[0] if synthetic is not None else 0
    if synthetic is not None:
        terms.update(losses.synthetic(output.narrow(0, n_synthetic), synthetic[1]))
    if real is not None:
        terms.update(losses.real(output.narrow(n_synthetic, images.shape[0] - n_synthetic), real, step))
    if not terms:
        raise ValueError("every loss term for the configured data is disabled: nothing to train")
    loss = torch.stack(list(terms.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = gradient_norm(model, grad_clip)
    loss_finite, norm_finite = torch.isfinite(torch.stack([loss.detach(), norm.to(loss.device)])).tolist()
    norm_finite = norm_finite or scaler.is_enabled()  # fp16: the scaler skips such a step and lowers its scale
    if norm_finite:
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()
    nonfinite = [] if loss_finite and norm_finite else (
        [name for name, value in terms.items() if not torch.isfinite(value)] + ([] if norm_finite else ["gradient norm"]))
    return StepResult(loss.detach(), {k: v.detach() for k, v in terms.items()}, output, nonfinite)


@dataclass
class Batch:
    """One step's inputs: rendered synthetic (depth, keypoints) and the real NYU batch (None if absent)."""

    synthetic: tuple[torch.Tensor, torch.Tensor] | None
    real: dict[str, Any] | None
    data_wait: float  # seconds waiting for the loaders (and the ranks' agreement on them)

    @property
    def samples(self) -> int:
        """Images the network sees: synthetic samples plus 3 views per real frame."""
        synthetic = self.synthetic[0].shape[0] if self.synthetic is not None else 0
        real = self.real["depth"].shape[0] * self.real["depth"].shape[1] if self.real is not None else 0
        return synthetic + real


@dataclass
class Window:
    """Sums over the steps since the last log line.

    ``seconds`` is the host's time in the steps (fetch, render, update) plus its waits for the device's queued
    work before anything else reads the device (log, checkpoint, evaluation): the steps never wait for the
    device themselves, so over a window the sum is the time the steps took. ``render`` is read from the
    :class:`SectionTimer` at log time."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0
    loss: torch.Tensor | float = 0.0
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, result: StepResult, batch: Batch, seconds: float) -> None:
        self.steps += 1
        self.samples += batch.samples
        self.seconds += seconds
        self.data_wait += batch.data_wait
        self.loss = self.loss + result.loss
        for name, value in result.terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value

    def local_values(self, render: float) -> dict[str, float]:
        """This rank's means and rates, by name (every rank has the same names: the same terms run);
        ``render``: the window's seconds of rendering."""
        seconds = max(self.seconds, 1e-9)
        values = {"loss": float(self.loss) / self.steps, "samples_per_s": self.samples / seconds,
                  "data_wait_fraction": self.data_wait / seconds, "render_fraction": render / seconds}
        values.update({f"loss/{name}": float(value) / self.steps for name, value in sorted(self.terms.items())})
        return values


class Trainer:
    """Builds every component from the config; :meth:`train` runs the loop."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, device: torch.device, run_dir: Path) -> None:
        self.cfg, self.env, self.device, self.run_dir = cfg, env, device, run_dir
        # Before anything slow: a SIGTERM during setup must set the flag, not kill the rank.
        self.preemption = PreemptionFlag().install()
        self.hand = HandModel().to(device)
        self.synthesizer = Synthesizer(self.hand, crop=cfg.crop, cfg=cfg.synthesis)
        with torch.random.fork_rng(devices=[]):  # the same initial weights on every rank (DDP broadcasts them too)
            torch.manual_seed(cfg.run.seed)
            self.net = build_network(cfg.model, num_spheres=self.hand.num_spheres, crop=cfg.crop)
        self.net = self.net.to(device)
        self.losses = build_losses(active_losses(cfg), self.hand, crop=cfg.crop).to(device)
        self.optimizer, self.scheduler, self.scaler = build_optimizer(cfg.optim, self.net, cfg.run.steps, device)
        self.checkpointer = Checkpointer(
            cfg.checkpoint, run_dir / "checkpoints", config=to_plain(cfg), rank=env.rank,
            world_size=env.world_size, seed=cfg.run.seed, batches_per_epoch=cfg.data.batches_per_epoch,
            states={"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler,
                    "scaler": self.scaler})
        self.model: nn.Module = self.net
        log.info("training on %s, %s", device, describe_process_group())
        if is_distributed():
            self.model = DistributedDataParallel(self.net, device_ids=[device] if device.type == "cuda" else None)
        self.synthetic_stream, self.real_stream = build_streams(cfg.data, crop=cfg.crop, seed=cfg.run.seed)
        self.metrics = build_metrics_sink(cfg.metrics, run_dir, is_main=env.is_main, total_steps=cfg.run.steps)
        held_out = cfg.eval.synthetic_samples, cfg.eval.synthetic_seed
        self.evaluator = build_evaluator(
            cfg.eval, real_root=cfg.data.real, num_workers=min(cfg.data.num_workers, 1), device=device,
            rank=env.rank, world_size=env.world_size,
            synthetic=(lambda: self.synthesizer(held_out_batch(self.hand, *held_out))) if cfg.data.synthetic else None)
        self.images = ImageMaker(self.hand.radii, cfg.crop)
        self.window = Window()
        self.render_timer = SectionTimer(device)
        self.step = 0
        self.skipped = 0.0  # corrupt samples dropped over all ranks (data.on_corrupt=skip), as last logged
        self.nonfinite: str | None = None  # this rank's non-finite step, for the next agreement
        self.nonfinite_steps = 0  # steps without an update (optim.on_nonfinite=skip) since this start
        self.nonfinite_in_a_row = 0

    def load(self) -> None:
        """Resume from the newest checkpoint of the run, else start from ``init`` weights (if set); position
        the streams (collective: a corrupt shard on any rank stops every rank here with ShardsError)."""
        self.step = self.checkpointer.load(self.cfg.init)
        agree_on_error(lambda: [stream.start(self.step) for stream in self.streams], ShardsError)

    @property
    def streams(self) -> list[Any]:
        return [stream for stream in (self.synthetic_stream, self.real_stream) if stream is not None]

    # -- the loop ---------------------------------------------------------------------------------

    def train(self) -> bool:
        """Run to ``run.steps``; False when stopped early (preemption or ``run.stop_at``), after a checkpoint."""
        cfg = self.cfg
        self.load()
        record_start(self.run_dir, dump_config(cfg), self.env)  # accepted: the run's record may change now
        if self.step == 0 and cfg.eval.at_start:
            self.evaluate()
        while self.step < cfg.run.steps:
            stepped = self.train_one() if self.step != cfg.run.stop_at else None
            if stepped is None:
                log.info("stopping at step %d (%s)", self.step,
                         "preempted" if self.preemption.received else "run.stop_at")
                self.checkpointer.save(self.step, last=True)
                return False
            self.step += 1
            last, evaluating = self.step == cfg.run.steps, cfg.eval.due(self.step, cfg.run.steps)
            if evaluating or self.checkpointer.should_save(self.step, last=last):
                self.window.seconds += wait_for_device(self.device)  # the steps' queued work is training time
            self.checkpointer.save(self.step, last=last)
            if evaluating:
                self.evaluate()
            self.log(*stepped)
        self.agree_step(stop=False, problem=None)  # the last step's non-finite loss, if any
        if cfg.data.on_corrupt == "skip":
            log.info("data.on_corrupt=skip: %d corrupt sample(s) skipped over all ranks (data/skipped_samples)",
                     self.skipped)
        return True

    def train_one(self) -> tuple[Batch, StepResult] | None:
        """Fetch, render and update once; None (nothing trained) when a rank was preempted."""
        start = time.perf_counter()
        batch = self.next_batch()
        if batch is None:
            return None
        result = train_step(self.model, self.losses, self.optimizer, self.scheduler, self.scaler,
                            synthetic=batch.synthetic, real=batch.real, step=self.step, amp=self.cfg.optim.amp,
                            grad_clip=self.cfg.optim.grad_clip)
        if result.nonfinite:  # told to every rank by the next step's agreement
            self.nonfinite = f"step {self.step + 1}: non-finite {', '.join(result.nonfinite)}"
        self.window.add(result, batch, time.perf_counter() - start)
        return batch, result

    def next_batch(self) -> Batch | None:
        """The next batch of each stream, the synthetic one rendered; None when any rank was preempted.

        One collective per step (:meth:`agree_step`) tells every rank whether a rank received a preemption
        signal, whether a rank's read failed (a corrupt shard: every rank raises ShardsError with its
        message) and whether the previous step was non-finite on a rank. The batch read before a stop is not
        consumed: a resumed run reads it at the same step.
        """
        start = time.perf_counter()
        synthetic = real = problem = None
        try:
            synthetic = self.synthetic_stream.next() if self.synthetic_stream else None
            real = self.real_stream.next() if self.real_stream else None
        except ShardsError as exc:
            problem = str(exc)
        if self.agree_step(self.preemption.received is not None, problem):
            return None
        data_wait = time.perf_counter() - start
        with self.render_timer():
            rendered = self.synthesizer(synthetic) if synthetic is not None else None
        return Batch(rendered, real, data_wait=data_wait)

    def agree_step(self, stop: bool, problem: str | None) -> bool:
        """The step's one collective (:func:`agree`): whether any rank stops; raises ShardsError for a rank's
        read error and DivergenceError for a non-finite step under ``optim.on_nonfinite=stop`` (or too many
        in a row under ``skip``), on every rank alike."""
        stop, error, nonfinite = agree(stop, problem, self.nonfinite)
        self.nonfinite = None
        if error is not None:
            raise ShardsError(error)
        if nonfinite is None:
            self.nonfinite_in_a_row = 0
            return stop
        cfg = self.cfg.optim
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        if cfg.on_nonfinite == "stop" or self.nonfinite_in_a_row >= cfg.nonfinite_patience:
            why = ("optim.on_nonfinite=stop" if cfg.on_nonfinite == "stop" else
                   f"{self.nonfinite_in_a_row} non-finite steps in a row (optim.nonfinite_patience)")
            raise DivergenceError(f"training diverged at {nonfinite} ({why}); its update was not applied and no "
                                  f"checkpoint holds non-finite weights: lower optim.lr or set optim.grad_clip, "
                                  f"then resume from {self.checkpointer.directory}")
        log.warning("skipped the update of %s (optim.on_nonfinite=skip; %d in a row)", nonfinite,
                    self.nonfinite_in_a_row)
        return stop

    def evaluate(self) -> None:
        """Collective: every rank evaluates its share; rank 0 logs."""
        if self.evaluator is not None:
            values = self.evaluator(self.net)  # its loader workers ignore a job-wide SIGTERM (shards.reader)
            if values:
                self.metrics.scalars(self.step, values)

    def log(self, batch: Batch, result: StepResult) -> None:
        """Scalars every ``metrics.log_every`` steps (and at the end); images every ``metrics.image_every``."""
        cfg = self.cfg.metrics
        if self.step % cfg.log_every == 0 or self.step == self.cfg.run.steps:
            self.log_scalars()
        if cfg.image_every > 0 and self.step % cfg.image_every == 0 and self.env.is_main:
            for tag, image in step_images(self.images, result.output.joints, batch.synthetic, batch.real).items():
                self.metrics.image(self.step, tag, image)

    def log_scalars(self) -> None:
        """Gather every rank's window (collective), then rank 0 writes the scalars."""
        if self.window.steps == 0:
            return
        self.window.seconds += wait_for_device(self.device)
        local = self.window.local_values(render=self.render_timer.read())
        local["skipped_samples"] = float(sum(stream.skipped for stream in self.streams))  # since this start
        names = list(local)
        ranks = [dict(zip(names, values)) for values in all_gather_floats([local[n] for n in names])]
        world = len(ranks)
        skipped = sum(r.pop("skipped_samples") for r in ranks)
        names.remove("skipped_samples")
        values = {f"train/{name}": sum(r[name] for r in ranks) / world for name in names}
        values["data/skipped_samples"] = self.skipped = skipped
        values["train/samples_per_s"] = sum(r["samples_per_s"] for r in ranks)
        values["train/lr"] = self.optimizer.param_groups[0]["lr"]
        values["train/nonfinite_steps"] = self.nonfinite_steps  # updates dropped since this start (the same on every rank)
        values.update({f"train/samples_per_s/rank{k}": r["samples_per_s"] for k, r in enumerate(ranks)})
        self.metrics.scalars(self.step, values)
        self.window = Window()

    def close(self) -> None:
        self.preemption.uninstall()
        self.metrics.close()
