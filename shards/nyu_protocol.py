"""The NYU evaluation protocol, in one place: the Kinect's intrinsics, the evaluated joints, the test
split's subjects and the field's results format.

- **Intrinsics** (those the field scores with; the prototype used 588.235 / 587.084): :data:`NYU_INTRINSICS`, y down as
  image rows. The community converts results with fy negated (:data:`COMMUNITY_INTRINSICS`, y up as NYU's
  ``joint_xyz``): a mirror that leaves every distance, hence every error, unchanged.
- **Evaluated joints**: view 1, the 14 joints :data:`NYU_EVAL_JOINTS` (indices into NYU's 36 joints,
  which are the hand model's first 36 spheres), mean Euclidean error in mm.
- **Subjects**: the test split's frames 1..2440 show subject 1 (the train subject), the rest subject 2
  (a smaller hand): :func:`subject_of`.
- **Results format**: one line per NYU test frame in frame order (line i holds frame i, 8,252 lines for
  the full test split); a line is the 14 evaluated joints as ``u v d`` in view-1 image coordinates, 42
  numbers separated by spaces (u, v pixels, d depth mm). A frame without data (skipped by the shard build:
  listed under ``skipped`` in the split's ``manifest.json``) has a line of 42 ``nan``, so the file keeps
  one line per frame; :func:`read_results` accepts ``nan`` only as a whole line, and scoring leaves out
  the lines whose labels are ``nan``. Published methods' predictions circulate in this format.

    python -m shards labels shards/nyu/test --out labels.txt     # ground truth of a shard split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fileio import write_atomic
from geometry import Intrinsics, project, unproject
from shards.format import MANIFEST_NAME, BadInputError, ShardsError, read_manifest
from shards.reader import make_loader

NYU_INTRINSICS = Intrinsics(fx=588.03, fy=587.07, cx=320.0, cy=240.0)
# The community's uvd -> xyz: NYU's intrinsics with fy negated, so xyz comes out y up like joint_xyz.
COMMUNITY_INTRINSICS = Intrinsics(fx=NYU_INTRINSICS.fx, fy=-NYU_INTRINSICS.fy, cx=NYU_INTRINSICS.cx,
                                  cy=NYU_INTRINSICS.cy)
NYU_EVAL_JOINTS = [0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32]
NYU_TEST_FRAMES = 8252
SUBJECT_2_FIRST_FRAME = 2441  # NYU test: frames 1..2440 show subject 1, the rest subject 2
VALUES_PER_LINE = 3 * len(NYU_EVAL_JOINTS)  # 14 joints x (u, v, d)
NUMBER_FORMAT = "%.4f"  # 1e-4 px is ~1e-4 mm at hand distance


def subject_of(frame: int, split: str) -> int | None:
    """NYU test subject (1 or 2) of a 1-based frame, None outside the test split."""
    if split != "test" or frame < 1:
        return None
    return 1 if frame < SUBJECT_2_FIRST_FRAME else 2


def camera_to_uvd(points: np.ndarray, intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """Camera-frame points (..., 3) mm, y down -> image (u, v, d): pixels and depth mm."""
    return project(np.asarray(points, np.float64), intrinsics)


def uvd_to_camera(uvd: np.ndarray, intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """(..., 3) image uvd -> camera-frame points mm, y down (the frame the hand model is built in)."""
    return unproject(np.asarray(uvd, np.float64), intrinsics)


def uvd_to_xyz(uvd: np.ndarray) -> np.ndarray:
    """The community's conversion of (..., 3) uvd to xyz mm (y up), :data:`COMMUNITY_INTRINSICS`."""
    return unproject(np.asarray(uvd, np.float64), COMMUNITY_INTRINSICS)


