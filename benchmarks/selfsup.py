"""Does training by fitting work? Synthetic-only vs self-supervised vs supervised fine-tuning on fake NYU.

    python benchmarks/selfsup.py [--seeds 3] [--pretrain-steps N] [--curve-every K] [--variants] [--ablation]
        [--rounds N [--round-variant NAME]] [--label-free] [--finetune-curve STEPS] [--quick] [--work DIR] [--results benchmarks/results/selfsup.json] [--json]

For each seed: synthetic pretraining (``configs/synthetic-cpu.yaml``), then three fine-tunings from it for
the same number of steps (``configs/selfsup-cpu.yaml``): synthetic-only continued (no real frames),
self-supervised (fitted pseudo-labels of the unlabelled fake-NYU train split, ``python -m
train.pseudo_labels`` from the pretrained network, then ``loss.fitted``) and supervised (the real frames'
labels instead: the upper bound). All training runs are 2-process torchrun runs, evaluated on the fake-NYU
test split (100 frames, 2 subjects) and on a validation split (more frames of the train subject,
``fake-nyu --seed 1``: settings were chosen on it, never on test). The frames show the hand without the
person behind it (``fake-nyu --no-body``): these crops are cut at the labelled centres, and the person is
the centre finder's problem (``benchmarks/centre.py``).

``--variants`` (every seed): the pseudo-label improvements of ``PSEUDO_LABEL_VARIANTS`` (confidence fusion,
the view-agreement and free-space checks), each alone and all together, each fine-tuned the same way.

``--rounds N`` (every seed): self-training, rounds 2..N: the pseudo-labels re-made by the previous round's
self-supervised network (which predicts the train frames better than the pretrained one did), then the same
fine-tuning from the pretraining, so that every round trains as many steps as the other runs;
``--round-variant NAME`` runs a pseudo-label variant with its rounds on every seed too. The headline
(``gap_share``) is the method, of those that ran on every seed, with the lowest mean val error.

``--ablation`` (first seed): the pseudo-labels made with one part of the fitting off in turn (``FIT_ABLATION``:
the view fusion, the fitting steps, each fitting term), and fine-tuning on the fitting terms' gradients
directly instead of pseudo-labels (``DIRECT``, the reference's way).

The synthetic-only continuation runs at the learning rate (of ``Sizes.synthetic_only_lrs``) with the lowest
error on the first seed's val, so that the baseline gets its own best.

``--label-free``: the same self-supervision on shards cropped at the depth centre of mass with one fixed
camera calibration (``shards nyu --center com --cameras fixed``) instead of labelled centres and per-frame
cameras (every seed; evaluated on the test split cropped the same way, beside the pretrained and the
synthetic-only networks there), and the three networks on the raw test frames cropped at the label-free centre
and re-cropped 0-2 times at their own predicted palm (``train.predict --refine N``, ``benchmarks/refine.py``).
``--pretrain-steps N``: the pretraining's length (default 6,000, where the validation error has reached its
plateau; 600 with ``--quick``); its learning rate drops tenfold at 60% and 90% of the run (``PRETRAIN_SCHEDULE``,
the schedule of every stored result; ``configs/synthetic-cpu.yaml``, the demo's, drops later). Runs already in
``--work`` are reused, so give each length its own ``--work``.
``--curve-every K``: the pretraining keeps a checkpoint every K steps and each is evaluated on the validation
split (with the held-out synthetic error logged at the same steps): the pretraining curve, to see whether it
reached a plateau.
``--finetune-curve STEPS`` (every seed): synthetic-only and self-supervised fine-tuning run on to STEPS, a
checkpoint every half fine-tuning length evaluated on val and test: how the gain depends on the fine-tuning's
length (300 steps are about 4.7 passes over the 256 train frames).
``--quick``: small data and short runs, for the test that runs a reduced comparison.
Prints a markdown table (also written to ``--notes``), writes every figure to ``--results`` when given
(top-level ``gap_share``: the share of the synthetic-only -> supervised gap on test closed by
self-supervision, mean over seeds) and, with ``--json``, prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from machine import describe_machine
from refine import measure as measure_refinement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages, for the per-subject evaluation and the mean pose
from shards.fake_nyu import subject_of  # noqa: E402 (after the sys.path line above)
from shards.reader import make_loader  # noqa: E402
from train.checkpoint import list_checkpoints, load_network  # noqa: E402
from train.losses import REAL_TERMS  # noqa: E402
from train.predictions import collect_errors  # noqa: E402
from train.pseudo_labels import AUDIT_NAME, SUMMARY_NAME  # noqa: E402
from train.scores import NYU_EVAL_JOINTS, eval_joint_names  # noqa: E402
from train.report import mean_pose_errors  # noqa: E402

REAL_TERMS_OFF = [f"loss.{term}.enabled=false" for term in REAL_TERMS]
# Pseudo-labels with one part of the fitting off (train.pseudo_labels options; first seed).
FIT_ABLATION = {"view fusion (each view fitted apart)": ["fuse=false"], "fitting steps (fused views only)": ["steps=0"],
                "projection": ["projection=0"], "collision": ["collision=0"], "bone_length": ["bone_length=0"]}
# Pseudo-label improvements (train.pseudo_labels settings; --variants, every seed), each alone and together:
# the views fused by heatmap confidence; targets only for joints whose views agree within 15 mm; none for
# spheres the fit leaves 10 mm before the observed depth.
PSEUDO_LABEL_VARIANTS = {"confidence fusion": ["fusion=confidence"], "view agreement": ["max_view_spread_mm=15"],
                         "free space": ["max_free_space_mm=10"]}
PSEUDO_LABEL_VARIANTS["all three"] = [option for options in PSEUDO_LABEL_VARIANTS.values() for option in options]
# Then: the network's joints the median over the crop and 4 turned copies (the turns chosen on val: the
# network's val error 30.7 -> 28.4 mm seed 0, 29.4 -> 28.9 seed 1); the hand's size calibrated on the train
# frames' depth; and both with confidence fusion (the three that keep every joint).
PSEUDO_LABEL_VARIANTS |= {"augmentation consistency": ["consistency_turns_deg=[-30,-15,15,30]"],
                          "hand scale calibration": ["calibrate_hand_scale=true"]}
PSEUDO_LABEL_VARIANTS["fusion, consistency, calibration"] = [
    option for name in ("confidence fusion", "augmentation consistency", "hand scale calibration")
    for option in PSEUDO_LABEL_VARIANTS[name]]
AUDITED_VARIANT = "all three"  # the variant with every check; else the last variant that ran on seed 0
REFINES = (0, 1, 2)  # label-free test crops re-cropped this many times at the network's palm (--label-free)
# The reference's way: fine-tuning on the fitting terms' gradients, no pseudo-labels (weights chosen on val).
DIRECT_WEIGHTS = {"projection": 1e-2, "consistency": 0.1, "collision": 0.1, "bone_length": 0.1, "heatmap_mean": 1e-2}
DIRECT = [*REAL_TERMS_OFF, *(f"loss.{term}.enabled=true" for term in DIRECT_WEIGHTS),
          *(f"loss.{term}.weight={weight}" for term, weight in DIRECT_WEIGHTS.items())]


@dataclass(frozen=True)
class Sizes:
    """Data and run lengths of one benchmark flavour."""

    train_frames: int
    val_frames: int
    test_frames: int
    synthetic_samples: int
    pretrain_steps: int
    finetune_steps: int
    fit_steps: int
    # Learning rates of the synthetic-only continuation, the best on the first seed's val used for every seed
    # (the baseline gets its own best; the first is configs/selfsup-cpu.yaml's, which every other run uses).
    synthetic_only_lrs: tuple[float, ...] = (1e-4,)


FULL = Sizes(train_frames=256, val_frames=64, test_frames=100, synthetic_samples=8000, pretrain_steps=6000,
             finetune_steps=300, fit_steps=50, synthetic_only_lrs=(1e-4, 3e-4, 1e-3))
QUICK = Sizes(train_frames=64, val_frames=16, test_frames=100, synthetic_samples=2000, pretrain_steps=600,
              finetune_steps=150, fit_steps=20)
SYNTHETIC_ONLY = REAL_TERMS_OFF + ["data.real_batch=0"]
# The pretraining's learning-rate drops (fractions of --pretrain-steps) for every length this benchmark reports;
# the demo's config drops at 90% and 95% of a shorter run instead (BENCHMARKS.md, "The demo's pretraining").
PRETRAIN_SCHEDULE = ["optim.decay_at=[0.6,0.9]"]


def python(*args: str, log: Path | None = None) -> None:
    """Run ``python ARGS`` from the repository root; on failure exit with the tail of its output."""
    command = [sys.executable, *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{output}")


def build_data(work: Path, sizes: Sizes, label_free: bool) -> dict[str, Path]:
    """Fake-NYU train/test and a validation split of the train subject, their shards, synthetic shards."""
    paths = {"raw": work / "fake-nyu", "val_raw": work / "fake-nyu-val", "nyu": work / "nyu", "val": work / "val",
             "synth": work / "synth", "nyu_label_free": work / "nyu-com-fixed"}
    if not (paths["nyu"] / "test" / "manifest.json").exists():
        python("-m", "shards", "fake-nyu", "--out", str(paths["raw"]), "--train", str(sizes.train_frames),
               "--test", str(sizes.test_frames), "--seed", "0", "--no-body")
        python("-m", "shards", "nyu", "--nyu-root", str(paths["raw"]), "--out", str(paths["nyu"]),
               "--samples-per-shard", "32", "--workers", "2")
    if not (paths["val"] / "train" / "manifest.json").exists():
        python("-m", "shards", "fake-nyu", "--out", str(paths["val_raw"]), "--train", str(sizes.val_frames),
               "--test", "0", "--seed", "1", "--no-body")
        python("-m", "shards", "nyu", "--nyu-root", str(paths["val_raw"]), "--out", str(paths["val"]),
               "--samples-per-shard", "32", "--workers", "2")
    if label_free and not (paths["nyu_label_free"] / "test" / "manifest.json").exists():
        python("-m", "shards", "nyu", "--nyu-root", str(paths["raw"]), "--out", str(paths["nyu_label_free"]),
               "--center", "com", "--cameras", "fixed", "--samples-per-shard", "32", "--workers", "2")
    if not (paths["synth"] / "manifest.json").exists():
        python("-m", "shards", "synthetic", "--out", str(paths["synth"]), "--num-samples",
               str(sizes.synthetic_samples), "--samples-per-shard", "500", "--workers", "2")
    return paths


def train(config: str, run_dir: Path, steps: int, overrides: list[str], every: int = 0) -> None:
    """A torchrun run to ``steps`` (resumed where an earlier, interrupted one stopped; skipped when done),
    evaluated at its end, or every ``every`` steps with all those checkpoints kept."""
    every = every or steps
    if not (run_dir / "checkpoints" / f"step-{steps:09d}.pt").exists():
        python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train", "--config",
               config, f"run.dir={run_dir}", f"run.steps={steps}", f"checkpoint.every={every}",
               f"checkpoint.keep={-(-steps // every)}", f"eval.every={every}", *overrides, log=run_dir / "train.log")


def pseudo_labels(network: Path, real: Path, out: Path, sizes: Sizes, options: list[str]) -> tuple[Path, dict]:
    """Fitted pseudo-labels of ``real``/train from the run ``network`` (made once): their root and their
    view-1 error against the train labels (network / fused / fitted, from ``pseudo_labels.json``, with the
    share of joints that kept a target where the summary records it, and the hand scale where calibrated)."""
    summary = out / "train" / SUMMARY_NAME
    if not summary.exists():
        python("-m", "train.pseudo_labels", "--checkpoint", str(network), "--data", str(real), "--out", str(out),
               f"steps={sizes.fit_steps}", *options)
    recorded = json.loads(summary.read_text())
    return out, (recorded["label_error_mm"] | ({"kept_share": recorded["kept_share"]} if "kept_share" in recorded else {})
                 | ({"hand_scale": recorded["settings"]["hand_scale"]} if recorded.get("calibration") else {}))


def evaluate(run_dir: Path, split: Path, name: str, checkpoint: Path | None = None) -> float:
    """Mean error on ``split`` of the run's newest checkpoint (or of ``checkpoint``), kept in ``eval-NAME``."""
    out = run_dir / f"eval-{name}"
    if not (out / "metrics.json").exists():
        python("-m", "train.evaluate", "--checkpoint", str(checkpoint or run_dir), "--data", str(split), "--out",
               str(out), "--num-workers", "0")
    return float(json.loads((out / "metrics.json").read_text())["mean_error_mm"])


