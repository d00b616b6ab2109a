"""Every training command of the README runs as written, in README order, on the CPU.

The commands are those of the README's fenced ``bash`` blocks that run the trainer or one of its stages
(``-m train``, ``train.pseudo_labels``, ``train.prior``, ``train.report``, ``train.evaluate``,
``train.predict``, ``train.export``); a line that
continues with ``\\`` is one command. Synopses are not commands and are left out: a command holding ``...``,
``[`` (optional arguments), ``$`` (a shell variable) or an all-capitals placeholder (``CKPT``, ``SHARDS``).
Each runs in a temporary working directory (``configs`` linked in) where the data paths the commands read
and no command writes (``data/nyu-shards``, ``data/synth``, ``data/fake-nyu``, ...) are the session's fake-NYU shards,
synthetic shards and raw fake-NYU frames,
so later commands find earlier runs' outputs as a user's would. A command that fails fails the test, naming it.

What the test changes, and nothing else:
- ``torchrun --nproc_per_node=N``: N -> 1 (this machine has no 8 GPUs), started as ``python -m
  torch.distributed.run`` (the same program as the ``torchrun`` script) with this interpreter, as is ``python``;
- appended overrides: sizes (a tiny network, 2 steps, small batches, no images, the evaluation off during
  training) and, for the GPU configs (``synthesis.backend: cuda``), ``synthesis.backend=cpu`` (no GPU here);
  ``steps=2`` for the pseudo-label fit, ``--steps 2 ...`` for the pose prior.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "train.pseudo_labels", "train.prior", "train.report", "train.evaluate", "train.predict",
          "train.export")
PLACEHOLDER = re.compile(r"\.\.\.|\[|\$|(^|[=/])[A-Z][A-Z_]{2,}(/|$)")
# Data the commands read and no command writes: README path -> session fixture.
INPUTS = {"data/nyu-shards": "nyu", "data/nyu": "nyu", "data/synth": "synthetic", "demo/nyu": "nyu",
          "demo/synth": "synthetic", "data/fake-nyu": "raw"}
TRAIN_SIZES = ["run.device=cpu", "model.stacks=1", "model.width=8", "run.steps=2", "data.synthetic_batch=2",
               "data.batches_per_epoch=2", "data.num_workers=0", "synthesis.supersample=1", "eval.every=0",
               "eval.at_start=false", "checkpoint.every=0", "metrics.image_every=0", "metrics.tensorboard=false"]
STAGE_SIZES = {"train.pseudo_labels": ["steps=2"], "train.prior": ["--steps", "2", "--pool-size", "64", "--batch-size", "32"],
               "train.report": [], "train.evaluate": [], "train.predict": [], "train.export": []}


def bash_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced bash block, continuation lines joined."""
    blocks, current, joined = [], None, ""
    for line in text.splitlines():
        if line.strip() == "```bash" and current is None:
            current = []
        elif line.strip() == "```" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            joined += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
            if not line.rstrip().endswith("\\"):
                current.append(joined)
                joined = ""
    return blocks


def stage_of(words: list[str]) -> str | None:
    modules = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-m"]
    return next((module for module in modules if module in STAGES), None)


def readme_commands() -> tuple[list[list[str]], list[str]]:
    """(the commands to run, each as its words, in README order; the synopses left out, as text)."""
    commands, synopses = [], []
    for block in bash_blocks((ROOT / "README.md").read_text()):
        for line in block:
            words = shlex.split(line, comments=True)
            if not words or stage_of(words) is None:
                continue
            if any(PLACEHOLDER.search(word) for word in words):
                synopses.append(line)
            elif words not in commands:  # the same command twice (two sections show it) runs once
                commands.append(words)
    return commands, synopses


def as_run_here(words: list[str]) -> list[str]:
    """The command with this machine's rewrites (see the module docstring)."""
    stage = stage_of(words)
    if words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run",
                 *[re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=1", word) for word in words[1:]]]
    elif words[0] == "python":
        words = [sys.executable, *words[1:]]
    if stage != "train":
        return [*words, *STAGE_SIZES[stage]]
    cfg = load_config(ROOT / words[words.index("--config") + 1])
    extra = list(TRAIN_SIZES)
    if cfg.data.real_batch > 0:
        extra.append("data.real_batch=1")
    if cfg.synthesis.backend == "cuda":
        extra.append("synthesis.backend=cpu")
    return [*words, *extra]


def test_the_readme_shows_every_stage_as_a_runnable_command():
    commands, synopses = readme_commands()
    assert {stage_of(words) for words in commands} == set(STAGES), commands
    configs = {words[words.index("--config") + 1] for words in commands if stage_of(words) == "train"}
    assert configs == {"configs/synthetic.yaml", "configs/selfsup.yaml", "configs/selfsup-direct.yaml",
                       "configs/synthetic-cpu.yaml", "configs/selfsup-cpu.yaml"}, configs
    named = {path for path in INPUTS if any(path in word for words in commands for word in words)}
    assert named == set(INPUTS), "every input the test provides is one the README names"
    assert all(PLACEHOLDER.search(line) for line in synopses)


def test_every_training_command_of_the_readme_runs_as_written(tmp_path, fake_nyu_dir, nyu_shards_gt, synthetic_shards):
    fixtures = {"nyu": nyu_shards_gt, "synthetic": synthetic_shards, "raw": fake_nyu_dir}
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for path, fixture in INPUTS.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).symlink_to(fixtures[fixture])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    commands, _ = readme_commands()
    for words in commands:
        command = as_run_here(words)
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.fail(f"README command failed (exit {result.returncode}): {shlex.join(words)}\n"
                        f"run here as: {shlex.join(command)}\n{(result.stdout + result.stderr)[-3000:]}")
