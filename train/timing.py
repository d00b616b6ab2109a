"""Timing the training steps without making them wait for the device.

On a GPU the host queues work and runs ahead; a ``torch.cuda.synchronize()`` to time a step would serialise
host and device on every step. Instead a section of the step (rendering) is bracketed by CUDA events whose
elapsed device time is read at log time, and the host waits for the device only where something reads it
anyway (logging, checkpoints, evaluation). On the CPU nothing is queued and the wall clock is exact.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class SectionTimer:
    """Seconds spent in a section of the step (rendering the synthetic batch), without making the step wait
    for the device: on the CPU the wall clock around it; on a GPU a pair of CUDA events recorded around it,
    whose elapsed device time is read only at log time (:meth:`read`), when the device has caught up."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.device.type != "cuda":
            start = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - start
            return
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_event.record()
        yield
        end_event.record()
        self.events.append((start_event, end_event))

    def read(self) -> float:
        """The seconds since the last read (waits for the last recorded event)."""
        if self.events:
            self.events[-1][1].synchronize()
        seconds = self.seconds + sum(start.elapsed_time(end) for start, end in self.events) / 1000.0
        self.seconds, self.events = 0.0, []
        return seconds


def wait_for_device(device: torch.device) -> float:
    """Seconds the host waits for the work queued on ``device`` (0 on the CPU, where nothing is queued)."""
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