def per_subject(run_dir: Path, split: Path, frames: int) -> dict[str, float]:
    """Test error of each fake-NYU subject: the first ~30% of the test frames show the train subject, the
    rest a smaller second hand (as NYU's test split does; ``shards.fake_nyu.subject_of``)."""
    net, _, _ = load_network(run_dir)
    loader = make_loader(split, batch_size=64, batches_per_epoch=None, num_workers=0, resampled=False)
    collected = collect_errors(net, loader)
    subjects = [subject_of("test", int(frame) - 1, frames) for frame in collected.frames]
    return {str(s): float(collected.errors[[x == s for x in subjects]].mean()) for s in sorted(set(subjects))}


def synthetic_errors(run_dir: Path) -> dict[int, float]:
    """The held-out synthetic error the run logged, by step."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["eval/synthetic/mean_error_mm"] for r in records if "eval/synthetic/mean_error_mm" in r}


def synthetic_error(run_dir: Path) -> float:
    """The last held-out synthetic error the run logged."""
    return synthetic_errors(run_dir)[max(synthetic_errors(run_dir))]


def pretraining_curve(run_dir: Path, val: Path) -> list[dict]:
    """Validation and held-out synthetic error at each checkpoint the pretraining kept."""
    synthetic = synthetic_errors(run_dir)
    return [{"step": step, "val": evaluate(run_dir, val, f"val-step-{step}", path), "synthetic": synthetic.get(step)}
            for step, path in list_checkpoints(run_dir / "checkpoints")]


def newest_checkpoint(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]


def pretraining(seed: int, paths: dict[str, Path], sizes: Sizes, work: Path, curve_every: int) -> Path:
    """The seed's synthetic pretraining (run once)."""
    pretrain = work / f"seed{seed}" / "synthetic"
    train("configs/synthetic-cpu.yaml", pretrain, sizes.pretrain_steps,
          [f"data.synthetic={paths['synth']}", f"data.real={paths['nyu']}", f"run.seed={seed}", *PRETRAIN_SCHEDULE],
          curve_every)
    return pretrain