def write_results(path: str | Path, uvd: np.ndarray) -> Path:
    """(M, 14, 3) uvd, line i = frame i + 1, ``nan`` rows for frames without data -> a results file."""
    uvd = np.asarray(uvd, np.float64)
    if uvd.ndim != 3 or uvd.shape[1:] != (len(NYU_EVAL_JOINTS), 3):
        raise ValueError(f"results have shape {uvd.shape}, expected (frames, {len(NYU_EVAL_JOINTS)}, 3)")
    line = " ".join([NUMBER_FORMAT] * VALUES_PER_LINE)
    text = "".join((line % tuple(row) if np.isfinite(row).all() else " ".join(["nan"] * VALUES_PER_LINE)) + "\n"
                   for row in uvd.reshape(len(uvd), -1))
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def read_results(path: str | Path) -> np.ndarray:
    """A results file -> (M, 14, 3) uvd; a line of 42 ``nan`` (no data for that frame) stays ``nan``.

    Raises :class:`BadInputError` naming the file and the line for a wrong number of values, a value that
    is not a number, or ``nan``/``inf`` inside an otherwise numeric line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(path, f"cannot be read as a text results file ({error})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines end the file; blank lines inside do not
        lines.pop()
    if not lines:
        raise BadInputError(path, "is empty (expected one line per NYU test frame)")
    rows = np.empty((len(lines), VALUES_PER_LINE))
    for number, line in enumerate(lines, start=1):
        rows[number - 1] = _parse_line(path, number, line)
    return rows.reshape(len(lines), len(NYU_EVAL_JOINTS), 3)


def _parse_line(path: Path, number: int, line: str) -> np.ndarray:
    fields = line.split()
    if len(fields) != VALUES_PER_LINE:
        raise BadInputError(path, f"line {number}: {len(fields)} values, expected {VALUES_PER_LINE} "
                                  f"({len(NYU_EVAL_JOINTS)} joints x u v d)")
    values = []
    for value in fields:
        try:
            values.append(float(value))
        except ValueError:
            raise BadInputError(path, f"line {number}: {value!r} is not a number") from None
    row = np.asarray(values)
    finite = np.isfinite(row)
    if not finite.all() and not np.isnan(row).all():
        column = int(np.argmin(finite))
        raise BadInputError(path, f"line {number}: {fields[column]} at joint {column // 3 + 1} "
                                  f"({'uvd'[column % 3]}); only a whole line of nan marks a frame without data")
    return row


@dataclass
class SplitLines:
    """One value per frame of a split, in frame order; frames without a sample are ``nan``."""

    values: np.ndarray  # (M, ...) line i = frame i + 1
    missing: list[int]  # 1-based frames with no sample (skipped by the shard build)

    @property
    def complete(self) -> bool:
        return not self.missing

    def missing_note(self) -> str:
        """A sentence saying that (and which) frames of the split have no data ("" when none)."""
        if self.complete:
            return ""
        shown = ", ".join(map(str, self.missing[:10])) + (", ..." if len(self.missing) > 10 else "")
        return (f"the split is incomplete: {len(self.missing)} of {len(self.values)} frames were skipped by the "
                f"shard build (frames {shown}); their lines hold nan")


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


def view1_centers(metas: list[dict], where: str | Path) -> np.ndarray:
    """(N, 3) view-1 crop centres (camera frame mm) from samples' ``meta.json`` ``centers``."""
    try:
        return np.array([meta["centers"][0] for meta in metas], np.float64).reshape(len(metas), 3)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ShardsError(f"{where}: samples need meta.json 'frame' and 'centers' (NYU shards) to place "
                          "joints in the image") from None


def sample_intrinsics(metas: list[dict], where: str | Path) -> list[Intrinsics]:
    """Each sample's camera (``meta.json`` ``intrinsics``; NYU's Kinect where a sample names none)."""
    try:
        return [Intrinsics(**meta["intrinsics"]) if "intrinsics" in meta else NYU_INTRINSICS for meta in metas]
    except TypeError as error:
        raise ShardsError(f"{where}: meta.json 'intrinsics' unreadable ({error})") from None


def view1_camera_joints(split_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N,), view-1 evaluation joints (N, 14, 3) in the camera frame, mm) of an NYU shard split."""
    frames, joints = [], []
    for batch in make_loader(split_dir, batch_size=256, batches_per_epoch=None, num_workers=0, resampled=False):
        metas = batch.get("meta") or []
        centers = view1_centers(metas, split_dir)
        joints.append(batch["joints"][:, 0, NYU_EVAL_JOINTS].double().numpy() + centers[:, None])
        frames += [int(meta.get("frame", -1)) for meta in metas]
    if not joints:
        raise ShardsError(f"{split_dir}: holds no frames")
    return np.asarray(frames, np.int64), np.concatenate(joints)


def split_labels(split_dir: str | Path) -> SplitLines:
    """Ground truth of an NYU shard split as results-file rows: (M, 14, 3) view-1 uvd, ``nan`` if skipped."""
    frames, joints = view1_camera_joints(split_dir)
    return frame_lines(split_dir, frames, camera_to_uvd(joints))


def read_labels(labels: str | Path) -> SplitLines:
    """(M, 14, 3) uvd labels, ``nan`` rows for frames without a label, from a labels file in the results
    format or an NYU shard split dir."""
    if Path(labels).is_dir():
        return split_labels(labels)
    values = read_results(labels)
    return SplitLines(values, [i + 1 for i in np.flatnonzero(np.isnan(values).all(axis=(1, 2)))])
