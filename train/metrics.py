"""A small metrics sink with pluggable writers (console, JSON lines, TensorBoard); rank 0 only.

The loop hands the sink scalars and images; each writer decides what to do with them. Other ranks get
a sink without writers, so the loop never branches on the rank to log.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol, TextIO

import numpy as np

from train.schema import Range


@dataclass
class MetricsConfig:
    """What is logged and how often."""

    log_every: Annotated[int, Range(ge=1)] = 10  # steps between scalar logs (console, metrics.jsonl, TensorBoard)
    image_every: Annotated[int, Range(ge=0)] = 100  # steps between TensorBoard images (0: never)
    tensorboard: bool = True  # write TensorBoard events to the run directory
    console: bool = True  # print one line per log step


class Writer(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def image(self, step: int, tag: str, image: np.ndarray) -> None: ...
    def close(self) -> None: ...


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleWriter:
    """One line per log step: step, loss, samples/s and ETA (from the pace since the previous line)."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stdout) -> None:
        self.total_steps = total_steps
        self.stream = stream
        self._last: tuple[int, float] | None = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.perf_counter()
        if "train/loss" in values:
            eta = float("nan")
            if self._last is not None and step > self._last[0]:
                eta = (now - self._last[1]) / (step - self._last[0]) * (self.total_steps - step)
            self._last = (step, now)
            line = (f"step {step}/{self.total_steps}  loss {values['train/loss']:.4g}  "
                    f"{values.get('train/samples_per_s', float('nan')):.1f} samples/s  "
                    f"lr {values.get('train/lr', float('nan')):.3g}  "
                    f"data wait {100 * values.get('train/data_wait_fraction', float('nan')):.1f}%  "
                    f"eta {_format_duration(eta)}")
        else:
            line = f"step {step}/{self.total_steps}  " + "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(line, file=self.stream, flush=True)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlWriter:
    """``metrics.jsonl``: one JSON object per scalars call, {"step", "time", tag: value, ...}."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class TensorBoardWriter:
    """TensorBoard events in the run directory (``tensorboard --logdir RUN``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # seconds to import, and only rank 0 writes events

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricsSink:
    """Fans scalars and images out to its writers."""

    def __init__(self, writers: list[Writer]) -> None:
        self.writers = writers

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for writer in self.writers:
            writer.scalars(step, values)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        for writer in self.writers:
            writer.image(step, tag, image)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def build_metrics_sink(cfg: MetricsConfig, run_dir: Path, *, is_main: bool, total_steps: int) -> MetricsSink:
    if not is_main:
        return MetricsSink([])
    writers: list[Writer] = [JsonlWriter(run_dir / "metrics.jsonl")]
    if cfg.console:
        writers.append(ConsoleWriter(total_steps))
    if cfg.tensorboard:
        writers.append(TensorBoardWriter(run_dir))
    return MetricsSink(writers)