def synthetic_only_name(lr: float, sizes: Sizes) -> str:
    return "synthetic_only" if lr == sizes.synthetic_only_lrs[0] else f"synthetic_only_lr{lr:g}"


def synthetic_only_lr(paths: dict[str, Path], sizes: Sizes, work: Path, curve_every: int) -> tuple[float, dict]:
    """The synthetic-only continuation's learning rate with the lowest val error on seed 0, and each one's val."""
    pretrain = pretraining(0, paths, sizes, work, curve_every)
    vals = {lr: finetune(synthetic_only_name(lr, sizes), 0, pretrain, paths, sizes, work,
                         [*SYNTHETIC_ONLY, f"optim.lr={lr}"], paths["nyu"])["val"]
            for lr in sizes.synthetic_only_lrs} if len(sizes.synthetic_only_lrs) > 1 else {}
    return (min(vals, key=vals.get) if vals else sizes.synthetic_only_lrs[0]), vals


def run_seed(seed: int, paths: dict[str, Path], sizes: Sizes, work: Path, curve_every: int,
             variants: list[str], rounds: int, round_variants: list[str], lr: float) -> dict:
    pretrain = pretraining(seed, paths, sizes, work, curve_every)
    row = {"seed": seed, "pretrained": {"test": evaluate(pretrain, paths["nyu"] / "test", "test"),
                                        "val": evaluate(pretrain, paths["val"] / "train", "val"),
                                        "subjects": per_subject(pretrain, paths["nyu"] / "test", sizes.test_frames),
                                        "synthetic": synthetic_error(pretrain)}}
    if curve_every:
        row["pretraining_curve"] = pretraining_curve(pretrain, paths["val"] / "train")
    fitted, row["pseudo_labels"] = pseudo_labels(pretrain, paths["nyu"], work / f"seed{seed}" / "fitted", sizes, [])
    row["synthetic_only"] = finetune(synthetic_only_name(lr, sizes), seed, pretrain, paths, sizes, work,
                                     [*SYNTHETIC_ONLY, f"optim.lr={lr}"], paths["nyu"]) | {"lr": lr}
    runs = {"self_supervised": ([], fitted),
            "supervised": (REAL_TERMS_OFF + ["loss.supervised.enabled=true"], paths["nyu"])}
    for name, (extra, real) in runs.items():
        row[name] = finetune(name, seed, pretrain, paths, sizes, work, extra, real)
    if rounds > 1:
        row["rounds"] = later_rounds(seed, rounds, paths["nyu"], "self_supervised", "fitted", [], paths, sizes, work)
    variants = [name for name in PSEUDO_LABEL_VARIANTS if name in variants or name in round_variants]
    if variants:
        row["variants"] = {}
        for name in variants:
            index, options = list(PSEUDO_LABEL_VARIANTS).index(name), PSEUDO_LABEL_VARIANTS[name]
            row["variants"][name] = fitted_finetune(f"variant_{index}", seed, options, paths, sizes, work)
            if name in round_variants and rounds > 1:
                row["variants"][name]["rounds"] = later_rounds(seed, rounds, paths["nyu"], f"variant_{index}",
                                                               f"fitted_variant_{index}", options, paths, sizes, work)
    return row


