"""Derived splits: the samples of a shard split, every byte verified, written again with entries added.

Fitted pseudo-labels (``python -m train.pseudo_labels``) are made this way: the source split's samples are
read shard by shard (each shard read to its end, its sample count compared with the manifest, every
format-2 checksum verified), handed in chunks to a function that returns the new entries of each sample,
and written as a new split of the same kind with the checksums renewed and a manifest that lists the new
entries. The source is never modified. :func:`link_split` makes a sibling split (the test split the
evaluation reads) available under the new root through a relative symlink, so the pair can be moved or
mounted into a container together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shards.format import (CHECKSUM_ENTRY, CorruptShardError, ShardRecord, ShardsError, check_shard_files,
                           has_checksums, npy_bytes, read_tar_samples, sample_count_problem, with_checksums,
                           write_manifest, write_tar)
from shards.reader import decode_sample

Entries = dict[str, bytes]
# Decoded samples of one chunk -> each sample's new entries, by entry name ("fitted.npy" -> array).
AddEntries = Callable[[list[dict[str, Any]]], list[dict[str, np.ndarray]]]


def read_verified_shard(shard: Path, expected: int, *, checksums: bool) -> list[tuple[str, Entries, dict[str, Any]]]:
    """A shard's samples as (key, raw entries, decoded sample), every byte read and, with ``checksums``,
    every CRC32 verified (:func:`shards.reader.decode_sample`); a shard that does not hold its manifest's
    ``expected`` samples raises :class:`CorruptShardError` naming it."""
    samples = list(read_tar_samples(shard))
    problem = sample_count_problem(shard, len(samples), expected)
    if problem:
        raise CorruptShardError(problem)
    return [(key, entries, decode_sample({"__key__": key, "__url__": str(shard), **entries}, checksums=checksums))
            for key, entries in samples]


def first_samples(source: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` decoded samples of a split (all of them where it holds fewer), read and verified
    as :func:`derive_split` reads them."""
    manifest = _finished_manifest(source)
    samples: list[dict[str, Any]] = []
    for listed in manifest["shards"]:
        if len(samples) >= count:
            break
        samples += [decoded for _, _, decoded in read_verified_shard(source / listed["name"], int(listed["samples"]),
                                                                    checksums=has_checksums(manifest))]
    return samples[:count]


def derive_split(source: Path, target: Path, add: AddEntries, *, chunk: int, desc: str,
                 extra_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``target`` (shards of the same names and kind as ``source``'s) whose samples are the source's
    plus the entries ``add`` returns for them, ``chunk`` samples per call; returns the new manifest."""
    manifest = _finished_manifest(source)
    if Path(target).resolve() == Path(source).resolve():
        raise ShardsError(f"{target}: the derived split must differ from its source (the source is kept as it is)")
    target.mkdir(parents=True, exist_ok=True)
    records, added = [], set()
    with tqdm(total=int(manifest["samples"]), desc=desc, unit="sample") as progress:
        for listed in manifest["shards"]:
            samples = read_verified_shard(source / listed["name"], int(listed["samples"]),
                                          checksums=has_checksums(manifest))
            written = []
            for part in _chunks(samples, chunk):
                new = add([decoded for _, _, decoded in part])
                added |= {name for entries in new for name in entries}
                written += [(key, _with_entries(entries, extra)) for (key, entries, _), extra in zip(part, new)]
                progress.update(len(part))
            records.append(ShardRecord(listed["name"], len(written), write_tar(target / listed["name"], written), []))
    keys = [key for key in manifest["keys"] if key != CHECKSUM_ENTRY] + sorted(added - set(manifest["keys"]))
    return write_manifest(target, kind=manifest["kind"], keys=tuple(keys), records=records,
                          args=manifest.get("args", {}), extra={"derived_from": str(source), **(extra_manifest or {})})


def _finished_manifest(source: Path) -> dict[str, Any]:
    manifest = check_shard_files(source)
    if manifest is None:
        raise ShardsError(f"{source}: no manifest.json (an unfinished or hand-made split cannot be read)")
    return manifest


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _with_entries(entries: Entries, extra: dict[str, np.ndarray]) -> Entries:
    """A sample's entries plus ``extra`` (encoded as .npy), the checksums renewed."""
    kept = {name: data for name, data in entries.items() if name != CHECKSUM_ENTRY and name not in extra}
    return with_checksums({**kept, **{name: npy_bytes(value) for name, value in extra.items()}})


def link_split(source_root: Path, target_root: Path, split: str) -> None:
    """``target_root/split`` -> ``source_root/split`` as a relative symlink, when the source has that split
    and the target does not (an existing link or directory is left as it is)."""
    source, link = Path(source_root) / split, Path(target_root) / split
    if not source.exists() or link.exists() or link.is_symlink():
        return
    link.symlink_to(os.path.relpath(source.resolve(), link.parent.resolve()), target_is_directory=True)
