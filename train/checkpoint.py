"""One object owns checkpoints: interval, keep-last-k, atomic write, resume from the newest.

A checkpoint file ``RUN/checkpoints/step-000001234.pt`` is a ``torch.save`` of plain data only
(tensors, ints, floats, strings, lists, dicts; RNG states as tensors), so
``torch.load(path, weights_only=True)`` reads it::

    {"step": int, "model": network state_dict (no "module." prefix), "config": resolved config dict
     (its "model" and "crop" sections say what network the weights fit), "optimizer": ..., "scheduler": ...,
     "scaler": ..., "rng": [per-rank RNG state, indexed by rank],
     "data": {"step": int, "batches_per_epoch": int}, "world_size": int}

Rank 0 writes to a temporary file and renames it, so a checkpoint counts only when complete. Saving
is collective (every rank contributes its RNG state), so every rank calls :meth:`Checkpointer.save`.

:func:`read_checkpoint` is the one reader (resume, the ``init`` key, :func:`load_network`): a missing,
unreadable or foreign file raises :class:`CheckpointError` naming it. :meth:`Checkpointer.load` resumes,
or starts a fresh run from ``init`` weights; both refuse a checkpoint whose network is another one: another
``model`` section (the message names the keys) or another crop (:class:`geometry.Crop`, both named: the
same weights at another crop size or cube decode silently wrong joints). Resume skips an unreadable newest
file (a crash mid-write on a non-atomic filesystem) and takes the previous one. A changed
``data.batches_per_epoch``, per-rank batch size (``data.synthetic_batch``, ``data.real_batch``) or world
size is allowed (elastic resumes) but logged as a warning with both values: the data stream then
continues at a different position than an uninterrupted run would.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import torch

from fileio import remove_temporaries, write_atomic
from geometry import Crop
from train.distributed import agree_on_error, all_gather_objects
from train.network import HourglassNet, NetworkConfig, build_network
from train.optim import DivergenceError
from train.schema import ConfigError, Range, from_dict

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{9})\.pt$")
# Keys every training checkpoint has; resume needs the saved states on top.
REQUIRED_KEYS = ("model", "config")
# Resume settings that position the data stream: a change is allowed but warned about.
DATA_POSITION_KEYS = ("batches_per_epoch", "synthetic_batch", "real_batch")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not a training checkpoint, or of another model."""