def later_rounds(seed: int, rounds: int, real: Path, first: str, fitted: str, options: list[str],
                 paths: dict[str, Path], sizes: Sizes, work: Path) -> list[dict]:
    """Rounds 2..``rounds`` of self-training on ``real``'s train split: the pseudo-labels (``options``)
    re-made by the previous round's self-supervised network (round 1: the run ``first``), in
    ``FITTED_roundN``, then the same fine-tuning from the pretraining (``FIRST_roundN``: as many steps as every
    other fine-tuning, only the targets are better)."""
    seed_dir = work / f"seed{seed}"
    previous, rows = seed_dir / first, []
    for number in range(2, rounds + 1):
        targets, errors = pseudo_labels(previous, real, seed_dir / f"{fitted}_round{number}", sizes, options)
        rows.append({"round": number, "pseudo_labels": errors}
                    | finetune(f"{first}_round{number}", seed, seed_dir / "synthetic", paths, sizes, work, [], targets))
        previous = seed_dir / f"{first}_round{number}"
    return rows


def fitted_finetune(name: str, seed: int, options: list[str], paths: dict[str, Path], sizes: Sizes,
                    work: Path) -> dict:
    """Pseudo-labels made with ``options`` (in ``fitted_NAME``), then the self-supervised fine-tuning on them."""
    pretrain = work / f"seed{seed}" / "synthetic"
    fitted, errors = pseudo_labels(pretrain, paths["nyu"], work / f"seed{seed}" / f"fitted_{name}", sizes, options)
    return finetune(name, seed, pretrain, paths, sizes, work, [], fitted) | {"pseudo_labels": errors}


def finetune_run(name: str, seed: int, pretrain: Path, paths: dict[str, Path], work: Path, steps: int,
                 extra: list[str], real: Path, every: int = 0) -> Path:
    """The fine-tuning ``name`` from ``pretrain`` on ``real`` for ``steps`` (a checkpoint kept every ``every``)."""
    run_dir = work / f"seed{seed}" / name
    train("configs/selfsup-cpu.yaml", run_dir, steps,
          [f"init={newest_checkpoint(pretrain)}", f"data.synthetic={paths['synth']}", f"data.real={real}",
           f"run.seed={seed}", *extra], every)
    return run_dir


def finetune(name: str, seed: int, pretrain: Path, paths: dict[str, Path], sizes: Sizes, work: Path,
             extra: list[str], real: Path) -> dict:
    """:func:`finetune_run` for ``sizes.finetune_steps``, evaluated on test, val and each test subject."""
    run_dir = finetune_run(name, seed, pretrain, paths, work, sizes.finetune_steps, extra, real)
    return {"test": evaluate(run_dir, real / "test", "test"), "val": evaluate(run_dir, paths["val"] / "train", "val"),
            "subjects": per_subject(run_dir, real / "test", sizes.test_frames)}


def finetune_curve(seed: int, paths: dict[str, Path], sizes: Sizes, work: Path, steps: int, lr: float) -> dict:
    """Synthetic-only and self-supervised fine-tuning of the seed run to ``steps``, a checkpoint kept every half
    ``sizes.finetune_steps``, each evaluated on val and test. The fine-tuning's learning rate is constant, so the
    checkpoint at step k stands for the run of k steps (at ``sizes.finetune_steps``: the main table's figures,
    measured equal for synthetic-only and within 0.01 mm for self-supervised)."""
    seed_dir, every = work / f"seed{seed}", sizes.finetune_steps // 2
    runs = {"synthetic_only": ([*SYNTHETIC_ONLY, f"optim.lr={lr}"], paths["nyu"]),
            "self_supervised": ([], seed_dir / "fitted")}
    curves = {}
    for name, (extra, real) in runs.items():
        run_dir = finetune_run(f"{name}_curve{steps}", seed, seed_dir / "synthetic", paths, work, steps, extra, real,
                               every)
        curves[name] = [{"step": step, "val": evaluate(run_dir, paths["val"] / "train", f"val-step-{step}", path),
                         "test": evaluate(run_dir, real / "test", f"test-step-{step}", path)}
                        for step, path in list_checkpoints(run_dir / "checkpoints")]
    return {"seed": seed} | curves


def label_free(seed: int, paths: dict[str, Path], sizes: Sizes, work: Path, rounds: int, lr: float) -> dict:
    """Self-supervision on the label-free shards from the seed's pretraining (and its later rounds), and the
    pretrained and the synthetic-only networks on their test split (cropped the same way)."""
    pretrain, seed_dir = work / f"seed{seed}" / "synthetic", work / f"seed{seed}"
    fitted, errors = pseudo_labels(pretrain, paths["nyu_label_free"], seed_dir / "fitted_label_free", sizes, [])
    row = finetune("self_supervised_label_free", seed, pretrain, paths, sizes, work, [], fitted)
    if rounds > 1:
        row["rounds"] = later_rounds(seed, rounds, paths["nyu_label_free"], "self_supervised_label_free",
                                     "fitted_label_free", [], paths, sizes, work)
    test = paths["nyu_label_free"] / "test"
    networks = {"pretrained": pretrain, "synthetic_only": seed_dir / synthetic_only_name(lr, sizes),
                "self_supervised": seed_dir / "self_supervised_label_free"}
    return row | {"seed": seed, "pseudo_labels": errors, "pretrained_test": evaluate(pretrain, test, "test-label-free"),
                  "synthetic_only_test": evaluate(networks["synthetic_only"], test, "test-label-free"),
                  "refined": {name: crop_refinement(run_dir, paths["raw"] / "test") for name, run_dir in networks.items()}}


