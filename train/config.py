"""Typed run configuration: a YAML file and dotted overrides loaded into a tree of dataclasses.

Each component owns its dataclass next to its code (``NetworkConfig`` in ``train.network``,
``LossConfig`` in ``train.losses``, ``DataConfig`` in ``train.data``, ...); :class:`TrainConfig` only
assembles them. Loading is strict: an unknown key or a value of the wrong type raises
:class:`ConfigError` naming the key (and the closest known keys), and ``python -m train`` exits non-zero.

    cfg = load_config("configs/ci.yaml", ["run.steps=100", "loss.projection.weight=0.5"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from train.checkpoint import CheckpointConfig
from train.data import DataConfig, check_crop_geometry
from train.losses import LossConfig
from train.metrics import MetricsConfig
from train.network import NetworkConfig
from train.synthesis import SynthesisConfig


class ConfigError(ValueError):
    """A config file or override that does not fit the config tree."""


@dataclass
class OptimConfig:
    """Adam with a step schedule (the reference: lr 1e-3, wd 1e-5, x0.1 at each third of the run)."""

    lr: float = 1e-3  # initial learning rate
    weight_decay: float = 1e-5  # Adam's L2 weight decay
    decay_factor: float = 0.1  # lr multiplier at each milestone
    decay_at: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])  # milestones, fractions of run.steps
    grad_clip: float | None = None  # clip the global gradient norm to this value (None: no clipping)
    amp: str = "none"  # "none", "bf16" (autocast, GPU or CPU) or "fp16" (autocast + grad scaler, GPU)


@dataclass
class RunConfig:
    """Where the run lives and how long it lasts."""

    dir: str = "runs/default"  # run directory: config.yaml, checkpoints/, TensorBoard events, metrics.jsonl, logs
    steps: int = 1000  # optimizer steps of the whole run (the lr schedule is laid out over these)
    seed: int = 0  # base seed; each rank seeds with seed + rank
    device: str = "auto"  # "auto" (this rank's GPU if any, else CPU), "cpu" or "cuda"
    stop_at: int | None = None  # stop (checkpoint and exit 0) at this step without changing the schedule


@dataclass
class EvalConfig:
    """Evaluation during training, logged as eval/mean_error_mm."""

    every: int = 500  # steps between evaluations (0: never); the first evaluation is at step 0 of a fresh run
    at_start: bool = True  # evaluate the untrained (or init) network before the first step
    real_batches: int | None = 8  # batches of data.real/test per evaluation (None: the whole split)
    batch_size: int = 16  # frames per evaluation batch
    synthetic_samples: int = 64  # held-out synthetic samples rendered once (synthetic-only runs)
    synthetic_seed: int = 12345  # seed of the held-out synthetic set (disjoint from the shard seeds)


@dataclass
class TrainConfig:
    """The whole run; each section is owned by the module that uses it."""

    model: NetworkConfig = field(default_factory=NetworkConfig)  # network architecture (train.network)
    loss: LossConfig = field(default_factory=LossConfig)  # loss terms and weights (train.losses)
    data: DataConfig = field(default_factory=DataConfig)  # shard sources and batch sizes (train.data)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)  # on-the-fly rendering
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    init: str | None = None  # checkpoint whose "model" weights start a fresh run (ignored when resuming)


# ---------------------------------------------------------------------------------------------------
# Generic loading: works on any tree of dataclasses whose fields all have defaults.


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree (sections and leaves)."""
    keys = []
    for name, tp in _hints(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, key + "."))
    return keys


