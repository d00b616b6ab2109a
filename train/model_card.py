"""The model card of a trained checkpoint: ``MODEL_CARD.md``, what a user of the model must know.

Written next to a run's checkpoint by ``python -m train.report`` (with the evaluation it made) and by
``python -m train.export`` (with ``eval-<checkpoint>/metrics.json`` of ``python -m train.evaluate`` if one
lies beside the checkpoint). Everything in it is read from the checkpoint (step, resolved config, crop) and
from the manifests of the shards its config names (sha256 of each ``manifest.json``, how the shards were
cut); the label use follows from those: which split's labels placed the crops, calibrated the cameras or
were a training target.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from fileio import write_atomic
from shards.format import MANIFEST_NAME
from train.checkpoint import checkpoint_crop, read_checkpoint

CARD_NAME = "MODEL_CARD.md"
INTENDED_USE = (
    "3D hand pose (41 sphere centres, NYU's 36 joints first) from one depth frame of one hand, cropped "
    "orthographically around a centre; research and prototyping on Kinect-like depth (640 x 480, mm), "
    "e.g. `python -m train.predict` on your frames or the exported file in your own pipeline.")
KNOWN_LIMITS = [
    "Accuracy is known only on the data of the evaluation figures; other cameras, hands and scenes are untested.",
    "Frames must be 640 x 480 depth in mm; the crop centre must lie on the hand (a crop without the hand gives "
    "a confident wrong pose: the network never says 'no hand').",
    "The label-free centre (`--center com`) assumes the hand is the nearest object and the arm enters from "
    "below; in a scene where something else is nearer it can miss the hand.",
    "One hand per crop; hands much smaller or larger than the training hands, and poses outside the training "
    "poses, come out less accurate.",
]


def manifest_entries(data_dir: str | Path) -> list[dict[str, Any]]:
    """Each ``manifest.json`` of a shard dir and its split subdirs: path, sha256, kind, samples, build args."""
    root = Path(data_dir)
    found = sorted({*root.glob(MANIFEST_NAME), *root.glob(f"*/{MANIFEST_NAME}")})
    entries = []
    for path in found:
        raw = path.read_bytes()
        manifest = json.loads(raw)
        entries.append({"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "kind": manifest.get("kind"),
                        "samples": manifest.get("samples"), "args": manifest.get("args") or {},
                        "derived_from": manifest.get("derived_from")})
    return entries


def _enabled(loss: dict, term: str) -> bool:
    section = loss.get(term)
    return isinstance(section, dict) and bool(section.get("enabled", False))


def label_use(config: dict, manifests: dict[str, list[dict]]) -> list[str]:
    """Sentences saying which split's labels the run read, and what for (none for synthetic data)."""
    data, loss = config.get("data") or {}, config.get("loss") or {}
    lines = []
    if data.get("synthetic") and int(data.get("synthetic_batch", 0)) > 0:
        lines.append("Synthetic renders: labels come from the renderer (no data set labels).")
    train = [m for m in manifests.get("data.real", []) if Path(m["path"]).parent.name == "train"]
    if data.get("real") and int(data.get("real_batch", 0)) > 0 and train:
        args = train[0]["args"]
        centre = args.get("center")
        lines.append("Crop centres of the real train split: " + (
            "its **labels** (palm joint 32)." if centre == "gt" else "depth only (label-free)." if centre == "com"
            else f"{centre!r} (unknown to this card)."))
        cameras = args.get("cameras")
        lines.append("Camera poses between the 3 views: " + (
            "fitted per frame to the train split's **labels**." if cameras == "per-frame" else
            "one calibration per camera pair fitted to the train split's **labels** (not per frame)."
            if cameras == "fixed" else f"{cameras!r} (unknown to this card)."))
        if train[0]["derived_from"]:
            lines.append(f"Training targets of the real frames: pseudo-labels fitted to depth "
                         f"({train[0]['derived_from']}), not labels." if _enabled(loss, "fitted") else
                         f"Real train shards derived from {train[0]['derived_from']}.")
        lines.append("Supervised term (real train **labels** as targets): " +
                     ("**on**." if _enabled(loss, "supervised") else "off."))
    test = [m for m in manifests.get("data.real", []) if Path(m["path"]).parent.name == "test"]
    if test:
        lines.append("Test split labels: read by the evaluation only" + (
            "; its crops are centred at them (center=gt), so its figures assume a labelled crop centre."
            if test[0]["args"].get("center") == "gt" else "."))
    if config.get("init"):
        lines.append(f"Initialised from {config['init']}: what that run read is on its own card.")
    return lines


