"""What the launcher needs to know of a run config: that it loads and validates, and its run directory.

Only :mod:`train.config` is used: the trainer's own strict loader and its :func:`~train.config.validate`
(data paths and shard manifests, crop, prior file), so a typo in a key or a missing data dir fails here,
with the trainer's one-line message, before a job waits in a queue.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from train.config import ConfigError, TrainConfig, load_config, validate


class LaunchError(ValueError):
    """A bad launcher option or config; the message names the value."""


def load_run(config: Path, overrides: list[str]) -> TrainConfig:
    """``config`` with ``overrides`` loaded and validated as the trainer will at its start."""
    for text in overrides:
        if "=" not in text:
            raise LaunchError(f"override {text!r} is not of the form dotted.key=value")
    try:
        return validate(load_config(config, overrides))
    except ConfigError as exc:
        raise LaunchError(str(exc)) from exc


def check_config(config: Path, overrides: list[str]) -> Path:
    """Load and validate ``config`` with ``overrides``; return the absolute ``run.dir``."""
    return Path(load_run(config, overrides).run.dir).absolute()


@dataclass(frozen=True)
class SweepAxis:
    """One ``--sweep KEY=V1,V2`` option: a config key and its values."""

    key: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "SweepAxis":
        key, sep, values = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise LaunchError(f"--sweep {text!r}: expected KEY=V1,V2,... with a dotted config key")
        parts = tuple(values.split(","))
        if not parts or any(v == "" for v in parts):
            raise LaunchError(f"--sweep {text!r}: empty value in {values!r}")
        if key == "run.dir":
            raise LaunchError("--sweep run.dir=...: each combination gets its own run dir under run.dir already")
        return cls(key, parts)


def sweep_runs(run_dir: Path, axes: list[SweepAxis]) -> list[tuple[Path, list[str]]]:
    """(run dir, overrides) per combination; one run in ``run_dir`` itself without axes."""
    if not axes:
        return [(run_dir, [])]
    runs = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        overrides = [f"{axis.key}={value}" for axis, value in zip(axes, combo)]
        name = "_".join(f"{axis.key}-{re.sub(r'[^A-Za-z0-9.+-]', '_', value)}" for axis, value in zip(axes, combo))
        runs.append((run_dir / name, overrides))
    names = [r for r, _ in runs]
    if len(set(names)) != len(names):
        raise LaunchError(f"--sweep values map to the same run dir names: {[n.name for n in names]}")
    return runs


def check_runs(config: Path, overrides: list[str], axes: list[SweepAxis]) -> list[tuple[Path, list[str]]]:
    """Every combination's run dir and its overrides on top of ``overrides`` (sweep values, then run.dir
    last), each combination loaded and validated once."""
    run_dir = check_config(config, overrides)
    out = []
    for sub_dir, sweep in sweep_runs(run_dir, axes):
        extra = [*sweep, f"run.dir={sub_dir}"]
        check_config(config, [*overrides, *extra])
        out.append((sub_dir, extra))
    return out
