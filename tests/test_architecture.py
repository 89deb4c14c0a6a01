"""The import rules of the architecture (pyproject.toml [tool.importlinter]) hold, they catch an
upward import, and no module imports another that imports it back (directly or through others)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layering_contracts_hold():
    result = lint(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "imported"), [
    ("store/partition.py", "mullama.train.trainer"),  # a lower layer reaching up
    ("model/prompts.py", "mullama.music.space"),  # a layer below music reaching into it
    ("music/space.py", "mullama.train.generator"),  # music reaching up to the recipe that trains it
])
def test_an_upward_import_breaks_the_contracts(tmp_path, module, imported):
    """A module that imports a higher layer fails the check, naming the import."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "mullama", copy / "mullama", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    path = copy / "mullama" / module
    path.write_text(path.read_text() + f"\n\ndef _upward() -> None:\n    import {imported}\n")
    result = lint(copy, copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    importer = "mullama." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {imported}" in result.stdout


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Groups of modules that import each other, through any chain (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_import_cycles():
    graph = grimp.build_graph("mullama", cache_dir=None)
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("p.a", "p.b", "p.c", "p.d"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.c", imported="p.d")
    assert strongly_connected(graph) == [["p.a", "p.b", "p.c"]]


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_over_80_lines():
    """Small functions with one job: the guide's limit, counted from `def` to the last line of the body."""
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((ROOT / "mullama").rglob("*.py"))
            for node in functions(ast.parse(path.read_text()))
            if node.end_lineno - node.lineno + 1 > 80]
    assert not long, long


def test_imports_inside_functions_say_why():
    """Imports sit at module top; cli.py imports each command's work inside the command (start-up time, README
    Layout). Anywhere else an import inside a function carries a comment saying why, on its line or heading its block."""
    unexplained = []
    for path in sorted((ROOT / "mullama").rglob("*.py")):
        if path == ROOT / "mullama" / "cli.py":
            continue
        lines = path.read_text().splitlines()
        for function in functions(ast.parse("\n".join(lines))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    nearby = lines[max(0, node.lineno - 5):node.end_lineno]  # the comment may head a block of imports
                    if not any("#" in line for line in nearby):
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unexplained, unexplained
