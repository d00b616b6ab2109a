"""Strict loading of plain data into trees of dataclasses: the one dict -> dataclass path.

Used for the run config (``train.config``: YAML file + dotted overrides, :func:`load_yaml`), the pseudo-label
settings (``train.pseudo_labels``), the ``model`` section of a checkpoint (``train.checkpoint``) and the
config of a pose prior file (``train.prior``). An unknown key
or a value of the wrong type raises :class:`ConfigError` naming the key (and the closest known keys);
a ``Literal`` field names its allowed values. Ints widen to floats; nothing else converts. A float must be
finite, and a number field's range is declared beside it (``lr: Annotated[float, Range(gt=0)] = 1e-3``)
and checked with the field's dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

import yaml


class ConfigError(ValueError):
    """Plain data that does not fit its dataclass tree (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class Range:
    """The allowed values of a number field (each item of a list field), declared in its type:
    ``Annotated[float, Range(gt=0)]``; ``Annotated[float | None, Range(gt=0, off="null: no clipping")]``
    (None passes: the field switched off). ``off`` is said in the message."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    off: str | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        bounds = ((self.gt, ">", operator.gt), (self.ge, ">=", operator.ge), (self.lt, "<", operator.lt),
                  (self.le, "<=", operator.le))
        declared = [(bound, symbol, holds) for bound, symbol, holds in bounds if bound is not None]
        if all(holds(value, bound) for bound, _, holds in declared):
            return None
        wanted = " and ".join(f"{symbol} {bound:g}" for bound, symbol, _ in declared)
        return f"must be {wanted}{f' ({self.off})' if self.off else ''}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_ranges(cls: type) -> dict[str, Range]:
    """The :class:`Range` of each field of ``cls`` that declares one."""
    ranges = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(tp) is Annotated:
            ranges.update({name: meta for meta in tp.__metadata__ if isinstance(meta, Range)})
    return ranges


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree (sections and leaves)."""
    keys = []
    for name, tp in _hints(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, key + "."))
    return keys


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if not close:  # compare the last component alone (a misspelled leaf under a long section name)
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [leaves[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=3)]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{where}{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _accepts_text(tp: Any) -> bool:
    """Whether a field takes strings as typed (plain ``str``, string ``Literal`` choices, or unions of them)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_accepts_text(option) for option in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(tp))
    return tp is str


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` as type ``tp`` or a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}{where}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {key!r}{where}: expected one of {', '.join(map(repr, choices))}, "
                              f"got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}{where}: expected a section (mapping), got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string; Python reads it as the number meant
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r}{where}: expected a finite number, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key {key!r}{where}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _merge(cls: type, base: dict[str, Any], update: dict[str, Any], known: list[str], prefix: str,
           where: str) -> None:
    """Merge ``update`` into ``base`` (the plain dict of a ``cls`` instance), checking keys and types."""
    hints = _hints(cls)
    for name, value in update.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown_key(key, known, where)
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and value is None:
            continue  # an empty section in YAML changes nothing
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _merge(tp, base[name], value, known, key + ".", where)
        else:
            base[name] = _coerce(value, tp, key, where)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """``cls`` from merged plain data: each field's :class:`Range`, then the section's own ``__post_init__``."""
    kwargs = {}
    ranges = field_ranges(cls)
    for name, tp in _hints(cls).items():
        value = data[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
            continue
        if name in ranges:
            for item in value if isinstance(value, list) else [value]:
                if (problem := ranges[name].problem(item)) is not None:
                    raise ConfigError(f"config key {prefix + name!r}: {value!r} {problem}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ check
        section = f"config section {prefix[:-1]!r}: " if prefix else ""
        raise ConfigError(f"{section}{exc}") from None


def to_plain(obj: Any) -> Any:
    """A dataclass tree (or anything inside it) as YAML- and weights_only-safe plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def from_dicts(cls: type, sources: list[tuple[dict[str, Any], str]], *, prefix: str = "") -> Any:
    """``cls()`` defaults, then each nested dict of ``sources`` in order, checked key by key.

    Each source is ``(data, where)``: ``where`` says where the data came from (`` in 'run.yaml'``,
    `` (command line)``). ``prefix`` is prepended to the keys in messages (``"model."`` for a
    checkpoint's model section). Raises :class:`ConfigError`, also for a section's own
    ``__post_init__`` check.
    """
    data = to_plain(cls())
    known = all_keys(cls, prefix)
    for update, where in sources:
        if not isinstance(update, dict):
            raise ConfigError(f"config{where} must be a mapping, got {type(update).__name__}")
        _merge(cls, data, update, known, prefix, where)
    return _build(cls, data, prefix)


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "", where: str = "") -> Any:
    """One plain dict as a ``cls`` (missing keys keep their defaults); see :func:`from_dicts`."""
    return from_dicts(cls, [(data, where)], prefix=prefix)


def parse_override(cls: type, text: str) -> dict[str, Any]:
    """``a.b.c=value`` as a nested dict; the value is YAML, except that text fields keep the raw text
    (``run.dir=007`` stays '007')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    parts = key.split(".")
    tp: Any = cls
    for part in parts:
        hints = _hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            raise _unknown_key(key, all_keys(cls), " (command line)")
        tp = hints[part]
    is_null = value is None and raw.strip() in ("null", "~", "None")
    if _accepts_text(tp) and not is_null and not isinstance(value, (dict, list)):
        value = raw.strip()
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def load_yaml(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """Defaults of ``cls``, then the YAML file at ``path`` (if any), then the dotted ``key=value`` overrides,
    checked against the tree: the one loader of the run config and of every other YAML-configured tool."""
    sources: list[tuple[dict[str, Any], str]] = []
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
        sources.append((loaded, f" in {str(path)!r}"))
    sources += [(parse_override(cls, text), " (command line)") for text in overrides]
    return from_dicts(cls, sources)
