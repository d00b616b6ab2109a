"""The shard format: keys, versions, deterministic tar entries, manifests and the errors for bad input.

Every shard is a plain (uncompressed, USTAR) tar in webdataset layout: the files of one sample share a
key (``0000001.depth.npy``, ``0000001.joints.npy`` ...). Entries carry fixed mtime/uid/gid/mode so that
the same input always gives byte-identical shards (checksums are compared across re-runs).

Format version 2 adds a per-sample checksum, as record formats users trust have (TFRecord's CRC per
record): every sample holds ``crc.json``, the CRC32 of each of its other entries' bytes, which the reader
verifies before decoding; the manifest records each shard's size in bytes, checked before a run starts.
Version 1 shards (no ``crc.json``, no sizes) still read, without per-sample checks.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from fileio import sha256_file, write_atomic, write_json_atomic
from geometry import Crop
from shards.sources import is_remote, member, open_source, read_bytes

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no per-sample checksums, no shard sizes in the manifest
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:06d}.tar"

NYU_KEYS = ("depth.npy", "joints.npy", "cams.npy", "meta.json")
SYNTHETIC_KEYS = ("pose.npy", "shape.npy", "augment.npy")
# Per-sample checksums (format 2): {"ENTRY": CRC32 of its bytes} for every other entry of the sample.
CHECKSUM_ENTRY = "crc.json"
SYNTHETIC_AUGMENT_FIELDS = ("jitter_x_px", "jitter_y_px", "depth_noise_mm", "hole_fraction", "noise_seed")

# The only entry types the reader decodes; anything else (pickle above all) is refused.
DECODABLE_EXTENSIONS = ("npy", "json", "png")


class ShardsError(Exception):
    """An error a user can act on; the CLI prints it without a traceback and exits non-zero."""


class BadInputError(ShardsError):
    """Raw input that cannot be used; ``path`` names the file at fault."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class CorruptShardError(ShardsError):
    """A shard whose bytes are not what its build wrote: a failed checksum, a damaged or cut-short tar.

    Raised in a DataLoader worker, torch re-raises it in the loader's process with the worker's
    traceback folded into the message; the message is cut back to the one line that names the shard.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def encode_sample(fields: dict[str, Any]) -> dict[str, bytes]:
    """``{"depth.npy": array, "meta.json": dict}`` -> entry bytes, by extension, plus ``crc.json``."""
    out = {}
    for name, value in fields.items():
        if name.endswith(".npy"):
            out[name] = npy_bytes(value)
        elif name.endswith(".json"):
            out[name] = json_bytes(value)
        else:
            raise ValueError(f"cannot encode shard entry {name!r}: only .npy and .json are written")
    return with_checksums(out)


def with_checksums(entries: dict[str, bytes]) -> dict[str, bytes]:
    """Encoded entries (without ``crc.json``) -> the same plus ``crc.json``, the CRC32 of each."""
    if CHECKSUM_ENTRY in entries:
        raise ValueError(f"shard entry name {CHECKSUM_ENTRY!r} is reserved for the per-sample checksums")
    return {**entries, CHECKSUM_ENTRY: json_bytes({name: zlib.crc32(data) for name, data in entries.items()})}


def verify_checksums(url: str, key: str, entries: dict[str, bytes]) -> None:
    """Raise :class:`CorruptShardError` naming the shard, sample and entry unless every entry of the
    sample matches its CRC32 in ``crc.json`` and the sample has exactly the entries listed there."""
    where = f"{url}: sample {key}"
    raw = entries.get(CHECKSUM_ENTRY)
    if raw is None:
        raise CorruptShardError(f"{where}: no {CHECKSUM_ENTRY} entry (format {FORMAT_VERSION} shards checksum "
                                "every sample): the shard is damaged")
    try:
        stored = json.loads(raw)
        stored = {str(name): int(crc) for name, crc in stored.items()}
    except (ValueError, TypeError, AttributeError):
        raise CorruptShardError(f"{where}: {CHECKSUM_ENTRY} is unreadable: the shard is corrupted") from None
    present = sorted(name for name in entries if name != CHECKSUM_ENTRY)
    if present != sorted(stored):
        raise CorruptShardError(f"{where}: has entries {present}, its {CHECKSUM_ENTRY} lists {sorted(stored)}: "
                                "the shard is damaged")
    for name in present:
        crc = zlib.crc32(entries[name])
        if crc != stored[name]:
            raise CorruptShardError(f"{where}: {name} fails its CRC32 check (stored {stored[name]:08x}, read "
                                    f"{crc:08x}): the shard is corrupted")


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    """Write ``(key, entries)`` samples to ``path`` atomically (:func:`fileio.write_atomic`); returns sha256.

    Entries get fixed metadata so that equal samples give byte-identical tars.
    """

    def fill(raw: BinaryIO) -> None:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, entries in samples:
                for name in sorted(entries):
                    data = entries[name]
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size = len(data)
                    info.mtime = 0
                    info.mode = 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))

    write_atomic(path, fill)
    return sha256_file(path)


@dataclass
class ShardRecord:
    """One finished shard: its file name, sample count, checksum and the frames left out of it."""

    name: str
    samples: int
    sha256: str
    skipped: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "sha256": self.sha256, "skipped": self.skipped}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "ShardRecord":
        return cls(value["name"], int(value["samples"]), value["sha256"], list(value.get("skipped", [])))


def write_manifest(directory: Path, *, kind: str, keys: tuple[str, ...], records: list[ShardRecord],
                   args: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``manifest.json``: format version, kind, sample keys (with ``crc.json``), per-shard counts, sizes and
    checksums, skipped frames, build args. Sizes are read from the shard files in ``directory``."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "keys": [*keys, *([] if CHECKSUM_ENTRY in keys else [CHECKSUM_ENTRY])],
        "samples": sum(r.samples for r in records),
        "shards": [{**r.to_dict(), "bytes": (Path(directory) / r.name).stat().st_size} for r in records],
        "skipped": [item for r in records for item in r.skipped],
        "args": args,
        **(extra or {}),
    }
    write_json_atomic(directory / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a shard directory, local or remote (:mod:`shards.sources`)."""
    path = member(directory, MANIFEST_NAME)
    if is_remote(directory):
        try:
            text = read_bytes(path).decode()
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise ShardsError(f"{path}: cannot read the manifest ({error})") from None
    elif not Path(path).exists():
        raise ShardsError(f"{path}: no manifest (not a shard directory, or its build did not finish)")
    else:
        text = Path(path).read_text()
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise ShardsError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ShardsError(f"{path}: format_version {manifest.get('format_version')!r}, "
                          f"this code reads {' and '.join(map(str, READABLE_VERSIONS))}")
    return manifest


