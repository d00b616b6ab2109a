"""The field's NYU results format, read: one line per frame, the 14 evaluation joints as ``u v d``.

A line holds ``hand.NYU_EVAL_JOINTS`` in that order as 42 numbers separated by spaces: u and v in
view-1 image pixels of the NYU Kinect (:data:`NYU_INTRINSICS`), d the depth in mm. A whole line of
``nan`` marks a frame without data. The reader lives here, below ``shards``, because the hand model's
fitting tool (``python -m hand.fit``) reads these files as well as the shard and evaluation code
(``shards.nyu_results``, which also writes them); the NYU Kinect's intrinsics live with it, since the
format's pixels are defined by them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geometry import Intrinsics, unproject
from hand.anatomy import NYU_EVAL_JOINTS

VALUES_PER_LINE = 3 * len(NYU_EVAL_JOINTS)  # 14 joints x (u, v, d)
# The NYU Kinect, as DESIGN.md gives it (the prototype used 588.235 / 587.084); y down, as image rows.
NYU_INTRINSICS = Intrinsics(fx=588.03, fy=587.07, cx=320.0, cy=240.0)


class ResultsFileError(ValueError):
    """A results file that cannot be used; ``path`` names it, ``reason`` says where and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_results(path: str | Path) -> np.ndarray:
    """A results file -> (M, 14, 3) uvd; a line of 42 ``nan`` (no data for that frame) stays ``nan``.

    Raises :class:`ResultsFileError` naming the file and the line for a wrong number of values, a value
    that is not a number, or ``nan``/``inf`` inside an otherwise numeric line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ResultsFileError(path, f"cannot be read as a text results file ({error})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines end the file; blank lines inside do not
        lines.pop()
    if not lines:
        raise ResultsFileError(path, "is empty (expected one line per NYU test frame)")
    rows = np.empty((len(lines), VALUES_PER_LINE))
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != VALUES_PER_LINE:
            raise ResultsFileError(path, f"line {number}: {len(fields)} values, expected {VALUES_PER_LINE} "
                                         f"({len(NYU_EVAL_JOINTS)} joints x u v d)")
        try:
            rows[number - 1] = [float(value) for value in fields]
        except ValueError:
            bad = next(value for value in fields if not _is_number(value))
            raise ResultsFileError(path, f"line {number}: {bad!r} is not a number") from None
        finite = np.isfinite(rows[number - 1])
        if not finite.all() and not np.isnan(rows[number - 1]).all():
            column = int(np.argmin(finite))
            raise ResultsFileError(path, f"line {number}: {fields[column]} at joint {column // 3 + 1} "
                                         f"({'uvd'[column % 3]}); only a whole line of nan marks a frame without data")
    return rows.reshape(len(lines), len(NYU_EVAL_JOINTS), 3)


def uvd_to_camera(uvd: np.ndarray, intrinsics: Intrinsics = NYU_INTRINSICS) -> np.ndarray:
    """(..., 3) image uvd -> camera-frame points mm, y down (the frame the hand model is fitted in)."""
    return unproject(np.asarray(uvd, np.float64), intrinsics)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
