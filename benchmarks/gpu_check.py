"""GPU acceptance check: the GPU path as users run it, on one GPU, in minutes, with a summary for BENCHMARKS.md.

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--steps 200] [--batches 64,256,1024,4096]
    python benchmarks/gpu_check.py --dry-run          # the same steps on the CPU: CPU kernel, gloo, tiny sizes
    make gpu-check                                    # the first line, from a checkout with nvcc and CUDA torch

Steps (each timed; a failed step is recorded and the rest still run; exit status 1 if any failed):

1. ``build``: ``python -m renderer_cuda build --kind cuda`` (dry run: ``--kind cpu``).
2. ``exact``: the CUDA kernel against the CPU kernel, bit for bit, on hand meshes of random poses in batches of
   64..4096 images at 64x64, supersample 1 and 2 (dry run: the CPU kernel against the torch reference, one
   image, supersample 1, the pair the renderer documents as bit-identical).
3. ``speed``: rasterizer images/s at 64x64 (4096 hand meshes, supersample 1 and 2) and synthesis images/s
   (``train.synthesis.Synthesizer``: forward kinematics, mesh, rasterizer, sensor noise) on batches of 48.
4. ``stage1``: ``torchrun --nproc_per_node=1 -m train --config configs/synthetic.yaml`` for ``--steps`` steps
   (NCCL: under torchrun one rank also gets a process group), stopped at 60% by ``run.stop_at`` and resumed
   to the end with the same command; samples/s, data wait and render share from ``metrics.jsonl``.
5. ``stage2``: fitted pseudo-labels of the stage-1 run (``python -m train.pseudo_labels``), then
   ``configs/selfsup.yaml`` and the direct route ``configs/selfsup-direct.yaml`` (a pose prior from
   ``python -m train.prior``) for a few steps each under their ``optim.amp: bf16``.

Data (fake NYU, NYU-format shards, synthetic shards) is built once under ``--data``. Writes
``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (rows for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402
from renderer import hand_meshes, seconds_per_call  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """What each step runs at: the GPU check's sizes, or the dry run's."""

    device: str
    backend: str  # the rasterizer backend checked against the CPU kernel (dry run: the CPU kernel itself)
    reference: str  # what it is compared with, bit for bit
    batches: list[int]
    supersamples: list[int]
    speed_batch: int
    steps: int
    stage2_steps: int
    fake_nyu: tuple[int, int]  # train, test frames
    synthetic_samples: int
    train_overrides: list[str] = field(default_factory=list)  # appended to every training command
    real_batch: int | None = None  # stage 2's real frames per step (None: the config's)
    pseudo_label_steps: int = 50
    prior_steps: int = 500


def gpu_sizes(steps: int, batches: list[int]) -> Sizes:
    return Sizes(device="cuda", backend="cuda", reference="cpu", batches=batches, supersamples=[1, 2],
                 speed_batch=4096, steps=steps, stage2_steps=20, fake_nyu=(64, 16), synthetic_samples=4000)


def dry_run_sizes() -> Sizes:
    return Sizes(device="cpu", backend="cpu", reference="torch", batches=[1], supersamples=[1], speed_batch=16,
                 steps=2, stage2_steps=2, fake_nyu=(8, 4), synthetic_samples=40, pseudo_label_steps=1, prior_steps=2,
                 real_batch=1,
                 train_overrides=["run.device=cpu", "synthesis.backend=cpu", "model.stacks=1", "model.width=8",
                                  "synthesis.supersample=1", "data.synthetic_batch=2", "data.batches_per_epoch=2", "data.num_workers=0", "eval.synthetic_samples=4",
                                  "eval.batch_size=4", "metrics.log_every=1", "metrics.image_every=0"])


def run(*args: str | Path, timeout: float = 600) -> str:
    """A command as users run it, from the repository root; its output, or RuntimeError with its tail."""
    command = [str(a) for a in args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def torchrun(config: str, *overrides: str) -> str:
    return run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "train",
               "--config", config, *overrides)


def build_data(root: Path, sizes: Sizes) -> dict[str, Path]:
    paths = {"raw": root / "fake-nyu", "nyu": root / "nyu", "synthetic": root / "synth"}
    if not (paths["nyu"] / "test" / "manifest.json").exists():
        train, test = sizes.fake_nyu
        run(sys.executable, "-m", "shards", "fake-nyu", "--out", paths["raw"], "--train", train, "--test", test)
        run(sys.executable, "-m", "shards", "nyu", "--nyu-root", paths["raw"], "--out", paths["nyu"],
            "--samples-per-shard", 16, "--workers", 4)
    if not (paths["synthetic"] / "manifest.json").exists():
        run(sys.executable, "-m", "shards", "synthetic", "--out", paths["synthetic"], "--num-samples",
            sizes.synthetic_samples, "--samples-per-shard", max(10, sizes.synthetic_samples // 8), "--workers", 4)
    return paths


def check_build(sizes: Sizes) -> dict[str, Any]:
    output = run(sys.executable, "-m", "renderer_cuda", "build", "--kind", sizes.backend)
    return {"kind": sizes.backend, "output": output.strip().splitlines()[-1]}


def check_exact(sizes: Sizes) -> dict[str, Any]:
    from renderer_cuda import rasterize

    rows = []
    for batch in sizes.batches:
        vertices, faces, _ = hand_meshes(batch, 64, seed=batch)
        for supersample in sizes.supersamples:
            def render(backend: str) -> torch.Tensor:
                device = "cuda" if backend == "cuda" else "cpu"
                return rasterize(vertices.to(device), faces.to(device), 64, 64, background=150.0,
                                 supersample=supersample, backend=backend).cpu()

            tested, reference = render(sizes.backend), render(sizes.reference)
            rows.append({"batch": batch, "supersample": supersample, "identical": bool(torch.equal(tested, reference)),
                         "differing_pixels": int((tested != reference).sum())})
    if not all(row["identical"] for row in rows):
        raise AssertionError(f"{sizes.backend} and {sizes.reference} differ: {rows}")
    return {"compared": f"{sizes.backend} vs {sizes.reference}", "rows": rows}


def check_speed(sizes: Sizes) -> dict[str, Any]:
    from geometry import Crop
    from hand import HandModel
    from renderer_cuda import rasterize
    from train.synthesis import SynthesisConfig, Synthesizer, held_out_batch

    cuda = sizes.device == "cuda"
    vertices, faces, _ = hand_meshes(sizes.speed_batch, 64, seed=0)
    vertices, faces = vertices.to(sizes.device), faces.to(sizes.device)
    result: dict[str, Any] = {"batch": sizes.speed_batch}
    for supersample in (1, 2):
        seconds = seconds_per_call(lambda: rasterize(vertices, faces, 64, 64, background=150.0, supersample=supersample,
                                                     backend=sizes.backend), repeats=5, cuda=cuda)
        result[f"rasterize_images_per_s_ss{supersample}"] = sizes.speed_batch / seconds
    hand = HandModel().to(sizes.device)
    synthesizer = Synthesizer(hand, crop=Crop(), cfg=SynthesisConfig(supersample=2, backend=sizes.backend,
                                                                      forearm=0.8, scale_jitter=0.15))
    batch = held_out_batch(hand, 48, seed=0)
    seconds = seconds_per_call(lambda: synthesizer(batch)[0], repeats=5, cuda=cuda)
    result["synthesis_images_per_s_batch48_ss2"] = 48 / seconds
    if cuda:  # the same samples on the CPU (noise and variations are drawn there for both; the kinematics differ
        # in their last bits between devices, so a few edge pixels may differ)
        on_cpu = Synthesizer(HandModel(), crop=Crop(), cfg=SynthesisConfig(supersample=2, backend="cpu", forearm=0.8,
                                                                           scale_jitter=0.15))(batch)[0]
        result["synthesis_cuda_vs_cpu_equal_pixel_fraction"] = float((synthesizer(batch)[0].cpu() == on_cpu).float().mean())
    return result


def window_means(run_dir: Path) -> dict[str, float]:
    """samples/s, data wait and render share over the logged windows but the first (start-up)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "train/samples_per_s" in r]
    windows = windows[1:] or windows
    return {tag: sum(r[f"train/{tag}"] for r in windows) / len(windows)
            for tag in ("samples_per_s", "data_wait_fraction", "render_fraction")}