def has_manifest(directory: str | Path) -> bool:
    """A remote source must have one (nothing else lists its shards); a local directory may lack it."""
    return is_remote(directory) or (Path(directory) / MANIFEST_NAME).exists()


def has_checksums(manifest: dict[str, Any]) -> bool:
    """Whether a manifest's samples carry per-sample CRC32s (``crc.json``, format 2 and later)."""
    return int(manifest.get("format_version", 1)) >= 2


def sample_count_problem(shard: str | Path, seen: int, expected: int | None) -> str | None:
    """What is wrong when a shard read to its end held ``seen`` samples and its manifest lists ``expected``
    (None: nothing, or no manifest to compare with)."""
    if expected is None or seen == expected:
        return None
    return (f"{shard}: {seen} samples, {MANIFEST_NAME} lists {expected} (cut short or rewritten, or a damaged "
            "tar header)")


def check_shard_files(directory: str | Path) -> dict[str, Any] | None:
    """Every shard the manifest lists exists, with the manifest's size (format 2); returns the manifest.

    None for a local directory without a manifest (assembled by hand: nothing to check against). Raises
    :class:`ShardsError` naming the first missing, empty or resized file: a run stops on it before training.
    A remote source (:mod:`shards.sources`) is checked for its manifest only: its files cannot be listed
    or sized without reading them (the reader still checks every sample's CRC and every shard's count).
    """
    if not has_manifest(directory):
        return None
    manifest = read_manifest(directory)
    if is_remote(directory):
        return manifest
    directory = Path(directory)
    for shard in manifest.get("shards", []):
        path = directory / shard["name"]
        if not path.is_file():
            raise ShardsError(f"{path}: missing (listed in {directory / MANIFEST_NAME})")
        size, expected = path.stat().st_size, shard.get("bytes")
        if expected is not None and size != expected:
            raise ShardsError(f"{path}: {size} bytes, {MANIFEST_NAME} says {expected} (truncated or rewritten; "
                              "`python -m shards inspect` checks it)")
        if size == 0:
            raise ShardsError(f"{path}: empty file (listed in {directory / MANIFEST_NAME})")
    return manifest


