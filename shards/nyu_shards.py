"""``python -m shards nyu``: NYU splits -> cropped 3-view shards (see shards/format.py for the format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geometry import Crop
from shards.cameras import crop_cams, fixed_transforms, per_frame_transforms
from shards.center import HandNotFound, find_center
from shards.format import NYU_KEYS, BadInputError, ShardsError, encode_sample
from shards.nyu import PALM_JOINT, VIEWS, check_split, crop_depth, depth_path, read_depth
from shards.nyu_protocol import NYU_INTRINSICS
from shards.writer import BuildSpec, ItemResult, build

CENTERS = ("gt", "com")
CAMERAS = ("per-frame", "fixed")


@dataclass(frozen=True)
class NyuBuildConfig:
    """Arguments of ``python -m shards nyu``."""

    nyu_root: Path
    out: Path
    splits: tuple[str, ...] = ("train", "test")
    crop: Crop = Crop()  # crop side in pixels and cube side in mm
    center: str = "gt"  # "gt": labelled palm joint 32; "com": from depth alone
    cameras: str = "per-frame"  # "per-frame": Kabsch per frame; "fixed": one robust fit per split
    samples_per_shard: int = 1000
    workers: int = 1
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.center not in CENTERS:
            raise ShardsError(f"--center {self.center!r}: choose one of {', '.join(CENTERS)}")
        if self.cameras not in CAMERAS:
            raise ShardsError(f"--cameras {self.cameras!r}: choose one of {', '.join(CAMERAS)}")
        if self.samples_per_shard < 1 or self.workers < 1:
            raise ShardsError("--samples-per-shard >= 1 and --workers >= 1 are required")

    def build_args(self, split: str) -> dict[str, Any]:
        """What decides the shards' content (not --workers): a re-run must match it to reuse shards."""
        return {"nyu_root": str(Path(self.nyu_root).resolve()), "split": split, "size": self.crop.size,
                "cube": self.crop.cube_mm, "center": self.center, "cameras": self.cameras,
                "samples_per_shard": self.samples_per_shard, "skip_bad": self.skip_bad}


@dataclass
class FrameJob:
    """Crops the three views of one frame; picklable, installed once in each worker."""

    split_dir: str
    split: str
    joints: np.ndarray  # (3, N, 36, 3) camera frames
    crop: Crop
    center: str
    fixed: np.ndarray | None  # (3, 4, 4) camera-k -> camera-1, or None for per-frame fits

    def __call__(self, index: int) -> ItemResult:
        frame = index + 1
        try:
            depths = [read_depth(depth_path(Path(self.split_dir), view + 1, frame)) for view in range(VIEWS)]
        except BadInputError as error:
            return ItemResult(index, skipped={"frame": frame, "path": error.path, "reason": error.reason})
        joints = self.joints[:, index]
        try:
            centers = self._centers(depths, joints)
        except ViewWithoutHand as missing:  # nothing to crop, not bad input: skipped whatever --skip-bad
            path = depth_path(Path(self.split_dir), missing.view, frame)
            return ItemResult(index, skipped={"frame": frame, "path": str(path), "reason": f"no hand found: {missing}"},
                              bad_input=False)
        transforms = per_frame_transforms(joints) if self.fixed is None else self.fixed
        sample = {
            "depth.npy": np.stack([crop_depth(d, c, self.crop) for d, c in zip(depths, centers)]),
            "joints.npy": (joints - centers[:, None]).astype(np.float32),
            "cams.npy": crop_cams(transforms, centers).astype(np.float32),
            "meta.json": {"frame": frame, "split": self.split, "centers": centers.tolist(),
                          "intrinsics": NYU_INTRINSICS.to_dict(), "size": self.crop.size, "cube": self.crop.cube_mm},
        }
        return ItemResult(index, key=f"{frame:07d}", entries=encode_sample(sample))

    def _centers(self, depths: list[np.ndarray], joints: np.ndarray) -> np.ndarray:
        if self.center == "gt":
            return joints[:, PALM_JOINT].copy()
        found = []
        for view, depth in enumerate(depths, start=1):
            try:
                found.append(find_center(depth))
            except HandNotFound as error:
                raise ViewWithoutHand(view, error.reason) from None
        return np.stack(found)


class ViewWithoutHand(Exception):
    """A view (1..3) of a frame where :func:`find_center` found no hand."""

    def __init__(self, view: int, reason: str) -> None:
        super().__init__(reason)
        self.view = view


def build_split(config: NyuBuildConfig, split: str) -> dict[str, Any]:
    split_dir = Path(config.nyu_root) / split
    check = check_split(split_dir)
    if check.problems and not config.skip_bad:
        problem = check.problems[0]
        raise BadInputError(problem.path, problem.reason + " (--skip-bad builds without such frames)")
    num_items = max([check.labels.num_frames] + [p.frame for p in check.problems])
    preskipped = {p.frame - 1: p.to_dict() for p in check.problems if p.frame > 0}
    extra: dict[str, Any] = {"split": split, "problems": [p.to_dict() for p in check.problems if p.frame == 0]}
    fixed = None
    if config.cameras == "fixed":
        usable = np.array(check.frames) - 1
        if len(usable) == 0:
            raise BadInputError(split_dir, "no usable frames to calibrate the cameras from")
        fixed, rejected = fixed_transforms(check.labels.joints[:, usable])
        extra["cameras"] = {"camera_to_view1": fixed.tolist(),
                            "rejected_frames": {k: [int(usable[i]) + 1 for i in v] for k, v in rejected.items()}}
    job = FrameJob(str(split_dir), split, check.labels.joints, config.crop, config.center, fixed)
    spec = BuildSpec(directory=Path(config.out) / split, kind="nyu", keys=NYU_KEYS, args=config.build_args(split),
                     num_items=num_items, per_shard=config.samples_per_shard, workers=config.workers,
                     skip_bad=config.skip_bad, desc=f"nyu {split}", extra_manifest=extra, preskipped=preskipped)
    return build(spec, job)


def build_nyu(config: NyuBuildConfig) -> dict[str, dict[str, Any]]:
    return {split: build_split(config, split) for split in config.splits}
