"""The container recipes (Docker cannot run here: a structural check) and every shell script we ship."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = [ROOT / ".ci" / "run"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_structure():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    assert steps[0][0] == "FROM" and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", steps[0][1].strip())
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    assert {op for op, _ in steps} <= known
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert 'TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"' in env
    run = " ".join(arg for op, arg in steps if op == "RUN")
    assert "python -m renderer_cuda build" in run and "pip install" in run
    users = [arg.strip() for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    copied = {arg.split()[0] for op, arg in steps if op == "COPY"}
    for package in ("geometry", "hand", "renderer_cuda", "shards", "train", "launch", "configs", "pyproject.toml"):
        assert package in copied, package
        assert (ROOT / package).exists(), package
    if shutil.which("hadolint"):
        lint = subprocess.run(["hadolint", str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_apptainer_definition():
    text = (ROOT / "docker" / "apptainer.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.M))
    assert header.get("Bootstrap") and header.get("From")
    sections = re.findall(r"^%(\w+)", text, re.M)
    assert {"environment", "runscript", "test"} <= set(sections)
    assert "8.0;8.6;9.0" in text


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
