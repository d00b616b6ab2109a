"""``python -m train.predict``: a trained network on depth frames of your own, one JSON and one overlay per frame.

    python -m train.predict --checkpoint runs/x --depth frame.png --out predictions
    python -m train.predict --checkpoint runs/x --depth my_frames/ --intrinsics 475.1,475.6,315.9,245.7 --refine 2
    python -m train.predict --checkpoint runs/x --depth data/fake-nyu/test --format results --out pred
    python -m train.evaluate --results pred/results.txt --labels shards/nyu/test --out compare

Frames (640 x 480, the crop code's image size): an NYU-style PNG (RGB, depth mm = G << 8 | B), a 16-bit
single-channel PNG (depth mm) or a ``.npy`` array (depth mm); 0 means no depth, and depth outside
100..10000 mm counts as none. A directory is read in name order; in NYU's layout (``depth_1_NNNNNNN.png``)
only view 1 is taken, the protocol's view, and line i of a results file holds frame i.

The crop centre: ``--center com`` finds the hand from depth alone (:func:`shards.center.find_center`, no
labels); ``--center x,y,z`` puts every crop at one camera-frame point (mm); ``--centers PATH`` takes each
frame's centre from an NYU shard split (its view-1 centres, so predictions match that split's crops
exactly) or from a JSON file ``{"<file stem>": [x, y, z]}``. ``--refine N`` then re-crops N times at the
palm centre the network predicted (joint 32), still label-free.

``--format json`` writes per frame ``OUT/<stem>.json``: ``joints_mm`` (36 x 3, NYU's joints) and
``spheres_mm`` (41 x 3, the hand model's spheres; the joints are the first 36) in the camera frame (mm,
y down), ``eval_uvd`` (NYU's 14 evaluation joints ``eval_joints`` as image u, v pixels and depth mm),
``center_mm`` (the crop centre of the prediction) and ``centers_mm`` (first centre, then each refinement);
and ``OUT/<stem>.png``: the full frame with the crop box and the joints, beside the crop with the skeleton.
``--format results`` writes ``OUT/results.txt`` in the field's results format (one line per frame, the 14
joints as ``u v d``), which ``python -m train.evaluate --results`` scores. A frame where no hand is found
is reported (a warning, ``"hand_found": false`` or a ``nan`` line), never guessed.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from geometry import Crop, Intrinsics, project
from shards.center import HandNotFound, find_center
from shards.format import BadInputError, ShardsError
from shards.nyu import DEPTH_FILE, MISSING_DEPTH_VALUES, NYU_IMAGE_HEIGHT, NYU_IMAGE_WIDTH, PALM_JOINT, crop_depth, read_depth
from shards.nyu_protocol import NYU_EVAL_JOINTS, NYU_INTRINSICS, frame_lines, view1_centers, write_results
from shards.reader import make_loader
from train.checkpoint import CheckpointError, load_network, resolve_checkpoint
from train.predictions import crop_to_uvd

DEPTH_RANGE_MM = (100.0, 10000.0)  # what a depth camera can see; outside it (e.g. metres by mistake) is no depth
NUM_JOINTS = 36
FRAME_SUFFIXES = (".png", ".npy")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


# ---------------------------------------------------------------------------------------------------
# Reading frames

def read_frame(path: Path) -> np.ndarray:
    """A depth frame -> (480, 640) float32 mm, 0 where there is none; :class:`BadInputError` names the file."""
    if path.suffix == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise BadInputError(path, f"cannot be read as a numpy array ({error})") from None
        if depth.dtype.kind not in "uif":
            raise BadInputError(path, f"holds {depth.dtype} values, expected depth in mm (numbers)")
    elif path.suffix == ".png":
        depth = _read_png(path)
    else:
        raise BadInputError(path, f"unknown depth file type {path.suffix!r} (expected .png or .npy)")
    if depth.shape != (NYU_IMAGE_HEIGHT, NYU_IMAGE_WIDTH):
        raise BadInputError(path, f"is {'x'.join(map(str, depth.shape[::-1]))}, expected "
                                  f"{NYU_IMAGE_WIDTH}x{NYU_IMAGE_HEIGHT} depth")
    depth = np.nan_to_num(depth.astype(np.float32), nan=0.0)
    depth[np.isin(depth, MISSING_DEPTH_VALUES) | (depth < DEPTH_RANGE_MM[0]) | (depth > DEPTH_RANGE_MM[1])] = 0.0
    if not depth.any():
        raise BadInputError(path, f"has no depth in {DEPTH_RANGE_MM[0]:g}..{DEPTH_RANGE_MM[1]:g} mm (is it in mm?)")
    return depth


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in SIXTEEN_BIT_MODES:
                image.load()
                return np.asarray(image)
    except FileNotFoundError:
        raise BadInputError(path, "missing") from None
    except (OSError, SyntaxError, ValueError, zlib.error) as error:
        raise BadInputError(path, f"cannot be decoded as PNG ({error})") from None
    if mode != "RGB":
        raise BadInputError(path, f"has mode {mode}, expected an NYU-style RGB PNG (depth in G << 8 | B) or a "
                                  "16-bit single-channel PNG (mm)")
    return read_depth(path)


def list_frames(depth: Path) -> list[Path]:
    """A file as given; a directory's depth frames in name order (NYU's layout: view 1 only)."""
    if not depth.is_dir():
        if not depth.exists():
            raise BadInputError(depth, "missing")
        return [depth]
    files = sorted(p for p in depth.iterdir() if p.suffix in FRAME_SUFFIXES and p.is_file())
    nyu = [p for p in files if DEPTH_FILE.match(p.name)]
    if nyu:
        files = [p for p in nyu if DEPTH_FILE.match(p.name).group(1) == "1"]
    if not files:
        raise BadInputError(depth, "holds no depth frames (*.png, *.npy)")
    return files


def frame_number(path: Path) -> int | None:
    """NYU's 1-based frame number of ``depth_V_NNNNNNN.png``, None for other names."""
    match = DEPTH_FILE.match(path.name)
    return int(match.group(2)) if match else None