class CheckpointWriteError(CheckpointError):
    """Rank 0 could not write a checkpoint (disk full, read-only, no permission); every rank raises it."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


def strip_wrappers(key: str) -> str:
    """A state_dict key without DDP ("module.") and torch.compile ("_orig_mod.") prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def read_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """A training checkpoint as plain data (``weights_only``), its model keys without wrapper prefixes.

    Raises :class:`CheckpointMissing` for an absent file and :class:`CheckpointError` for an
    unreadable one or one without the ``required`` keys; every message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointMissing(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, corrupt or pickled objects: all unusable
        raise CheckpointError(f"checkpoint {path} could not be loaded with weights_only=True: "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    if not isinstance(payload, dict) or not set(required) <= payload.keys():
        has = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a training checkpoint (needs the keys {list(required)}; has {has})")
    if not isinstance(payload["model"], dict) or not isinstance(payload["config"], dict):
        raise CheckpointError(f"{path} is not a training checkpoint ('model' and 'config' must be dicts)")
    payload["model"] = {strip_wrappers(k): v for k, v in payload["model"].items()}
    nonfinite = nonfinite_weights(payload["model"])
    if nonfinite:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({', '.join(nonfinite[:3])}"
                              f"{', ...' if len(nonfinite) > 3 else ''}): the run had diverged")
    return payload


def nonfinite_weights(state: dict[str, Any]) -> list[str]:
    """The keys of a state dict whose floating-point tensors hold NaN or inf."""
    floats = [(key, value) for key, value in state.items() if torch.is_tensor(value) and value.is_floating_point()]
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(value).all() for _, value in floats]).tolist()
    return [key for (key, _), ok in zip(floats, finite) if not ok]


def model_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved X, now Y`` for every config.model key whose value differs (absent keys count)."""
    return [f"model.{key}: saved {saved.get(key, '<absent>')!r}, now {current.get(key, '<absent>')!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def checkpoint_crop(payload: dict[str, Any], path: str | Path) -> Crop:
    """The crop the checkpoint's network was trained at: its config's ``crop`` section, or for checkpoints
    made before that section existed, ``data.size``/``data.cube``."""
    config = payload["config"]
    try:
        if "crop" in config:
            return Crop(int(config["crop"]["size"]), float(config["crop"]["cube_mm"]))
        return Crop(int(config["data"]["size"]), float(config["data"]["cube"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: its config records no usable crop ({error})") from None


def check_network(payload: dict[str, Any], path: str | Path, model: dict[str, Any], crop: Crop, remedy: str) -> None:
    """Refuse a checkpoint whose network differs from the one at hand: another ``config.model`` (every
    differing key named) or another crop (both named). ``remedy`` says what the user can do."""
    differences = model_differences(payload["config"].get("model") or {}, model)
    if differences:
        raise CheckpointError(f"checkpoint {path} was trained with another model config "
                              f"({'; '.join(differences)}); {remedy}")
    trained_at = checkpoint_crop(payload, path)
    if trained_at != crop:
        raise CheckpointError(f"checkpoint {path} was trained at crop {trained_at}, this run uses {crop} "
                              f"(crop.size, crop.cube_mm); {remedy}")


def load_model_weights(net: torch.nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    """``payload["model"]`` into ``net``; a shape or key mismatch raises CheckpointError naming the file."""
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit this network: "
                              f"{str(error).strip().splitlines()[-1].strip()}") from error


def load_network(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[HourglassNet, Crop, dict]:
    """The network of a training checkpoint (eval mode), the crop it takes, and the checkpoint's config.

    ``checkpoint`` is a checkpoint file, or a run directory whose newest checkpoint is taken.
    """
    path = resolve_checkpoint(checkpoint)
    payload = read_checkpoint(path)
    try:
        model = from_dict(NetworkConfig, payload["config"].get("model") or {}, prefix="model.",
                          where=f" in checkpoint {path}")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    crop = checkpoint_crop(payload, path)
    net = build_network(model, crop=crop)
    load_model_weights(net, payload, path)
    return net.to(device).eval(), crop, payload["config"]


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many stay."""

    every: Annotated[int, Range(ge=0)] = 500  # steps between checkpoints (the last step and a preemption always save; 0: only those)
    keep: Annotated[int, Range(ge=1)] = 3  # newest checkpoints kept on disk
    resume: bool = True  # resume from the newest checkpoint in RUN/checkpoints when there is one


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


# ---------------------------------------------------------------------------------------------------
# RNG state as weights_only-safe data.


def get_rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states as tensors and plain numbers."""
    version, py_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory``, oldest first (temporary files are not listed)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


class Checkpointer:
    """Saves and restores the training state of one run directory.

    ``states`` names the objects to restore ("model" must be the unwrapped network; "optimizer",
    "scheduler", "scaler" as present); ``config`` is the resolved config as plain data, its ``model`` and
    ``crop`` sections the network's (a checkpoint of another network is refused).
    """

    def __init__(self, cfg: CheckpointConfig, directory: Path, *, states: dict[str, Stateful],
                 config: dict[str, Any], rank: int, world_size: int, seed: int,
                 batches_per_epoch: int) -> None:
        self.cfg = cfg
        self.directory = Path(directory)
        self.states = states
        self.config = config
        self.crop = Crop(**config["crop"])
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.last_saved: int | None = None

    def should_save(self, step: int, *, last: bool = False) -> bool:
        if step == self.last_saved:
            return False
        return last or (self.cfg.every > 0 and step % self.cfg.every == 0)

    def save(self, step: int, *, last: bool = False) -> Path | None:
        """Write a checkpoint when due (collective: call on every rank at the same steps)."""
        if not self.should_save(step, last=last):
            return None
        nonfinite = nonfinite_weights(self.states["model"].state_dict())  # the same weights on every rank
        if nonfinite:
            raise DivergenceError(f"step {step}: the weights are not finite ({', '.join(nonfinite[:3])}); no checkpoint "
                                  f"written, the last good one stays in {self.directory}")
        rng = all_gather_objects(get_rng_state())
        path = checkpoint_path(self.directory, step)
        def write() -> None:  # rank 0
            obj = {"step": step, "config": self.config, "rng": rng, "world_size": self.world_size,
                   "data": {"step": step, "batches_per_epoch": self.batches_per_epoch}}
            obj.update({name: state.state_dict() for name, state in self.states.items()})
            self._write(path, obj)

        # Every rank learns whether rank 0 could write it (disk full, read-only, permissions): one error line.
        agree_on_error(lambda: write() if self.rank == 0 else None, CheckpointWriteError)
        self.last_saved = step
        return path

    def _write(self, path: Path, obj: dict[str, Any]) -> None:
        """Rank 0: the checkpoint file, atomically, then prune; an I/O failure as CheckpointWriteError."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda handle: torch.save(obj, handle))
            self._prune()
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            detail = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
            previous = list_checkpoints(self.directory)
            kept = f"the previous checkpoint {previous[-1][1]} is intact" if previous else "no earlier checkpoint"
            try:
                free = f"; {shutil.disk_usage(self.directory).free / 2**20:.0f} MiB free there"
            except OSError:
                free = ""
            raise CheckpointWriteError(f"cannot write checkpoint {path} (the training state at step "
                                       f"{obj['step']}): {detail}{free}; {kept}") from None
        log.info("saved checkpoint %s", path)

    def _prune(self) -> None:
        for _, old in list_checkpoints(self.directory)[:-max(self.cfg.keep, 1)]:
            old.unlink(missing_ok=True)

    def load(self, init: str | Path | None = None) -> int:
        """Restore from the newest readable checkpoint of the run; the step to continue from. A run with
        nothing to resume starts at step 0, from the ``init`` checkpoint's network weights when given (a
        checkpoint or a run dir: its newest; a fresh optimizer and schedule).

        Raises CheckpointError when a checkpoint holds another network (model section or crop), lacks a
        state, or ``init`` cannot be read.
        """
        if self.rank == 0:  # this run's own directory (the run lock): any temporary is a killed save's
            for stale in remove_temporaries(self.directory):
                log.warning("removed %s, left by an interrupted save", stale)
        step = self._resume() if self.cfg.resume else 0
        if step == 0 and init:
            self._load_init(init)
        return step

    def _resume(self) -> int:
        found = list_checkpoints(self.directory)
        for step, path in reversed(found):
            try:
                obj = read_checkpoint(path, ("step", *REQUIRED_KEYS))
            except CheckpointError as exc:  # a damaged file: fall back to the previous one
                if (step, path) == found[0]:  # none usable: starting over would overwrite them at its first save
                    raise CheckpointError(f"no usable checkpoint in {self.directory} ({len(found)} found; the oldest: "
                                          f"{exc}); move them away to start afresh, or set checkpoint.resume=false "
                                          "and a new run.dir") from None
                log.warning("cannot read checkpoint %s (%s); trying an older one", path, exc)
                continue
            check_network(obj, path, self.config.get("model") or {}, self.crop,
                          f"run.dir {self.directory.parent} holds it: use a new run.dir or restore those settings")
            self._warn_data_position(obj, path)
            self._restore(obj, path)
            self.last_saved = step
            log.info("resumed from %s at step %d", path, step)
            return int(obj["step"])
        return 0

    def _load_init(self, init: str | Path) -> None:
        """The ``init`` key: network weights only."""
        try:
            path = resolve_checkpoint(init)
        except FileNotFoundError as error:
            raise CheckpointError(f"init: {error}") from error
        obj = read_checkpoint(path)
        check_network(obj, path, self.config.get("model") or {}, self.crop,
                      "init= needs a checkpoint of this network: make the model and crop sections match")
        load_model_weights(self.states["model"], obj, path)  # type: ignore[arg-type]
        log.info("initialised the network from %s (step %s)", path, obj.get("step"))

    def _warn_data_position(self, obj: dict[str, Any], path: Path) -> None:
        """Log each changed setting that moves the data stream (allowed: elastic resumes change them)."""
        saved_data = {**(obj["config"].get("data") or {}), **(obj.get("data") or {})}
        now_data = {**(self.config.get("data") or {}), "batches_per_epoch": self.batches_per_epoch}
        changed = [(f"data.{key}", saved_data[key], now_data.get(key))
                   for key in DATA_POSITION_KEYS if key in saved_data and saved_data[key] != now_data.get(key)]
        if obj.get("world_size") is not None and obj["world_size"] != self.world_size:
            changed.append(("world size", obj["world_size"], self.world_size))
        if changed and self.rank == 0:
            log.warning("resuming from %s with changed data settings: %s; the data stream continues at a "
                        "different position than an uninterrupted run would", path,
                        ", ".join(f"{key} saved {old}, now {new}" for key, old, new in changed))

    def _restore(self, obj: dict[str, Any], path: Path) -> None:
        for name, state in self.states.items():
            if name not in obj:
                raise CheckpointError(f"checkpoint {path} lacks {name!r}; saved keys: {sorted(obj)}")
            try:
                state.load_state_dict(obj[name])
            except (RuntimeError, ValueError, KeyError) as error:
                raise CheckpointError(f"checkpoint {path}: cannot restore {name!r}: "
                                      f"{str(error).strip().splitlines()[-1].strip()}") from error
        rng = obj.get("rng") or []
        if obj.get("world_size") == self.world_size and self.rank < len(rng):
            set_rng_state(rng[self.rank])
        else:  # another world size: per-rank streams cannot continue, so start fresh ones deterministically
            seed_everything(self.seed + self.rank + 1_000_003 * int(obj["step"]))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the newest complete checkpoint of a run dir or its checkpoints/ dir
    (``init``, ``python -m train.evaluate`` and ``python -m train.report`` all take either)."""
    path = Path(path)
    if not path.is_dir():
        return path
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = list_checkpoints(directory)
    if not found:
        raise FileNotFoundError(f"no checkpoint (step-*.pt) in {directory}")
    return found[-1][1]
