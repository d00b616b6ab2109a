"""Training throughput: samples/s, data-wait fraction and rendering share of real ``torchrun`` runs.

    python benchmarks/train.py [--json] [--steps 80] [--procs 1,2] [--device cpu|cuda] [--data DIR]

Runs ``torchrun --standalone --nproc_per_node=N -m train --config configs/ci.yaml`` on synthetic +
fake-NYU shards (built once under --data with the shards CLI) for each N, and reads the rank-0
``metrics.jsonl``: samples/s (all ranks), per-rank samples/s, the fraction of step time spent waiting
for the loaders, and the fraction spent rendering synthetic depth. The first log window (loader
start-up) is left out. Writes the table to runs/bench/train.md in the repository (``--notes``; runs/ is
git-ignored) and, with ``--json``, one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def shards(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "shards", *args], cwd=ROOT, check=True, capture_output=True)


def build_data(root: Path) -> tuple[Path, Path]:
    real, synthetic = root / "nyu", root / "synth"
    if not (real / "train" / "manifest.json").exists():
        shards("fake-nyu", "--out", str(root / "fake-nyu"), "--train", "32", "--test", "8")
        shards("nyu", "--nyu-root", str(root / "fake-nyu"), "--out", str(real), "--samples-per-shard", "8")
    if not (synthetic / "manifest.json").exists():
        shards("synthetic", "--out", str(synthetic), "--num-samples", "2000", "--samples-per-shard", "250")
    return real, synthetic


def run(procs: int, steps: int, device: str, real: Path | None, synthetic: Path, run_dir: Path) -> dict:
    overrides = [f"data.synthetic={synthetic}", f"run.dir={run_dir}", f"run.steps={steps}", f"run.device={device}",
                 "eval.every=0", "eval.at_start=false", "checkpoint.every=0", "metrics.image_every=0",
                 "metrics.log_every=10", "metrics.console=false"]
    if real is not None:
        overrides.append(f"data.real={real}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "train", "--config", "configs/ci.yaml", *overrides]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "train/samples_per_s" in r][1:]  # skip loader start-up
    mean = lambda tag: sum(r[tag] for r in windows) / len(windows)  # noqa: E731
    return {"procs": procs, "device": device, "mixed": real is not None, "steps": steps,
            "samples_per_s": mean("train/samples_per_s"),
            "samples_per_s_per_rank": [mean(f"train/samples_per_s/rank{k}") for k in range(procs)],
            "data_wait_fraction": mean("train/data_wait_fraction"),
            "render_fraction": mean("train/render_fraction"), "wall_s": time.perf_counter() - start}




def table(rows: list[dict], host: str) -> str:
    lines = [f"Machine: {host}", "",
             "configs/ci.yaml (stacks 1, width 32, 64x64 crops; per rank 16 synthetic + 2 real 3-view frames),",
             "samples = network images per second over all ranks, excluding the first 10-step window.", "",
             "| procs | device | data | samples/s | per rank | data wait | rendering |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        per_rank = ", ".join(f"{v:.1f}" for v in r["samples_per_s_per_rank"])
        lines.append(f"| {r['procs']} | {r['device']} | {'synthetic+real' if r['mixed'] else 'synthetic'} | "
                     f"{r['samples_per_s']:.1f} | {per_rank} | {100 * r['data_wait_fraction']:.1f}% | "
                     f"{100 * r['render_fraction']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-train-data"))
    parser.add_argument("--synthetic-only", action="store_true", help="no real batches")
    parser.add_argument("--notes", type=Path, default=ROOT / "runs" / "bench" / "train.md",
                        help="markdown table output (default: runs/bench/train.md in the repository)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    real, synthetic = build_data(args.data)
    rows = [run(int(n), args.steps, args.device, None if args.synthetic_only else real, synthetic,
                args.data / f"run-{args.device}-{n}-{time.time_ns()}") for n in args.procs.split(",")]
    host = describe_machine()
    text = table(rows, host)
    print(text)
    if args.notes:
        args.notes.parent.mkdir(parents=True, exist_ok=True)
        args.notes.write_text("# Training throughput (benchmarks/train.py)\n\n" + text)
    if args.json:
        print(json.dumps({"machine": host, "runs": rows}))


if __name__ == "__main__":
    main()
