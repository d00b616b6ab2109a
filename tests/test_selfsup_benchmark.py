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
         "--work", str(tmp_path / "work"), "--notes", str(tmp_path / "selfsup.md")],
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