def evaluation_lines(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["None recorded next to this checkpoint (run `python -m train.evaluate --checkpoint RUN --data "
                "SHARDS/test`, then export again, or `python -m train.report`)."]
    lines = [f"- mean error: **{float(metrics['mean_error_mm']):.2f} mm** over {metrics['frames']} frames "
             f"(view 1, NYU's 14 joints){' on ' + str(metrics['data']) if metrics.get('data') else ''}"]
    success = metrics.get("success_at_mm") or {}
    lines += [f"- frames with max joint error < {t} mm: {100 * float(success[t]):.0f}%" for t in ("20", "40")
              if t in success]
    lines += [f"- subject {s}: {float(v['mean_error_mm']):.2f} mm ({v['frames']} frames)"
              for s, v in (metrics.get("per_subject") or {}).items()]
    return lines


def model_card(checkpoint: str | Path, metrics: dict | None = None) -> str:
    """The card's markdown for a checkpoint, with ``metrics`` (``train.evaluate``'s metrics.json) if given."""
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    config = payload["config"]
    crop = checkpoint_crop(payload, checkpoint)
    data = config.get("data") or {}
    manifests = {key: manifest_entries(data[name]) for key, name in (("data.synthetic", "synthetic"),
                                                                     ("data.real", "real")) if data.get(name)}
    shard_rows = ["| config key | manifest | sha256 | kind | samples | cut |", "| --- | --- | --- | --- | ---: | --- |"]
    for key, entries in manifests.items():
        for m in entries:
            cut = ", ".join(f"{k}={m['args'][k]}" for k in ("center", "cameras") if k in m["args"])
            shard_rows.append(f"| {key} | {m['path']} | `{m['sha256']}` | {m['kind']} | {m['samples']} | {cut} |")
    if not manifests:
        shard_rows = ["The config names no shards (data.synthetic, data.real)."]
    missing = [f"- {key}: {data[name]} (no manifest found here now)" for key, name in
               (("data.synthetic", "synthetic"), ("data.real", "real")) if data.get(name) and not manifests.get(key)]
    return "\n".join([
        f"# Model card: {checkpoint}", "",
        f"- training steps: {payload.get('step', 'unknown')}",
        f"- network: stacked hourglass {config.get('model') or {}}",
        f"- input: crop depth (B, 1, {crop.size}, {crop.size}) mm, a {crop.cube_mm:g} mm cube around the crop "
        f"centre, orthographic; output: 41 sphere centres (B, 41, 3), crop frame mm",
        "", "## Intended use", "", INTENDED_USE,
        "", "## Data and shards", "", *shard_rows, *missing,
        "", "## Label use", "", *(f"- {line}" for line in label_use(config, manifests) or
                                   ["The config names no data, so no labels are known to have been read."]),
        "", "## Evaluation", "", *evaluation_lines(metrics),
        "", "## Known limits", "", *(f"- {line}" for line in KNOWN_LIMITS),
        "", "## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""])


def saved_metrics(checkpoint: Path) -> dict | None:
    """``train.evaluate``'s default report for this checkpoint (``eval-<stem>/metrics.json``), if any."""
    path = checkpoint.parent / f"eval-{checkpoint.stem}" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_card(checkpoint: str | Path, path: str | Path, metrics: dict | None = None) -> Path:
    """Write the card of ``checkpoint`` to ``path``; ``metrics`` default to :func:`saved_metrics`."""
    checkpoint = Path(checkpoint)
    text = model_card(checkpoint, metrics if metrics is not None else saved_metrics(checkpoint))
    return write_atomic(path, lambda handle: handle.write(text.encode()))
