"""The package layering, read from the import statements of every module (ast: nothing is imported).

fileio (atomic writes, hashes) and geometry (the crop frame) are the ground floor; renderer_cuda knows no
hands; hand knows no data sets or training; shards knows no networks; the network and the losses read no shards. No module imports
itself back through others (no cycle), counting imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fileio", "geometry", "renderer_cuda", "hand", "shards", "train", "launch")
FORBIDDEN = {  # package or module -> project packages it must not import
    "fileio": {"geometry", "renderer_cuda", "hand", "shards", "train", "launch"},
    "geometry": {"fileio", "renderer_cuda", "hand", "shards", "train", "launch"},
    "renderer_cuda": {"fileio", "geometry", "hand", "shards", "train", "launch"},
    "hand": {"shards", "train", "launch"},
    "shards": {"train", "launch"},
    "train": {"launch"},  # the trainer knows nothing of SLURM
    "launch": {"geometry", "renderer_cuda", "hand", "shards"},
    "train.network": {"shards"},
    "train.losses": {"shards"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Dotted names of the project modules ``path`` imports (anywhere in the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]  # a name, or a submodule of base
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return found


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def resolve(target: str) -> str | None:
    """The module a dotted import name refers to (``hand.HandModel`` -> ``hand``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


GRAPH = {name: {m for t in project_imports(path) if (m := resolve(t)) and m != name} for name, path in MODULES.items()}


def test_every_package_is_seen():
    assert {name.split(".")[0] for name in MODULES} == set(PACKAGES)
    assert "shards.geometry" not in MODULES, "the crop frame lives in the ground-floor geometry package"
    assert GRAPH["hand.viewer"] and GRAPH["train.loop"], "imports were not found"


@pytest.mark.parametrize("owner", sorted(FORBIDDEN))
def test_no_import_runs_against_the_layering(owner):
    offenders = [f"{name} imports {target}" for name, targets in GRAPH.items()
                 if name == owner or name.startswith(owner + ".")
                 for target in sorted(targets) if target.split(".")[0] in FORBIDDEN[owner]]
    assert not offenders, offenders


def test_launch_reads_only_the_config_loader_of_train():
    """launch runs the trainer as processes; of train it may import only the config loader."""
    allowed = {"train.config", "train.schema"}
    offenders = [f"{name} imports {target}" for name, targets in GRAPH.items() if name.split(".")[0] == "launch"
                 for target in sorted(targets) if target.split(".")[0] == "train" and target not in allowed]
    assert not offenders, offenders
    assert GRAPH["launch.config"] == {"train.config"}


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
