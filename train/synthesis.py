"""On-the-fly synthetic depth: pose shards -> skinned mesh -> rasterized crop -> sensor noise.

Every rank renders its own batch on its own device. The sensor-noise parameters come with each
sample (``shards.format.SYNTHETIC_AUGMENT_FIELDS``) and the noise is drawn from a generator seeded
by the sample's ``noise_seed``, so a sample renders to the same depth on every run, rank and device.

Crop jitter: a jitter of ``(jx, jy)`` pixels moves the crop window, i.e. the crop centre moves by
``(jx, jy) * cube / S`` mm, so the hand and its keypoints both move by minus that in the crop frame.
Shifting the mesh and the keypoints by the same offset keeps image and label consistent (sub-pixel
jitter included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from geometry import Crop
from hand import HandModel, sample_poses, sample_shapes
from hand.render import render_mesh_depth
from renderer_cuda import ExtensionUnavailable, resolve_backend
from renderer_cuda.rasterize import Backend
from shards.format import SYNTHETIC_AUGMENT_FIELDS
from train.schema import Range

_FIELD = {name: i for i, name in enumerate(SYNTHETIC_AUGMENT_FIELDS)}


@dataclass
class SynthesisConfig:
    """Rendering of synthetic training depth."""

    supersample: Annotated[int, Range(ge=1)] = 1  # rasterizer supersampling factor per axis (1: one sample per pixel)
    # Rasterizer backend (renderer_cuda.BACKENDS): auto (the kernel of the run's device), cuda, cpu, or torch
    # (the pure-torch reference, ~1,500x slower than a kernel). See check_rasterizer for what a run refuses.
    backend: Backend = "auto"
    # Fraction of samples rendered with a forearm (real crops show one; the hand mesh ends at the wrist).
    forearm: Annotated[float, Range(ge=0, le=1)] = 0.0
    # Hand size augmentation: each sample's global scale times a factor uniform in [1 - this, 1 + this]
    # (real subjects' hands differ from the shards' shape spread; the labels scale with the hand).
    scale_jitter: Annotated[float, Range(ge=0, lt=1)] = 0.0


def backend_mismatch(backend: Backend, device_type: str) -> str | None:
    """Why a ``cuda`` or ``cpu`` backend cannot render for a run on a ``device_type`` device, or None."""
    if backend in ("cuda", "cpu") and device_type != backend:
        where = "a CUDA device" if backend == "cuda" else "the CPU"
        return f"renders on {where} but the run trains on {device_type}; set it to {device_type} or auto"
    return None


def check_rasterizer(backend: Backend, device: torch.device) -> None:
    """Refuse, before training starts, a synthesis that could not render on ``device`` with ``backend``, or
    only by silently falling back to the pure-torch reference. Raises ValueError saying why (the message
    reads after the backend's name).

    On a CUDA device ``auto`` and ``cuda`` need the CUDA kernel: an unusable one would cost the run ~1,500x
    in rendering, so it is an error unless the config asks for ``torch``. On the CPU, ``cpu`` needs the CPU
    kernel, and ``auto`` may fall back to the reference with one warning (interactive use).
    """
    mismatch = backend_mismatch(backend, device.type)
    if mismatch:
        raise ValueError(mismatch)
    try:  # the renderer's own answer: which kernel renders, or why none can (with the build log's path)
        resolve_backend(backend, device)
    except ExtensionUnavailable as error:
        raise ValueError(f"cannot render on {device}: {error} (synthesis.backend=torch in a config); the whole "
                         f"build log: `python -m renderer_cuda build --kind {device.type} --verbose`") from None


def jitter_offset_mm(augment: torch.Tensor, crop: Crop) -> torch.Tensor:
    """(B, 3) crop-centre displacement in mm for the augment rows' pixel jitter (z unchanged)."""
    pixels = augment[:, [_FIELD["jitter_x_px"], _FIELD["jitter_y_px"]]]
    offset = torch.zeros(augment.shape[0], 3, dtype=augment.dtype, device=augment.device)
    offset[:, :2] = pixels * crop.mm_per_pixel
    return offset


FOREARM_RADII_MM = ((24.0, 36.0), (16.0, 25.0))  # half-width ranges across and through the arm
FOREARM_FLEXION_RAD = 0.5  # wrist flexion drawn in [-this, this]


@dataclass
class Variation:
    """Per-sample render variations drawn at synthesis time: hand scale factor (B,), forearm radii (B, 2) mm
    (zero: no arm) and wrist flexion (B,) rad."""

    scale: torch.Tensor
    forearm_radii: torch.Tensor
    wrist_flexion: torch.Tensor


def draw_variation(augment: torch.Tensor, cfg: SynthesisConfig) -> Variation:
    """Drawn from each noise_seed of the CPU ``augment`` rows (a stream apart from the sensor noise's, so the
    noise of a sample stays the same whatever these settings are)."""
    scale, radii, flexion = [], [], []
    for row in augment:
        generator = torch.Generator().manual_seed(int(row[_FIELD["noise_seed"]].item()) ^ 0x5EED_A12A)
        draws = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        present = float(draws[0] < cfg.forearm)
        radii.append([present * (lo + (hi - lo) * u) for (lo, hi), u in zip(FOREARM_RADII_MM, draws[1:3])])
        flexion.append(FOREARM_FLEXION_RAD * (2 * draws[3] - 1))
        scale.append(1 + cfg.scale_jitter * (2 * draws[4] - 1))
    return Variation(torch.tensor(scale), torch.tensor(radii), torch.tensor(flexion))


def sensor_noise(augment: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (B, S, S) depth noise in mm and hole mask, drawn on the CPU from each noise_seed of the CPU
    ``augment`` rows.

    Drawing on the CPU makes a sample's noise identical on every device; it is B*S*S numbers, cheap.
    """
    noise, holes = [], []
    for row in augment:
        generator = torch.Generator().manual_seed(int(row[_FIELD["noise_seed"]].item()))
        noise.append(torch.randn(size, size, generator=generator) * float(row[_FIELD["depth_noise_mm"]]))
        holes.append(torch.rand(size, size, generator=generator) < float(row[_FIELD["hole_fraction"]]))
    return torch.stack(noise), torch.stack(holes)


class Synthesizer:
    """Renders synthetic shard batches to (depth (B,1,S,S) mm, keypoints (B,41,3) mm, crop frame)."""

    def __init__(self, hand: HandModel, *, crop: Crop, cfg: SynthesisConfig | None = None) -> None:
        self.hand = hand
        self.crop = crop
        self.cfg = cfg or SynthesisConfig()

    @property
    def device(self) -> torch.device:
        return self.hand.radii.device

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Every per-sample draw comes from the augment rows where the loader delivers them, on the CPU, and
        # all of it reaches the device in one copy that does not wait for the device.
        augment = batch["augment"].cpu().float()
        variation = draw_variation(augment, self.cfg)
        noise, holes = sensor_noise(augment, self.crop.size)
        inputs = to_device({"pose": batch["pose"], "shape": batch["shape"], "offset": jitter_offset_mm(augment, self.crop),
                            "scale": variation.scale, "forearm_radii": variation.forearm_radii,
                            "wrist_flexion": variation.wrist_flexion, "noise": noise, "holes": holes}, self.device)
        shape = inputs["shape"].clone()
        shape[:, 0] *= inputs["scale"]
        forearm = (inputs["forearm_radii"], inputs["wrist_flexion"]) if self.cfg.forearm > 0 else None
        depth, keypoints = render_mesh_depth(self.hand, inputs["pose"], shape, crop=self.crop,
                                             offset_mm=inputs["offset"][:, None, :], forearm=forearm,
                                             supersample=self.cfg.supersample, backend=self.cfg.backend)
        return self._add_noise(depth, inputs["noise"], inputs["holes"])[:, None], keypoints

    def _add_noise(self, depth: torch.Tensor, noise: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        background = self.crop.background_depth
        hand_pixels = depth < background
        depth = torch.where(hand_pixels, depth + noise, depth)
        # Missing sensor depth reads as background, like the real crops.
        depth = torch.where(hand_pixels & holes, torch.full_like(depth, background), depth)
        return self.crop.clip_depth(depth)


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """CPU tensors (float32 or bool) on ``device``, in one copy: packed into one pinned float32 buffer whose
    copy does not wait for the device, then split there. Unchanged on the CPU."""
    if device.type == "cpu":
        return {name: tensor.cpu() for name, tensor in tensors.items()}
    flat = torch.cat([tensor.cpu().reshape(-1).float() for tensor in tensors.values()])
    flat = flat.pin_memory().to(device, non_blocking=True)
    parts = flat.split([tensor.numel() for tensor in tensors.values()])
    return {name: part.view(tensor.shape) > 0.5 if tensor.dtype == torch.bool else part.view(tensor.shape)
            for (name, tensor), part in zip(tensors.items(), parts)}


def held_out_batch(hand: HandModel, n: int, seed: int) -> dict[str, torch.Tensor]:
    """A fixed synthetic batch (clean: no jitter or noise) from the pose sampler, for evaluation.

    Its own seed keeps it apart from the training shards (random poses; no pose is shared in practice).
    """
    generator = torch.Generator().manual_seed(seed)
    pose = sample_poses(n, generator=generator).float()
    shape = sample_shapes(n, generator=generator).float()
    augment = torch.zeros(n, len(SYNTHETIC_AUGMENT_FIELDS))
    return {"pose": pose, "shape": shape, "augment": augment}
