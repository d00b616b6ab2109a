"""The run configuration: a YAML file and dotted overrides loaded into a tree of dataclasses.

Each component owns its dataclass next to its code (``NetworkConfig`` in ``train.network``,
``LossConfig`` in ``train.losses``, ``DataConfig`` in ``train.data``, ``OptimConfig`` in ``train.optim``,
``RunConfig`` in ``train.run``, ``EvalConfig`` in ``train.monitor``, ...); :class:`TrainConfig` only
assembles them. Loading is strict (:mod:`train.schema`): an unknown key, a value of the wrong type or a
choice outside a ``Literal`` field's values raises :class:`ConfigError` naming the key (and the closest
known keys, or the allowed values), and ``python -m train`` exits with status 2.
:func:`validate` checks what types alone cannot (paths exist, shards fit the crop).

    cfg = load_config("configs/ci.yaml", ["run.steps=100", "loss.projection.weight=0.5"])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from geometry import Crop
from shards.format import MANIFEST_NAME, ShardsError, check_crop, check_shard_files
from shards.sources import is_remote, subdir
from train.checkpoint import CheckpointConfig
from train.data import NO_TRAINING_DATA, RUN_CROP, DataConfig, training_dirs
from train.losses import FITTED_ENTRY, REAL_TERMS, SYNTHETIC_TERMS, LossConfig
from train.metrics import MetricsConfig
from train.monitor import EvalConfig
from train.network import NetworkConfig, check_crop_fits
from train.optim import OptimConfig
from train.prior import check_prior_file
from train.run import RunConfig, check_run_dir
from train.schema import ConfigError, load_yaml, to_plain
from train.synthesis import SynthesisConfig, backend_mismatch, check_rasterizer

__all__ = ["ConfigError", "TrainConfig", "active_losses", "check_device", "dump_config", "load_config", "validate"]


@dataclass
class TrainConfig:
    """The whole run; each section is owned by the module that uses it."""

    model: NetworkConfig = field(default_factory=NetworkConfig)  # network architecture (train.network)
    crop: Crop = field(default_factory=Crop)  # the crop of every image: size px onto a cube_mm cube (geometry.Crop)
    loss: LossConfig = field(default_factory=LossConfig)  # loss terms and weights (train.losses)
    data: DataConfig = field(default_factory=DataConfig)  # shard sources and batch sizes (train.data)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)  # on-the-fly rendering (train.synthesis)
    optim: OptimConfig = field(default_factory=OptimConfig)  # Adam, schedule, amp (train.optim)
    run: RunConfig = field(default_factory=RunConfig)  # run dir, steps, seed, device (train.run)
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation during training (train.monitor)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # (train.checkpoint)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # logging (train.metrics)
    init: str | None = None  # checkpoint whose "model" weights start a fresh run (ignored when resuming)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file, then the dotted overrides, checked against the tree (:func:`load_yaml`)."""
    return load_yaml(TrainConfig, path, overrides)


