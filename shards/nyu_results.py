"""NYU result files: the text format the field compares hand pose methods in, and our test labels in it.

A results file has one line per NYU test frame in frame order (line i holds frame i, 8,252 lines for the
full test split); a line is the 14 evaluation joints (``hand.NYU_EVAL_JOINTS`` order) as ``u v d``
triples in view-1 image coordinates: 42 numbers separated by spaces, u and v in pixels, d the depth in
mm. Published methods' predictions circulate in this format, and the community scores them by turning
uvd into xyz with fx 588.03, fy -587.07 (y up, as NYU's ``joint_xyz``), cx 320, cy 240
(:data:`COMMUNITY_INTRINSICS`, :func:`uvd_to_xyz`) and taking the mean Euclidean error.

Our side: camera-frame points (y down) project to uvd with the positive NYU intrinsics
(:func:`camera_to_uvd`, v grows downwards as image rows do); the community's negative fy then gives
``y_up = -y_down``, a mirror that leaves every distance, hence every error, unchanged.

A frame the shard build skipped (listed under ``skipped`` in the split's ``manifest.json``) has no crop,
hence no prediction and no label in the shards: its line holds 42 ``nan``, so the file keeps one line
per test frame. Such a file is incomplete; :func:`read_results` accepts ``nan`` only as a whole line,
and scoring leaves out the lines whose labels are ``nan``.

    python -m shards labels shards/nyu/test --out labels.txt     # ground truth of a shard split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geometry import Intrinsics, project, unproject
from hand import NYU_EVAL_JOINTS
from hand import results as results_file
from shards.format import MANIFEST_NAME, BadInputError, ShardsError, read_manifest, write_atomic
from shards.nyu import NYU_INTRINSICS

VALUES_PER_LINE = results_file.VALUES_PER_LINE
# The community's uvd -> xyz: NYU's intrinsics with fy negated, so xyz comes out y up like joint_xyz.
COMMUNITY_INTRINSICS = Intrinsics(fx=NYU_INTRINSICS.fx, fy=-NYU_INTRINSICS.fy, cx=NYU_INTRINSICS.cx,
                                  cy=NYU_INTRINSICS.cy)
NUMBER_FORMAT = "%.4f"  # 1e-4 px is ~1e-4 mm at hand distance


def camera_to_uvd(points: np.ndarray, intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """Camera-frame points (..., 3) mm, y down -> image (u, v, d): pixels and depth mm."""
    return project(np.asarray(points, np.float64), intrinsics)


def uvd_to_xyz(uvd: np.ndarray) -> np.ndarray:
    """The community's conversion of (..., 3) uvd to xyz mm (y up), :data:`COMMUNITY_INTRINSICS`."""
    return unproject(np.asarray(uvd, np.float64), COMMUNITY_INTRINSICS)


def write_results(path: str | Path, uvd: np.ndarray) -> Path:
    """(M, 14, 3) uvd, line i = frame i + 1, ``nan`` rows for frames without data -> a results file."""
    uvd = np.asarray(uvd, np.float64)
    if uvd.ndim != 3 or uvd.shape[1:] != (len(NYU_EVAL_JOINTS), 3):
        raise ValueError(f"results have shape {uvd.shape}, expected (frames, {len(NYU_EVAL_JOINTS)}, 3)")
    lines = " ".join([NUMBER_FORMAT] * VALUES_PER_LINE)
    text = "".join((lines % tuple(row) if np.isfinite(row).all() else " ".join(["nan"] * VALUES_PER_LINE)) + "\n"
                   for row in uvd.reshape(len(uvd), -1))
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def read_results(path: str | Path) -> np.ndarray:
    """A results file -> (M, 14, 3) uvd (:func:`hand.results.read_results`); a bad file raises
    :class:`BadInputError` naming the file and the line."""
    try:
        return results_file.read_results(path)
    except results_file.ResultsFileError as error:
        raise BadInputError(error.path, error.reason) from None


@dataclass
class SplitLines:
    """One value per frame of a split, in frame order; frames without a sample are ``nan``."""

    values: np.ndarray  # (M, ...) line i = frame i + 1
    missing: list[int]  # 1-based frames with no sample (skipped by the shard build)

    @property
    def complete(self) -> bool:
        return not self.missing


def frame_lines(split_dir: str | Path, frames: np.ndarray, values: np.ndarray) -> SplitLines:
    """Per-sample ``values`` (N, ...) of 1-based ``frames`` (any order) -> one row per frame of the split.

    The split's frames are 1..M, M the largest frame among the samples and the manifest's skipped frames;
    a frame without a sample gets a ``nan`` row and is listed in ``missing``.
    """
    frames = np.asarray(frames, np.int64)
    values = np.asarray(values, np.float64)
    if len(frames) and (frames.min() < 1 or len(np.unique(frames)) != len(frames)):
        raise ShardsError(f"{split_dir}: samples need distinct 1-based frame numbers in meta.json "
                          f"(got {sorted(frames.tolist())[:5]}...)")
    skipped = []
    if (Path(split_dir) / MANIFEST_NAME).exists():
        skipped = [int(item["frame"]) for item in read_manifest(Path(split_dir)).get("skipped", [])
                   if int(item.get("frame", 0)) > 0]
    total = max([0, *frames.tolist(), *skipped])
    out = np.full((total, *values.shape[1:]), np.nan)
    out[frames - 1] = values
    missing = sorted(set(range(1, total + 1)) - set(frames.tolist()))
    return SplitLines(out, missing)


def view1_camera_joints(split_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N,), view-1 evaluation joints (N, 14, 3) in the camera frame, mm) of an NYU shard split."""
    from shards.reader import make_loader

    frames, joints = [], []
    for batch in make_loader(split_dir, batch_size=256, batches_per_epoch=None, num_workers=0, resampled=False):
        metas = batch.get("meta") or []
        centers = view1_centers(metas, split_dir)
        joints.append(batch["joints"][:, 0, NYU_EVAL_JOINTS].double().numpy() + centers[:, None])
        frames += [int(meta.get("frame", -1)) for meta in metas]
    if not joints:
        raise ShardsError(f"{split_dir}: holds no frames")
    return np.asarray(frames, np.int64), np.concatenate(joints)


def view1_centers(metas: list[dict], where: str | Path) -> np.ndarray:
    """(N, 3) view-1 crop centres (camera frame mm) from samples' ``meta.json`` ``centers``."""
    try:
        return np.array([meta["centers"][0] for meta in metas], np.float64).reshape(len(metas), 3)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ShardsError(f"{where}: samples need meta.json 'frame' and 'centers' (NYU shards) to place "
                          "joints in the image") from None


def split_labels(split_dir: str | Path) -> SplitLines:
    """Ground truth of an NYU shard split as results-file rows: (M, 14, 3) view-1 uvd, ``nan`` if skipped."""
    frames, joints = view1_camera_joints(split_dir)
    return frame_lines(split_dir, frames, camera_to_uvd(joints))


def missing_note(missing: list[int], total: int) -> str:
    """A sentence saying that (and which) frames of a split have no data."""
    shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
    return (f"the split is incomplete: {len(missing)} of {total} frames were skipped by the shard build "
            f"(frames {shown}); their lines hold nan")