def crop_refinement(run_dir: Path, raw_test: Path) -> dict[str, float]:
    """The run's test error on the raw fake-NYU test frames (view 1) cropped at the label-free centre, then
    re-cropped ``REFINES`` times at its own predicted palm (``train.predict --refine N``;
    ``benchmarks/refine.py``), kept in ``refine.json``."""
    out = run_dir / "refine.json"
    if not out.exists():
        rows = measure_refinement(run_dir, raw_test, list(REFINES))
        out.write_text(json.dumps({str(n): rows[f"com, refine {n}"]["mean_error_mm"] for n in REFINES}))
    return json.loads(out.read_text())


def ablation(paths: dict[str, Path], sizes: Sizes, work: Path) -> dict[str, dict]:
    """Seed 0: pseudo-labels with one part of the fitting off, then the same fine-tuning; and DIRECT."""
    rows = {f"without {name}": fitted_finetune(f"without_{index}", 0, options, paths, sizes, work)
            for index, (name, options) in enumerate(FIT_ABLATION.items())}
    rows["direct fitting-term fine-tuning (no pseudo-labels)"] = finetune(
        "direct", 0, work / "seed0" / "synthetic", paths, sizes, work, DIRECT, paths["nyu"])
    return rows


def audit_pseudo_labels(fitted: Path, raw: Path) -> dict:
    """Per evaluated joint: the pseudo-labels' view-1 error (network / fused / fitted) on the train split where
    the joint is visible in view 1 and where it is not (``fake_nyu.npz`` records it), and the share of each
    that kept a target; from ``label_errors.npz`` (labels read only for this report)."""
    errors = np.load(fitted / "train" / AUDIT_NAME)
    visible = np.load(raw / "fake_nyu.npz")["train_visible"][0][errors["frame"] - 1][:, NYU_EVAL_JOINTS]
    rows = {}
    for index, name in enumerate(eval_joint_names()):
        rows[name] = {}
        for seen, mask in (("visible", visible[:, index]), ("occluded", ~visible[:, index])):
            rows[name][seen] = {"frames": int(mask.sum())} | {
                stage: float(errors[stage][mask, index].mean()) if mask.any() else None
                for stage in ("network", "fused", "fitted")} | {
                "kept": float(errors["kept"][mask, index].mean()) if mask.any() else None}
    return rows


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report(result: dict) -> str:
    seeds = result["seeds"]
    names = ("pretrained", "synthetic_only", "self_supervised", "supervised")
    lines = [f"Machine: {result['machine']}; {result['date']}; sizes: {result['sizes']}", "",
             "Mean joint error (mm, NYU's 14 evaluation joints, view 1). Rows per seed, then mean ± standard "
             "deviation over seeds.", "",
             "| seed | " + " | ".join(f"{n} test | {n} val" for n in names) + " |",
             "| --- |" + " ---: | ---: |" * len(names)]
    for row in seeds:
        lines.append(f"| {row['seed']} | " + " | ".join(f"{row[n]['test']:.1f} | {row[n]['val']:.1f}" for n in names)
                     + " |")
    lines.append("| mean ± sd | " + " | ".join(f"{spread([r[n]['test'] for r in seeds])} | "
                                               f"{spread([r[n]['val'] for r in seeds])}" for n in names) + " |")
    lines += ["", "Test error by subject (1: the train subject, 30 frames; 2: the smaller second hand, 70 frames), "
              "mean over seeds:", "", "| model | subject 1 | subject 2 |", "| --- | ---: | ---: |"]
    for n in names:
        lines.append(f"| {n} | {spread([r[n]['subjects']['1'] for r in seeds])} | "
                     f"{spread([r[n]['subjects']['2'] for r in seeds])} |")
    summary = result["summary"]
    scan = result.get("synthetic_only_lr", {})
    if scan.get("seed0_val"):
        lines += ["", f"Synthetic-only continuation's learning rate, chosen on seed 0's val: {scan['chosen']:g} ("
                  + ", ".join(f"{lr}: {val:.1f} mm" for lr, val in scan["seed0_val"].items()) + ")."]
    lines += ["", f"- mean pose (constant predictor) on test: {result['mean_pose_test']:.1f} mm",
              f"- domain gap of the pretrained model: {summary['synthetic_heldout']:.1f} mm on held-out synthetic "
              f"data vs {summary['pretrained_test']:.1f} mm on the fake-NYU test split",
              f"- self-supervised minus synthetic-only (test): {-summary['gain_mm']:+.1f} mm, per seed "
              + ", ".join(f"{-g:+.1f}" for g in summary["gains_mm"])
              + f" (spread between seeds of either run: {summary['seed_spread_mm']:.1f} mm)",
              f"- share of the synthetic-only to supervised gap closed by self-supervision (test): "
              f"{100 * summary['gap_share']:.0f}%"]
    lines += ["", "Every self-supervised method that ran on every seed (rounds: see below), mean over seeds; the one "
              "with the lowest val error is chosen (`chosen_on_val`), and its gap share on test is the headline "
              "(`gap_share` of the results):", "", "| method | test | val | gap share | per seed |",
              "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {name}{' (chosen on val)' if name == summary['chosen_on_val'] else ''} | {row['test']:.1f} | "
              f"{row['val']:.1f} | {100 * row['gap_share']:.0f}% | "
              + ", ".join(f"{100 * share:.0f}%" for share in row["gap_shares"]) + " |"
              for name, row in summary["methods"].items()]
    lines += ["", "Pseudo-labels of the train split (view-1 error against its labels, read only for this report), "
              "mean over seeds: " + " / ".join(
                  f"{name} {spread([r['pseudo_labels'][name] for r in seeds])}" for name in ("network", "fused", "fitted"))
              + " mm."]
    for row in seeds:
        if "pretraining_curve" in row:
            lines += ["", f"Pretraining curve (seed {row['seed']}): validation / held-out synthetic error (mm) at "
                      "each kept checkpoint:", "", "| step | val | synthetic |", "| ---: | ---: | ---: |"]
            lines += [f"| {point['step']} | {point['val']:.1f} | {point['synthetic']:.1f} |"
                      for point in row["pretraining_curve"]]
    if result.get("ablation"):
        lines += ["", "Ablation (seed 0): pseudo-labels made with one part of the fitting off, then the same "
                  "fine-tuning; and the fitting terms' gradients instead of pseudo-labels:", "",
                  "| self-supervised run | pseudo-labels (train) | test | val | test subject 1 | test subject 2 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |",
                  f"| all on | {seeds[0]['pseudo_labels']['fitted']:.1f} | {seeds[0]['self_supervised']['test']:.1f} | "
                  f"{seeds[0]['self_supervised']['val']:.1f} | {seeds[0]['self_supervised']['subjects']['1']:.1f} | "
                  f"{seeds[0]['self_supervised']['subjects']['2']:.1f} |"]
        lines += [f"| {name} | {row['pseudo_labels']['fitted']:.1f} | {row['test']:.1f} | {row['val']:.1f} | "
                  f"{row['subjects']['1']:.1f} | {row['subjects']['2']:.1f} |" if "pseudo_labels" in row else
                  f"| {name} | - | {row['test']:.1f} | {row['val']:.1f} | {row['subjects']['1']:.1f} | "
                  f"{row['subjects']['2']:.1f} |" for name, row in result["ablation"].items()]
    names = [name for name in PSEUDO_LABEL_VARIANTS if any(name in r.get("variants", {}) for r in seeds)]
    if names:
        lines += ["", "Pseudo-label improvements (`PSEUDO_LABEL_VARIANTS`), each alone and together, then the same "
                  "fine-tuning; mean ± sd over the seeds that ran each (pseudo-labels: view-1 error of the fits on "
                  "the train split, and of the joints that kept a target; gap share: of the synthetic-only -> "
                  "supervised gap on test, those seeds):", "",
                  "| self-supervised run | seeds | pseudo-labels (train) | kept joints | kept joints' error | test | "
                  "val | gap share |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| plain (median fusion, every joint) | {len(seeds)} | "
                  f"{spread([r['pseudo_labels']['fitted'] for r in seeds])} | 100% | - | "
                  f"{spread([r['self_supervised']['test'] for r in seeds])} | "
                  f"{spread([r['self_supervised']['val'] for r in seeds])} | {100 * gap_share(seeds):.0f}% |"]
        for name in names:
            ran = [r for r in seeds if name in r.get("variants", {})]
            runs = [r["variants"][name] for r in ran]
            lines.append(f"| {name} | {len(ran)} | {spread([v['pseudo_labels']['fitted'] for v in runs])} | "
                         f"{100 * statistics.mean(v['pseudo_labels'].get('kept_share', 1.0) for v in runs):.0f}% | "
                         f"{spread([v['pseudo_labels'].get('fitted_kept', v['pseudo_labels']['fitted']) for v in runs])}"
                         f" | {spread([v['test'] for v in runs])} | {spread([v['val'] for v in runs])} | "
                         f"{100 * gap_share(ran, lambda r: r['variants'][name]):.0f}% |")
        calibrated = {name: [r["variants"][name]["pseudo_labels"]["hand_scale"] for r in seeds
                             if "hand_scale" in r.get("variants", {}).get(name, {}).get("pseudo_labels", {})]
                      for name in names}
        lines += [""] + [f"- {name}: the hand scale calibrated on the train frames' depth, per seed: "
                         f"{', '.join(f'{scale:g}' for scale in scales)} (the template: 1)"
                         for name, scales in calibrated.items() if scales]
    lines += report_rounds(seeds, methods_on_every_seed(seeds))
    if result.get("audit"):
        fmt = lambda value: "-" if value is None else f"{value:.1f}"  # noqa: E731
        lines += ["", f"Pseudo-label audit (seed 0, {result['audit']['variant']}): view-1 error (mm) of the network / "
                  "fused / fitted joints on the train split against its labels (read only here), split by whether "
                  "the joint is visible in view 1, and the share that kept a target:", "",
                  "| joint | visible frames | network | fused | fitted | kept | occluded frames | network | fused | "
                  "fitted | kept |", "| --- |" + " ---: |" * 10]
        for name, row in result["audit"]["joints"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{row[seen]['frames']} | {fmt(row[seen]['network'])} | {fmt(row[seen]['fused'])} | "
                f"{fmt(row[seen]['fitted'])} | "
                + ("-" if row[seen]["kept"] is None else f"{100 * row[seen]['kept']:.0f}%")
                for seen in ("visible", "occluded")) + " |")
    lines += report_finetune_curve(result.get("finetune_curve", []))
    if result.get("label_free"):
        rows = result["label_free"]
        later = [f"round {r['round']}" for r in rows[0].get("rounds", [])]
        runs = lambda row: [row] + row.get("rounds", [])  # noqa: E731 (round 1, then the later rounds)
        lines += ["", "Label-free shards (`--center com --cameras fixed`: crops at the depth centre of mass, one "
                  "fixed camera calibration), each seed's pretraining; test = their test split cropped the same way "
                  "(val: cropped at the labels); self-supervised test / val per round:", "",
                  "| seed | pretrained test | synthetic_only test | " + " | ".join(
                      f"self_supervised {name} test | val" for name in ["round 1", *later]) + " |",
                  "| --- | ---: | ---: |" + " ---: | ---: |" * (1 + len(later))]
        lines += [f"| {row['seed']} | {row['pretrained_test']:.1f} | {row['synthetic_only_test']:.1f} | "
                  + " | ".join(f"{run['test']:.1f} | {run['val']:.1f}" for run in runs(row)) + " |" for row in rows]
        lines.append(f"| mean ± sd | {spread([r['pretrained_test'] for r in rows])} | "
                     f"{spread([r['synthetic_only_test'] for r in rows])} | " + " | ".join(
                         f"{spread([runs(r)[i]['test'] for r in rows])} | {spread([runs(r)[i]['val'] for r in rows])}"
                         for i in range(1 + len(later))) + " |")
        lines.append("")
        for index, name in enumerate(["round 1", *later]):
            lines.append(f"- label-free self-supervised ({name}) minus synthetic-only (test): " + ", ".join(
                f"{runs(row)[index]['test'] - row['synthetic_only_test']:+.1f}" for row in rows) + " mm per seed")
        if all("refined" in row for row in rows):
            lines += report_refinement(rows)
    return "\n".join(lines) + "\n"