def check_stage1(sizes: Sizes, data: dict[str, Path], out: Path) -> dict[str, Any]:
    run_dir = out / "synthetic"
    stop_at = max(1, int(0.6 * sizes.steps))
    common = [f"data.synthetic={data['synthetic']}", f"data.real={data['nyu']}", f"run.dir={run_dir}",
              f"run.steps={sizes.steps}", "eval.at_start=false", *sizes.train_overrides]
    start = time.perf_counter()
    torchrun("configs/synthetic.yaml", *common, f"run.stop_at={stop_at}")
    first = time.perf_counter() - start
    torchrun("configs/synthetic.yaml", *common)
    log = (run_dir / "train.log").read_text()
    backend = "nccl" if sizes.device == "cuda" else "gloo"
    for expected in ("resumed from", f"finished at step {sizes.steps}", f"process group {backend}"):
        if expected not in log:
            raise AssertionError(f"{run_dir / 'train.log'} does not say {expected!r}")
    return {"steps": sizes.steps, "stopped_at": stop_at, "seconds_to_stop": first,
            "seconds_total": time.perf_counter() - start, "process_group": backend, **window_means(run_dir)}


def check_stage2(sizes: Sizes, data: dict[str, Path], out: Path) -> dict[str, Any]:
    fitted, prior = out / "nyu-fitted", out / "prior.pt"
    run(sys.executable, "-m", "train.pseudo_labels", "--checkpoint", out / "synthetic", "--data", data["nyu"],
        "--out", fitted, "--config", "configs/pseudo-labels.yaml", f"steps={sizes.pseudo_label_steps}",
        "--device", sizes.device)
    run(sys.executable, "-m", "train.prior", "--out", prior, "--steps", sizes.prior_steps, "--device", sizes.device)
    result = {}
    for config, extra in (("selfsup", []), ("selfsup-direct", [f"loss.prior_path={prior}"])):
        run_dir = out / config
        start = time.perf_counter()
        torchrun(f"configs/{config}.yaml", f"init={out / 'synthetic'}", f"data.real={fitted}",
                 f"data.synthetic={data['synthetic']}", f"run.dir={run_dir}", f"run.steps={sizes.stage2_steps}",
                 "eval.at_start=false", "metrics.log_every=5", *sizes.train_overrides, *extra,
                 *([f"data.real_batch={sizes.real_batch}"] if sizes.real_batch else []))
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r["train/loss"] for r in records if "train/loss" in r]
        evaluation = [r["eval/mean_error_mm"] for r in records if "eval/mean_error_mm" in r]
        result[config] = {"amp": "bf16", "steps": sizes.stage2_steps, "seconds": time.perf_counter() - start,
                          "first_loss": losses[0], "last_loss": losses[-1],
                          "eval_mean_error_mm": evaluation[-1] if evaluation else None}
    return result


