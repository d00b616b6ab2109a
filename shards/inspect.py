"""``python -m shards inspect``: verify shard directories against their manifests, and draw samples.

Checks per split: every shard in the manifest exists with its sha256, reads to the end as a tar, holds
the manifest's sample count, and every sample has all the manifest's keys and (format 2) matches its
per-sample CRC32s, so a fault names the sample; no stray shard files.
"""

from __future__ import annotations

import itertools
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from geometry import Crop
from hand import HandModel
from hand.render import render_mesh_depth
from fileio import sha256_file
from shards.format import (MANIFEST_NAME, CorruptShardError, ShardsError, has_checksums, read_manifest,
                           read_tar_samples, sample_count_problem, verify_checksums)
from shards.reader import decode_sample


@dataclass
class SplitReport:
    """What inspect found in one shard directory."""

    directory: Path
    kind: str = "?"
    rows: list[tuple[str, int]] = field(default_factory=list)  # (shard, samples read)
    faults: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.rows)


def split_dirs(root: Path) -> list[Path]:
    """``root`` itself if it holds a manifest, else its subdirectories that do (train/, test/)."""
    root = Path(root)
    if (root / MANIFEST_NAME).exists():
        return [root]
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise ShardsError(f"{root}: no {MANIFEST_NAME} here or in its subdirectories")
    return found


def verify_split(directory: Path) -> SplitReport:
    report = SplitReport(directory)
    try:
        manifest = read_manifest(directory)
    except ShardsError as error:
        report.faults.append(str(error))
        return report
    report.kind, keys = manifest.get("kind", "?"), set(manifest.get("keys", []))
    report.skipped = len(manifest.get("skipped", []))
    listed = set()
    for shard in manifest["shards"]:
        path = directory / shard["name"]
        listed.add(shard["name"])
        if not path.exists():
            report.faults.append(f"{path}: missing (listed in {MANIFEST_NAME})")
            continue
        if sha256_file(path) != shard["sha256"]:
            report.faults.append(f"{path}: sha256 differs from {MANIFEST_NAME} (corrupted or rewritten)")
        report.rows.append((shard["name"], _check_tar(path, keys, shard["samples"], report.faults,
                                                      checksums=has_checksums(manifest))))
    for stray in sorted(directory.glob("shard-*.tar")):
        if stray.name not in listed:
            report.faults.append(f"{stray}: not listed in {MANIFEST_NAME}")
    if sum(n for _, n in report.rows) != manifest.get("samples"):
        report.faults.append(f"{directory}: read {report.samples} samples, {MANIFEST_NAME} says {manifest.get('samples')}")
    return report


def _check_tar(path: Path, keys: set[str], expected: int, faults: list[str], *, checksums: bool) -> int:
    count = 0
    try:
        for key, entries in read_tar_samples(path):
            count += 1
            if set(entries) != keys:
                faults.append(f"{path}: sample {key} has {sorted(entries)}, expected {sorted(keys)}")
            elif checksums:
                try:
                    verify_checksums(str(path), key, entries)
                except CorruptShardError as error:
                    faults.append(str(error))
    except (tarfile.TarError, OSError, EOFError) as error:
        faults.append(f"{path}: unreadable after {count} samples ({error})")
        return count
    problem = sample_count_problem(path, count, expected)
    if problem:
        faults.append(problem)
    return count


def inspect(root: Path) -> list[SplitReport]:
    return [verify_split(d) for d in split_dirs(root)]


def format_reports(reports: list[SplitReport]) -> str:
    lines = []
    for report in reports:
        lines.append(f"{report.directory}  ({report.kind}): {len(report.rows)} shards, {report.samples} samples, "
                     f"{report.skipped} skipped frames")
        lines += [f"  {name}  {count}" for name, count in report.rows]
        lines += [f"  FAULT {fault}" for fault in report.faults]
    total = sum(len(r.faults) for r in reports)
    lines.append("OK: every shard matches its manifest" if total == 0 else f"{total} fault(s) found")
    return "\n".join(lines)


def draw_samples(root: Path, count: int, out: Path) -> Path:
    """A grid of ``count`` samples for a person: NYU crops with their joints, or synthetic poses rendered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = list(itertools.islice(_all_samples(root), count))
    if not samples:
        raise ShardsError(f"{root}: no samples to draw")
    images = [_images(entries) for _, _, entries in samples]
    columns = max(len(i) for i in images)
    figure, axes = plt.subplots(len(samples), columns, figsize=(2.2 * columns, 2.2 * len(samples)), squeeze=False)
    for row, ((split, key, _), views) in enumerate(zip(samples, images)):
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(views):
                depth, uv, title = views[column]
                axis.imshow(depth, cmap="viridis")
                axis.scatter(uv[:, 0] - 0.5, uv[:, 1] - 0.5, s=4, c="red")  # imshow puts pixel j's centre at j
                axis.set_title(f"{split} {key} {title}", fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _all_samples(root: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for directory in split_dirs(root):
        for shard in sorted(directory.glob("shard-*.tar")):
            for key, entries in read_tar_samples(shard):
                yield directory.name, key, decode_sample({"__key__": key, "__url__": str(shard), **entries})


def _images(sample: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, str]]:
    if "depth" in sample:
        meta = sample["meta"]
        crop = Crop(int(meta["size"]), float(meta["cube"]))
        return [(sample["depth"][k], crop.to_pixels(sample["joints"][k]),
                 f"view {k + 1}") for k in range(len(sample["depth"]))]
    return [_render_synthetic(sample["pose"], sample["shape"])]


def _render_synthetic(pose: np.ndarray, shape: np.ndarray, crop: Crop = Crop()) -> tuple[np.ndarray, np.ndarray, str]:
    """A clean render of one synthetic sample, by the path training renders with (``hand.render``)."""
    depth, keypoints = render_mesh_depth(HandModel(), torch.from_numpy(pose)[None], torch.from_numpy(shape)[None],
                                         crop=crop)
    return depth[0].numpy(), crop.to_pixels(keypoints[0]).numpy(), "synthetic"