def _unknown_key(key: str, root: type, where: str) -> ConfigError:
    known = all_keys(root)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if not close:  # compare the last component alone (a misspelled leaf under a long section name)
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [leaves[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=3)]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{where}{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` as type ``tp`` or a ConfigError naming ``key``; ints widen to floats, nothing else converts."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"config key {key!r}{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key {key!r}{where}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}{where}: expected a section (mapping), got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string; Python reads it as the number meant
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key {key!r}{where}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _merge(cls: type, base: dict[str, Any], update: dict[str, Any], root: type, prefix: str, where: str) -> None:
    """Merge ``update`` into ``base`` (the plain dict of a ``cls`` instance), checking keys and types."""
    hints = _hints(cls)
    for name, value in update.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown_key(key, root, where)
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and value is None:
            continue  # an empty section in YAML changes nothing
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _merge(tp, base[name], value, root, key + ".", where)
        else:
            base[name] = _coerce(value, tp, key, where)


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    for name, tp in _hints(cls).items():
        value = data[name]
        kwargs[name] = _build(tp, value) if dataclasses.is_dataclass(tp) else value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` to (key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def _override_to_nested(cls: type, key: str, value: Any, raw_text: str) -> dict[str, Any]:
    """A dotted override as a nested dict; string fields keep the raw text (``run.dir=007`` stays '007')."""
    parts = key.split(".")
    tp: Any = cls
    for part in parts:
        hints = _hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            raise _unknown_key(key, cls, " (command line)")
        tp = hints[part]
    raw = raw_text.split("=", 1)[1]
    accepts_str = tp is str or (typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp))
    if accepts_str and not (value is None and raw.strip() in ("null", "~", "None")) and not isinstance(value, (dict, list)):
        value = raw.strip()
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def to_plain(obj: Any) -> Any:
    """A config (or anything inside it) as YAML- and weights_only-safe plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = TrainConfig) -> Any:
    """Defaults of ``cls``, then the YAML file, then the dotted overrides, checked against the tree."""
    data = to_plain(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        _merge(cls, data, loaded, cls, "", f" in {str(path)!r}")
    for text in overrides:
        key, value = parse_override(text)
        _merge(cls, data, _override_to_nested(cls, key, value, text), cls, "", " (command line)")
    try:
        return _build(cls, data)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ check
        raise ConfigError(str(exc)) from exc


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks across keys that types alone cannot express; raises ConfigError naming the key."""
    if cfg.run.steps < 1:
        raise ConfigError(f"config key 'run.steps' must be >= 1, got {cfg.run.steps}")
    if cfg.optim.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"config key 'optim.amp' must be 'none', 'bf16' or 'fp16', got {cfg.optim.amp!r}")
    if cfg.run.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config key 'run.device' must be 'auto', 'cpu' or 'cuda', got {cfg.run.device!r}")
    if not (cfg.data.synthetic and cfg.data.synthetic_batch > 0) and not (cfg.data.real and cfg.data.real_batch > 0):
        raise ConfigError("no training data: set 'data.synthetic' and/or 'data.real' (with a batch size > 0)")
    for key, path in (("data.synthetic", cfg.data.synthetic), ("data.real", cfg.data.real), ("init", cfg.init)):
        if path and not Path(path).exists():
            raise ConfigError(f"config key {key!r}: {path!r} does not exist")
    if cfg.data.real and not (Path(cfg.data.real) / "train").is_dir():
        raise ConfigError(f"config key 'data.real': {cfg.data.real!r} has no train/ split (NYU shards root)")
    if cfg.data.real and _evaluates(cfg) and not (Path(cfg.data.real) / "test").is_dir():
        raise ConfigError(f"config key 'data.real': {cfg.data.real!r} has no test/ split to evaluate on "
                          "(build it, or set eval.every=0 eval.at_start=false)")
    if cfg.data.real:
        _check_real_geometry(cfg)
    uses_prior = bool(cfg.data.real) and cfg.data.real_batch > 0 and cfg.loss.prior.enabled
    if uses_prior and not cfg.loss.prior_path:
        raise ConfigError("config key 'loss.prior_path' is required while 'loss.prior.enabled' is true "
                          "(train one with: python -m train.prior --out prior.pt)")
    if uses_prior and not Path(cfg.loss.prior_path).is_file():
        raise ConfigError(f"config key 'loss.prior_path': {cfg.loss.prior_path!r} does not exist")
    for key in ("data.batches_per_epoch", "metrics.log_every", "eval.batch_size"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1")
    return cfg


def _evaluates(cfg: TrainConfig) -> bool:
    """Whether the run reads the held-out split at all (periodically or once at the start)."""
    return cfg.eval.every > 0 or cfg.eval.at_start


def _check_real_geometry(cfg: TrainConfig) -> None:
    """The NYU shards' crop size and cube must be the config's (a cube mismatch would be silent)."""
    from shards.format import ShardsError

    splits = ["train", "test"] if _evaluates(cfg) else ["train"]
    for split in splits:
        try:
            check_crop_geometry(cfg.data, Path(cfg.data.real) / split)
        except (ValueError, ShardsError) as exc:
            raise ConfigError(f"config key 'data.real': {exc}") from exc


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_plain(cfg), sort_keys=False)