# ---------------------------------------------------------------------------------------------------
# Crop centres

def read_centers(path: Path) -> dict[str, np.ndarray]:
    """Crop centres by file stem: an NYU shard split's view-1 centres (``depth_1_NNNNNNN``) or a JSON file."""
    if path.is_dir():
        centers = {}
        for batch in make_loader(path, batch_size=64, batches_per_epoch=None, num_workers=0, resampled=False):
            metas = batch.get("meta") or []
            for meta, center in zip(metas, view1_centers(metas, path)):
                centers[f"depth_1_{int(meta['frame']):07d}"] = center
        return centers
    try:
        table = json.loads(path.read_text())
        return {str(stem): _point(value, path) for stem, value in table.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise BadInputError(path, f"cannot be read as a JSON object {{stem: [x, y, z]}} ({error})") from None


def _point(value: object, where: Path | str) -> np.ndarray:
    point = np.asarray(value, np.float64) if isinstance(value, (list, tuple)) else np.zeros(0)
    if point.shape != (3,) or not np.isfinite(point).all() or point[2] <= 0:
        raise BadInputError(where, f"{value!r} is not a crop centre x, y, z (camera frame mm, z > 0)")
    return point


def hand_center(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray | None:
    """The label-free crop centre of a frame, None where no hand is found (never a guess)."""
    try:
        return find_center(depth, intrinsics)
    except HandNotFound:
        return None


# ---------------------------------------------------------------------------------------------------
# The network on one frame

@dataclass
class FramePrediction:
    """A network's prediction on one frame, in the camera frame."""

    spheres: np.ndarray  # (41, 3) mm, camera frame
    centers: list[np.ndarray]  # crop centres: the first, then one per refinement; the last is the prediction's
    crop_depth: np.ndarray  # (S, S) mm, the crop at the last centre

    @property
    def center(self) -> np.ndarray:
        return self.centers[-1]


@torch.no_grad()
def predict_frame(net: torch.nn.Module, crop: Crop, depth: np.ndarray, center: np.ndarray, intrinsics: Intrinsics,
                  refine: int = 0) -> FramePrediction:
    """Crop at ``center``, predict; then ``refine`` times re-crop at the predicted palm (joint 32) and predict."""
    device = next(net.parameters()).device
    centers = [np.asarray(center, np.float64)]
    while True:
        cropped = crop_depth(depth, centers[-1], crop, intrinsics)
        joints = net(torch.from_numpy(cropped)[None, None].to(device)).joints[0].double().cpu().numpy()
        if len(centers) > refine:
            return FramePrediction(joints + centers[-1], centers, cropped)
        centers.append(centers[-1] + joints[PALM_JOINT])


# ---------------------------------------------------------------------------------------------------
# Outputs

# Bones drawn on the overlay: each finger tip -> knuckle (NYU blocks of 6), knuckle -> palm centre, wrist.
SKELETON = ([(6 * f + k, 6 * f + k + 1) for f in range(5) for k in range(5)]
            + [(6 * f + 5, PALM_JOINT) for f in range(5)] + [(30, 31), (30, PALM_JOINT), (31, PALM_JOINT)])
FINGER_COLORS = ((230, 60, 60), (240, 160, 30), (60, 190, 60), (60, 120, 240), (200, 70, 220))
PALM_COLOR = (255, 255, 255)


def frame_record(path: Path, prediction: FramePrediction, intrinsics: Intrinsics) -> dict:
    """The per-frame JSON (see the module docstring)."""
    uvd = crop_to_uvd(prediction.spheres[None, NYU_EVAL_JOINTS] - prediction.center, prediction.center[None],
                      [intrinsics])[0]
    return {"file": str(path), "hand_found": True, "center_mm": prediction.center.tolist(),
            "centers_mm": [c.tolist() for c in prediction.centers], "refine": len(prediction.centers) - 1,
            "intrinsics": intrinsics.to_dict(), "joints_mm": prediction.spheres[:NUM_JOINTS].tolist(),
            "spheres_mm": prediction.spheres.tolist(), "eval_joints": NYU_EVAL_JOINTS, "eval_uvd": uvd.tolist()}


def _grey(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Depth -> uint8 grey, near bright; pixels without depth (0) black."""
    grey = np.clip((far - depth) / max(far - near, 1.0), 0.0, 1.0) * 215 + 40
    return np.where(depth > 0, grey, 0).astype(np.uint8)


def _bone_color(a: int) -> tuple[int, int, int]:
    return FINGER_COLORS[a // 6] if a < 30 else PALM_COLOR


def draw_overlay(depth: np.ndarray, prediction: FramePrediction, crop: Crop, intrinsics: Intrinsics,
                 path: Path) -> Path:
    """The full frame with the crop box and the joints, beside the crop (scaled up) with the skeleton."""
    center = prediction.center
    valid = depth[depth > 0]
    frame = Image.fromarray(_grey(depth, float(valid.min()), float(np.percentile(valid, 99)))).convert("RGB")
    draw = ImageDraw.Draw(frame)
    half = crop.half_mm  # the crop box: the cube's face through the centre, as the camera sees it
    (u0, v0), (u1, v1) = (project(center + np.array([s * half, s * half, 0.0]), intrinsics)[:2] for s in (-1, 1))
    draw.rectangle([u0, v0, u1, v1], outline=(255, 200, 0), width=2)
    for index, (u, v, _) in enumerate(project(prediction.spheres[:NUM_JOINTS], intrinsics)):
        draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=_bone_color(index))
    draw.text((6, 6), f"crop centre {center[0]:.0f}, {center[1]:.0f}, {center[2]:.0f} mm", fill=(255, 200, 0))

    scale = NYU_IMAGE_HEIGHT // crop.size
    cropped = Image.fromarray(_grey(prediction.crop_depth + crop.half_mm + 1.0, 1.0, crop.cube_mm))
    cropped = cropped.resize((crop.size * scale,) * 2, Image.NEAREST).convert("RGB")
    draw = ImageDraw.Draw(cropped)
    uv = crop.to_pixels(prediction.spheres - center)[:, :2] * scale
    for a, b in SKELETON:
        draw.line([tuple(uv[a]), tuple(uv[b])], fill=_bone_color(a), width=3)
    for index, (u, v) in enumerate(uv[:NUM_JOINTS]):
        draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=_bone_color(index), outline=(0, 0, 0))

    canvas = Image.new("RGB", (frame.width + 4 + cropped.width, frame.height))
    canvas.paste(frame, (0, 0))
    canvas.paste(cropped, (frame.width + 4, 0))
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------------------------------
# The command

def _intrinsics(text: str) -> Intrinsics:
    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--intrinsics {text!r}: expected fx,fy,cx,cy (pixels)") from None
    if not (fx > 0 and fy > 0 and np.isfinite([cx, cy]).all()):
        raise argparse.ArgumentTypeError(f"--intrinsics {text!r}: fx and fy must be > 0")
    return Intrinsics(fx, fy, cx, cy)


def _center(text: str) -> str | np.ndarray:
    if text == "com":
        return text
    try:
        return _point([float(v) for v in text.split(",")], "--center")
    except (ValueError, BadInputError):
        raise argparse.ArgumentTypeError(f"--center {text!r}: expected com or x,y,z (camera frame mm, z > 0)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt), or a run dir: its newest")
    parser.add_argument("--depth", required=True, type=Path, help="a depth frame (.png, .npy) or a directory of them")
    parser.add_argument("--intrinsics", type=_intrinsics, default=NYU_INTRINSICS, metavar="FX,FY,CX,CY",
                        help="the depth camera's intrinsics in pixels (default NYU's Kinect: 588.03,587.07,320,240)")
    centre = parser.add_mutually_exclusive_group()
    centre.add_argument("--center", type=_center, default="com", metavar="com|X,Y,Z",
                        help="crop centre: com = found from depth alone (default); X,Y,Z = this point, camera mm")
    centre.add_argument("--centers", type=Path, default=None, metavar="PATH",
                        help="per-frame centres: an NYU shard split dir (its view-1 centres) or a JSON file "
                        "{stem: [x, y, z]}")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="re-crop N times at the predicted palm centre and predict again (default 0)")
    parser.add_argument("--format", choices=("json", "results"), default="json",
                        help="json: OUT/<stem>.json + OUT/<stem>.png per frame; results: OUT/results.txt")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output dir (default predictions)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.refine < 0:
        parser.error(f"--refine {args.refine}: must be >= 0")
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        net, crop, _ = load_network(checkpoint, args.device)
        frames = list_frames(args.depth)
        given = read_centers(args.centers) if args.centers else {}
        args.out.mkdir(parents=True, exist_ok=True)
        missed = run_frames(net, crop, frames, given, args)
    except (OSError, ValueError, ShardsError, CheckpointError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{len(frames)} frame(s) from {args.depth} -> {args.out}"
          + (f"; no hand found in {len(missed)}: {', '.join(p.name for p in missed[:5])}" if missed else ""))


def run_frames(net: torch.nn.Module, crop: Crop, frames: list[Path], given: dict[str, np.ndarray],
               args: argparse.Namespace) -> list[Path]:
    """Predict every frame and write the outputs; returns the frames where no hand was found."""
    missed, uvd = [], np.full((len(frames), len(NYU_EVAL_JOINTS), 3), np.nan)
    for index, path in enumerate(tqdm(frames, desc="predict", unit="frame", disable=len(frames) == 1)):
        depth = read_frame(path)
        if args.centers:
            if path.stem not in given:
                raise BadInputError(args.centers, f"holds no centre for {path.stem} ({path})")
            center = given[path.stem]
        else:
            center = hand_center(depth, args.intrinsics) if isinstance(args.center, str) else args.center
        if center is None:
            tqdm.write(f"warning: {path}: no hand found; no prediction for this frame", file=sys.stderr)
            missed.append(path)
            if args.format == "json":
                (args.out / f"{path.stem}.json").write_text(json.dumps({"file": str(path), "hand_found": False}) + "\n")
            continue
        prediction = predict_frame(net, crop, depth, center, args.intrinsics, args.refine)
        record = frame_record(path, prediction, args.intrinsics)
        uvd[index] = record["eval_uvd"]
        if args.format == "json":
            (args.out / f"{path.stem}.json").write_text(json.dumps(record) + "\n")
            draw_overlay(depth, prediction, crop, args.intrinsics, args.out / f"{path.stem}.png")
    if args.format == "results":
        numbers = [frame_number(p) for p in frames]
        numbers = numbers if None not in numbers else list(range(1, len(frames) + 1))
        write_results(args.out / "results.txt", frame_lines(args.depth, np.asarray(numbers), uvd).values)
    return missed


if __name__ == "__main__":
    main()