def read_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {entry: bytes}) per sample, reading every byte; raises tarfile.TarError/OSError if damaged.

    ``path``: a local path or a remote URL (:mod:`shards.sources`), read as a stream in one pass.
    A damaged header after the first ends a tar silently (as tarfile reads it): compare the count with
    the manifest's to tell a complete shard from a cut-short one.
    """
    current, entries = None, {}
    with open_source(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for tar_entry in tar:
            if not tar_entry.isfile():
                continue
            key, _, name = Path(tar_entry.name).name.partition(".")
            if key != current and current is not None:
                yield current, entries
                entries = {}
            current = key
            handle = tar.extractfile(tar_entry)
            data = handle.read() if handle else b""
            if len(data) != tar_entry.size:
                raise tarfile.ReadError(f"entry {tar_entry.name} is cut short")
            entries[name] = data
    if current is not None:
        yield current, entries


def read_crop(directory: str | Path) -> Crop:
    """The crop an NYU split dir's frames were cut at, read once from its metadata.

    The manifest's build args when there is a manifest, else the first sample's ``meta.json`` (a split
    dir assembled by hand).
    """
    if has_manifest(directory):
        manifest = read_manifest(directory)
        source, values = member(directory, MANIFEST_NAME), manifest.get("args", {})
        if manifest.get("kind") != "nyu":
            raise ShardsError(f"{source}: kind {manifest.get('kind')!r}, expected NYU shards ('nyu')")
    else:
        source, values = _first_meta(Path(directory))
    try:
        return Crop(int(values["size"]), float(values["cube"]))
    except (KeyError, TypeError, ValueError):
        raise ShardsError(f"{source}: no usable crop size/cube (has {sorted(values)})") from None


def check_crop(directory: str | Path, crop: Crop, user: str) -> None:
    """The one check that NYU shards were cut at ``crop``, the crop of ``user`` (a run's config, a
    checkpoint's network): a different cube changes the mm-per-pixel scale of every real loss and every
    decoded joint without any shape error to give it away. Raises ShardsError naming both crops."""
    found = read_crop(directory)
    if found != crop:
        raise ShardsError(f"NYU shards {directory} were cut at {found}, but {user} uses {crop}: use shards cut "
                          f"at {crop} (`python -m shards nyu --size {crop.size} --cube {crop.cube_mm:g}`) or "
                          f"that crop")


def _first_meta(directory: Path) -> tuple[str, dict[str, Any]]:
    """(where, value) of the first ``meta.json`` entry in the first shard of ``directory``."""
    shards = sorted(directory.glob("shard-*.tar"))
    if not shards:
        raise ShardsError(f"{directory}: no {MANIFEST_NAME} and no shard-*.tar files")
    with tarfile.open(shards[0]) as tar:
        for tar_entry in tar:
            if tar_entry.isfile() and tar_entry.name.endswith(".meta.json"):
                handle = tar.extractfile(tar_entry)
                assert handle is not None  # a regular file always has data
                try:
                    return f"{shards[0]}:{tar_entry.name}", json.loads(handle.read())
                except json.JSONDecodeError as error:
                    raise ShardsError(f"{shards[0]}:{tar_entry.name}: not valid JSON ({error})") from None
    raise ShardsError(f"{shards[0]}: no meta.json entry (not NYU shards?)")
