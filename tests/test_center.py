"""The label-free crop centre finds the hand in front of a person, says so when there is none, and
``shards nyu --center com`` skips such a frame with a record; fake-nyu's person is deterministic."""

from __future__ import annotations

import filecmp
import json
import shutil

import numpy as np
import pytest

from conftest import run_shards
from shards.center import HandNotFound, find_center
from shards.fake_nyu import FakeNyuConfig, FakeScene
from shards.nyu import PALM_JOINT, depth_path, encode_depth_png, load_labels, read_depth
from shards.nyu_protocol import NYU_INTRINSICS

FRAMES = 3


@pytest.fixture(scope="module")
def tiny_nyu(tmp_path_factory):
    """A 3-frame fake-NYU test split with a person behind the hand (the default)."""
    out = tmp_path_factory.mktemp("tiny-nyu")
    run_shards("fake-nyu", "--out", out, "--train", 0, "--test", FRAMES, "--seed", 4)
    return out


@pytest.mark.parametrize("index", range(3))
def test_the_hand_is_found_in_front_of_a_person(index):
    """A frontal view with torso, head and upper arm behind the hand: the centre of the whole foreground
    lands on the person (the finder before issue 21 ended on the head, ~400 mm away); this one on the hand."""
    frame = FakeScene(FakeNyuConfig(seed=9)).frame("test", index, 16)
    depth, palm = frame["depth"][0], frame["joints"][0, PALM_JOINT]
    person = (depth > palm[2] + 140) & (depth < 1300)  # torso and head, in front of the wall
    assert person.sum() > 20_000, "the scene should show a person behind the hand"
    assert np.linalg.norm(find_center(depth) - palm) < 40.0


@pytest.mark.parametrize("depth_mm, reason", [(0.0, "no depth between"), (3000.0, "no depth between"),
                                              (100.0, "no depth between")])
def test_no_hand_in_an_empty_or_out_of_range_frame(depth_mm, reason):
    with pytest.raises(HandNotFound, match=reason):
        find_center(np.full((480, 640), depth_mm, np.float32))


def test_no_hand_in_speckle_or_a_bare_wall():
    speckle = np.zeros((480, 640), np.float32)
    speckle[::40, ::40] = 600.0  # isolated pixels are sensor noise, not a hand
    with pytest.raises(HandNotFound, match="only isolated depth pixels"):
        find_center(speckle)
    rows, cols = np.indices((480, 640))
    wall = (1000.0 + 0.2 * (rows - 240)).astype(np.float32)  # a tilted wall: a nearest point, but nothing in front
    with pytest.raises(HandNotFound, match="surroundings behind it"):
        find_center(wall)


def test_a_hand_shaped_blob_in_front_of_a_wall_is_found():
    """The smallest real case by hand: a 90 mm disc 500 mm in front of a wall, 10 isolated nearer pixels."""
    rows, cols = np.indices((480, 640)) + 0.5
    depth = np.full((480, 640), 1300.0, np.float32)
    x, y = (cols - NYU_INTRINSICS.cx) / NYU_INTRINSICS.fx * 800, (rows - NYU_INTRINSICS.cy) / NYU_INTRINSICS.fy * 800
    depth[np.hypot(x - 60, y + 30) < 45] = 800.0
    depth[5, ::64] = 400.0
    center = find_center(depth)
    assert np.hypot(center[0] - 60, center[1] + 30 + 7) < 5 and abs(center[2] - 840) < 5, center


def test_com_build_skips_a_frame_without_a_hand(tiny_nyu, tmp_path):
    """A frame whose view 2 shows nothing in range: left out and listed with the view's file and why, even
    without --skip-bad (it is data without a hand, not a damaged file); every other frame is built."""
    root = tmp_path / "nyu"
    shutil.copytree(tiny_nyu / "test", root / "test", ignore=shutil.ignore_patterns("rgb_*"))
    empty = depth_path(root / "test", 2, 2)
    encode_depth_png(np.zeros((480, 640))).save(empty)
    result = run_shards("nyu", "--nyu-root", root, "--out", tmp_path / "out", "--splits", "test", "--center", "com")
    manifest = json.loads((tmp_path / "out" / "test" / "manifest.json").read_text())
    skipped = manifest["skipped"]
    assert {"frame": 2, "path": str(empty), "reason": "no hand found: no depth between 200 and 2000 mm"} in skipped
    assert all(record["reason"].startswith("no hand found: ") for record in skipped)
    assert manifest["samples"] == FRAMES - len(skipped)
    assert f"{len(skipped)} frames skipped" in result.stdout


def test_fake_nyu_person_is_deterministic(tiny_nyu, tmp_path):
    """The same seed renders the same person byte for byte; --no-body keeps the hands and labels but not them."""
    run_shards("fake-nyu", "--out", tmp_path / "again", "--train", 0, "--test", FRAMES, "--seed", 4)
    run_shards("fake-nyu", "--out", tmp_path / "bare", "--train", 0, "--test", FRAMES, "--seed", 4, "--no-body")
    names = [path.name for path in sorted((tiny_nyu / "test").glob("depth_*.png"))]
    assert len(names) == 3 * FRAMES
    match, mismatch, errors = filecmp.cmpfiles(tiny_nyu / "test", tmp_path / "again" / "test", names, shallow=False)
    assert not mismatch and not errors
    match, mismatch, errors = filecmp.cmpfiles(tiny_nyu / "test", tmp_path / "bare" / "test", names, shallow=False)
    assert len(mismatch) >= FRAMES, "the person should show in the views"
    body, bare = load_labels(tiny_nyu / "test"), load_labels(tmp_path / "bare" / "test")
    assert np.array_equal(body.joints, bare.joints)
    for name in names:  # the same sensor noise wherever the person is not: most of the frame
        same = read_depth(tiny_nyu / "test" / name) == read_depth(tmp_path / "bare" / "test" / name)
        assert same.mean() > 0.3, (name, same.mean())