def report_refinement(rows: list[dict]) -> list[str]:
    """The label-free networks with the network's crop refinement (:func:`crop_refinement`), mean ± sd over seeds."""
    names = list(rows[0]["refined"])
    lines = ["", "Label-free test frames re-cropped at the network's own palm (`train.predict --refine N`, the raw "
             "test frames, view 1, first crop at the label-free centre; self-supervised: round 1), mean ± sd over "
             "seeds (mm):", "", "| refine | " + " | ".join(names) + " | self-supervised minus synthetic-only, per seed |",
             "| ---: |" + " ---: |" * len(names) + " --- |"]
    for n in rows[0]["refined"][names[0]]:
        gains = ", ".join(f"{r['refined']['self_supervised'][n] - r['refined']['synthetic_only'][n]:+.1f}" for r in rows)
        lines.append(f"| {n} | " + " | ".join(spread([r["refined"][name][n] for r in rows]) for name in names)
                     + f" | {gains} |")
    return lines


def plain_self_supervised(row: dict) -> dict:
    """A seed's plain self-supervised run with its pseudo-labels and later rounds (the shape of a variant's)."""
    return row["self_supervised"] | {"pseudo_labels": row["pseudo_labels"], "rounds": row.get("rounds", [])}


def report_rounds(seeds: list[dict], methods: dict[str, Callable[[dict], dict]]) -> list[str]:
    """A table per method of ``methods`` (:func:`methods_on_every_seed`) that ran more than one round."""
    lines = []
    for method in dict.fromkeys(name.split(", round")[0] for name in methods):
        rounds = [pick for name, pick in methods.items() if name.startswith(f"{method}, round")]
        if len(rounds) < 2:
            continue
        lines += ["", f"Self-training rounds, {method}: round N's pseudo-labels are made by round N-1's "
                  "self-supervised network (round 1: the pretrained one), each round fine-tuned from the pretraining "
                  "for the same steps; mean ± sd over seeds (gap share: of the synthetic-only -> supervised gap on "
                  "test):", "", "| round | pseudo-labels (train) | test | val | gap share | per seed |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for number, pick in enumerate(rounds, start=1):
            runs = [pick(r) for r in seeds]
            lines.append(f"| {number} | {spread([v['pseudo_labels']['fitted'] for v in runs])} | "
                         f"{spread([v['test'] for v in runs])} | {spread([v['val'] for v in runs])} | "
                         f"{100 * gap_share(seeds, pick):.0f}% | "
                         + ", ".join(f"{100 * gap_share([r], pick):.0f}%" for r in seeds) + " |")
    return lines


def report_finetune_curve(curves: list[dict]) -> list[str]:
    """The table of :func:`finetune_curve`'s runs, one row per kept step (none when it did not run)."""
    if not curves:
        return []
    lines = ["", "Fine-tuning length (every seed's pretraining; one run per method to the last step at a constant "
             "learning rate, its checkpoint at step k standing for the k-step run): mean ± sd over seeds (mm), and "
             "self-supervised minus synthetic-only on test per seed:", "",
             "| steps | synthetic_only test | val | self_supervised test | val | gain per seed (test) |",
             "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for index, point in enumerate(curves[0]["self_supervised"]):
        at = lambda name, split: [curve[name][index][split] for curve in curves]  # noqa: E731
        gains = [mine - theirs for mine, theirs in zip(at("self_supervised", "test"), at("synthetic_only", "test"))]
        columns = [spread(at(name, split)) for name in ("synthetic_only", "self_supervised") for split in ("test", "val")]
        lines.append(f"| {point['step']} | " + " | ".join(columns) + " | "
                     + ", ".join(f"{gain:+.1f}" for gain in gains) + " |")
    return lines


def gap_share(seeds: list[dict], self_supervised: Callable[[dict], dict] = lambda r: r["self_supervised"]) -> float:
    """Share of the synthetic-only -> supervised gap on test (means over ``seeds``) closed by self-supervision."""
    synthetic_only = statistics.mean(r["synthetic_only"]["test"] for r in seeds)
    gap = synthetic_only - statistics.mean(r["supervised"]["test"] for r in seeds)
    return (synthetic_only - statistics.mean(self_supervised(r)["test"] for r in seeds)) / gap if gap > 0 else 0.0


def methods_on_every_seed(seeds: list[dict]) -> dict[str, Callable[[dict], dict]]:
    """Every self-supervised method that ran on every seed, by name ("plain, round 1", "confidence fusion,
    round 2", ...): a seed's row -> that run."""
    firsts = {"plain": plain_self_supervised} | {
        name: (lambda r, name=name: r["variants"][name]) for name in PSEUDO_LABEL_VARIANTS
        if all(name in r.get("variants", {}) for r in seeds)}
    methods = {}
    for method, first in firsts.items():
        methods[f"{method}, round 1"] = first
        for index in range(min(len(first(r).get("rounds", [])) for r in seeds)):
            methods[f"{method}, round {index + 2}"] = lambda r, first=first, index=index: first(r)["rounds"][index]
    return methods


def summarise(seeds: list[dict]) -> dict:
    mean = lambda name, split="test": statistics.mean(r[name][split] for r in seeds)  # noqa: E731
    gains = [r["synthetic_only"]["test"] - r["self_supervised"]["test"] for r in seeds]
    spreads = [statistics.stdev(r[n]["test"] for r in seeds) for n in ("synthetic_only", "self_supervised")] \
        if len(seeds) > 1 else [0.0]
    methods = {name: {"test": statistics.mean(pick(r)["test"] for r in seeds),
                      "val": statistics.mean(pick(r)["val"] for r in seeds), "gap_share": gap_share(seeds, pick),
                      "gap_shares": [gap_share([r], pick) for r in seeds]}
               for name, pick in methods_on_every_seed(seeds).items()}
    return {"gain_mm": statistics.mean(gains), "gains_mm": gains, "seed_spread_mm": max(spreads),
            "gap_share": gap_share(seeds), "gap_shares": [gap_share([r]) for r in seeds],
            "methods": methods, "chosen_on_val": min(methods, key=lambda name: methods[name]["val"]),
            "synthetic_heldout": statistics.mean(r["pretrained"]["synthetic"] for r in seeds),
            "pretrained_test": mean("pretrained")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ablation", action="store_true", help="each part of the fitting off in turn (first seed)")
    parser.add_argument("--label-free", action="store_true", help="centre-of-mass crops, fixed cameras")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining length (default 6000; --quick 600)")
    parser.add_argument("--curve-every", type=int, default=0,
                        help="evaluate the pretraining on val every K steps (default 0: only at its end)")
    parser.add_argument("--finetune-curve", type=int, default=0, metavar="STEPS",
                        help="also fine-tune synthetic-only and self-supervised to STEPS on every seed, evaluated "
                             "every half fine-tuning length: the fine-tuning-length curve (default 0: off)")
    parser.add_argument("--quick", action="store_true", help="small data, short runs")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "selfsup")
    parser.add_argument("--notes", type=Path, default=ROOT / "runs" / "bench" / "selfsup.md")
    parser.add_argument("--variants", action="store_true",
                        help="the pseudo-label improvements, alone and together, on every seed")
    parser.add_argument("--variant-seeds", type=int, default=None,
                        help="run --variants on the first N seeds only (default: every seed)")
    parser.add_argument("--variant", action="append", default=[], choices=list(PSEUDO_LABEL_VARIANTS),
                        help="run this pseudo-label variant on every seed (repeatable)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="self-training rounds: pseudo-labels re-made by the last round's network, then the "
                             "same fine-tuning from the pretraining (default 1)")
    parser.add_argument("--round-variant", action="append", default=[], choices=list(PSEUDO_LABEL_VARIANTS),
                        help="also run this pseudo-label variant, and its --rounds, on every seed (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--results", type=Path, default=None,
                        help="also write every figure as JSON here (benchmarks/results/selfsup.json; top-level "
                             "gap_share: the share of the synthetic-only -> supervised gap closed, mean over seeds)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.pretrain_steps is not None:
        if args.pretrain_steps < 1:
            parser.error(f"--pretrain-steps {args.pretrain_steps}: must be at least 1")
        sizes = replace(sizes, pretrain_steps=args.pretrain_steps)
    if args.curve_every < 0:
        parser.error(f"--curve-every {args.curve_every}: must be 0 or more")
    if args.finetune_curve and args.finetune_curve < sizes.finetune_steps:
        parser.error(f"--finetune-curve {args.finetune_curve}: must be 0 or at least the fine-tuning's "
                     f"{sizes.finetune_steps} steps")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    paths = build_data(args.work, sizes, args.label_free)
    variant_seeds = args.seeds if args.variant_seeds is None else args.variant_seeds
    lr, lr_vals = synthetic_only_lr(paths, sizes, args.work, args.curve_every)
    seeds = [run_seed(seed, paths, sizes, args.work, args.curve_every,
                      list(PSEUDO_LABEL_VARIANTS) if args.variants and seed < variant_seeds else args.variant,
                      args.rounds, args.round_variant, lr)
             for seed in range(args.seeds)]
    summary = summarise(seeds)
    result = {"gap_share": summary["methods"][summary["chosen_on_val"]]["gap_share"], "machine": describe_machine(),
              "date": time.strftime("%Y-%m-%d"),
              "sizes": vars(sizes), "seeds": seeds, "summary": summary,
              "synthetic_only_lr": {"chosen": lr, "seed0_val": {f"{k:g}": v for k, v in lr_vals.items()}},
              "mean_pose_test": float(mean_pose_errors(paths["nyu"]).errors.mean())}
    audited = {name: args.work / "seed0" / f"fitted_variant_{index}" for index, name in enumerate(PSEUDO_LABEL_VARIANTS)}
    audited = {name: path for name, path in audited.items() if (path / "train" / AUDIT_NAME).exists()}
    if audited:
        name = AUDITED_VARIANT if AUDITED_VARIANT in audited else list(audited)[-1]
        result["audit"] = {"variant": name, "joints": audit_pseudo_labels(audited[name], paths["raw"])}
    if args.ablation:
        result["ablation"] = ablation(paths, sizes, args.work)
    if args.finetune_curve:
        result["finetune_curve"] = [finetune_curve(seed, paths, sizes, args.work, args.finetune_curve, lr)
                                    for seed in range(args.seeds)]
    if args.label_free:
        result["label_free"] = [label_free(seed, paths, sizes, args.work, args.rounds, lr) for seed in range(args.seeds)]
    text = report(result)
    print(text)
    args.notes.parent.mkdir(parents=True, exist_ok=True)
    args.notes.write_text("# Training by fitting (benchmarks/selfsup.py)\n\n" + text)
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
