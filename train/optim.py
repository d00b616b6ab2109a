"""Optimisation pieces: Adam with the step schedule, the gradient scaler and autocast (``optim.*`` keys)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from train.schema import Range

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class OptimConfig:
    """Adam with a step schedule (the reference: lr 1e-3, wd 1e-5, x0.1 at each third of the run)."""

    lr: Annotated[float, Range(gt=0)] = 1e-3  # initial learning rate
    weight_decay: Annotated[float, Range(ge=0)] = 1e-5  # Adam's L2 weight decay
    decay_factor: Annotated[float, Range(gt=0)] = 0.1  # lr multiplier at each milestone
    decay_at: Annotated[list[float], Range(ge=0, le=1)] = field(default_factory=lambda: [1 / 3, 2 / 3])  # milestones, fractions of run.steps
    grad_clip: Annotated[float | None, Range(gt=0, off="null: no clipping")] = None  # clip the global gradient norm to this value (None: no clipping)
    amp: Literal["none", "bf16", "fp16"] = "none"  # bf16: autocast (GPU or CPU); fp16: autocast + grad scaler (GPU)
    # A step whose loss or gradient norm is not finite never updates the weights; then stop the run (exit 3),
    # or skip: go on without that update, stopping after nonfinite_patience such steps in a row.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_patience: Annotated[int, Range(ge=1)] = 3


class DivergenceError(RuntimeError):
    """Training diverged: a non-finite loss, gradient norm or weights (every rank raises it at the same step)."""


def lr_factor(step: int, steps: int, cfg: OptimConfig) -> float:
    """The step schedule: ``decay_factor`` once for each milestone (a fraction of the run) passed."""
    passed = sum(step >= int(fraction * steps) for fraction in cfg.decay_at)
    return cfg.decay_factor ** passed


def build_optimizer(cfg: OptimConfig, net: nn.Module, steps: int, device: torch.device
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """(Adam, its step schedule over ``steps``, the grad scaler: enabled for fp16 only)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    return optimizer, scheduler, scaler


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The forward's precision context for ``optim.amp``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
