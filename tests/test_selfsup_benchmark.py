"""The comparison of benchmarks/selfsup.py at its reduced size (``--quick``, one seed): every stage runs as
users run it (fake NYU -> shards -> torchrun pretraining -> fitted pseudo-labels -> three torchrun
fine-tunings -> evaluation), and the figures that make the method's case come out right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_comparison(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "selfsup.py"), "--quick", "--seeds", "1", "--json",
         "--work", str(tmp_path / "work"), "--notes", str(tmp_path / "selfsup.md"),
         "--results", str(tmp_path / "selfsup.json")],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])["seeds"][0]
    fits = row["pseudo_labels"]
    # Fusing the views and fitting them to the depth bring the pretrained network's guesses closer to
    # the (unread) labels: the pseudo-labels carry information that the network alone does not.
    assert fits["fused"] < fits["network"] and fits["fitted"] < fits["network"], fits
    # Labels are the upper bound; training on the pseudo-labels beats continued synthetic-only training on
    # the validation split of train frames (where the settings were chosen).
    assert row["supervised"]["val"] < row["synthetic_only"]["val"], row
    assert row["self_supervised"]["val"] < row["synthetic_only"]["val"], row
    assert "| mean ± sd |" in (tmp_path / "selfsup.md").read_text()
    recorded = json.loads((tmp_path / "selfsup.json").read_text())
    summary = recorded["summary"]
    assert recorded["seeds"][0] == row and list(summary["methods"]) == ["plain, round 1"]
    assert recorded["gap_share"] == summary["methods"][summary["chosen_on_val"]]["gap_share"] == summary["gap_share"]


def load_benchmark(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import selfsup
    return selfsup


def test_pretraining_keeps_and_evaluates_every_curve_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    commands = []
    monkeypatch.setattr(selfsup, "python", lambda *args, log=None: commands.append(args))
    selfsup.train("configs/synthetic-cpu.yaml", tmp_path / "curve", 1000, ["run.seed=0"], 300)
    selfsup.train("configs/synthetic-cpu.yaml", tmp_path / "plain", 1500, ["run.seed=0"])
    # Checkpoints at 300, 600, 900 and the last step, all kept and evaluated; without a curve, only the last.
    assert {"checkpoint.every=300", "checkpoint.keep=4", "eval.every=300"} <= set(commands[0]), commands[0]
    assert {"checkpoint.every=1500", "checkpoint.keep=1", "eval.every=1500"} <= set(commands[1]), commands[1]
    # The benchmark's pretraining keeps the schedule of its stored results whatever the demo's config says.
    paths = {"synth": tmp_path / "synth", "nyu": tmp_path / "nyu"}
    selfsup.pretraining(0, paths, selfsup.QUICK, tmp_path, 0)
    assert "optim.decay_at=[0.6,0.9]" in commands[2], commands[2]


def test_pretraining_curve_reads_each_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    run = tmp_path / "synthetic"
    (run / "checkpoints").mkdir(parents=True)
    records = []
    for step, val, synthetic in ((500, 40.0, 30.0), (1000, 35.0, 25.0)):
        (run / "checkpoints" / f"step-{step:09d}.pt").touch()
        (run / f"eval-val-step-{step}").mkdir()
        (run / f"eval-val-step-{step}" / "metrics.json").write_text(json.dumps({"mean_error_mm": val}))
        records.append(json.dumps({"step": step, "eval/synthetic/mean_error_mm": synthetic}))
    (run / "metrics.jsonl").write_text("\n".join([json.dumps({"step": 50, "loss": 1.0}), *records]) + "\n")
    assert selfsup.pretraining_curve(run, tmp_path / "val") == [
        {"step": 500, "val": 40.0, "synthetic": 30.0}, {"step": 1000, "val": 35.0, "synthetic": 25.0}]
    assert selfsup.synthetic_error(run) == 25.0


def test_finetune_curve_evaluates_every_kept_step_of_both_methods(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    commands, evaluated = [], []

    def python(*args, log=None):  # a run that keeps the checkpoints its command asks for
        commands.append(args)
        options = dict(arg.split("=", 1) for arg in args if "=" in arg)
        run_dir = Path(options["run.dir"])
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        every, steps = int(options["checkpoint.every"]), int(options["run.steps"])
        for step in range(every, steps + 1, every):
            (run_dir / "checkpoints" / f"step-{step:09d}.pt").touch()

    def evaluate(run_dir, split, name, checkpoint=None):
        evaluated.append((run_dir.name, split.parent.name, name, checkpoint.name))
        step = int(checkpoint.stem.removeprefix("step-"))
        return 30.0 - step / 150 - (2.0 if run_dir.name.startswith("self_supervised") else 0.0)

    (tmp_path / "seed0" / "synthetic" / "checkpoints").mkdir(parents=True)
    (tmp_path / "seed0" / "synthetic" / "checkpoints" / "step-000006000.pt").touch()
    monkeypatch.setattr(selfsup, "python", python)
    monkeypatch.setattr(selfsup, "evaluate", evaluate)
    paths = {"synth": tmp_path / "synth", "nyu": tmp_path / "nyu", "val": tmp_path / "val"}
    curve = selfsup.finetune_curve(0, paths, selfsup.FULL, tmp_path, 450, 3e-4)
    synthetic_only, self_supervised = (dict(arg.split("=", 1) for arg in command if "=" in arg) for command in commands)
    # Both fine-tune from the seed's pretraining to 450 steps, keeping every checkpoint at half the 300-step length.
    for options in (synthetic_only, self_supervised):
        assert options["init"].endswith("seed0/synthetic/checkpoints/step-000006000.pt")
        assert (options["run.steps"], options["checkpoint.every"], options["checkpoint.keep"]) == ("450", "150", "3")
    assert synthetic_only["optim.lr"] == "0.0003" and synthetic_only["data.real"] == str(tmp_path / "nyu")
    assert self_supervised["data.real"] == str(tmp_path / "seed0" / "fitted") and "optim.lr" not in self_supervised
    assert [point["step"] for point in curve["self_supervised"]] == [150, 300, 450]
    assert curve["synthetic_only"][1] == {"step": 300, "val": 28.0, "test": 28.0}
    assert ("self_supervised_curve450", "fitted", "test-step-450", "step-000000450.pt") in evaluated
    assert len(evaluated) == 12  # 2 methods x 3 steps x (val, test)
    table = "\n".join(selfsup.report_finetune_curve([curve]))
    assert "| 300 | 28.0 | 28.0 | 26.0 | 26.0 | -2.0 |" in table, table


@pytest.mark.parametrize("option", [["--pretrain-steps", "0"], ["--curve-every", "-1"], ["--rounds", "0"],
                                    ["--finetune-curve", "100"]])
def test_bad_lengths_are_refused(option: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "selfsup.py"), *option, "--work",
                             str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"error: {' '.join(option)}" in result.stderr, result.stderr
    assert not (tmp_path / "work").exists()


def test_audit_splits_each_joint_by_visibility(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import numpy as np

    selfsup = load_benchmark(monkeypatch)
    (tmp_path / "fitted" / "train").mkdir(parents=True)
    (tmp_path / "raw").mkdir()
    frames, joints = np.array([2, 1]), 14
    fitted = np.tile([[10.0], [30.0]], (1, joints))  # frame 2: 10 mm everywhere, frame 1: 30 mm
    kept = np.array([[True] * joints, [False] * joints])
    np.savez(tmp_path / "fitted" / "train" / "label_errors.npz", frame=frames, network=fitted + 5, fused=fitted + 1,
             fitted=fitted, kept=kept)
    visible = np.zeros((3, 2, 36), bool)
    visible[0, 1] = True  # frame 2 (index 1) sees every joint in view 1; frame 1 none
    np.savez(tmp_path / "raw" / "fake_nyu.npz", train_visible=visible)
    rows = selfsup.audit_pseudo_labels(tmp_path / "fitted", tmp_path / "raw")
    first = next(iter(rows.values()))
    assert len(rows) == joints
    assert first["visible"] == {"frames": 1, "network": 15.0, "fused": 11.0, "fitted": 10.0, "kept": 1.0}
    assert first["occluded"] == {"frames": 1, "network": 35.0, "fused": 31.0, "fitted": 30.0, "kept": 0.0}


def test_each_round_fits_with_the_last_rounds_network_and_fine_tunes_from_the_pretraining(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    made, tuned = [], []

    def pseudo_labels(network, real, out, sizes, options):
        made.append((network.name, out.name))
        return out, {"fitted": 20.0 - len(made)}

    def finetune(name, seed, pretrain, paths, sizes, work, extra, real):
        tuned.append((name, pretrain.name, real.name))
        return {"test": 20.0, "val": 21.0, "subjects": {}}

    monkeypatch.setattr(selfsup, "pseudo_labels", pseudo_labels)
    monkeypatch.setattr(selfsup, "finetune", finetune)
    rows = selfsup.later_rounds(0, 3, tmp_path / "nyu", "self_supervised", "fitted", [], {}, selfsup.QUICK, tmp_path)
    assert made == [("self_supervised", "fitted_round2"), ("self_supervised_round2", "fitted_round3")]
    assert tuned == [("self_supervised_round2", "synthetic", "fitted_round2"),
                     ("self_supervised_round3", "synthetic", "fitted_round3")]
    assert [row["round"] for row in rows] == [2, 3] and rows[1]["pseudo_labels"] == {"fitted": 18.0}
    # The report's rounds table: round 1 is the plain self-supervised run; the gap shares per round.
    seed = {"seed": 0, "pseudo_labels": {"fitted": 22.0}, "synthetic_only": {"test": 30.0},
            "supervised": {"test": 20.0}, "self_supervised": {"test": 25.0, "val": 26.0}, "rounds": rows}
    table = "\n".join(selfsup.report_rounds([seed], selfsup.methods_on_every_seed([seed])))
    assert "| 1 | 22.0 | 25.0 | 26.0 | 50% | 50% |" in table and "| 3 | 18.0 | 20.0 | 21.0 | 100% | 100% |" in table


def test_the_headline_is_the_method_chosen_on_val(monkeypatch: pytest.MonkeyPatch) -> None:
    selfsup = load_benchmark(monkeypatch)

    def run(test: float, val: float) -> dict:
        return {"test": test, "val": val, "pseudo_labels": {"fitted": 20.0}}

    def seed(number: int, with_variant: bool) -> dict:
        row = {"seed": number, "pretrained": {"test": 31.0, "synthetic": 18.0}, "pseudo_labels": {"fitted": 22.0},
               "synthetic_only": {"test": 30.0}, "supervised": {"test": 20.0}, "self_supervised": run(25.0, 26.0),
               "rounds": [run(24.0, 24.0) | {"round": 2}],
               "variants": {"view agreement": run(20.0, 25.0)}}  # best on test, not on val
        if with_variant:
            row["variants"]["confidence fusion"] = run(21.0, 20.0)  # best on val, but on one seed only
        return row

    summary = selfsup.summarise([seed(0, True), seed(1, False)])
    assert list(summary["methods"]) == ["plain, round 1", "plain, round 2", "view agreement, round 1"]
    assert summary["chosen_on_val"] == "plain, round 2" and summary["methods"]["plain, round 2"]["gap_share"] == 0.6
    assert summary["gap_share"] == 0.5  # the plain method's first round, as before


def test_the_synthetic_only_baseline_runs_at_its_best_learning_rate_on_val(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    val_by_lr, runs = {1e-4: 30.0, 3e-4: 29.0, 1e-3: 31.0}, []

    def finetune(name, seed, pretrain, paths, sizes, work, extra, real):
        lr = float(extra[-1].removeprefix("optim.lr="))
        runs.append((name, seed))
        return {"test": 0.0, "val": val_by_lr[lr], "subjects": {}}

    monkeypatch.setattr(selfsup, "pretraining", lambda *args: tmp_path / "seed0" / "synthetic")
    monkeypatch.setattr(selfsup, "finetune", finetune)
    lr, vals = selfsup.synthetic_only_lr({"nyu": tmp_path / "nyu"}, selfsup.FULL, tmp_path, 0)
    assert lr == 3e-4 and vals == val_by_lr
    # The config's own rate keeps the plain name (earlier runs are reused); the others are named by their rate.
    assert runs == [("synthetic_only", 0), ("synthetic_only_lr0.0003", 0), ("synthetic_only_lr0.001", 0)]
    assert selfsup.synthetic_only_lr({}, selfsup.QUICK, tmp_path, 0) == (1e-4, {})  # one rate: nothing to run


def test_label_free_networks_are_measured_with_crop_refinement_once(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    selfsup = load_benchmark(monkeypatch)
    measured = []

    def measure(run_dir, raw_test, refines):
        measured.append((run_dir.name, raw_test, tuple(refines)))
        offset = {"synthetic": 0.0, "synthetic_only_lr0.001": 1.0, "self_supervised_label_free": -1.0}[run_dir.name]
        return {"labelled palm": {"mean_error_mm": 1.0}} | {
            f"com, refine {n}": {"mean_error_mm": 25.0 + offset + n} for n in refines}

    monkeypatch.setattr(selfsup, "measure_refinement", measure)
    monkeypatch.setattr(selfsup, "pseudo_labels", lambda network, real, out, sizes, options: (out, {"fitted": 20.0}))
    monkeypatch.setattr(selfsup, "finetune", lambda *args: {"test": 24.0, "val": 25.0, "subjects": {}})
    monkeypatch.setattr(selfsup, "evaluate", lambda run_dir, split, name, checkpoint=None: 26.0)
    for name in ("synthetic", "synthetic_only_lr0.001", "self_supervised_label_free"):
        (tmp_path / "seed0" / name).mkdir(parents=True)
    paths = {"raw": tmp_path / "fake-nyu", "nyu_label_free": tmp_path / "nyu-com-fixed"}
    sizes = selfsup.FULL
    rows = [selfsup.label_free(0, paths, sizes, tmp_path, 1, 1e-3) for _ in range(2)]  # the second reads refine.json
    assert measured == [(name, tmp_path / "fake-nyu" / "test", selfsup.REFINES)
                        for name in ("synthetic", "synthetic_only_lr0.001", "self_supervised_label_free")]
    assert rows[0] == rows[1]
    assert rows[0]["refined"] == {"pretrained": {"0": 25.0, "1": 26.0, "2": 27.0},
                                  "synthetic_only": {"0": 26.0, "1": 27.0, "2": 28.0},
                                  "self_supervised": {"0": 24.0, "1": 25.0, "2": 26.0}}
    table = "\n".join(selfsup.report_refinement(rows))
    assert "| 1 | 26.0 ± 0.0 | 27.0 ± 0.0 | 25.0 ± 0.0 | -2.0, -2.0 |" in table, table
