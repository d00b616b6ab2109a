"""Files that are complete or absent: the one atomic write of the project, JSON written that way, hashes.

A ground-floor package like :mod:`geometry`: it imports nothing of the project, so checkpoints, the pose
prior, shards and results files all write through it without importing each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["remove_temporaries", "sha256_file", "temporary_name", "write_atomic", "write_json_atomic"]


def temporary_name(path: Path) -> Path:
    """Where :func:`write_atomic` fills ``path`` before the rename: ``.NAME.tmp-PID`` beside it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files (:func:`temporary_name`) a killed writer left in ``directory``; the removed
    paths. Only for a directory no other process writes to now (a shard build's, a locked run's)."""
    removed = sorted(Path(directory).glob(".*.tmp-*")) if Path(directory).is_dir() else []
    for stale in removed:
        stale.unlink(missing_ok=True)
    return removed


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that it exists complete or not at all.

    ``write(handle)`` fills a temporary file next to ``path`` (:func:`temporary_name`); it is flushed and
    fsynced, renamed over ``path`` and the directory is fsynced, so the rename survives a crash too.
    If ``write`` raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_json_atomic(path: str | Path, value: Any, *, sort_keys: bool = True) -> Path:
    """``value`` as indented JSON (keys sorted unless their order means something), written with
    :func:`write_atomic`."""
    text = (json.dumps(value, indent=2, sort_keys=sort_keys) + "\n").encode()
    return write_atomic(path, lambda handle: handle.write(text))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