def markdown(summary: dict[str, Any]) -> str:
    """The summary as BENCHMARKS.md rows."""
    lines = [f"Machine: {summary['machine']}; {summary['date']}; {'dry run (CPU)' if summary['dry_run'] else 'GPU'}",
             "", "| step | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for name, step in summary["steps"].items():
        result = step.get("error", "").splitlines()[0] if step["status"] == "failed" else json.dumps(step["result"])
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | {result[:400]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check", help="runs and the summary")
    parser.add_argument("--data", type=Path, default=None, help="shards built once (default: OUT/data)")
    parser.add_argument("--steps", type=int, default=200, help="stage-1 training steps (stopped at 60%%, resumed)")
    parser.add_argument("--batches", default="64,256,1024,4096", help="hand batches of the exactness check")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU: CPU kernel against the torch reference, gloo, tiny sizes")
    args = parser.parse_args(argv)
    sizes = dry_run_sizes() if args.dry_run else gpu_sizes(args.steps, [int(b) for b in args.batches.split(",")])
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible (torch.cuda.is_available() is False); --dry-run checks the script on the CPU",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    data = build_data(args.data or args.out / "data", sizes)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "build": lambda: check_build(sizes), "exact": lambda: check_exact(sizes), "speed": lambda: check_speed(sizes),
        "stage1": lambda: check_stage1(sizes, data, args.out), "stage2": lambda: check_stage2(sizes, data, args.out)}
    summary: dict[str, Any] = {"machine": describe_machine(), "date": time.strftime("%Y-%m-%d"),
                               "dry_run": args.dry_run, "sizes": asdict(sizes), "steps": {}}
    for name, step in steps.items():
        start = time.perf_counter()
        try:
            record = {"status": "ok", "result": step()}
        except Exception as error:  # noqa: BLE001 - a failed step is recorded; the others still run
            record = {"status": "failed", "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        record["seconds"] = time.perf_counter() - start
        summary["steps"][name] = record
        print(f"{name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if all(step["status"] == "ok" for step in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
