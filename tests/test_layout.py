"""The house's floors: a package imports only from its own floor or those below, and no two modules
import each other (directly or round a loop). Checked on the source with `ast`, function-level imports
included, so a lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Bottom to top: the data flow corpus → annotators → verbalize → warehouse → annotation job → trainer,
# on a ground floor of errors, config reading and hashing, with the command line on the roof.
FLOORS = [("core",), ("corpora",), ("annotators",), ("verbalize",), ("warehouse",), ("pipeline",), ("trainer",),
          ("cli", "jobs")]  # fmt: skip
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[str]:
    """The project modules `path` imports (a `from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (root / Path(*sub.split("."))).with_suffix(".py").is_file()
                found.add(sub if is_module else node.module)
    return {m for m in found if m.split(".")[0] in FLOOR}


def check(root: Path) -> list[str]:
    """Every upward import and every import cycle under `root`, as readable lines."""
    graph: dict[str, set[str]] = {}
    problems = []
    for package in FLOOR:
        for path in sorted((root / package).rglob("*.py")):
            source = module_name(path, root)
            graph[source] = imports(path, root) - {source}
            for target in sorted(graph[source]):
                if FLOOR[target.split(".")[0]] > FLOOR[package]:
                    problems.append(f"upward import: {source} (floor {FLOOR[package]}) imports {target}")
    # cycles: a depth-first search that reports each back edge's loop once
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return problems


def test_every_import_goes_down_a_floor_and_no_module_imports_itself_round_a_loop():
    assert check(REPO) == []


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    for package in FLOOR:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "core" / "errors.py").write_text("from warehouse.store import Warehouse\n")  # ground floor up
    (tmp_path / "warehouse" / "store.py").write_text("def f():\n    from warehouse import sql\n")
    (tmp_path / "warehouse" / "sql.py").write_text("from warehouse.store import f\n")
    problems = check(tmp_path)
    assert "upward import: core.errors (floor 0) imports warehouse.store" in problems
    assert any(p.startswith("import cycle: warehouse.s") for p in problems), problems


def test_every_project_package_has_a_floor():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks", "configs"}
    assert packages <= set(FLOOR), packages - set(FLOOR)