def active_losses(cfg: TrainConfig) -> LossConfig:
    """The loss config with the terms of absent data sources switched off (no real data: no prior needed)."""
    loss = copy.deepcopy(cfg.loss)
    for names, present in ((REAL_TERMS, cfg.data.has_real), (SYNTHETIC_TERMS, cfg.data.has_synthetic)):
        for name in names:
            if not present:
                getattr(loss, name).enabled = False
    return loss


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks across keys that types and ranges alone cannot express (:class:`train.schema.Range` checks
    each field at load); raises ConfigError naming the key. Writes nothing."""
    if not (cfg.data.has_synthetic or cfg.data.has_real):
        raise ConfigError(NO_TRAINING_DATA)
    for key, path in (("data.synthetic", cfg.data.synthetic), ("data.real", cfg.data.real), ("init", cfg.init)):
        if path and not is_remote(path) and not Path(path).exists():  # a URL's manifests are read below
            raise ConfigError(f"config key {key!r}: {path!r} does not exist")
    local_real = cfg.data.real and not is_remote(cfg.data.real)
    if local_real and not (Path(cfg.data.real) / "train").is_dir():
        raise ConfigError(f"config key 'data.real': {cfg.data.real!r} has no train/ split (NYU shards root)")
    if local_real and cfg.eval.enabled and not (Path(cfg.data.real) / "test").is_dir():
        raise ConfigError(f"config key 'data.real': {cfg.data.real!r} has no test/ split to evaluate on "
                          "(build it, or set eval.every=0 eval.at_start=false)")
    if cfg.data.real:
        _check_real_geometry(cfg)
    if cfg.data.has_real and active_losses(cfg).fitted.enabled:
        _check_fitted_targets(cfg)
    for key, directory in training_dirs(cfg.data, evaluating=cfg.eval.enabled):
        _check_build_finished(key, directory)
        try:  # every shard of the manifest is there with its size, before any rank trains
            check_shard_files(directory)
        except ShardsError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from exc
    if active_losses(cfg).prior.enabled:
        try:
            check_prior_file(cfg.loss.prior_path)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"config key {exc}") from exc
    try:
        check_crop_fits(cfg.crop, cfg.model)
    except ValueError as exc:
        raise ConfigError(f"config key 'crop.size': {exc}") from None
    if cfg.loss.bone_min_ratio > cfg.loss.bone_max_ratio:
        raise ConfigError(f"config key 'loss.bone_min_ratio': {cfg.loss.bone_min_ratio} is above "
                          f"loss.bone_max_ratio {cfg.loss.bone_max_ratio}")
    try:
        check_run_dir(cfg.run)
    except ValueError as exc:
        raise ConfigError(f"config key {exc}") from None
    _check_backend_device(cfg)  # a contradiction inside the config first: it holds on every machine
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'run.device': cuda, but CUDA is not available on this machine "
                          "(set run.device=cpu or auto)")
    return cfg


def _check_backend_device(cfg: TrainConfig) -> None:
    """A rasterizer backend of one device with a run on the other (where run.device names one)."""
    mismatch = backend_mismatch(cfg.synthesis.backend, cfg.run.device) if cfg.run.device != "auto" else None
    if cfg.data.synthetic and mismatch:
        raise ConfigError(f"config key 'synthesis.backend' ({cfg.synthesis.backend}): {mismatch}")


def check_device(cfg: TrainConfig, device: torch.device) -> None:
    """Checks that need the device this rank trains on (after validate): the rasterizer of the synthesis
    works there without a silent fallback (:func:`train.synthesis.check_rasterizer`)."""
    if cfg.data.synthetic:
        try:
            check_rasterizer(cfg.synthesis.backend, device)
        except ValueError as exc:
            raise ConfigError(f"config key 'synthesis.backend' ({cfg.synthesis.backend}): {exc}") from None


BUILD_COMMANDS = {"data.synthetic": "python -m shards synthetic --out {directory} ...",
                  "data.real": "python -m shards nyu --out {root} ... (or python -m train.pseudo_labels --out {root} ...)"}


def _check_build_finished(key: str, source: str) -> None:
    """Shards without a manifest are a build that did not finish (killed): training on them would read only the
    shards written so far, silently. (A remote source without a manifest is refused when it is read.)"""
    if is_remote(source):
        return
    directory = Path(source)
    if not (directory / MANIFEST_NAME).exists() and any(directory.glob("shard-*.tar")):
        command = BUILD_COMMANDS[key].format(directory=directory, root=directory.parent)
        raise ConfigError(f"config key {key!r}: {directory} has shards but no {MANIFEST_NAME}: its build did not "
                          f"finish; re-run the command that made it (`{command}`): it resumes")


def _check_real_geometry(cfg: TrainConfig) -> None:
    """The NYU shards must have been cut at the run's crop (a cube mismatch would be silent)."""
    splits = ["train", "test"] if cfg.eval.enabled else ["train"]
    for split in splits:
        try:
            check_crop(subdir(cfg.data.real, split), cfg.crop, RUN_CROP)
        except ShardsError as exc:
            raise ConfigError(f"config key 'data.real': {exc}") from exc


def _check_fitted_targets(cfg: TrainConfig) -> None:
    """loss.fitted trains on the pseudo-labels of train.pseudo_labels: the real train split must carry them."""
    split = subdir(cfg.data.real, "train")
    manifest = check_shard_files(split)
    if manifest is not None and FITTED_ENTRY not in manifest.get("keys", []):
        raise ConfigError(f"config key 'loss.fitted.enabled': {split!r} has no fitted pseudo-labels "
                          f"({FITTED_ENTRY}); make them with `python -m train.pseudo_labels --checkpoint RUN "
                          f"--data {cfg.data.real} --out DIR` and set data.real=DIR")


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_plain(cfg), sort_keys=False)
