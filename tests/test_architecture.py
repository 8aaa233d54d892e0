"""The layout rules of docs/architecture.md, checked on the source: no import cycle at any level
(function-level imports included), no oversized module, and a command line whose listing and
help commands load neither torch nor Lightning."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mednext", "datamodules")
#: "No source file over about 600 lines" (the restructuring's rule for the library).
MAX_LINES = 600


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the suite's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The suite's modules that ``path`` imports anywhere in its body (module level, inside
    functions, under ``TYPE_CHECKING``): ``from a import b`` counts as importing ``a.b`` when
    that is a module, else ``a``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            # `import a.b.c` names a.b.c; the closest suite module it reaches is the import.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                yield name


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: set(imported_modules(path, modules)) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    # The graph builder sees imports inside functions too.
    hidden = tmp_path / "hidden.py"
    hidden.write_text("def f():\n    from mednext.runs import layout\n")
    modules = {**module_files(), "hidden": hidden}
    assert set(imported_modules(hidden, modules)) == {"mednext.runs.layout"}


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    assert cycles(import_graph()) == []


def test_models_and_data_point_one_way() -> None:
    """docs/architecture.md: the networks know nothing of the runner, the data layer nothing of
    the tasks, and a mechanism nothing of the datasets built on it."""
    graph = import_graph()
    datasets = {"synapse", "acdc", "brain_demo", "nnunet", "sarscov2", "msld", "covidct"}
    for module, targets in graph.items():
        if module.startswith("mednext.models"):
            assert all(t.startswith("mednext.models") or t == "mednext.files" for t in targets), (
                module,
                targets,
            )
        if module.startswith("datamodules"):
            assert not any(t.startswith(("mednext.tasks", "mednext.runs")) for t in targets), (
                module,
                targets,
            )
        mechanisms = ("base", "volumes", "volume_cache", "nnunet_layout", "slices", "image_folders")
        if module in {f"datamodules.{m}" for m in mechanisms}:
            assert not targets & {f"datamodules.{d}" for d in datasets}, (module, targets)
    assert graph["datamodules.synthetic"] <= {"mednext.files"}


@pytest.mark.parametrize("name", sorted(module_files()))
def test_no_module_is_oversized(name: str) -> None:
    lines = len(module_files()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


_PROBE = """
import json, sys
from mednext.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "monai"))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def loaded_by(*argv: str, cwd: Path) -> dict:
    """Run ``mednext ARGV`` in a fresh interpreter; its exit code and the heavy modules it
    loaded."""
    environment = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--list"],
        ["sweep", "--list"],
        *([command, "--help"] for command in ("train", "test", "predict", "sweep", "models")),
        *([command, "--help"] for command in ("bench", "leaderboard", "convert")),
        ["data", "synthetic", "--help"],
        ["data", "prepare", "--help"],
        ["train", "no_such_experiment"],
        ["train", "synapse_mednext_s", "not-an-override"],
    ],
)
def test_listing_help_and_command_line_errors_load_no_torch(
    argv: list[str], tmp_path: Path
) -> None:
    outcome = loaded_by(*argv, cwd=tmp_path)
    assert outcome["heavy"] == [], outcome
    assert outcome["code"] in (0, 2)


def test_the_leaderboard_command_loads_no_torch(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    outcome = loaded_by("leaderboard", "runs", "--out", "board", cwd=tmp_path)
    assert outcome == {"code": 0, "heavy": []}
    assert (tmp_path / "board" / "index.html").is_file()
