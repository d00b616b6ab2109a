"""Interactive viewer of the hand model: 26 labelled sliders, the sphere render and the mesh depth.

    python -m hand.viewer                                  # window; drag the sliders
    python -m hand.viewer --pose random --seed 3           # start from a sampled pose
    python -m hand.viewer --save out.png --pose pose.json  # headless (Agg): write the figure, exit

Renders use :mod:`hand.render` (analytic spheres, rasterized mesh) in the orthographic crop of
:mod:`geometry`: an S x S crop (64..128 px) of a 300 mm cube centred on the origin, the palm
centre of the zero pose. A pose file is JSON: a list of 26 numbers in ``hand.PARAM_NAMES`` order, or
an object ``{name: value}`` with PARAM_NAMES keys (missing ones are 0). The viewer is an application
on top of the hand model and its renders (:mod:`hand.render`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from geometry import Crop
from hand.anatomy import PARAM_NAMES
from hand.model import HandModel
from hand.render import render_mesh_depth, render_sphere_depth
from hand.sampler import sample_poses

_TRANSLATION_RANGE = 100.0  # slider range of the translation parameters, mm
_DEPTH_RANGE = 100.0  # colour range of crop depth, +- mm around the crop centre


class PoseFileError(ValueError):
    """A pose file that cannot be read; the message names the file and the key or value at fault."""


def load_pose_file(path: Path, model: HandModel) -> torch.Tensor:
    """(26,) pose from a JSON file (a list of 26 numbers or {PARAM_NAME: number}), within limits."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PoseFileError(f"{path}: cannot read a JSON pose: {error}") from error
    if isinstance(data, list):
        if len(data) != len(PARAM_NAMES):
            raise PoseFileError(f"{path}: a pose list needs {len(PARAM_NAMES)} numbers, got {len(data)}")
        items = list(zip(PARAM_NAMES, data))
    elif isinstance(data, dict):
        unknown = [key for key in data if key not in PARAM_NAMES]
        if unknown:
            raise PoseFileError(f"{path}: unknown parameter {unknown[0]!r} (expected names of hand.PARAM_NAMES)")
        items = list(data.items())
    else:
        raise PoseFileError(f"{path}: expected a list of {len(PARAM_NAMES)} numbers or an object, "
                            f"got {type(data).__name__}")
    pose = torch.zeros(len(PARAM_NAMES))
    for name, value in items:
        index = PARAM_NAMES.index(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PoseFileError(f"{path}: {name} = {value!r} is not a finite number")
        low, high = round(float(model.lower[index]), 4), round(float(model.upper[index]), 4)
        if not low <= value <= high:
            raise PoseFileError(f"{path}: {name} = {value} is outside its joint limits [{low:g}, {high:g}]")
        pose[index] = float(value)
    return pose


def initial_pose(spec: str, seed: int, model: HandModel) -> torch.Tensor:
    """(26,) pose from ``zero``, ``random`` (sample_poses with ``seed``) or a JSON file path."""
    if spec == "zero":
        return torch.zeros(len(PARAM_NAMES))
    if spec == "random":
        return sample_poses(1, torch.Generator().manual_seed(seed))[0]
    return load_pose_file(Path(spec), model)


def render_views(model: HandModel, pose: torch.Tensor, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
    """Sphere depth and mesh depth (each (S, S) float32, crop depth in mm) of one pose."""
    with torch.no_grad():
        batch = pose[None].float()
        spheres = render_sphere_depth(model.keypoints(batch), model.radii, crop=crop)
        mesh, _ = render_mesh_depth(model, batch, crop=crop)
    return spheres[0].cpu().numpy(), mesh[0].cpu().numpy()


def _slider_range(model: HandModel, index: int) -> tuple[float, float]:
    if index < 3:
        return -math.pi, math.pi
    if index < 6:
        return -_TRANSLATION_RANGE, _TRANSLATION_RANGE
    return float(model.lower[index]), float(model.upper[index])


class Viewer:
    """The figure: sliders on the left, sphere render top right, mesh depth bottom right."""

    def __init__(self, model: HandModel, pose: torch.Tensor, crop: Crop) -> None:
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Slider

        self.model, self.crop = model, crop
        self.pose = pose.clone()
        self.figure = plt.figure(figsize=(12, 8))
        self.figure.suptitle("hand model: 26 pose parameters (radians; translation in mm)")
        self.sliders = []
        for index, name in enumerate(PARAM_NAMES):
            axes = self.figure.add_axes((0.14, 0.93 - index * 0.034, 0.26, 0.022))
            low, high = _slider_range(model, index)
            value = float(np.clip(self.pose[index], low, high))
            slider = Slider(axes, name, low, high, valinit=value, valfmt="%+.2f")
            slider.label.set_fontsize(8)
            slider.valtext.set_fontsize(8)
            slider.on_changed(lambda value, index=index: self._changed(index, value))
            self.sliders.append(slider)
        spheres, mesh = render_views(model, self.pose, crop)
        self.images = [self._panel((0.5, 0.52, 0.45, 0.4), spheres, "spheres (render_spheres)"),
                       self._panel((0.5, 0.05, 0.45, 0.4), mesh, "mesh depth (rasterize)")]

    def _panel(self, rect: tuple[float, float, float, float], depth: np.ndarray, title: str):
        import matplotlib
        axes = self.figure.add_axes(rect)
        axes.set_title(f"{title}, {self.crop.size}x{self.crop.size} crop of a {self.crop.cube_mm:.0f} mm cube",
                       fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
        image = axes.imshow(self._masked(depth), cmap=cmap, vmin=-_DEPTH_RANGE, vmax=_DEPTH_RANGE,
                            interpolation="nearest")
        self.figure.colorbar(image, ax=axes, fraction=0.046, label="crop depth (mm)")
        return image

    def _masked(self, depth: np.ndarray) -> np.ndarray:
        """Background (the cube's far face) as NaN, drawn white, so the colours span the hand only."""
        return np.where(depth < self.crop.background_depth, depth, np.nan)

    def _changed(self, index: int, value: float) -> None:
        self.pose[index] = value
        for image, depth in zip(self.images, render_views(self.model, self.pose, self.crop)):
            image.set_data(self._masked(depth))
        self.figure.canvas.draw_idle()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hand.viewer",
        description="View the 26-DOF sphere hand: sliders for every pose parameter, the 41-sphere render "
                    "and the skinned mesh depth in an orthographic crop of a 300 mm cube.",
        epilog="A pose file is JSON: a list of 26 numbers in PARAM_NAMES order or {name: value} "
               f"with names from: {', '.join(PARAM_NAMES)}.")
    parser.add_argument("--save", type=Path, metavar="OUT.png",
                        help="render the figure headless (Agg) to this image and exit instead of opening a window")
    parser.add_argument("--pose", default="zero", metavar="zero|random|FILE.json",
                        help="initial pose: the zero pose, a sample of the pose sampler, or a JSON file (default zero)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --pose random (default 0)")
    parser.add_argument("--size", type=int, default=128, help="crop size in pixels, 64..128 (default 128)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 64 <= args.size <= 128:
        build_parser().error(f"--size must be within 64..128, got {args.size}")
    if args.save is not None:
        import matplotlib
        matplotlib.use("Agg")
    model = HandModel()
    try:
        pose = initial_pose(args.pose, args.seed, model)
    except PoseFileError as error:
        print(f"hand.viewer: {error}", file=sys.stderr)
        return 2
    viewer = Viewer(model, pose, Crop(size=args.size))
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        viewer.figure.savefig(args.save, dpi=80)
        return 0
    import matplotlib.pyplot as plt
    plt.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
